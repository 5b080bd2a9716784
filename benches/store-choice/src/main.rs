//! Runs the push server's disk workload on redb and on SQLite and prints a markdown table.
//!
//! `store-choice [--ops N] [--dir DIR]`: N registered devices (default 100000); each store works
//! in a fresh directory under DIR (default the system temp dir), removed afterwards.

use std::error::Error;
use std::hint::black_box;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use std::{env, fs};

use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, TableDefinition,
};
use rusqlite::Connection;

type Res<T> = Result<T, Box<dyn Error>>;
type Key = [u8; 16];

/// Operations per durable commit in the grouped phases.
const GROUP: usize = 64;
/// Entries in `messages` (one per UAID); the ack phase deletes each once.
const MESSAGES: usize = 20_000;
/// Updates in the one-commit-each phase.
const SINGLES: usize = 2_000;
/// Close-and-open cycles in the reopen phase.
const REOPENS: usize = 5;
/// The 8-byte big-endian expiry in front of every value, and a channel's expiry in its line.
const EXPIRY: u64 = 1_769_817_600;
const CHANNEL_EXPIRY: u64 = 1_767_225_600;
/// /proc/self/stat counts CPU time in ticks of 1/100 s.
const TICK_US: f64 = 10_000.0;

const RECORDS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("records");
const MSGS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("messages");

/// One operation of a commit.
enum Op {
    /// Register: a new key.
    Insert(Key, Vec<u8>),
    /// PUT: read the record, set the channel's pending version, write it back.
    Update(Key, u64),
    /// Ack: read the record, clear the pending version ("-"), write it back, drop the message.
    Ack(Key),
    /// Setup only: a waiting message.
    Message(Key, Vec<u8>),
}

impl Op {
    /// The version an update or ack writes (`None`: "-").
    fn version(&self) -> Option<u64> {
        match self {
            Op::Update(_, n) => Some(*n),
            _ => None,
        }
    }
}

/// The record with its version field replaced (`None`: "-").
fn rewrite(old: &[u8], version: Option<u64>) -> Res<Vec<u8>> {
    let line = old.get(8..).ok_or("record too short")?;
    let cut = line.iter().rposition(|&b| b == b' ').ok_or("no version field")? + 1;
    let mut v = old[..8 + cut].to_vec();
    match version {
        Some(n) => v.extend_from_slice(n.to_string().as_bytes()),
        None => v.push(b'-'),
    }
    v.push(b'\n');
    Ok(v)
}

trait Store {
    fn name(&self) -> &'static str;
    /// Applies `ops` in one durable (fsync'd) transaction.
    fn commit(&mut self, ops: &[Op]) -> Res<()>;
    /// Reads one record in its own read transaction; whether it was there.
    fn read(&mut self, k: &Key) -> Res<bool>;
    fn close(&mut self);
    /// Opens the file and counts the records.
    fn open_count(&mut self) -> Res<u64>;
    /// Bytes the store's files take (after a checkpoint for SQLite).
    fn bytes(&mut self) -> Res<u64>;
}

struct Redb {
    path: PathBuf,
    db: Option<Database>,
}

impl Store for Redb {
    fn name(&self) -> &'static str {
        "redb"
    }
    fn commit(&mut self, ops: &[Op]) -> Res<()> {
        let mut txn = self.db.as_ref().ok_or("closed")?.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        txn.set_quick_repair(true);
        {
            let mut recs = txn.open_table(RECORDS)?;
            let mut msgs = txn.open_table(MSGS)?;
            for op in ops {
                match op {
                    Op::Insert(k, v) => {
                        recs.insert(k.as_slice(), v.as_slice())?;
                    }
                    Op::Message(k, v) => {
                        msgs.insert(k.as_slice(), v.as_slice())?;
                    }
                    Op::Update(k, _) | Op::Ack(k) => {
                        let old = recs.get(k.as_slice())?.ok_or("missing key")?.value().to_vec();
                        recs.insert(k.as_slice(), rewrite(&old, op.version())?.as_slice())?;
                        if let Op::Ack(_) = op {
                            msgs.remove(k.as_slice())?.ok_or("missing message")?;
                        }
                    }
                }
            }
        }
        Ok(txn.commit()?)
    }
    fn read(&mut self, k: &Key) -> Res<bool> {
        let txn = self.db.as_ref().ok_or("closed")?.begin_read()?;
        let table = txn.open_table(RECORDS)?;
        let value = table.get(k.as_slice())?.map(|g| g.value().to_vec());
        Ok(black_box(value).is_some())
    }
    fn close(&mut self) {
        self.db = None;
    }
    fn open_count(&mut self) -> Res<u64> {
        let db = Database::create(&self.path)?;
        let n = db.begin_read()?.open_table(RECORDS)?.len()?;
        self.db = Some(db);
        Ok(n)
    }
    fn bytes(&mut self) -> Res<u64> {
        Ok(fs::metadata(&self.path)?.len())
    }
}

