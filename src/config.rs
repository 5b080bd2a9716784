//! Configuration: a TOML file, then `SIMPLEPUSH_<SECTION>_<KEY>` environment overrides, then validation.

use std::ffi::OsString;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use crate::wake::WakeConfig;

mod env;
mod rate_limit;
mod source;

pub use rate_limit::RateLimitConfig;
use source::Source;

/// Everything the server can be told.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Listeners, URLs and connection limits.
    pub server: ServerConfig,
    /// The device-facing WebSocket protocol.
    pub websocket: WebSocketConfig,
    /// The app-server HTTP endpoint.
    pub endpoint: EndpointConfig,
    /// Where pending versions are kept.
    pub storage: StorageConfig,
    /// Several nodes sharing one memcached pool.
    pub cluster: ClusterConfig,
    /// WebPush (RFC 8030) beside SimplePush.
    pub webpush: WebPushConfig,
    /// The operators' listener: metrics and health.
    pub admin: AdminConfig,
    /// TLS on the device and endpoint listeners.
    pub tls: TlsConfig,
    /// Broadcasts clients can follow.
    pub broadcasts: BroadcastsConfig,
    /// Waking offline devices.
    pub wake: WakeConfig,
    /// Log level and format.
    pub log: LogConfig,
    /// Per-source limits on new UAIDs and registrations.
    pub rate_limit: RateLimitConfig,
}

/// `[log]`
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// An env_logger filter (`info`, `warn,simplepush::reliability=debug`); empty = `RUST_LOG`,
    /// else `info`.
    pub level: String,
    /// `"text"` or `"json"` (one object per line).
    pub format: String,
}

impl Default for LogConfig {
    fn default() -> LogConfig {
        LogConfig {
            level: String::new(),
            format: "text".into(),
        }
    }
}

/// `[server]`
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// WebSocket (and, unless `endpoint_listen` is set, HTTP) listener.
    pub listen: String,
    /// A separate listener for app-server HTTP requests; empty = share `listen`.
    pub endpoint_listen: String,
    /// Base of handed-out endpoints; empty = `http://<endpoint listener address>`.
    pub public_url: String,
    /// Event-loop threads sharing the listeners; 0 = one per core.
    pub workers: usize,
    /// Open connections (WebSocket and HTTP) above which new ones are refused.
    pub max_connections: usize,
    /// The share of `max_connections`, in percent, that device WebSockets cannot take: kept for
    /// app-server requests and cluster forwards.
    pub reserved_percent: u8,
    /// Connections the kernel queues on each listener before they are accepted.
    pub listen_backlog: u32,
    /// Time to send a whole request head (or WebSocket handshake) once it has started.
    pub header_timeout_ms: u64,
    /// Time to finish a WebSocket handshake or an HTTP request once it has started.
    pub request_timeout_ms: u64,
    /// Idle time allowed between two requests on a kept-alive HTTP connection.
    pub keep_alive_timeout_ms: u64,
    /// How long to wait for the peer's close frame after sending ours.
    pub close_timeout_ms: u64,
    /// How long a SIGTERM/SIGINT shutdown may take, after the drain, before sockets are dropped.
    pub shutdown_timeout_ms: u64,
    /// On SIGTERM/SIGINT, WebSockets are closed evenly over this time, so that devices reconnect to
    /// other nodes gradually; 0 = all at once.
    pub drain_ms: u64,
    /// Serve `/__lbheartbeat__`, `/__heartbeat__` and `/__version__` on the public listeners too
    /// (always on the admin listener).
    pub public_health: bool,
    /// TCP keepalive on device sockets: idle seconds before the kernel's first probe; 0 = off.
    pub tcp_keepalive_secs: u64,
}

impl ServerConfig {
    /// The time a request head has, within the whole request's time.
    pub fn header_timeout_ms(&self) -> u64 {
        self.header_timeout_ms.min(self.request_timeout_ms)
    }

    /// The most device WebSockets at once: `max_connections` less the reserved share.
    pub fn device_share(&self) -> usize {
        let reserved = self.max_connections * usize::from(self.reserved_percent) / 100;
        self.max_connections - reserved
    }
}

