//! Broadcasts on the event loops: the admin API that changes them, and telling followers.
//!
//! Every loop holds a copy of the table. A change made through one loop's admin listener goes to
//! the other loops by mailbox. With memcached it is also written to `b/broadcasts` and, in a
//! cluster, sent through the router to every node listed in `r/nodes` (each node announces itself
//! there), which tells its own followers at once. A poller thread on every node also reads
//! `b/broadcasts` every `poll_ms`: a node that missed the push, or started later, catches up.

use std::collections::BTreeMap;

use super::*;
use sm::broadcast::Broadcasts;

/// The starting table: the configured versions.
pub(super) fn initial(cfg: &Config) -> Broadcasts {
    Broadcasts::new(cfg.broadcasts.versions.clone())
}

/// How often a node announces itself in `r/nodes` (stale after 90 s).
const ANNOUNCE_EVERY: Duration = Duration::from_secs(30);

/// Reads the cluster's table every `poll_ms` and hands changes to every loop; in a cluster, also
/// announces this node (`router_url`) so that other nodes push changes here.
pub(super) fn start_poller(
    cfg: &Config,
    store: Arc<MemcachedStore>,
    peers: Arc<Peers>,
    router_url: Option<String>,
) {
    let every = Duration::from_millis(cfg.broadcasts.poll_ms);
    let configured = cfg.broadcasts.versions.clone();
    let spawned = std::thread::Builder::new()
        .name("broadcasts".into())
        .spawn(move || {
            let mut last = BTreeMap::new();
            let mut announced: Option<std::time::Instant> = None;
            // At once first: a node that starts learns the cluster's versions before its clients.
            let mut first = true;
            loop {
                if !std::mem::take(&mut first) {
                    std::thread::sleep(every.min(ANNOUNCE_EVERY));
                }
                if let Some(url) = &router_url {
                    if announced.is_none_or(|t| t.elapsed() >= ANNOUNCE_EVERY)
                        && store.announce_node(url).is_ok()
                    {
                        announced = Some(std::time::Instant::now());
                    }
                }
                let Ok(set) = store.broadcasts() else {
                    continue;
                };
                let mut table = configured.clone();
                table.extend(set);
                if table == last {
                    continue;
                }
                last = table.clone();
                let table = Arc::new(table);
                for w in 0..peers.mail.len() {
                    if peers.send(w, Cross::Broadcasts(table.clone())).is_err() {
                        // The loops have stopped: so does this thread.
                        return;
                    }
                }
            }
        });
    if let Err(e) = spawned {
        warn!("broadcasts: no poller thread ({e}); changes made on other nodes will not arrive");
    }
}

fn table_json(table: &BTreeMap<String, String>) -> String {
    serde_json::to_string(table).unwrap_or_else(|_| "{}".into())
}

impl Server {
    /// `GET /broadcasts` and `PUT /broadcasts` on the admin listener; `None`: the answer follows.
    pub(super) fn broadcasts_request(
        &mut self,
        key: usize,
        head: &Head,
        body: &[u8],
    ) -> Option<Response> {
        match head.method {
            http::Method::Get => {
                return Some(Response::json(200, table_json(self.broadcasts.table())))
            }
            http::Method::Put => {}
            _ => {
                return Some(
                    Response::json(405, "\"Method Not Allowed\"").header("Allow: GET, PUT"),
                )
            }
        }
        if self.cfg.admin.token.is_empty() {
            return Some(Response::json(403, "\"admin.token is not configured\""));
        }
        let given = head.authorization.as_deref().unwrap_or("");
        let token = given.strip_prefix("Bearer ").unwrap_or("");
        if !crate::router::secret_matches(token, &self.cfg.admin.token) {
            return Some(
                Response::json(401, "\"Unauthorized\"").header("WWW-Authenticate: Bearer"),
            );
        }
        let changes = match sm::broadcast::parse_changes(body) {
            Ok(c) => c,
            Err(why) => return Some(Response::json(400, format!("\"{why}\""))),
        };
        if let Some(disk) = self.shared.disk.clone() {
            // Stored first: a 200 means the change outlives a restart.
            let conn = self.park(key, head.keep_alive)?;
            self.store.forward(Box::new(move || Done::Broadcasts {
                conn,
                table: disk.set_broadcasts(&changes).ok().map(Arc::new),
            }));
            return None;
        }
        let Some(store) = self.shared.memcached.clone() else {
            self.spread_broadcasts(Arc::new(changes));
            return Some(Response::json(200, table_json(self.broadcasts.table())));
        };
        // Stored first, so that a 200 means every node will hear of it (by push or by poll).
        let conn = self.park(key, head.keep_alive)?;
        let push = self
            .cluster
            .as_ref()
            .map(|c| (c.url.clone(), c.peering.clone()));
        self.store.forward(Box::new(move || {
            let Ok(table) = store.set_broadcasts(&changes) else {
                return Done::Broadcasts { conn, table: None };
            };
            if let Some((own, peering)) = push {
                for node in store.nodes().unwrap_or_default() {
                    if node != own && !router::push_broadcasts(&node, &peering, &changes) {
                        debug!("broadcasts: {node} did not take the change; it will poll it");
                    }
                }
            }
            Done::Broadcasts {
                conn,
                table: Some(Arc::new(table)),
            }
        }));
        None
    }

    /// A stored change: applied here and on the other loops, then answered.
    pub(super) fn broadcasts_stored(
        &mut self,
        conn: ConnRef,
        table: Option<Arc<BTreeMap<String, String>>>,
    ) {
        let Some(table) = table else {
            let resp =
                Response::json(503, "\"Could not store the broadcasts\"").header("Retry-After: 5");
            return self.answer(conn, resp);
        };
        self.spread_broadcasts(table);
        let resp = Response::json(200, table_json(self.broadcasts.table()));
        self.answer(conn, resp);
    }

    /// Applies versions here and sends them to every other loop.
    pub(super) fn spread_broadcasts(&mut self, changes: Arc<BTreeMap<String, String>>) {
        for w in (0..self.peers.mail.len()).filter(|&w| w != self.id) {
            let _ = self.peers.send(w, Cross::Broadcasts(changes.clone()));
        }
        self.apply_broadcasts(&changes);
    }

    /// Takes new versions and tells this loop's followers of those that changed.
    pub(super) fn apply_broadcasts(&mut self, changes: &BTreeMap<String, String>) {
        let changed = self.broadcasts.update(changes);
        if changed.is_empty() {
            return;
        }
        info!(
            "event loop {}: broadcasts changed: {}",
            self.id,
            changed.join(", ")
        );
        let keys: Vec<usize> = self.conns.iter().map(|(k, _)| k).collect();
        let max_output = self.cfg.websocket.max_output_buffer;
        for key in keys {
            let Some(Conn {
                state: State::Ws(w),
                ..
            }) = self.conns.get_mut(key)
            else {
                continue;
            };
            let Some(frame) = w.session.broadcast_changed(&self.broadcasts, &changed) else {
                continue;
            };
            let sent = w
                .link
                .send_text(&frame)
                .and_then(|()| w.link.flush(max_output));
            if let Err(e) = sent {
                debug!(conn:% = ConnName(self.id, key); "broadcast not written: {e}");
                self.drop_conn(key);
            }
        }
    }
}