struct Sqlite {
    path: PathBuf,
    conn: Option<Connection>,
}

const SELECT: &str = "SELECT v FROM records WHERE k = ?1";

impl Sqlite {
    fn conn(&self) -> Res<&Connection> {
        Ok(self.conn.as_ref().ok_or("closed")?)
    }
}

impl Store for Sqlite {
    fn name(&self) -> &'static str {
        "SQLite"
    }
    fn commit(&mut self, ops: &[Op]) -> Res<()> {
        let c = self.conn()?;
        c.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
        for op in ops {
            match op {
                Op::Insert(k, v) => {
                    c.prepare_cached("INSERT INTO records (k, v) VALUES (?1, ?2)")?
                        .execute((k.as_slice(), v.as_slice()))?;
                }
                Op::Message(k, v) => {
                    c.prepare_cached("INSERT INTO messages (k, v) VALUES (?1, ?2)")?
                        .execute((k.as_slice(), v.as_slice()))?;
                }
                Op::Update(k, _) | Op::Ack(k) => {
                    let old: Vec<u8> =
                        c.prepare_cached(SELECT)?.query_row([k.as_slice()], |r| r.get(0))?;
                    c.prepare_cached("UPDATE records SET v = ?2 WHERE k = ?1")?
                        .execute((k.as_slice(), rewrite(&old, op.version())?.as_slice()))?;
                    if let Op::Ack(_) = op {
                        let gone = c
                            .prepare_cached("DELETE FROM messages WHERE k = ?1")?
                            .execute([k.as_slice()])?;
                        if gone != 1 {
                            return Err("missing message".into());
                        }
                    }
                }
            }
        }
        c.prepare_cached("COMMIT")?.execute([])?;
        Ok(())
    }
    fn read(&mut self, k: &Key) -> Res<bool> {
        let mut st = self.conn()?.prepare_cached(SELECT)?;
        let mut rows = st.query([k.as_slice()])?;
        let found = match rows.next()? {
            Some(r) => !black_box(r.get::<_, Vec<u8>>(0)?).is_empty(),
            None => false,
        };
        Ok(found)
    }
    fn close(&mut self) {
        self.conn = None;
    }
    fn open_count(&mut self) -> Res<u64> {
        let c = Connection::open(&self.path)?;
        c.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;
             CREATE TABLE IF NOT EXISTS records (k BLOB PRIMARY KEY, v BLOB) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS messages (k BLOB PRIMARY KEY, v BLOB) WITHOUT ROWID;",
        )?;
        let n: i64 = c.query_row("SELECT count(*) FROM records", [], |r| r.get(0))?;
        self.conn = Some(c);
        Ok(n as u64)
    }
    fn bytes(&mut self) -> Res<u64> {
        let busy: i64 =
            self.conn()?.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get(0))?;
        if busy != 0 {
            return Err("checkpoint did not complete".into());
        }
        let wal = fs::metadata(self.path.with_extension("sqlite-wal")).map_or(0, |m| m.len());
        Ok(fs::metadata(&self.path)?.len() + wal)
    }
}