impl Default for ServerConfig {
    fn default() -> ServerConfig {
        ServerConfig {
            listen: "127.0.0.1:8080".into(),
            endpoint_listen: String::new(),
            public_url: String::new(),
            workers: 0,
            max_connections: 100_000,
            reserved_percent: 5,
            listen_backlog: 4096,
            header_timeout_ms: 5_000,
            request_timeout_ms: 10_000,
            keep_alive_timeout_ms: 30_000,
            close_timeout_ms: 2_000,
            shutdown_timeout_ms: 3_000,
            drain_ms: 5_000,
            public_health: false,
            tcp_keepalive_secs: 300,
        }
    }
}

/// `[websocket]`
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebSocketConfig {
    /// Largest accepted client message in bytes (at least 1 MiB).
    pub max_message_size: usize,
    /// Largest message before hello completes (the hello itself).
    pub max_hello_size: usize,
    /// Partial input (unfinished frames) all sockets together may hold, in bytes.
    pub partial_input_budget: usize,
    /// Sockets that have not completed hello this long after the upgrade are closed.
    pub hello_timeout_ms: u64,
    /// Pings closer together than this close the socket with 401; 0 = no limit.
    pub min_ping_interval_ms: u64,
    /// More channelIDs than this in a hello resets the UAID.
    pub max_channels: usize,
    /// Unsent output above this drops the connection (a client that does not read).
    pub max_output_buffer: usize,
    /// A socket after hello that sent nothing this long gets a WebSocket ping; 0 = no pings.
    pub auto_ping_interval_secs: u64,
    /// A pinged socket that sends nothing this long after the ping is closed; 0 = no pings.
    pub auto_ping_timeout_secs: u64,
}

impl WebSocketConfig {
    /// The ping interval and timeout in ms; `None` when pings are off (either key 0).
    pub fn auto_ping_ms(&self) -> Option<(u64, u64)> {
        let (every, wait) = (self.auto_ping_interval_secs, self.auto_ping_timeout_secs);
        (every > 0 && wait > 0).then(|| (every * 1000, wait * 1000))
    }
}

impl Default for WebSocketConfig {
    fn default() -> WebSocketConfig {
        WebSocketConfig {
            max_message_size: 1 << 20,
            max_hello_size: 256 * 1024,
            partial_input_budget: 32 << 20,
            hello_timeout_ms: 30_000,
            min_ping_interval_ms: 20_000,
            max_channels: 200,
            max_output_buffer: 1024 * 1024,
            // autopush-rs's interval: a mobile radio woken every 5 min, not more often.
            auto_ping_interval_secs: 300,
            auto_ping_timeout_secs: 30,
        }
    }
}

/// `[endpoint]`
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct EndpointConfig {
    /// Longest `data` accepted with an update, in bytes.
    pub max_data_len: usize,
    /// Longest request body, in bytes.
    pub max_body_size: usize,
    /// Longest request head (request line and headers), in bytes.
    pub max_header_size: usize,
    /// Unfinished request heads all HTTP connections together may hold, in bytes.
    pub partial_head_budget: usize,
    /// Keys for endpoint tokens: base64url of 32 bytes. The first makes tokens, all are accepted.
    pub token_keys: Vec<String>,
}

impl Default for EndpointConfig {
    fn default() -> EndpointConfig {
        EndpointConfig {
            max_data_len: 4096,
            max_body_size: 64 * 1024,
            max_header_size: 8 * 1024,
            partial_head_budget: 16 << 20,
            token_keys: Vec::new(),
        }
    }
}

/// `[storage]`
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct StorageConfig {
    /// `"disk"` (embedded, durable), `"memory"` (embedded, lost on restart) or `"memcached"`.
    pub backend: String,
    /// disk: the data directory (the store file and the generated endpoint key).
    pub path: String,
    /// disk: when commits reach the disk: `"always"`, `"batch"` (group commit) or `"none"`.
    pub sync: String,
    /// disk: the page cache, MiB.
    pub cache_mb: usize,
    /// memcached servers, `host:port`; keys are spread over them by consistent hashing.
    pub servers: Vec<String>,
    /// memcached connect, read and write timeout.
    pub timeout_ms: u64,
    /// Per event loop: storage workers and forwarding threads (memcached: × loops connections).
    pub pool_size: usize,
    /// Lifetime of a stored version not yet acked, in seconds.
    pub pending_ttl_secs: u64,
    /// Lifetime of a registration without use (hello, register, update), in seconds; 0 = no expiry.
    pub registration_ttl_secs: u64,
    /// memcached: servers of the ring that hold every acknowledged write (0 = 2 with two or more
    /// servers, else 1).
    pub replicas: usize,
    /// memcached: start even when a server evicts items (`-M` not given), risking acknowledged data.
    pub allow_eviction: bool,
}

