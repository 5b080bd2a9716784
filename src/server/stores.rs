//! The stores a server opens: the one all loops share (memcached, disk) or a memory store per loop.

use super::*;

/// The store all loops share, if it is not the per-loop memory store.
#[derive(Clone, Default)]
pub(super) struct Shared {
    /// `storage.backend = "memcached"`.
    pub(super) memcached: Option<Arc<MemcachedStore>>,
    /// `storage.backend = "disk"`.
    pub(super) disk: Option<Arc<DiskStore>>,
    /// The memory store: bytes of waiting WebPush messages, all event loops together.
    pub(super) message_bytes: Arc<std::sync::atomic::AtomicUsize>,
}

impl Shared {
    /// Opens the configured shared store (none for the memory store).
    pub(super) fn open(cfg: &Config) -> io::Result<Shared> {
        Ok(Shared {
            memcached: open_memcached(cfg)?,
            disk: open_disk(cfg)?,
            message_bytes: Arc::default(),
        })
    }

    pub(super) fn runner(&self) -> Option<Arc<dyn JobRunner + Send + Sync>> {
        if let Some(m) = &self.memcached {
            return Some(m.clone());
        }
        self.disk
            .clone()
            .map(|d| d as Arc<dyn JobRunner + Send + Sync>)
    }
}

/// The disk backend all loops share, if configured.
pub(super) fn open_disk(cfg: &Config) -> io::Result<Option<Arc<DiskStore>>> {
    if cfg.storage.backend != "disk" {
        return Ok(None);
    }
    let st = &cfg.storage;
    let settings = disk::Settings {
        pending_ttl: st.pending_ttl_secs as u32,
        registration_ttl: st.registration_ttl_secs as u32,
        max_messages: cfg.webpush.max_messages,
        sync: disk::Sync::parse(&st.sync).unwrap_or(disk::Sync::Batch),
        cache_bytes: st.cache_mb << 20,
    };
    DiskStore::open(st.path.as_ref(), settings)
        .map(Some)
        .map_err(|e| io::Error::new(ErrorKind::InvalidInput, e))
}

/// The memcached backend all loops share, if configured.
pub(super) fn open_memcached(cfg: &Config) -> io::Result<Option<Arc<MemcachedStore>>> {
    if cfg.storage.backend != "memcached" {
        return Ok(None);
    }
    let st = &cfg.storage;
    let settings = memcached::Settings {
        servers: st.servers.clone(),
        timeout: Duration::from_millis(st.timeout_ms),
        pool_size: (st.pool_size * loops_wanted(cfg)) as u32,
        pending_ttl: st.pending_ttl_secs as u32,
        registration_ttl: st.registration_ttl_secs as u32,
        max_messages: cfg.webpush.max_messages,
        replicas: st.replica_count(),
        allow_eviction: st.allow_eviction,
        cluster: !cfg.cluster.router_listen.is_empty(),
    };
    let backend =
        MemcachedStore::start(settings).map_err(|e| io::Error::new(ErrorKind::InvalidInput, e))?;
    if !backend.healthy_now() {
        warn!(
            "memcached not reachable yet at {}; answering 503 until it is",
            st.servers.join(", ")
        );
    }
    Ok(Some(backend))
}

/// One loop's storage runner: its own memory shard, or storage threads over the shared store.
pub(super) fn open_store(cfg: &Config, shared: &Shared, waker: Arc<mio::Waker>) -> Runner {
    match shared.runner() {
        None => Runner::inline(Box::new(
            MemoryStore::with_budget(cfg.webpush.max_messages, cfg.webpush.memory_max_bytes)
                .sharing(shared.message_bytes.clone())
                .with_ttl(cfg.storage.registration_ttl_secs),
        )),
        Some(backend) => Runner::Pool(Pool::start(
            backend,
            cfg.storage.pool_size,
            cfg.storage.pool_size,
            waker,
        )),
    }
}

pub(super) fn loops_wanted(cfg: &Config) -> usize {
    match cfg.server.workers {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    }
}