/// splitmix64: the same seed gives both stores the same keys and operations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn key(&mut self) -> Key {
        let mut k = [0; 16];
        k[..8].copy_from_slice(&self.next().to_le_bytes());
        k[8..].copy_from_slice(&self.next().to_le_bytes());
        k
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn hex(k: &Key) -> String {
    k.iter().map(|b| format!("{b:02x}")).collect()
}

/// Expiry + one channel line: "<channel id> <expiry> <version>\n".
fn record(chid: &Key, version: u64) -> Vec<u8> {
    let mut v = EXPIRY.to_be_bytes().to_vec();
    v.extend_from_slice(format!("{} {CHANNEL_EXPIRY} {version}\n", hex(chid)).as_bytes());
    v
}

/// Expiry + a 292-byte JSON list holding one message.
fn message(chid: &Key) -> Vec<u8> {
    let head =
        format!(r#"[{{"chid":"{}","version":"1767225600123","ttl":86400,"data":""#, hex(chid));
    let body = format!(r#"{head}{}"}}]"#, "x".repeat(292 - head.len() - 3));
    let mut v = EXPIRY.to_be_bytes().to_vec();
    v.extend_from_slice(body.as_bytes());
    v
}

/// CPU time (user + system) of this process, in ticks: /proc/self/stat fields 14 and 15.
fn cpu_ticks() -> Res<u64> {
    let stat = fs::read_to_string("/proc/self/stat")?;
    let after_comm = stat.get(stat.rfind(')').ok_or("bad stat")? + 2..).ok_or("bad stat")?;
    let f: Vec<&str> = after_comm.split(' ').collect(); // f[0] is field 3
    Ok(f[11].parse::<u64>()? + f[12].parse::<u64>()?)
}

struct Row {
    phase: &'static str,
    store: &'static str,
    ops: usize,
    secs: f64,
    lat: Vec<Duration>,
    ticks: u64,
}

/// Times `steps` calls of `step` (each one commit or one read), `ops` operations in all.
fn measure(
    phase: &'static str,
    store: &mut dyn Store,
    ops: usize,
    steps: usize,
    mut step: impl FnMut(&mut dyn Store, usize) -> Res<()>,
) -> Res<Row> {
    let mut lat = Vec::with_capacity(steps);
    let (cpu, start) = (cpu_ticks()?, Instant::now());
    for i in 0..steps {
        let t = Instant::now();
        step(store, i)?;
        lat.push(t.elapsed());
    }
    let secs = start.elapsed().as_secs_f64();
    Ok(Row { phase, store: store.name(), ops, secs, lat, ticks: cpu_ticks()? - cpu })
}

/// Closes the store (not timed), then times opening it and counting the records.
fn reopen(store: &mut dyn Store, n: usize) -> Res<Row> {
    let (mut lat, mut ticks) = (Vec::new(), 0);
    for _ in 0..REOPENS {
        store.close();
        let (cpu, t) = (cpu_ticks()?, Instant::now());
        let count = store.open_count()?;
        lat.push(t.elapsed());
        ticks += cpu_ticks()? - cpu;
        if count != n as u64 {
            return Err(format!("counted {count} records, not {n}").into());
        }
    }
    let secs = lat.iter().sum::<Duration>().as_secs_f64();
    Ok(Row { phase: "reopen", store: store.name(), ops: REOPENS, secs, lat, ticks })
}

fn grouped(phase: &'static str, store: &mut dyn Store, ops: &[Op], per: usize) -> Res<Row> {
    let chunks: Vec<&[Op]> = ops.chunks(per).collect();
    measure(phase, store, ops.len(), chunks.len(), |s, i| s.commit(chunks[i]))
}

fn run(store: &mut dyn Store, n: usize, rows: &mut Vec<Row>) -> Res<u64> {
    let mut rng = Rng(0x5eed);
    let keys: Vec<Key> = (0..n).map(|_| rng.key()).collect();
    let mut last_version = 1_767_225_600_000u64;
    let mut version = move || {
        last_version += 1;
        last_version
    };
    store.open_count()?;

    let inserts: Vec<Op> =
        keys.iter().map(|k| Op::Insert(*k, record(&rng.key(), version()))).collect();
    rows.push(grouped("register", store, &inserts, GROUP)?);
    rows.push(reopen(store, n)?);

    let m = MESSAGES.min(n);
    let msgs: Vec<Op> = keys[..m].iter().map(|k| Op::Message(*k, message(&rng.key()))).collect();
    msgs.chunks(1000).try_for_each(|c| store.commit(c))?;

    let updates: Vec<Op> = (0..n).map(|_| Op::Update(keys[rng.below(n)], version())).collect();
    rows.push(grouped("update", store, &updates, GROUP)?);

    let mut acked: Vec<Key> = keys[..m].to_vec();
    for i in (1..m).rev() {
        acked.swap(i, rng.below(i + 1));
    }
    let acks: Vec<Op> = acked.into_iter().map(Op::Ack).collect();
    rows.push(grouped("ack", store, &acks, GROUP)?);

    let reads: Vec<Key> = (0..n).map(|_| keys[rng.below(n)]).collect();
    rows.push(measure("hello", store, n, n, |s, i| match s.read(&reads[i])? {
        true => Ok(()),
        false => Err("read missed".into()),
    })?);

    let singles: Vec<Op> =
        (0..SINGLES).map(|_| Op::Update(keys[rng.below(n)], version())).collect();
    rows.push(grouped("single", store, &singles, 1)?);
    store.bytes()
}

fn pct(sorted: &[Duration], q: f64) -> f64 {
    let i = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i].as_secs_f64() * 1e6
}

fn us(x: f64) -> String {
    if x < 100.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.0}")
    }
}

