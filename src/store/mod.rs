//! Storage of registrations and pending versions, and how the event loop reaches it without blocking.
//!
//! A [`Backend`] does the storage work with plain blocking calls. The loop never calls it directly:
//! it submits [`Job`]s to a [`Runner`] and handles the [`Done`]s that come back. The memory backend
//! runs jobs inline (it never blocks); the memcached backend runs them on worker threads, which wake
//! the loop through a `mio::Waker`. Jobs of one UAID always run in submission order.

pub mod codec;
pub mod disk;
pub mod memcached;
pub mod memory;
pub mod message_list;
pub mod record;
pub mod ring;
pub mod workers;

use std::cell::RefCell;

use sm::{ChannelId, Message, StoreOp, StoreReply, Uaid};

use crate::metrics::METRICS;

/// A backend that could not do what was asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unavailable;

/// What became of a stored update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutResult {
    /// The version is stored; `node` is the router URL of the node holding the UAID's socket, if recorded.
    Stored {
        /// Where the UAID was last seen live (cluster only).
        node: Option<String>,
        /// How the device can be woken, if its hello said (JSON of `sm::wake::Wake`).
        wake: Option<String>,
    },
    /// No such channel under that UAID (never registered, unregistered, expired or forgotten).
    UnknownChannel,
    /// The UAID already has as many messages waiting as allowed.
    Full,
}

/// The wall clock in Unix seconds: message expiry is absolute, so every node must agree on it.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// A message as kept in storage: the message, and when it expires (Unix seconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// The message; its `ttl` is the one it arrived with.
    pub msg: Message,
    /// When it stops being deliverable.
    pub expires_at: u64,
}

impl StoredMessage {
    /// Stamps a new message with its expiry.
    pub fn new(msg: Message, now: u64) -> StoredMessage {
        let expires_at = now.saturating_add(msg.ttl);
        StoredMessage { msg, expires_at }
    }

    /// Still deliverable at `now`.
    pub fn live(&self, now: u64) -> bool {
        self.expires_at > now
    }

    /// The message with its TTL counted down to `now`.
    pub fn at(&self, now: u64) -> Message {
        Message {
            ttl: self.expires_at.saturating_sub(now),
            ..self.msg.clone()
        }
    }
}

/// What a hello finds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HelloFound {
    /// The UAID has a channel list.
    pub known: bool,
    /// Stored versions.
    pub pending: Vec<(ChannelId, u64)>,
    /// Stored WebPush messages not yet expired, oldest first, TTLs counted down.
    pub messages: Vec<Message>,
    /// Cluster: the node record that was replaced (another socket for this UAID).
    pub previous_node: Option<String>,
}

