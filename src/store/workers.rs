//! Threads that run storage jobs and cluster forwards off the event loop.
//!
//! Each storage worker has its own queue and a job goes to the worker chosen by its UAID, so the jobs
//! of one UAID run one after another, in the order the loop submitted them. Forwards and kicks to
//! other nodes run on separate threads, so a slow node never holds up storage. Results come back on
//! one channel, and a `mio::Waker` tells the loop to take them. A job that panics, or that finds its
//! worker gone, is answered as if the store were unavailable: nobody waits forever.

use std::cell::RefCell;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use log::{error, warn};
use mio::Waker;

use super::{ring, Done, Job, JobRunner};
use crate::metrics::METRICS;

/// A forward or kick: blocking network work whose result comes back as a [`Done`].
pub type Task = Box<dyn FnOnce() -> Done + Send>;

/// Jobs for one storage worker, in submission order.
type Batch = Vec<(Instant, Job)>;

/// Storage workers around one shared backend, plus forwarding threads.
pub struct Pool {
    queues: Vec<Sender<Batch>>,
    /// Jobs submitted during this turn of the loop, per worker, sent by [`Pool::flush`]: one
    /// hand-over (and at most one wake-up) per worker per turn, not one per job.
    pending: RefCell<Vec<Batch>>,
    tasks: Option<Sender<Task>>,
    done_rx: Mutex<Receiver<Done>>,
    /// Set by the first answer after the loop last took them: later ones need not wake it again.
    woken: Arc<AtomicBool>,
    /// Answers for jobs that could not be queued.
    lost: RefCell<Vec<Done>>,
    /// Jobs and tasks queued whose answers have not been taken yet.
    outstanding: std::cell::Cell<usize>,
    backend: Arc<dyn JobRunner + Send + Sync>,
}

/// Sends a result back and wakes the loop.
#[derive(Clone)]
struct Reply {
    tx: Sender<Done>,
    waker: Arc<Waker>,
    woken: Arc<AtomicBool>,
}

impl Reply {
    fn send(&self, done: Done) -> bool {
        if self.tx.send(done).is_err() {
            return false;
        }
        // Under load answers come faster than the loop turns: one wake covers all of them.
        if !self.woken.swap(true, Ordering::SeqCst) {
            let _ = self.waker.wake();
        }
        true
    }
}

impl Pool {
    /// Starts `size` storage workers and `forwarders` forwarding threads (at least one each).
    pub fn start(
        backend: Arc<dyn JobRunner + Send + Sync>,
        size: usize,
        forwarders: usize,
        waker: Arc<Waker>,
    ) -> Pool {
        let (done_tx, done_rx) = channel();
        let woken = Arc::new(AtomicBool::new(false));
        let reply = Reply {
            tx: done_tx,
            waker,
            woken: woken.clone(),
        };
        let mut queues = Vec::new();
        for i in 0..size.max(1) {
            let (tx, rx) = channel::<Batch>();
            let (backend, reply) = (backend.clone(), reply.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("store-{i}"))
                .spawn(move || store_worker(rx, &*backend, reply));
            match spawned {
                Ok(_) => queues.push(tx),
                Err(e) => warn!("cannot start storage worker {i}: {e}"),
            }
        }
        let (task_tx, task_rx) = channel::<Task>();
        let task_rx = Arc::new(Mutex::new(task_rx));
        let mut started = 0;
        for i in 0..forwarders.max(1) {
            let (rx, reply) = (task_rx.clone(), reply.clone());
            let spawned = std::thread::Builder::new()
                .name(format!("forward-{i}"))
                .spawn(move || forwarder(&rx, reply));
            match spawned {
                Ok(_) => started += 1,
                Err(e) => warn!("cannot start forwarding thread {i}: {e}"),
            }
        }
        Pool {
            pending: RefCell::new(queues.iter().map(|_| Vec::new()).collect()),
            queues,
            tasks: (started > 0).then_some(task_tx),
            done_rx: Mutex::new(done_rx),
            woken,
            lost: RefCell::new(Vec::new()),
            outstanding: std::cell::Cell::new(0),
            backend,
        }
    }

