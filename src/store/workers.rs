//! Worker threads that run storage jobs and cluster forwards off the event loop.
//!
//! Each worker has its own queue and a job goes to the worker chosen by its UAID, so the jobs of one
//! UAID run one after another, in the order the loop submitted them. Results come back on one
//! channel, and a `mio::Waker` tells the loop to take them.

use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use log::warn;
use mio::Waker;

use super::{ring, run, Backend, Done, Job};

type Task = Box<dyn FnOnce() -> Done + Send>;

enum Work {
    Job(Job),
    Task(Task),
}

/// A fixed set of worker threads around one shared backend.
pub struct Pool {
    queues: Vec<Sender<Work>>,
    done_rx: Mutex<Receiver<Done>>,
    backend: Arc<dyn Backend + Send + Sync>,
    next_task: std::cell::Cell<usize>,
    _threads: Vec<JoinHandle<()>>,
}

impl Pool {
    /// Starts `size` workers (at least one) that wake the loop through `waker`.
    pub fn start(backend: Arc<dyn Backend + Send + Sync>, size: usize, waker: Arc<Waker>) -> Pool {
        let (done_tx, done_rx) = channel();
        let mut queues = Vec::new();
        let mut threads = Vec::new();
        for i in 0..size.max(1) {
            let (tx, rx) = channel::<Work>();
            let backend = backend.clone();
            let done_tx = done_tx.clone();
            let waker = waker.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("store-{i}"))
                .spawn(move || work(rx, &*backend, done_tx, waker));
            match spawned {
                Ok(t) => {
                    queues.push(tx);
                    threads.push(t);
                }
                Err(e) => warn!("cannot start storage worker {i}: {e}"),
            }
        }
        Pool {
            queues,
            done_rx: Mutex::new(done_rx),
            backend,
            next_task: std::cell::Cell::new(0),
            _threads: threads,
        }
    }

    /// Queues a job on the worker of its UAID.
    pub fn submit(&self, job: Job) {
        if self.queues.is_empty() {
            return;
        }
        let i = ring::hash(job.uaid().0.bytes()) as usize % self.queues.len();
        let _ = self.queues[i].send(Work::Job(job));
    }

    /// Queues a task that needs no ordering (round robin).
    pub fn spawn(&self, task: Task) {
        if self.queues.is_empty() {
            return;
        }
        let i = self.next_task.get() % self.queues.len();
        self.next_task.set(i + 1);
        let _ = self.queues[i].send(Work::Task(task));
    }

    /// Everything finished so far.
    pub fn take_done(&self) -> Vec<Done> {
        match self.done_rx.lock() {
            Ok(rx) => rx.try_iter().collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Whether the backend can serve requests now.
    pub fn healthy(&self) -> bool {
        self.backend.healthy()
    }
}

fn work(rx: Receiver<Work>, backend: &dyn Backend, done: Sender<Done>, waker: Arc<Waker>) {
    while let Ok(w) = rx.recv() {
        let result = match w {
            Work::Job(job) => run(backend, job),
            Work::Task(task) => task(),
        };
        if done.send(result).is_err() {
            return;
        }
        let _ = waker.wake();
    }
}