/// Registrations and pending versions, one per (UAID, channel), with blocking calls.
pub trait Backend {
    /// Whether the UAID is known, and its pending versions; with `forget`, drop it first.
    /// With `node` (cluster), a known UAID's node record is set to it before the versions are read,
    /// so that an update stored after that read is routed to this socket. `channels` are the ones
    /// a SimplePush client says it has: a backend that knows it lost data re-creates them.
    fn hello(
        &self,
        uaid: &Uaid,
        forget: bool,
        node: Option<&str>,
        channels: &[ChannelId],
    ) -> Result<HelloFound, Unavailable>;
    /// The version stored for a channel, if any.
    fn pending(&self, uaid: &Uaid, channel: &ChannelId) -> Result<Option<u64>, Unavailable>;
    /// Records a channel; an existing one keeps its pending version. `false` (nothing recorded)
    /// when the channel is new and the UAID already has `max` channels.
    fn register(&self, uaid: &Uaid, channel: &ChannelId, max: usize) -> Result<bool, Unavailable>;
    /// The first `register` of a UAID minted on this node's socket, with `bind_node` for `node`:
    /// no record can name that UAID yet, so a backend may write both at once with no read first.
    fn register_minted(
        &self,
        uaid: &Uaid,
        channel: &ChannelId,
        max: usize,
        node: &str,
    ) -> Result<bool, Unavailable> {
        self.bind_node(uaid, node)?;
        self.register(uaid, channel, max)
    }
    /// Forgets a channel, its pending version and its messages.
    fn unregister(&self, uaid: &Uaid, channel: &ChannelId) -> Result<(), Unavailable>;
    /// Drops each pending version that equals the acked one, and each acked message.
    fn ack(
        &self,
        uaid: &Uaid,
        items: &[(ChannelId, u64)],
        messages: &[(ChannelId, String)],
    ) -> Result<(), Unavailable>;
    /// Stores a WebPush message for a registered channel until it is acked or expires. A message
    /// with a topic replaces a waiting one of the same channel and topic. TTL 0 stores nothing and
    /// only checks the channel.
    fn put_message(&self, uaid: &Uaid, msg: &Message) -> Result<PutResult, Unavailable>;
    /// Whether the message is still waiting (not acked, deleted, replaced or expired).
    fn message_pending(&self, uaid: &Uaid, id: &str) -> Result<bool, Unavailable>;
    /// Removes a waiting message; whether it was there.
    fn delete_message(&self, uaid: &Uaid, id: &str) -> Result<bool, Unavailable>;
    /// Stores a version for a registered channel, overwriting any older or newer one.
    fn put(&self, uaid: &Uaid, channel: &ChannelId, version: u64)
        -> Result<PutResult, Unavailable>;
    /// Records that `node` (`<router url> <connection id>`) now holds the UAID's socket; returns the
    /// record it replaced, if it named another socket.
    fn bind_node(&self, uaid: &Uaid, node: &str) -> Result<Option<String>, Unavailable>;
    /// Clears the UAID's node record if it still names `node` exactly.
    fn unbind_node(&self, uaid: &Uaid, node: &str) -> Result<(), Unavailable>;
    /// Records how the UAID's device can be woken (kept as long as its registration).
    fn set_wake(&self, uaid: &Uaid, wake: &str) -> Result<(), Unavailable>;
    /// Extends the lifetime of a connected UAID's registrations, as a hello does.
    fn refresh(&self, uaid: &Uaid) -> Result<(), Unavailable> {
        self.hello(uaid, false, None, &[]).map(drop)
    }
    /// Removes a bounded batch of expired data, on the caller's thread; returns how many UAIDs
    /// went. Backends that expire by themselves (memcached, the disk store's sweeper) do nothing.
    fn sweep(&self, _now: u64) -> usize {
        0
    }
    /// Whether the backend can serve requests now.
    fn healthy(&self) -> bool;
}

/// Takes the answers of a group of jobs, in order.
pub type Answer = Box<dyn FnOnce(Vec<Done>) + Send>;

/// What storage threads hand their jobs to: a [`Backend`] one job at a time, or a store that
/// runs a whole queue of jobs together (the disk store: one commit for all of them).
pub trait JobRunner {
    /// Whether jobs are worth handing over in groups (answers then wait for the whole group).
    fn groups(&self) -> bool {
        false
    }
    /// Runs jobs in order; one answer per job, in the same order.
    fn run_jobs(&self, jobs: Vec<Job>) -> Vec<Done>;
    /// Runs jobs in order and gives their answers to `answer`, perhaps later and on another
    /// thread, so that the storage thread can go on queueing (the disk store answers after the
    /// commit that holds them, while the next batch gathers).
    fn run_jobs_then(&self, jobs: Vec<Job>, answer: Answer) {
        answer(self.run_jobs(jobs));
    }
    /// Whether the store can serve requests now.
    fn healthy(&self) -> bool;
}

impl<B: Backend> JobRunner for B {
    fn run_jobs(&self, jobs: Vec<Job>) -> Vec<Done> {
        jobs.into_iter()
            .map(|job| {
                let fallback = job.failed();
                let ran = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(self, job)));
                ran.unwrap_or_else(|_| {
                    log::error!("a storage job panicked; answered as unavailable");
                    fallback
                })
            })
            .collect()
    }

    fn healthy(&self) -> bool {
        Backend::healthy(self)
    }
}

/// Which connection a job answers to; a reused slab slot has another `gen`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnRef {
    /// The event loop (worker) the connection lives on.
    pub worker: u16,
    /// Slab key.
    pub key: usize,
    /// Generation of the connection in that slot.
    pub gen: u32,
}

/// What an app server sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    /// A SimplePush version (`PUT /update/<token>`).
    Version {
        /// The version.
        version: u64,
        /// Data for a live delivery only; never stored.
        data: Option<String>,
    },
    /// A WebPush message (`POST /wpush/...`).
    Message(Box<Message>),
}

/// One update on its way to a device: stored, checked, forwarded or written to the socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// The owner.
    pub uaid: Uaid,
    /// The channel.
    pub channel: ChannelId,
    /// What it carries.
    pub notice: Notice,
    /// When the app server's request (or the forward) arrived, for the delivery latency.
    pub received: std::time::Instant,
}