impl StorageConfig {
    /// How many servers hold each write: as configured, or 2 when two or more servers are listed.
    pub fn replica_count(&self) -> usize {
        match self.replicas {
            0 => self.servers.len().clamp(1, 2),
            n => n,
        }
    }
}

impl Default for StorageConfig {
    fn default() -> StorageConfig {
        StorageConfig {
            backend: "memory".into(),
            path: "data".into(),
            sync: "batch".into(),
            cache_mb: 64,
            servers: vec!["127.0.0.1:11211".into()],
            timeout_ms: 500,
            pool_size: 4,
            pending_ttl_secs: 259_200,
            registration_ttl_secs: 10_800,
            replicas: 0,
            allow_eviction: false,
        }
    }
}

/// `[broadcasts]`
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct BroadcastsConfig {
    /// Broadcast id → version at start (the admin API changes them).
    pub versions: std::collections::BTreeMap<String, String>,
    /// memcached: how often each node reads the versions other nodes set.
    pub poll_ms: u64,
}

impl Default for BroadcastsConfig {
    fn default() -> BroadcastsConfig {
        BroadcastsConfig {
            versions: Default::default(),
            poll_ms: 1000,
        }
    }
}

/// `[tls]`
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain; with `key_file`, the device and endpoint listeners speak TLS.
    pub cert_file: String,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: String,
}

/// `[admin]`
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct AdminConfig {
    /// Listener for `GET /metrics`, `/health` and `/status`; empty = none.
    pub listen: String,
    /// Bearer token for `PUT /broadcasts`; empty = broadcasts cannot be changed at run time.
    pub token: String,
}

impl Default for AdminConfig {
    fn default() -> AdminConfig {
        AdminConfig {
            listen: "127.0.0.1:8081".into(),
            token: String::new(),
        }
    }
}

/// `[webpush]`
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebPushConfig {
    /// Serve WebPush: answer `use_webpush` hellos in that dialect and accept `POST /wpush/...`.
    pub enabled: bool,
    /// Longest TTL a message is kept for, in seconds; larger TTLs are lowered to it.
    pub max_ttl_secs: u64,
    /// Messages allowed to wait per UAID; a push beyond gets 429.
    pub max_messages: usize,
    /// Memory store: bytes all waiting messages may take together; a push beyond gets 429.
    pub memory_max_bytes: usize,
}

impl Default for WebPushConfig {
    fn default() -> WebPushConfig {
        WebPushConfig {
            enabled: true,
            max_ttl_secs: 2_592_000,
            max_messages: 100,
            memory_max_bytes: 256 << 20,
        }
    }
}

/// `[cluster]`
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// Listener for updates forwarded by other nodes; empty = no cluster.
    pub router_listen: String,
    /// How other nodes reach this one; empty = `http://<router listener address>`.
    pub router_url: String,
    /// Shared secret that authenticates forwarded updates (at least 16 characters).
    pub secret: String,
    /// Connect, read and write timeout for a forward to another node.
    pub timeout_ms: u64,
    /// Networks (`10.0.0.0/8`) and addresses (`10.0.0.5:3000`) router requests may go to.
    pub peers: Vec<String>,
}

impl Default for ClusterConfig {
    fn default() -> ClusterConfig {
        ClusterConfig {
            router_listen: String::new(),
            router_url: String::new(),
            secret: String::new(),
            timeout_ms: 1000,
            peers: [
                "127.0.0.0/8",
                "10.0.0.0/8",
                "172.16.0.0/12",
                "192.168.0.0/16",
                "::1/128",
                "fc00::/7",
            ]
            .map(String::from)
            .to_vec(),
        }
    }
}

