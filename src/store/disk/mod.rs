//! The disk backend: one node's durable store, in one redb file in `storage.path`.
//!
//! - `tables`: what is kept where; `txn`: the storage operations inside a transaction;
//! - `writer`: the thread that runs them, one commit per batch (group commit);
//! - `sweep`: expiry in the background; `open`: the data directory and the endpoint key.
//!
//! redb (pure Rust, a copy-on-write B-tree with checksummed pages, ACID commits) was measured
//! against SQLite on this workload (`benches/store-choice`; README "The disk store" says why).

mod open;
mod sweep;
mod tables;
mod txn;
mod writer;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, sync_channel, Sender};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use log::info;
use redb::{ReadableDatabase, ReadableTableMetadata};

pub use self::open::{endpoint_key, OpenError, DB_FILE, KEY_FILE};
use self::writer::{Work, Writer};
use super::{run, Answer, Done, Job, JobRunner, Unavailable};

/// When a commit is synced to the disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sync {
    /// Every write is committed and synced on its own.
    Always,
    /// Writes that arrive together share one synced commit (group commit).
    Batch,
    /// Commits are synced once a second: a crash of the process or the machine loses up to a
    /// second of answered writes.
    None,
}

impl Sync {
    /// The setting's value (`storage.sync`).
    pub fn parse(text: &str) -> Option<Sync> {
        match text {
            "always" => Some(Sync::Always),
            "batch" => Some(Sync::Batch),
            "none" => Some(Sync::None),
            _ => None,
        }
    }
}

/// Lifetimes, limits and how to sync.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Lifetime of a pending version, seconds.
    pub pending_ttl: u32,
    /// Lifetime of a registration without use, seconds (0 = none).
    pub registration_ttl: u32,
    /// WebPush messages allowed to wait per UAID.
    pub max_messages: usize,
    /// When commits are synced.
    pub sync: Sync,
    /// The page cache's size.
    pub cache_bytes: usize,
}

/// The disk backend, shared by every event loop's storage threads.
pub struct DiskStore {
    tx: Mutex<Option<Sender<Work>>>,
    sync: Sync,
    healthy: Arc<AtomicBool>,
    writer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

/// What the store held at start.
#[derive(Debug, Clone, Copy)]
pub struct Contents {
    /// UAIDs with a record.
    pub uaids: u64,
    /// UAIDs with waiting WebPush messages.
    pub message_lists: u64,
}

impl DiskStore {
    /// Opens the store in `dir` (creating it), reports what it holds and starts the writer.
    pub fn open(dir: &Path, settings: Settings) -> Result<Arc<DiskStore>, OpenError> {
        let started = Instant::now();
        open::prepare_dir(dir)?;
        let file = dir.join(DB_FILE);
        let db = open::open_database(&file, settings.cache_bytes)?;
        let contents = contents(&db, &file)?;
        info!(
            "disk store {}: {} UAIDs, {} with messages waiting (opened and checked in {} ms, \
             sync = {:?})",
            file.display(),
            contents.uaids,
            contents.message_lists,
            started.elapsed().as_millis(),
            settings.sync
        );
        let healthy = Arc::new(AtomicBool::new(true));
        let (tx, rx) = channel();
        let sync = settings.sync;
        let w = Writer::new(db, file.clone(), settings, healthy.clone());
        let handle = std::thread::Builder::new()
            .name("disk-writer".into())
            .spawn(move || w.run(rx))
            .map_err(|e| OpenError(format!("{}: no writer thread: {e}", file.display())))?;
        Ok(Arc::new(DiskStore {
            tx: Mutex::new(Some(tx)),
            sync,
            healthy,
            writer: Mutex::new(Some(handle)),
        }))
    }

    /// Hands work to the writer; if it is gone, the work is answered as not committed.
    fn send(&self, work: Work) {
        let refused = match self.tx.lock() {
            Ok(guard) => match guard.as_ref() {
                Some(tx) => tx.send(work).err().map(|e| e.0),
                None => Some(work),
            },
            Err(_) => Some(work),
        };
        if let Some(work) = refused {
            work(None)(false);
        }
    }

    /// Runs jobs in one commit and waits for it.
    fn commit_jobs(&self, jobs: Vec<Job>) -> Vec<Done> {
        let (reply, answer) = sync_channel(1);
        self.commit_then(
            jobs,
            Box::new(move |out| {
                let _ = reply.send(out);
            }),
        );
        answer.recv().unwrap_or_default()
    }