impl Delivery {
    /// The version or message id, for logs.
    pub fn label(&self) -> String {
        match &self.notice {
            Notice::Version { version, .. } => version.to_string(),
            Notice::Message(m) => m.id.clone(),
        }
    }
}

/// A unit of storage work.
#[derive(Debug)]
pub enum Job {
    /// A session's operation; the answer goes back to the session.
    Session {
        /// The WebSocket connection waiting.
        conn: ConnRef,
        /// What it asked.
        op: StoreOp,
        /// Cluster: this socket's node record, set by a hello of a known UAID, or by the first
        /// register of a UAID minted on this socket (see `Backend::register_minted`).
        node: Option<String>,
    },
    /// Cluster: is this version still the one pending (not acked, not unregistered)?
    Check {
        /// The router request waiting.
        conn: ConnRef,
        /// The forwarded update.
        d: Delivery,
    },
    /// An app-server update to store.
    Put {
        /// The HTTP connection waiting.
        conn: ConnRef,
        /// The update.
        d: Delivery,
        /// Already written to the device's socket here, while the store works.
        live: bool,
    },
    /// An app server's `DELETE` of a waiting message.
    DeleteMessage {
        /// The HTTP connection waiting.
        conn: ConnRef,
        /// The owner.
        uaid: Uaid,
        /// The message's channel.
        channel: ChannelId,
        /// The message id.
        id: String,
    },
    /// A connected device's registrations are due for a longer life.
    Refresh {
        /// The UAID.
        uaid: Uaid,
    },
    /// A hello's wake data, to keep with the UAID.
    SetWake {
        /// The UAID.
        uaid: Uaid,
        /// JSON of `sm::wake::Wake`.
        wake: String,
    },
    /// Cluster: this node now holds the UAID's socket.
    Bound {
        /// The UAID.
        uaid: Uaid,
        /// This node's router URL.
        node: String,
    },
    /// Cluster: this node no longer holds the UAID's socket.
    Unbound {
        /// The UAID.
        uaid: Uaid,
        /// This node's router URL.
        node: String,
    },
}

impl Job {
    /// The UAID whose jobs must stay in order.
    pub fn uaid(&self) -> Uaid {
        match self {
            Job::Session { op, .. } => op.uaid(),
            Job::Put { d, .. } | Job::Check { d, .. } => d.uaid,
            Job::DeleteMessage { uaid, .. } => *uaid,
            Job::Bound { uaid, .. }
            | Job::Unbound { uaid, .. }
            | Job::SetWake { uaid, .. }
            | Job::Refresh { uaid } => *uaid,
        }
    }

    /// The answer to give when the job could not run at all (its worker died or is gone).
    pub fn failed(&self) -> Done {
        match self {
            Job::Session { conn, op, .. } => Done::Session {
                conn: *conn,
                op: op.clone(),
                reply: StoreReply::Unavailable,
                previous_node: None,
            },
            Job::Put { conn, d, live } => Done::Put {
                conn: *conn,
                d: d.clone(),
                live: *live,
                result: Err(Unavailable),
            },
            Job::Check { conn, d } => Done::Checked {
                conn: *conn,
                d: d.clone(),
                current: Err(Unavailable),
            },
            Job::DeleteMessage {
                conn,
                uaid,
                channel,
                id,
            } => Done::Deleted {
                conn: *conn,
                uaid: *uaid,
                channel: *channel,
                id: id.clone(),
                result: Err(Unavailable),
            },
            Job::Bound { .. } | Job::Unbound { .. } | Job::SetWake { .. } | Job::Refresh { .. } => {
                Done::Nothing
            }
        }
    }
}

impl Done {
    /// The store could not answer.
    fn failed(&self) -> bool {
        matches!(
            self,
            Done::Session {
                reply: StoreReply::Unavailable,
                ..
            } | Done::Checked {
                current: Err(Unavailable),
                ..
            } | Done::Put {
                result: Err(Unavailable),
                ..
            } | Done::Deleted {
                result: Err(Unavailable),
                ..
            }
        )
    }
}