/// A configuration problem, naming the file, key or variable at fault.
#[derive(Debug)]
pub enum ConfigError {
    /// The config file could not be read.
    Read {
        /// The file.
        path: PathBuf,
        /// Why not.
        error: std::io::Error,
    },
    /// A fault at a place in the config file: not TOML, an unknown key, a value of the wrong
    /// type, or a value the checks refuse.
    File {
        /// The file.
        path: PathBuf,
        /// 1-based line, when the fault has a place.
        line: Option<usize>,
        /// 1-based column in characters, when the fault has a place.
        column: Option<usize>,
        /// The dotted key path (`websocket.max_channels`), when the place is in a key.
        key: Option<String>,
        /// What is wrong and what was expected.
        message: String,
    },
    /// A `SIMPLEPUSH_…` variable for a known key, with a value the key cannot take.
    Env {
        /// The variable.
        name: String,
        /// The dotted key path it sets.
        key: String,
        /// What is wrong and what was expected.
        message: String,
    },
    /// A value the checks refuse that neither the file nor a variable set (a default at odds with
    /// another setting).
    Invalid {
        /// The dotted key path (or section).
        key: String,
        /// What is wrong and what was expected.
        message: String,
    },
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ConfigError::Read { path, error } => {
                write!(f, "config file {}: {error}", path.display())
            }
            ConfigError::File {
                path,
                line,
                column,
                key,
                message,
            } => {
                write!(f, "config file {}", path.display())?;
                if let Some(line) = line {
                    write!(f, ", line {line}")?;
                }
                if let Some(column) = column {
                    write!(f, ", column {column}")?;
                }
                if let Some(key) = key {
                    write!(f, ", key {key}")?;
                }
                write!(f, ": {message}")
            }
            ConfigError::Env { name, key, message } => {
                write!(f, "environment variable {name} (key {key}): {message}")
            }
            ConfigError::Invalid { key, message } => write!(f, "config: {key}: {message}"),
        }
    }
}

impl std::error::Error for ConfigError {}

const ENV_PREFIX: &str = "SIMPLEPUSH_";
/// The environment variable naming the config file (the `--config` flag wins over it).
pub const CONFIG_ENV: &str = "SIMPLEPUSH_CONFIG";
/// memcached reads larger expiry times as absolute Unix times.
const MAX_TTL: u64 = 30 * 24 * 3600;

/// A validation error naming the key (placed in the file or a variable by `Config::load`).
fn bad<T>(key: &str, why: &str) -> Result<T, ConfigError> {
    Err(ConfigError::Invalid {
        key: key.to_string(),
        message: why.to_string(),
    })
}

/// The config file to read: the `--config` flag's, else `SIMPLEPUSH_CONFIG`'s (empty = none).
pub fn file_path(flag: Option<PathBuf>, env: Option<OsString>) -> Option<PathBuf> {
    flag.or_else(|| env.filter(|v| !v.is_empty()).map(PathBuf::from))
}

/// A loaded configuration, and what the environment held that it ignored.
#[derive(Debug)]
pub struct Loaded {
    /// The validated configuration.
    pub config: Config,
    /// Why each unknown `SIMPLEPUSH_…` variable was ignored, one line each (for warnings).
    pub ignored: Vec<String>,
}