    /// Queues a job on the worker of its UAID; it is handed over at the next [`Pool::flush`].
    pub fn submit(&self, job: Job) {
        if self.queues.is_empty() {
            self.lost.borrow_mut().push(job.failed());
            return;
        }
        // The high half: the event loops pick a UAID's owner with the low half (`server::owner`).
        let i = (ring::hash(job.uaid().0.bytes()) >> 32) as usize % self.queues.len();
        self.pending.borrow_mut()[i].push((Instant::now(), job));
        self.outstanding.set(self.outstanding.get() + 1);
        METRICS.store_queued.fetch_add(1, Ordering::Relaxed);
    }

    /// Hands every job submitted since the last call to its worker. The loop calls it before
    /// it waits for events.
    pub fn flush(&self) {
        let mut pending = self.pending.borrow_mut();
        for (i, batch) in pending.iter_mut().enumerate() {
            if batch.is_empty() {
                continue;
            }
            if let Err(returned) = self.queues[i].send(std::mem::take(batch)) {
                error!("storage worker {i} is gone");
                let mut lost = self.lost.borrow_mut();
                for (_, job) in returned.0 {
                    METRICS.store_queued.fetch_sub(1, Ordering::Relaxed);
                    self.outstanding
                        .set(self.outstanding.get().saturating_sub(1));
                    lost.push(job.failed());
                }
            }
        }
    }

    /// Queues a forward or kick.
    pub fn spawn(&self, task: Task) {
        let sent = self.tasks.as_ref().map(|t| t.send(task));
        if matches!(sent, Some(Ok(()))) {
            self.outstanding.set(self.outstanding.get() + 1);
        } else {
            error!("no forwarding thread: a forward or kick was dropped");
        }
    }

    /// Everything finished so far.
    pub fn take_done(&self) -> Vec<Done> {
        let mut out = std::mem::take(&mut *self.lost.borrow_mut());
        // Cleared before draining: an answer sent after this point wakes the loop again.
        self.woken.store(false, Ordering::SeqCst);
        if let Ok(rx) = self.done_rx.lock() {
            let before = out.len();
            out.extend(rx.try_iter());
            let taken = out.len() - before;
            self.outstanding
                .set(self.outstanding.get().saturating_sub(taken));
        }
        out
    }

    /// Jobs and tasks whose answers are still to come (a task that panicked never answers).
    pub fn outstanding(&self) -> usize {
        self.outstanding.get()
    }

    /// Whether the backend can serve requests now.
    pub fn healthy(&self) -> bool {
        self.backend.healthy()
    }
}

/// Most jobs one storage thread hands over at once.
const MAX_GROUP: usize = 1024;

fn store_worker(rx: Receiver<Batch>, backend: &dyn JobRunner, reply: Reply) {
    let grouped = backend.groups();
    while let Ok(first) = rx.recv() {
        let mut queued = first;
        if grouped {
            // Everything that queued up meanwhile, whole batches, up to about MAX_GROUP jobs.
            while queued.len() < MAX_GROUP {
                match rx.try_recv() {
                    Ok(more) => queued.extend(more),
                    Err(_) => break,
                }
            }
        }
        let jobs: Vec<Job> = queued
            .into_iter()
            .map(|(at, job)| {
                METRICS.store_queued.fetch_sub(1, Ordering::Relaxed);
                METRICS.store_queue_latency.observe(at.elapsed());
                job
            })
            .collect();
        if grouped {
            // Answered after the commit that holds them; meanwhile this thread gathers the next group.
            let reply = reply.clone();
            backend.run_jobs_then(
                jobs,
                Box::new(move |dones| {
                    for done in dones {
                        reply.send(done);
                    }
                }),
            );
            continue;
        }
        // One at a time, each answered as soon as it is done.
        for job in jobs {
            let fallback = job.failed();
            let done = catch_unwind(AssertUnwindSafe(|| backend.run_jobs(vec![job])))
                .ok()
                .and_then(|mut d| d.pop())
                .unwrap_or_else(|| {
                    error!("a storage job panicked; answered as unavailable");
                    fallback
                });
            if !reply.send(done) {
                return;
            }
        }
    }
}

fn forwarder(rx: &Mutex<Receiver<Task>>, reply: Reply) {
    loop {
        let task = match rx.lock() {
            Ok(r) => match r.recv() {
                Ok(t) => t,
                Err(_) => return,
            },
            Err(_) => return,
        };
        match catch_unwind(AssertUnwindSafe(task)) {
            Ok(done) => {
                if !reply.send(done) {
                    return;
                }
            }
            Err(_) => error!("a forward panicked"),
        }
    }
}
