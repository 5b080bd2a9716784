//! Reloading on SIGHUP without dropping a socket: the TLS certificate and key, the endpoint token
//! keys and the log settings.
//!
//! The files are read and parsed on a thread of its own, never on an event loop; the loops then
//! take the new values where they start something new (a TLS connection accepted, an endpoint
//! request opened, a registration sealed) through a [`Swap`], so connections already open keep
//! what they began with. A reload either applies all it read or, on any error, nothing.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use log::{error, info, warn};
use serde_json::Value;

use crate::config::Config;
use crate::logging;
use crate::token::Tokens;
use crate::transport::{self, TlsFiles};

/// A value the event loops read and the reload thread replaces whole.
pub struct Swap<T> {
    current: RwLock<Arc<T>>,
}

impl<T> Swap<T> {
    /// Holds `value` until the first [`Swap::set`].
    pub fn new(value: T) -> Swap<T> {
        Swap {
            current: RwLock::new(Arc::new(value)),
        }
    }

    /// The current value (the lock is held only to clone the `Arc`).
    pub fn get(&self) -> Arc<T> {
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Replaces the value; users that hold the old one keep it until they let go.
    pub fn set(&self, value: T) {
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(value);
    }
}

/// What a reload can change while the server runs, shared by every event loop.
#[derive(Clone)]
pub struct Live {
    /// TLS for the device and endpoint listeners, when `[tls]` is set.
    pub tls: Option<Arc<Swap<TlsFiles>>>,
    /// The endpoint token keys.
    pub tokens: Arc<Swap<Tokens>>,
}

/// The endpoint keys a configuration names: its own, or on the disk store the one kept in its data
/// directory (made at the first start), or none (a random key per process).
pub fn token_keys(cfg: &Config) -> Result<Vec<String>, String> {
    if !cfg.endpoint.token_keys.is_empty() || cfg.storage.backend != "disk" {
        return Ok(cfg.endpoint.token_keys.clone());
    }
    let key =
        crate::store::disk::endpoint_key(cfg.storage.path.as_ref()).map_err(|e| e.to_string())?;
    Ok(vec![key])
}

fn load_tls(cfg: &Config) -> Result<Option<TlsFiles>, String> {
    match (cfg.tls.cert_file.as_str(), cfg.tls.key_file.as_str()) {
        ("", "") => Ok(None),
        (cert, key) => transport::load(cert.as_ref(), key.as_ref())
            .map(Some)
            .map_err(|e| format!("tls: {e}")),
    }
}

impl Live {
    /// Reads the TLS files and makes the token keys, as at start.
    pub fn load(cfg: &Config) -> Result<Live, String> {
        let keys = token_keys(cfg)?;
        let tokens = Tokens::new(&keys).map_err(|e| e.to_string())?;
        let tls = load_tls(cfg)?.map(|t| Arc::new(Swap::new(t)));
        Ok(Live {
            tls,
            tokens: Arc::new(Swap::new(tokens)),
        })
    }
}

/// Keys whose change a reload applies; every other change waits for a restart.
const RELOADED: [&str; 5] = [
    "tls.cert_file",
    "tls.key_file",
    "endpoint.token_keys",
    "log.level",
    "log.format",
];

/// Re-reads the configuration on request and hands what changed to the running server.
pub struct Reloader {
    path: Option<PathBuf>,
    /// The configuration the server runs with, as loaded (before the host limits fitted it).
    running: Config,
    /// The configured token keys as last applied; empty = the key of the disk store's data
    /// directory or the random key of this process, which a reload never re-reads or remakes.
    keys: Vec<String>,
    live: Live,
}

impl Reloader {
    /// For a server started from `path` with `running` and these live settings.
    pub fn new(path: Option<PathBuf>, running: Config, live: Live) -> Reloader {
        Reloader {
            path,
            keys: running.endpoint.token_keys.clone(),
            running,
            live,
        }
    }

    /// Reloads at every SIGHUP, on a thread of its own, for the life of the process. `signals`
    /// was registered early, so that a SIGHUP during the start is queued, not fatal.
    pub fn watch(mut self, mut signals: signal_hook::iterator::Signals) -> std::io::Result<()> {
        std::thread::Builder::new()
            .name("reload".into())
            .spawn(move || {
                for _ in signals.forever() {
                    self.reload_logged();
                }
            })
            .map(drop)
    }

    /// One reload, its outcome logged.
    pub fn reload_logged(&mut self) {
        match self.reload() {
            Ok(changes) if changes.is_empty() => info!("reload: nothing changed"),
            Ok(changes) => info!("reload: {}", changes.join("; ")),
            Err(e) => error!("reload failed, every setting kept as it was: {e}"),
        }
    }