impl Config {
    /// Loads the file (if any), applies environment overrides and validates. Faults are reported
    /// where they were written: the file's line and column, or the variable.
    pub fn load(
        path: Option<&Path>,
        env: impl Iterator<Item = (String, String)>,
    ) -> Result<Loaded, ConfigError> {
        let source = path.map(Source::read).transpose()?;
        let file = match &source {
            Some(s) => s.config()?,
            None => Config::default(),
        };
        let (config, over) = env::apply(file, env)?;
        config
            .validate()
            .map_err(|e| locate(e, source.as_ref(), &over))?;
        Ok(Loaded {
            config,
            ignored: over.ignored,
        })
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let timeouts = [
            ("server.header_timeout_ms", self.server.header_timeout_ms),
            ("server.request_timeout_ms", self.server.request_timeout_ms),
            (
                "server.keep_alive_timeout_ms",
                self.server.keep_alive_timeout_ms,
            ),
            ("server.close_timeout_ms", self.server.close_timeout_ms),
            (
                "server.shutdown_timeout_ms",
                self.server.shutdown_timeout_ms,
            ),
            (
                "websocket.hello_timeout_ms",
                self.websocket.hello_timeout_ms,
            ),
        ];
        if let Some((key, _)) = timeouts.iter().find(|(_, ms)| *ms == 0) {
            return bad(
                key,
                "must be at least 1 (a timeout of 0 would end every connection at once)",
            );
        }
        if self.server.listen.parse::<SocketAddr>().is_err() {
            return bad("server.listen", "not an address like 127.0.0.1:8080");
        }
        if !self.server.endpoint_listen.is_empty()
            && self.server.endpoint_listen.parse::<SocketAddr>().is_err()
        {
            return bad(
                "server.endpoint_listen",
                "not an address like 127.0.0.1:8081",
            );
        }
        let url = &self.server.public_url;
        if !(url.is_empty() || url.starts_with("http://") || url.starts_with("https://")) {
            return bad("server.public_url", "must start with http:// or https://");
        }
        if self.server.workers > 1024 {
            return bad("server.workers", "must be 0 (one per core) to 1024");
        }
        if self.server.max_connections == 0 {
            return bad("server.max_connections", "must be at least 1");
        }
        if self.server.reserved_percent > 50 {
            return bad("server.reserved_percent", "must be 0 to 50");
        }
        if self.server.listen_backlog == 0 || self.server.listen_backlog > 65535 {
            return bad("server.listen_backlog", "must be 1 to 65535");
        }
        if self.websocket.max_message_size < 1 << 20 {
            return bad(
                "websocket.max_message_size",
                "must be at least 1048576 (1 MiB)",
            );
        }
        if !(4096..=self.websocket.max_message_size).contains(&self.websocket.max_hello_size) {
            return bad(
                "websocket.max_hello_size",
                "must be 4096 to websocket.max_message_size",
            );
        }
        if self.websocket.partial_input_budget < 1 << 20 {
            return bad(
                "websocket.partial_input_budget",
                "must be at least 1048576 (1 MiB)",
            );
        }
        self.validate_liveness()?;
        if self.websocket.max_output_buffer < 64 * 1024 {
            return bad("websocket.max_output_buffer", "must be at least 65536");
        }
        // A WebPush hello flushes every waiting message at once: that must fit.
        let backlog = self.webpush.max_messages * sm::webpush::MAX_FRAME + 64 * 1024;
        if self.webpush.enabled && self.websocket.max_output_buffer < backlog {
            return bad(
                "websocket.max_output_buffer",
                &format!("must hold webpush.max_messages full messages: at least {backlog}"),
            );
        }
        if self.endpoint.partial_head_budget < 64 * 1024 {
            return bad("endpoint.partial_head_budget", "must be at least 65536");
        }
        if self.endpoint.max_body_size < 1024 {
            return bad("endpoint.max_body_size", "must be at least 1024");
        }
        if self.endpoint.max_header_size < 1024 {
            return bad("endpoint.max_header_size", "must be at least 1024");
        }
        if !self.admin.listen.is_empty() && self.admin.listen.parse::<SocketAddr>().is_err() {
            return bad("admin.listen", "not an address like 127.0.0.1:8081");
        }
        self.validate_wake()?;
        if !self.admin.token.is_empty() && self.admin.token.len() < 16 {
            return bad("admin.token", "must be at least 16 characters");
        }
        if self.broadcasts.poll_ms == 0 {
            return bad("broadcasts.poll_ms", "must be at least 1");
        }
        if let Some(id) = self
            .broadcasts
            .versions
            .keys()
            .find(|k| k.is_empty() || k.len() > 200)
        {
            return bad(
                "broadcasts.versions",
                &format!("{id:?}: ids are 1 to 200 characters"),
            );
        }
        if self.tls.cert_file.is_empty() != self.tls.key_file.is_empty() {
            return bad("tls", "cert_file and key_file go together");
        }
        let url = &self.server.public_url;
        if !self.tls.cert_file.is_empty() && url.starts_with("http://") {
            return bad("server.public_url", "must be https:// when [tls] is set");
        }
        if self.webpush.max_ttl_secs > MAX_TTL {
            return bad("webpush.max_ttl_secs", "must be at most 2592000 (30 days)");
        }
        if self.webpush.max_messages == 0 || self.webpush.max_messages > 1000 {
            return bad("webpush.max_messages", "must be 1 to 1000");
        }
        self.validate_storage()?;
        self.validate_log()?;
        self.rate_limit.validate()?;
        self.validate_cluster()
    }

    fn validate_log(&self) -> Result<(), ConfigError> {
        if crate::logging::Format::parse(&self.log.format).is_none() {
            return bad("log.format", "must be \"text\" or \"json\"");
        }
        if let Err(why) = crate::logging::check_level(&self.log.level) {
            return bad("log.level", &why);
        }
        Ok(())
    }