    /// Queues jobs for the next commit; `answer` gets their answers once it is durable (or
    /// failures if it is not).
    fn commit_then(&self, jobs: Vec<Job>, answer: Answer) {
        let fallbacks: Vec<Done> = jobs.iter().map(Job::failed).collect();
        let work: Work = Box::new(move |ops| {
            let dones: Vec<Done> = match ops {
                Some(ops) => jobs.into_iter().map(|j| run_caught(ops, j)).collect(),
                None => Vec::new(),
            };
            Box::new(move |committed| answer(if committed { dones } else { fallbacks }))
        });
        self.send(work);
    }

    /// Runs `f` on the store in a commit of its own batch and waits for it.
    fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&txn::Txn<'_, '_>) -> Result<R, Unavailable> + Send + 'static,
    ) -> Result<R, Unavailable> {
        let (reply, answer) = sync_channel(1);
        let work: Work = Box::new(move |ops| {
            let r = ops.map_or(Err(Unavailable), f);
            Box::new(move |committed| {
                let _ = reply.send(if committed { r } else { Err(Unavailable) });
            })
        });
        self.send(work);
        answer.recv().unwrap_or(Err(Unavailable))
    }

    /// The broadcast versions set through the admin API.
    pub fn broadcasts(&self) -> Result<BTreeMap<String, String>, Unavailable> {
        self.call(|ops| ops.broadcasts())
    }

    /// Merges new broadcast versions into the stored table; the whole table after.
    pub fn set_broadcasts(
        &self,
        changes: &BTreeMap<String, String>,
    ) -> Result<BTreeMap<String, String>, Unavailable> {
        let changes = changes.clone();
        self.call(move |ops| {
            let mut table = ops.broadcasts()?;
            table.extend(changes);
            ops.set_broadcasts(&table)?;
            Ok(table)
        })
    }

    /// Stops the writer after the work queued so far, and closes the file.
    pub fn close(&self) {
        if let Ok(mut tx) = self.tx.lock() {
            tx.take();
        }
        if let Some(h) = self.writer.lock().ok().and_then(|mut w| w.take()) {
            let _ = h.join();
        }
    }
}

/// Runs one job; a panic is its answer as unavailable (and the batch goes on).
fn run_caught(ops: &txn::Txn<'_, '_>, job: Job) -> Done {
    let fallback = job.failed();
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(ops, job))).unwrap_or_else(|_| {
        log::error!("a storage job panicked; answered as unavailable");
        fallback
    })
}

impl Drop for DiskStore {
    fn drop(&mut self) {
        self.close();
    }
}

impl JobRunner for DiskStore {
    fn groups(&self) -> bool {
        true
    }

    fn run_jobs(&self, jobs: Vec<Job>) -> Vec<Done> {
        if self.sync != Sync::Always {
            return self.commit_jobs(jobs);
        }
        jobs.into_iter()
            .flat_map(|j| self.commit_jobs(vec![j]))
            .collect()
    }

    fn run_jobs_then(&self, jobs: Vec<Job>, answer: Answer) {
        if self.sync == Sync::Always {
            // One commit per job: the storage thread waits for each, in order.
            return answer(self.run_jobs(jobs));
        }
        self.commit_then(jobs, answer);
    }

    fn healthy(&self) -> bool {
        self.healthy.load(Ordering::SeqCst)
    }
}

fn contents(db: &redb::Database, file: &Path) -> Result<Contents, OpenError> {
    let failed = |e: String| OpenError(format!("{}: {e}", file.display()));
    // Creates the tables in a new file, and proves the file takes a commit.
    let txn = db.begin_write().map_err(|e| failed(e.to_string()))?;
    tables::Tables::open(&txn).map_err(|e| failed(e.to_string()))?;
    txn.commit().map_err(|e| failed(e.to_string()))?;
    let read = db.begin_read().map_err(|e| failed(e.to_string()))?;
    let len = |def| -> Result<u64, OpenError> {
        read.open_table(def)
            .and_then(|t| Ok(t.len()?))
            .map_err(|e| failed(e.to_string()))
    };
    Ok(Contents {
        uaids: len(tables::RECORDS)?,
        message_lists: len(tables::MESSAGES)?,
    })
}