/// A finished job.
#[derive(Debug)]
pub enum Done {
    /// For [`Job::Session`]; a `Registered` reply carries no endpoint yet (the loop mints it).
    Session {
        /// The connection.
        conn: ConnRef,
        /// The operation.
        op: StoreOp,
        /// The answer.
        reply: StoreReply,
        /// Cluster: the node record a hello replaced, to be told to close its socket.
        previous_node: Option<String>,
    },
    /// For [`Job::Check`].
    Checked {
        /// The router request.
        conn: ConnRef,
        /// The forwarded update.
        d: Delivery,
        /// Whether the version is still the pending one.
        current: Result<bool, Unavailable>,
    },
    /// For [`Job::Put`].
    Put {
        /// The HTTP request.
        conn: ConnRef,
        /// The update.
        d: Delivery,
        /// Already written to the device's socket here.
        live: bool,
        /// The store's answer.
        result: Result<PutResult, Unavailable>,
    },
    /// For [`Job::DeleteMessage`]: whether the message was waiting.
    Deleted {
        /// The HTTP request.
        conn: ConnRef,
        /// The owner.
        uaid: Uaid,
        /// The message's channel.
        channel: ChannelId,
        /// The message id.
        id: String,
        /// The store's answer.
        result: Result<bool, Unavailable>,
    },
    /// For [`Job::Bound`]: the node that held the UAID before, to be told to close its socket.
    Bound {
        /// The UAID.
        uaid: Uaid,
        /// The other node, if any.
        previous: Option<String>,
        /// What was stored for the UAID once the node record named this node: updates that
        /// arrived between the hello and the record (then no node could be told of them).
        found: Option<HelloFound>,
    },
    /// For [`Job::Unbound`], and for jobs whose answer needs no action.
    Nothing,
    /// The admin API's broadcast change was stored (`None`: it could not be).
    Broadcasts {
        /// The admin request waiting.
        conn: ConnRef,
        /// The cluster's table after the change.
        table: Option<std::sync::Arc<std::collections::BTreeMap<String, String>>>,
    },
    /// A cluster forward finished: whether the other node delivered it live.
    Forwarded {
        /// The HTTP connection waiting.
        conn: ConnRef,
        /// What was forwarded.
        d: Box<Delivery>,
        /// Delivered live there.
        delivered: bool,
    },
}

/// Runs one job against a backend, counting its time and failures.
pub fn run(backend: &dyn Backend, job: Job) -> Done {
    let started = std::time::Instant::now();
    let done = run_job(backend, job);
    METRICS.store_latency.observe(started.elapsed());
    if done.failed() {
        METRICS.store_error();
    }
    done
}

fn run_job(backend: &dyn Backend, job: Job) -> Done {
    match job {
        Job::Session { conn, op, node } => {
            let (reply, previous_node) = session_op(backend, &op, node.as_deref());
            Done::Session {
                conn,
                op,
                reply,
                previous_node,
            }
        }
        Job::Check { conn, d } => Done::Checked {
            current: still_pending(backend, &d),
            conn,
            d,
        },
        Job::Put { conn, d, live } => Done::Put {
            result: match &d.notice {
                Notice::Version { version, .. } => backend.put(&d.uaid, &d.channel, *version),
                Notice::Message(m) => backend.put_message(&d.uaid, m),
            },
            conn,
            d,
            live,
        },
        Job::DeleteMessage {
            conn,
            uaid,
            channel,
            id,
        } => Done::Deleted {
            conn,
            result: backend.delete_message(&uaid, &id),
            uaid,
            channel,
            id,
        },
        Job::Bound { uaid, node } => {
            let previous = backend.bind_node(&uaid, &node);
            let found = previous
                .is_ok()
                .then(|| backend.hello(&uaid, false, None, &[]).ok())
                .flatten()
                .filter(|f| !f.pending.is_empty() || !f.messages.is_empty());
            Done::Bound {
                uaid,
                previous: previous.ok().flatten(),
                found,
            }
        }
        Job::Refresh { uaid } => {
            if backend.refresh(&uaid).is_err() {
                log::debug!("refresh of uaid={uaid} failed: storage unavailable");
            }
            Done::Nothing
        }
        Job::SetWake { uaid, wake } => {
            if backend.set_wake(&uaid, &wake).is_err() {
                log::warn!("wake data for uaid={uaid} not stored: storage unavailable");
            }
            Done::Nothing
        }
        Job::Unbound { uaid, node } => {
            let _ = backend.unbind_node(&uaid, &node);
            Done::Nothing
        }
    }
}