fn main() -> Res<()> {
    let (mut n, mut dir) = (100_000usize, env::temp_dir());
    let mut args = env::args().skip(1);
    while let Some(a) = args.next() {
        match (a.as_str(), args.next()) {
            ("--ops", Some(v)) => n = v.parse().map_err(|_| "--ops: not a number")?,
            ("--dir", Some(v)) => dir = PathBuf::from(v),
            _ => return Err("usage: store-choice [--ops N] [--dir DIR]".into()),
        }
    }
    if n == 0 {
        return Err("--ops must be at least 1".into());
    }
    let mut rows = Vec::new();
    let mut sizes = Vec::new();
    for name in ["redb", "sqlite"] {
        let work = dir.join(format!("store-choice-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&work);
        fs::create_dir_all(&work)?;
        let file = |ext: &str| Path::new(&work).join(format!("store.{ext}"));
        let mut store: Box<dyn Store> = match name {
            "redb" => Box::new(Redb { path: file("redb"), db: None }),
            _ => Box::new(Sqlite { path: file("sqlite"), conn: None }),
        };
        let bytes = run(store.as_mut(), n, &mut rows)?;
        sizes.push((store.name(), bytes));
        drop(store);
        fs::remove_dir_all(&work)?;
    }
    rows.sort_by_key(|r| {
        ["register", "reopen", "update", "ack", "hello", "single"]
            .iter()
            .position(|p| *p == r.phase)
    });
    let record_len = record(&[0; 16], 1_767_225_600_000).len();
    println!(
        "N = {n} devices, record {record_len} bytes, message {} bytes, dir {}\n",
        message(&[0; 16]).len(),
        dir.display()
    );
    println!("| phase | store | ops | ops/s | median µs | p99 µs | CPU µs/op |");
    println!("|---|---|---:|---:|---:|---:|---:|");
    for r in &mut rows {
        r.lat.sort();
        let cpu = r.ticks as f64 * TICK_US / r.ops as f64;
        println!(
            "| {} | {} | {} | {:.0} | {} | {} | {:.1} |",
            r.phase,
            r.store,
            r.ops,
            r.ops as f64 / r.secs,
            us(pct(&r.lat, 0.5)),
            us(pct(&r.lat, 0.99)),
            cpu
        );
    }
    println!("\n| store | file bytes | bytes/device |\n|---|---:|---:|");
    for (name, bytes) in sizes {
        println!("| {name} | {bytes} | {:.1} |", bytes as f64 / n as f64);
    }
    Ok(())
}
