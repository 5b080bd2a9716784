//! The one thread that touches the database: group commit, the expiry sweep, recovery.
//!
//! Storage threads hand it work and go on queueing (with `sync = "always"` they wait). It takes
//! everything that queued up while the previous commit ran, runs it in one write transaction and
//! commits once, so one sync covers all of it; only then does any of that work get its answer (a
//! 2xx is given for durable data only). A
//! failed commit (disk full, IO error) answers the whole batch as unavailable, and the database
//! is closed and opened again, so service resumes by itself once the disk is writable again.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{info, warn};
use redb::{Database, Durability};

use super::open::open_database;
use super::sweep::Sweeper;
use super::tables::Tables;
use super::txn::Txn;
use super::{Settings, Sync};

/// What a piece of work does once its batch is committed (`true`) or rolled back (`false`).
pub type Finish = Box<dyn FnOnce(bool) + Send>;
/// A piece of work: runs inside a transaction (`None` when there is no database to run on) and
/// returns what to do after the commit.
pub type Work = Box<dyn for<'x, 'a, 't> FnOnce(Option<&'x Txn<'a, 't>>) -> Finish + Send>;

/// Most pieces of work in one commit: a bound on the batch a burst can make.
const MAX_BATCH: usize = 4096;
/// How often the sweeper runs, and a `sync = "none"` store is made durable.
const TICK: Duration = Duration::from_secs(1);

/// The writer thread's state.
pub struct Writer {
    /// The database; `None` after a failure until it opens again.
    db: Option<Database>,
    path: PathBuf,
    settings: Settings,
    sweeper: Sweeper,
    healthy: Arc<AtomicBool>,
    last_tick: Instant,
}

impl Writer {
    /// A writer over an open database.
    pub fn new(
        db: Database,
        path: PathBuf,
        settings: Settings,
        healthy: Arc<AtomicBool>,
    ) -> Writer {
        Writer {
            db: Some(db),
            path,
            settings,
            sweeper: Sweeper::default(),
            healthy,
            last_tick: Instant::now(),
        }
    }

    /// Serves work until every sender is gone; then the database is closed cleanly.
    pub fn run(mut self, rx: Receiver<Work>) {
        loop {
            let first = match rx.recv_timeout(TICK) {
                Ok(w) => Some(w),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => break,
            };
            let mut batch: Vec<Work> = first.into_iter().collect();
            if self.settings.sync != Sync::Always {
                batch.extend(rx.try_iter().take(MAX_BATCH));
            }
            let tick = self.last_tick.elapsed() >= TICK;
            if batch.is_empty() && !tick {
                continue;
            }
            if tick {
                self.last_tick = Instant::now();
            }
            self.commit(batch, tick);
        }
        // With sync = "none" the last second's commits are not durable yet.
        self.commit(Vec::new(), true);
        if let Some(db) = self.db.take() {
            if let Err(e) = db.close() {
                warn!("disk store: closing {}: {e}", self.path.display());
            }
        }
    }

    /// Runs a batch in one transaction and commits it; on a tick also sweeps expired data (and
    /// with `sync = "none"` makes everything so far durable).
    fn commit(&mut self, batch: Vec<Work>, tick: bool) {
        if self.db.is_none() {
            self.reopen();
        }
        let Some(db) = self.db.as_ref() else {
            batch.into_iter().for_each(|w| w(None)(false));
            return;
        };
        let durable = self.settings.sync != Sync::None || tick;
        let result = run_batch(
            db,
            batch,
            &self.settings,
            durable,
            tick.then_some(&mut self.sweeper),
        );
        match result {
            Ok(()) => {
                if !self.healthy.swap(true, Ordering::SeqCst) {
                    info!("disk store: {} is writable again", self.path.display());
                }
            }
            Err(e) => {
                if self.healthy.swap(false, Ordering::SeqCst) {
                    warn!(
                        "disk store: a commit to {} failed ({e}); answering 503 until it works",
                        self.path.display()
                    );
                }
                // redb refuses everything after an IO error until the database is opened again.
                if let Some(db) = self.db.take() {
                    drop(db);
                }
            }
        }
    }

    fn reopen(&mut self) {
        match open_database(&self.path, self.settings.cache_bytes) {
            Ok(db) => self.db = Some(db),
            Err(e) => log::debug!("disk store: reopening {}: {e}", self.path.display()),
        }
    }
}

/// One transaction: every piece of work, then the sweep, then the commit. The finishers run
/// after the commit, told whether it held.
fn run_batch(
    db: &Database,
    batch: Vec<Work>,
    settings: &Settings,
    durable: bool,
    sweeper: Option<&mut Sweeper>,
) -> Result<(), String> {
    let mut finishers = Vec::with_capacity(batch.len());
    let fail_all = |finishers: Vec<Finish>, rest: Vec<Work>, why: String| {
        finishers.into_iter().for_each(|f| f(false));
        rest.into_iter().for_each(|w| w(None)(false));
        Err(why)
    };
    let mut txn = match db.begin_write() {
        Ok(t) => t,
        Err(e) => return fail_all(finishers, batch, e.to_string()),
    };
    // Quick repair would save the allocator state and sync twice per commit; without it the
    // first start after a crash rebuilds that state from the file, which the integrity check at
    // open walks anyway (1,000,000 devices: 0.3 s, BENCHMARKS.md).
    txn.set_quick_repair(false);
    let durability = if durable {
        Durability::Immediate
    } else {
        Durability::None
    };
    if let Err(e) = txn.set_durability(durability) {
        return fail_all(finishers, batch, e.to_string());
    }
    let broken = {
        let mut tables = match Tables::open(&txn) {
            Ok(t) => t,
            Err(e) => return fail_all(finishers, batch, e.to_string()),
        };
        let ops = Txn::new(&mut tables, settings);
        for work in batch {
            finishers.push(work(Some(&ops)));
        }
        if let Some(s) = sweeper {
            s.sweep(&ops);
        }
        ops.broken()
    };
    if broken {
        txn.abort().ok();
        return fail_all(finishers, Vec::new(), "a storage operation failed".into());
    }
    if let Err(e) = txn.commit() {
        return fail_all(finishers, Vec::new(), e.to_string());
    }
    finishers.into_iter().for_each(|f| f(true));
    Ok(())
}