/// Whether a forwarded update is still worth writing: not acked, replaced or unregistered since.
fn still_pending(backend: &dyn Backend, d: &Delivery) -> Result<bool, Unavailable> {
    match &d.notice {
        Notice::Version { version, .. } => backend
            .pending(&d.uaid, &d.channel)
            .map(|p| p == Some(*version)),
        // Never stored: it exists only in this request.
        Notice::Message(m) if m.ttl == 0 => Ok(true),
        Notice::Message(m) => backend.message_pending(&d.uaid, &m.id),
    }
}

fn session_op(
    backend: &dyn Backend,
    op: &StoreOp,
    node: Option<&str>,
) -> (StoreReply, Option<String>) {
    let done = |r: Result<(), Unavailable>| match r {
        Ok(()) => StoreReply::Done,
        Err(Unavailable) => StoreReply::Unavailable,
    };
    let reply = match op {
        StoreOp::Hello {
            uaid,
            forget,
            channels,
        } => match backend.hello(uaid, *forget, node, channels) {
            Ok(found) => {
                let reply = StoreReply::Hello {
                    known: found.known,
                    pending: found.pending,
                    messages: found.messages,
                };
                return (reply, found.previous_node);
            }
            Err(Unavailable) => StoreReply::Unavailable,
        },
        StoreOp::Register {
            uaid,
            channel,
            max_channels,
            ..
        } => match node.map_or_else(
            || backend.register(uaid, channel, *max_channels),
            |n| backend.register_minted(uaid, channel, *max_channels, n),
        ) {
            Ok(true) => StoreReply::Registered {
                endpoint: String::new(),
            },
            Ok(false) => StoreReply::TooManyChannels,
            Err(Unavailable) => StoreReply::Unavailable,
        },
        StoreOp::Unregister { uaid, channel } => done(backend.unregister(uaid, channel)),
        StoreOp::Ack {
            uaid,
            items,
            messages,
        } => done(backend.ack(uaid, items, messages)),
    };
    (reply, None)
}

/// Where jobs run.
pub enum Runner {
    /// On the loop's thread, at once (a backend that never blocks).
    Inline {
        /// The backend.
        backend: Box<dyn Backend + Send>,
        /// Finished jobs not yet taken.
        done: RefCell<Vec<Done>>,
    },
    /// On worker threads.
    Pool(workers::Pool),
}

impl Runner {
    /// Runs jobs inline on this backend.
    pub fn inline(backend: Box<dyn Backend + Send>) -> Runner {
        Runner::Inline {
            backend,
            done: RefCell::new(Vec::new()),
        }
    }

    /// Lets an inline backend remove a batch of expired data (storage threads' backends expire
    /// by themselves).
    pub fn sweep(&self) {
        if let Runner::Inline { backend, .. } = self {
            let gone = backend.sweep(now_secs());
            if gone > 0 {
                log::debug!("{gone} registrations expired");
            }
        }
    }

    /// Starts a job; its [`Done`] comes from [`Runner::take_done`].
    pub fn submit(&self, job: Job) {
        match self {
            Runner::Inline { backend, done } => done.borrow_mut().push(run(&**backend, job)),
            Runner::Pool(p) => p.submit(job),
        }
    }

    /// Hands the jobs submitted during this turn of the loop to the storage threads.
    pub fn flush(&self) {
        if let Runner::Pool(p) = self {
            p.flush();
        }
    }

    /// Starts a cluster forward or kick on the forwarding threads (inline runners have no cluster).
    pub fn forward(&self, f: Box<dyn FnOnce() -> Done + Send>) {
        if let Runner::Pool(p) = self {
            p.spawn(f);
        }
    }

    /// The jobs finished so far.
    pub fn take_done(&self) -> Vec<Done> {
        match self {
            Runner::Inline { done, .. } => std::mem::take(&mut *done.borrow_mut()),
            Runner::Pool(p) => p.take_done(),
        }
    }

    /// Jobs whose answers are still to come: a stopping loop waits for them, since they may
    /// answer requests held by other loops.
    pub fn outstanding(&self) -> usize {
        match self {
            Runner::Inline { .. } => 0,
            Runner::Pool(p) => p.outstanding(),
        }
    }

    /// Jobs complete during `submit`: their answers can be handled at once.
    pub fn is_inline(&self) -> bool {
        matches!(self, Runner::Inline { .. })
    }

    /// Whether the backend can serve requests now.
    pub fn healthy(&self) -> bool {
        match self {
            Runner::Inline { backend, .. } => Backend::healthy(&**backend),
            Runner::Pool(p) => p.healthy(),
        }
    }
}