    /// Pings and TCP keepalive: bounded so that their milliseconds cannot overflow, and
    /// keepalive within what Linux takes (TCP_KEEPIDLE is at most 32767 s).
    fn validate_liveness(&self) -> Result<(), ConfigError> {
        if self.websocket.auto_ping_interval_secs > 86_400 {
            return bad(
                "websocket.auto_ping_interval_secs",
                "must be 0 (off) to 86400 (a day)",
            );
        }
        if self.websocket.auto_ping_timeout_secs > 3_600 {
            return bad(
                "websocket.auto_ping_timeout_secs",
                "must be 0 (off) to 3600 (an hour)",
            );
        }
        if self.server.tcp_keepalive_secs > 32_767 {
            return bad("server.tcp_keepalive_secs", "must be 0 (off) to 32767");
        }
        Ok(())
    }

    fn validate_wake(&self) -> Result<(), ConfigError> {
        self.wake.check().or_else(|(key, why)| bad(key, &why))
    }

    fn validate_storage(&self) -> Result<(), ConfigError> {
        let st = &self.storage;
        if !["disk", "memory", "memcached"].contains(&st.backend.as_str()) {
            return bad(
                "storage.backend",
                "must be \"disk\", \"memory\" or \"memcached\"",
            );
        }
        if crate::store::disk::Sync::parse(&st.sync).is_none() {
            return bad("storage.sync", "must be \"always\", \"batch\" or \"none\"");
        }
        if st.backend == "disk" && st.path.is_empty() {
            return bad("storage.path", "needs a directory for the disk store");
        }
        if st.cache_mb == 0 || st.cache_mb > 1 << 20 {
            return bad("storage.cache_mb", "must be 1 to 1048576");
        }
        if st.backend == "memcached" && st.servers.is_empty() {
            return bad("storage.servers", "needs at least one host:port");
        }
        if let Some(s) = st.servers.iter().find(|s| {
            s.rsplit_once(':')
                .is_none_or(|(h, p)| h.is_empty() || p.parse::<u16>().is_err())
        }) {
            return bad("storage.servers", &format!("{s:?} is not host:port"));
        }
        if st.timeout_ms == 0 {
            return bad("storage.timeout_ms", "must be at least 1");
        }
        if st.pool_size == 0 || st.pool_size > 256 {
            return bad("storage.pool_size", "must be 1 to 256");
        }
        if st.pending_ttl_secs == 0 || st.pending_ttl_secs > MAX_TTL {
            return bad("storage.pending_ttl_secs", "must be 1 to 2592000 (30 days)");
        }
        if st.registration_ttl_secs > MAX_TTL {
            return bad(
                "storage.registration_ttl_secs",
                "must be at most 2592000 (30 days)",
            );
        }
        if st.replicas > st.servers.len() {
            return bad(
                "storage.replicas",
                "must be at most the number of storage.servers (0 = automatic)",
            );
        }
        Ok(())
    }

    fn validate_cluster(&self) -> Result<(), ConfigError> {
        let c = &self.cluster;
        if c.router_listen.is_empty() {
            return Ok(());
        }
        if c.router_listen.parse::<SocketAddr>().is_err() {
            return bad(
                "cluster.router_listen",
                "not an address like 127.0.0.1:3000",
            );
        }
        if !(c.router_url.is_empty() || c.router_url.starts_with("http://")) {
            return bad("cluster.router_url", "must start with http://");
        }
        if c.secret.len() < 16 {
            return bad(
                "cluster.secret",
                "needs at least 16 characters when router_listen is set",
            );
        }
        if self.storage.backend == "disk" {
            return bad(
                "cluster.router_listen",
                "storage.backend = \"disk\" is one node's store: cluster nodes share memcached \
                 (set storage.backend = \"memcached\", or remove [cluster])",
            );
        }
        if self.storage.backend != "memcached" {
            return bad(
                "cluster.router_listen",
                "a cluster needs storage.backend = \"memcached\"",
            );
        }
        if c.timeout_ms == 0 {
            return bad("cluster.timeout_ms", "must be at least 1");
        }
        if let Err(why) = crate::router::Peers::parse(&c.peers) {
            return bad("cluster.peers", &why);
        }
        Ok(())
    }
}

/// Where a refused value was set: by a variable, else in the file, else nowhere (a default).
fn locate(e: ConfigError, source: Option<&Source>, over: &env::Overrides) -> ConfigError {
    let ConfigError::Invalid { key, message } = e else {
        return e;
    };
    if let Some(name) = over.setter(&key) {
        return ConfigError::Env {
            name: name.to_string(),
            key,
            message,
        };
    }
    match source {
        Some(s) if s.sets(&key) => s.refused(key, message),
        _ => ConfigError::Invalid { key, message },
    }
}

#[cfg(test)]
mod tests;