    /// Reads everything first; applies it only if all of it is good. What changed, one item each.
    pub fn reload(&mut self) -> Result<Vec<String>, String> {
        let loaded =
            Config::load(self.path.as_deref(), std::env::vars()).map_err(|e| e.to_string())?;
        let cfg = loaded.config;
        let tls = self.read_tls(&cfg)?;
        let tokens = self.read_tokens(&cfg)?;
        let log = logging::Settings::of(&cfg.log, std::env::var("RUST_LOG").ok());
        let mut changes = Vec::new();
        if let (Some(swap), Some(files)) = (&self.live.tls, tls) {
            let old = swap.get().fingerprint.clone();
            if old != files.fingerprint {
                changes.push(format!(
                    "tls certificate sha256 {old} -> {} (for new connections)",
                    files.fingerprint
                ));
            }
            // Set even when the certificate is the same: the key file may have changed.
            swap.set(files);
        }
        if let Some((keys, tokens)) = tokens {
            let (old, new) = (self.live.tokens.get(), tokens.fingerprints().to_vec());
            changes.push(format!(
                "endpoint.token_keys [{}] -> [{}] (new endpoints sealed by {})",
                old.fingerprints().join(", "),
                new.join(", "),
                new.first().map_or("?", String::as_str)
            ));
            self.live.tokens.set(tokens);
            self.keys = keys;
        }
        if let Some(what) = logging::reload(log) {
            changes.push(what);
        }
        let pending = restart_needed(&self.running, &cfg);
        if !pending.is_empty() {
            warn!(
                "reload: changed settings that take effect only at a restart: {}",
                pending.join(", ")
            );
        }
        Ok(changes)
    }

    /// The new TLS files; `None` when the server runs without TLS (and still should).
    fn read_tls(&self, cfg: &Config) -> Result<Option<TlsFiles>, String> {
        let wanted = !cfg.tls.cert_file.is_empty();
        match (&self.live.tls, wanted) {
            (None, false) => Ok(None),
            (None, true) => Err("tls: [tls] cannot be turned on by a reload (restart)".into()),
            (Some(_), false) => Err("tls: [tls] cannot be turned off by a reload (restart)".into()),
            (Some(_), true) => load_tls(cfg),
        }
    }

    /// New token keys, when they differ from the ones in use.
    fn read_tokens(&self, cfg: &Config) -> Result<Option<(Vec<String>, Tokens)>, String> {
        let keys = cfg.endpoint.token_keys.clone();
        match (keys.is_empty(), self.keys.is_empty()) {
            // Still the data directory's key, or this process's random one.
            (true, true) => return Ok(None),
            // A random key would orphan every endpoint handed out so far.
            (true, false) => {
                return Err("endpoint.token_keys: cannot be emptied by a reload (restart)".into())
            }
            _ => {}
        }
        let tokens = Tokens::new(&keys).map_err(|e| e.to_string())?;
        if tokens.fingerprints() == self.live.tokens.get().fingerprints() {
            return Ok(None);
        }
        Ok(Some((keys, tokens)))
    }
}

/// The `section.key`s that differ between two configurations, but for those a reload applies.
fn restart_needed(running: &Config, new: &Config) -> Vec<String> {
    let (Ok(Value::Object(a)), Ok(Value::Object(b))) =
        (serde_json::to_value(running), serde_json::to_value(new))
    else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (section, old) in &a {
        let (Some(old), Some(new)) = (old.as_object(), b.get(section).and_then(Value::as_object))
        else {
            continue;
        };
        for (key, value) in old {
            let path = format!("{section}.{key}");
            if new.get(key) != Some(value) && !RELOADED.contains(&path.as_str()) {
                out.push(path);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_settings_a_reload_cannot_apply_are_named() {
        let a = Config::default();
        let mut b = a.clone();
        b.log.level = "debug".into();
        b.endpoint.token_keys = vec!["x".into()];
        assert!(restart_needed(&a, &b).is_empty());
        b.server.listen = "127.0.0.1:1".into();
        b.websocket.max_channels = 3;
        assert_eq!(
            restart_needed(&a, &b),
            ["server.listen", "websocket.max_channels"]
        );
    }

    #[test]
    fn a_swap_hands_out_the_latest_value() {
        let s = Swap::new(1);
        let held = s.get();
        s.set(2);
        assert_eq!((*held, *s.get()), (1, 2));
    }
}
