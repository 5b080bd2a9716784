//! Several event loops in one process: starting them, the UAIDs each owns, their mailboxes,
//! and handing a WebSocket over to the loop that owns its UAID.

use super::*;

/// A WebSocket handed from the event loop that accepted it to the one that owns its UAID.
pub struct Adopted {
    pub(super) link: Link,
    pub(super) session: Session,
    /// Who the socket counts against for the rate limits.
    pub(super) source: Source,
    /// The hello that named the UAID, to be handled by the new owner.
    pub(super) payload: Vec<u8>,
}

/// Messages between the event loops of one process.
pub enum Cross {
    /// Take over this WebSocket.
    Adopt(Box<Adopted>),
    /// A storage job for a UAID this loop owns (an update to store and deliver, a cluster
    /// forward to check and deliver); its answer goes back to the job's connection.
    Store(Job),
    /// A cluster kick for a UAID this loop owns.
    Kick {
        /// The UAID.
        uaid: Uaid,
        /// The socket named by the node record.
        conn: String,
    },
    /// The answer to a request that waited on another loop.
    Answer {
        /// The waiting request.
        conn: ConnRef,
        /// Its response.
        resp: Response,
    },
    /// Stop: the process is shutting down.
    Shutdown,
    /// New broadcast versions (from another loop's admin API, or the cluster's table).
    Broadcasts(Arc<std::collections::BTreeMap<String, String>>),
}

/// What the event loops of one process share: mailboxes and counters, and one lock, the rate
/// limiter's, taken only for a register.
pub struct Peers {
    pub(super) mail: Vec<(Sender<Cross>, Arc<mio::Waker>)>,
    /// Live UAIDs per loop, for `/status`.
    pub(super) clients: Vec<AtomicUsize>,
    /// Open connections in the whole process, for `max_connections`.
    pub(super) open: AtomicUsize,
    /// WebSockets in the whole process (upgraded, with or without hello), for `/metrics`.
    pub(super) websockets: AtomicUsize,
    /// TLS for the device and endpoint listeners, when configured; read at each TLS accept, so
    /// that a reload reaches new connections only.
    pub(super) tls: Option<Arc<Swap<TlsFiles>>>,
    /// The wake driver, when one is configured.
    pub(super) waker: Option<crate::wake::Waker>,
    /// The cluster's secret and client, when this node has a router listener.
    pub(super) peering: Option<Arc<crate::router::Peering>>,
    /// A SIGTERM/SIGINT shutdown has begun: readiness answers 503.
    pub(super) draining: AtomicBool,
    /// When each loop last went round, in ms since `epoch` (`health::LOOP_STOPPED` once it ended
    /// cleanly), for liveness.
    pub(super) turns: Vec<AtomicU64>,
    /// The origin of `turns`.
    pub(super) epoch: Instant,
    /// The per-source limits on new UAIDs and registrations, one table for every loop.
    pub(super) limiter: Limiter,
}

impl Peers {
    /// Mails `msg` to a loop; gives it back if that loop has already stopped.
    pub(super) fn send(&self, worker: usize, msg: Cross) -> Result<(), Cross> {
        let Some((tx, waker)) = self.mail.get(worker) else {
            return Err(msg);
        };
        tx.send(msg).map_err(|e| e.0)?;
        let _ = waker.wake();
        Ok(())
    }
}

/// The event loop that owns a UAID: its socket, its registry entry and (memory store) its records.
pub fn owner(uaid: &Uaid, loops: usize) -> usize {
    (crate::store::ring::hash(uaid.0.bytes()) & 0xffff_ffff) as usize % loops.max(1)
}

/// A fresh UAID owned by loop `id` of `loops`.
pub(super) fn fresh_owned(id: usize, loops: usize) -> [u8; 16] {
    loop {
        let b = fresh_uaid_bytes();
        if owner(&Uaid(Id::fresh(b)), loops) == id {
            return b;
        }
    }
}

/// Binds every event loop of this process: `server.workers` of them (0 = one per core).
pub fn start(cfg: Config, live: Live) -> io::Result<Vec<Server>> {
    let loops = loops_wanted(&cfg);
    let shared = Shared::open(&cfg)?;
    let mut cfg = cfg;
    if let Some(d) = &shared.disk {
        // The versions set through the admin API before a restart win over the configured ones.
        let stored = d
            .broadcasts()
            .map_err(|_| io::Error::other("disk store: cannot read the broadcast table"))?;
        cfg.broadcasts.versions.extend(stored);
    }
    let mut polls = Vec::new();
    let mut mail = Vec::new();
    let mut inboxes = Vec::new();
    for _ in 0..loops {
        let poll = Poll::new()?;
        let waker = Arc::new(mio::Waker::new(poll.registry(), WAKER)?);
        let (tx, rx) = channel();
        mail.push((tx, waker));
        inboxes.push(rx);
        polls.push(poll);
    }
    let peers = Arc::new(Peers {
        clients: (0..loops).map(|_| AtomicUsize::new(0)).collect(),
        open: AtomicUsize::new(0),
        websockets: AtomicUsize::new(0),
        tls: live.tls,
        waker: crate::wake::Waker::start(&cfg.wake)?,
        peering: peering(&cfg, loops)?,
        mail,
        draining: AtomicBool::new(false),
        // Every loop counts as having turned at start; a loop that never runs goes stale.
        turns: (0..loops).map(|_| AtomicU64::new(0)).collect(),
        epoch: Instant::now(),
        limiter: Limiter::new(&cfg.rate_limit),
    });
    let tokens = live.tokens;
    let mut servers: Vec<Server> = Vec::with_capacity(loops);
    for (id, (poll, inbox)) in polls.into_iter().zip(inboxes).enumerate() {
        let waker = peers.mail[id].1.clone();
        let same = servers.first().map(Server::local_addrs);
        servers.push(Server::bind(
            cfg.clone(),
            tokens.clone(),
            id,
            peers.clone(),
            inbox,
            poll,
            waker,
            same.as_deref(),
            shared.clone(),
        )?);
    }
    if let Some(store) = shared.memcached {
        let router_url = servers
            .first()
            .and_then(|s| s.cluster.as_ref())
            .map(|c| c.url.clone());
        super::broadcasts::start_poller(&cfg, store, peers.clone(), router_url);
    }
    Ok(servers)
}

