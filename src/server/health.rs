//! Health for orchestrators and load balancers, split as autopush-rs splits it:
//! `/__lbheartbeat__` (liveness: the event loops go round), `/__heartbeat__` (readiness: storage
//! is reachable and the server is not draining) and `/__version__` (what build this is).
//! `/health` and `/status` stay as they were.

use super::*;

/// A loop that has not gone round for this long is stuck: its poll waits at most a second, and
/// each round's work is bounded by the per-connection budget.
pub(super) const STALL_MS: u64 = 10_000;
/// What a loop that ended cleanly (shutdown) leaves as its last turn.
pub(super) const LOOP_STOPPED: u64 = u64::MAX;

/// The liveness path: 200 while every event loop turns.
pub const LIVENESS_PATH: &str = "/__lbheartbeat__";
/// The readiness path: 200 when storage is reachable and the server is not draining, else 503.
pub const READINESS_PATH: &str = "/__heartbeat__";
/// The build's version, git commit and build date as JSON.
pub const VERSION_PATH: &str = "/__version__";

/// The loops whose last turn (ms) is more than `STALL_MS` before `now`; stopped loops are not stuck.
pub(super) fn stalled(turns: &[u64], now: u64) -> Vec<usize> {
    turns
        .iter()
        .enumerate()
        .filter(|(_, &t)| t != LOOP_STOPPED && now.saturating_sub(t) > STALL_MS)
        .map(|(i, _)| i)
        .collect()
}

/// Liveness: 200 `{"status":"ok"}`, or 503 naming the loops that stopped turning.
pub(super) fn liveness(stalled: &[usize]) -> Response {
    if stalled.is_empty() {
        return Response::json(200, r#"{"status":"ok"}"#);
    }
    let loops: Vec<String> = stalled.iter().map(usize::to_string).collect();
    let body = format!(
        r#"{{"status":"error","stalled_loops":[{}]}}"#,
        loops.join(",")
    );
    Response::json(503, body)
}

/// Readiness: 200 only when storage is usable and no shutdown has begun; the body says which.
pub(super) fn readiness(storage_ok: bool, draining: bool) -> Response {
    let ok = storage_ok && !draining;
    // Written out rather than through serde_json, whose maps sort the keys: status comes first.
    let body = format!(
        r#"{{"status":"{}","storage":"{}","draining":{draining}}}"#,
        if ok { "ok" } else { "error" },
        if storage_ok { "ok" } else { "unavailable" },
    );
    Response::json(if ok { 200 } else { 503 }, body)
}

/// `{"version","commit","build_date"}`; build.rs finds the commit and date ("unknown" without git).
pub(super) fn version() -> Response {
    let text = |s: &str| serde_json::Value::from(s).to_string();
    let body = format!(
        r#"{{"version":{},"commit":{},"build_date":{}}}"#,
        text(env!("CARGO_PKG_VERSION")),
        text(env!("SP_BUILD_COMMIT")),
        text(env!("SP_BUILD_DATE")),
    );
    Response::json(200, body)
}

impl Peers {
    /// Notes that loop `id` went round.
    pub(super) fn beat(&self, id: usize) {
        if let Some(t) = self.turns.get(id) {
            t.store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
        }
    }

    /// Notes that loop `id` ended cleanly, so that it does not count as stuck.
    pub(super) fn stopped(&self, id: usize) {
        if let Some(t) = self.turns.get(id) {
            t.store(LOOP_STOPPED, Ordering::Relaxed);
        }
    }

    fn stalled(&self) -> Vec<usize> {
        let turns: Vec<u64> = self
            .turns
            .iter()
            .map(|t| t.load(Ordering::Relaxed))
            .collect();
        stalled(&turns, self.epoch.elapsed().as_millis() as u64)
    }
}

impl Server {
    /// One of the health paths, if `path` is one.
    pub(super) fn health_route(&self, path: &str) -> Option<Response> {
        match path {
            LIVENESS_PATH => Some(liveness(&self.peers.stalled())),
            READINESS_PATH => Some(readiness(
                self.store.healthy(),
                self.peers.draining.load(Ordering::Relaxed),
            )),
            VERSION_PATH => Some(version()),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loop_is_stuck_only_after_the_stall_time_and_never_once_stopped() {
        let now = 100_000;
        let turns = [now - 5, now - STALL_MS, now - STALL_MS - 1, LOOP_STOPPED, 0];
        assert_eq!(stalled(&turns, now), vec![2, 4]);
        // A loop that went round after `now` was read (another thread) is not stuck either.
        assert!(stalled(&[now + 3], now).is_empty());
    }

    #[test]
    fn liveness_names_the_stuck_loops() {
        let r = liveness(&[]);
        assert_eq!((r.status, r.body.as_str()), (200, r#"{"status":"ok"}"#));
        let r = liveness(&[1, 3]);
        assert_eq!(r.status, 503);
        let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"status":"error","stalled_loops":[1,3]})
        );
    }

    #[test]
    fn readiness_says_what_failed() {
        let cases = [
            (true, false, 200, "ok", "ok"),
            (false, false, 503, "error", "unavailable"),
            (true, true, 503, "error", "ok"),
            (false, true, 503, "error", "unavailable"),
        ];
        for (storage_ok, draining, status, overall, storage) in cases {
            let r = readiness(storage_ok, draining);
            assert_eq!(r.status, status);
            let v: serde_json::Value = serde_json::from_str(&r.body).unwrap();
            assert_eq!(
                v,
                serde_json::json!({"status": overall, "storage": storage, "draining": draining})
            );
            assert!(r.body.starts_with(r#"{"status":"#), "{}", r.body);
        }
    }
}