/// The cluster client, if this node routes: as many kept-alive connections per node as there are
/// forwarding threads (`storage.pool_size` per loop).
fn peering(cfg: &Config, loops: usize) -> io::Result<Option<Arc<crate::router::Peering>>> {
    if cfg.cluster.router_listen.is_empty() {
        return Ok(None);
    }
    // Checked when the configuration was loaded.
    let peers = crate::router::Peers::parse(&cfg.cluster.peers).unwrap_or_default();
    let senders = (loops * cfg.storage.pool_size).clamp(1, 256);
    let timeout = Duration::from_millis(cfg.cluster.timeout_ms);
    let p = crate::router::Peering::new(cfg.cluster.secret.clone(), peers, timeout, senders)?;
    Ok(Some(Arc::new(p)))
}

/// Runs every loop on its own thread (loop 0 on this one) until shutdown; the exit code.
pub fn run_all(mut servers: Vec<Server>) -> i32 {
    let disk = servers.first().and_then(|s| s.shared.disk.clone());
    let rest: Vec<Server> = servers.drain(1..).collect();
    let threads: Vec<_> = rest
        .into_iter()
        .enumerate()
        .filter_map(|(i, mut s)| {
            std::thread::Builder::new()
                .name(format!("loop-{}", i + 1))
                .spawn(move || report(s.run()))
                .ok()
        })
        .collect();
    let mut code = servers.pop().map_or(1, |mut s| report(s.run()));
    for t in threads {
        code = code.max(t.join().unwrap_or(1));
    }
    // Before the process ends: the last commit is made durable and the file closed cleanly.
    if let Some(d) = disk {
        d.close();
    }
    code
}

impl Server {
    /// Moves a WebSocket whose hello names a UAID of another loop to that loop.
    pub(super) fn hand_over(&mut self, key: usize, to: usize, payload: Vec<u8>) {
        if !self.conns.contains(key) {
            return;
        }
        let conn = self.conns.remove(key);
        let State::Ws(mut w) = conn.state else {
            self.peers.open.fetch_sub(1, Ordering::Relaxed);
            return;
        };
        debug!(
            conn:% = ConnName(self.id, key), to;
            "hello for a UAID of another loop: handing the socket over"
        );
        // The adopting loop counts it again.
        self.peers.websockets.fetch_sub(1, Ordering::Relaxed);
        let _ = self.poll.registry().deregister(w.link.stream_mut());
        let adopted = Adopted {
            link: w.link,
            session: w.session,
            source: w.source,
            payload,
        };
        if self
            .peers
            .send(to, Cross::Adopt(Box::new(adopted)))
            .is_err()
        {
            // The owner has stopped (shutdown): the socket is dropped, closing it.
            self.peers.open.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Takes over a WebSocket from another loop and handles the hello it brought.
    pub(super) fn adopt(&mut self, a: Adopted) {
        let Adopted {
            mut link,
            session,
            source,
            payload,
        } = a;
        let entry = self.conns.vacant_entry();
        let key = entry.key();
        let registered = self.poll.registry().register(
            link.stream_mut(),
            Token(key),
            Interest::READABLE | Interest::WRITABLE,
        );
        if registered.is_err() {
            self.peers.open.fetch_sub(1, Ordering::Relaxed);
            return;
        }
        self.next_gen = self.next_gen.wrapping_add(1);
        entry.insert(Conn {
            gen: self.next_gen,
            deadline: 0,
            queued: 0,
            roles: Roles {
                websocket: true,
                endpoint: false,
                router: false,
                admin: false,
                tls: false,
            },
            state: State::Moving,
        });
        if !self.open_ws(key, link, session, source) {
            return self.flush_ws(key);
        }
        let outer = self.reading.replace(key);
        if let Some(Conn {
            state: State::Ws(w),
            ..
        }) = self.conns.get_mut(key)
        {
            w.link.cork();
        }
        self.on_payload(key, &payload);
        self.read_ws(key);
        self.reading = outer;
        self.flush_ws(key);
    }

    /// Handles what the other loops sent.
    pub(super) fn read_inbox(&mut self) {
        while let Ok(msg) = self.inbox.try_recv() {
            match msg {
                Cross::Adopt(a) => self.adopt(*a),
                Cross::Store(job) => self.submit_here(job),
                Cross::Kick { uaid, conn } => self.kick_here(uaid, &conn),
                Cross::Answer { conn, resp } => self.answer(conn, resp),
                Cross::Shutdown => self.shut_down(),
                Cross::Broadcasts(table) => self.apply_broadcasts(&table),
            }
            self.finish_jobs();
        }
    }

    /// At exit: what other loops still hand over is closed, not left waiting.
    pub(super) fn inbox_drop(&mut self) {
        while let Ok(msg) = self.inbox.try_recv() {
            if let Cross::Adopt(_) = msg {
                self.peers.open.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }
}
