//! Runs the push server's disk workload on redb and on SQLite and prints a markdown table.
//!
//! `store-choice [--ops N] [--dir DIR]`: N registered devices (default 100000); each store works
//! in a fresh directory under DIR (default the system temp dir), removed afterwards.

use std::error::Error;
use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use std::{env, fs};

use redb::{Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata};
use redb::{TableDefinition, TableError, WriteTransaction};
use rusqlite::Connection;

type Res<T> = Result<T, Box<dyn Error>>;
type Key = [u8; 16];

/// Operations per durable commit in the grouped phases.
const GROUP: usize = 64;
/// Entries in `messages`, one per UAID; the ack phase deletes each once.
const MESSAGES: usize = 20_000;
/// Updates in the phase of one durable commit each.
const SINGLES: usize = 2_000;
/// Close-and-open cycles in the reopen phase.
const REOPENS: usize = 5;
/// The 8-byte big-endian expiry in front of every value.
const EXPIRY: u64 = 1_769_817_600;
/// /proc/self/stat counts CPU time in ticks of 1/100 s.
const TICK_US: f64 = 10_000.0;
const PHASES: [&str; 6] = ["register", "reopen", "update", "ack", "hello", "single"];

const RECORDS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("records");
const MSGS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("messages");
const SELECT: &str = "SELECT v FROM records WHERE k = ?1";

enum Op {
    /// A new key in `records` (register), or in `messages` (`true`; setup only).
    Insert(Key, Vec<u8>, bool),
    /// Read the record, write it back with a new version: `Some` for a PUT; `None` (version "-")
    /// for an ack, which also deletes the UAID's message.
    Update(Key, Option<u64>),
}

/// The record with its last field, the channel's version, replaced.
fn rewrite(old: &[u8], version: Option<u64>) -> Res<Vec<u8>> {
    let cut = old.iter().rposition(|&b| b == b' ').filter(|&i| i > 8).ok_or("bad record")?;
    let mut v = old[..=cut].to_vec();
    v.extend_from_slice(version.map_or("-".into(), |n| n.to_string()).as_bytes());
    v.push(b'\n');
    Ok(v)
}

trait Store {
    /// Applies `ops` in one durable (fsync'd) transaction.
    fn commit(&mut self, ops: &[Op]) -> Res<()>;
    /// Reads one record in a read transaction of its own; an error if it is missing.
    fn read(&mut self, k: &Key) -> Res<()>;
    fn close(&mut self);
    /// Opens (or creates) the file and counts the records.
    fn open_count(&mut self) -> Res<u64>;
    /// Bytes of the store's files (SQLite: after a checkpoint, the -wal file included).
    fn bytes(&mut self) -> Res<u64>;
}

struct Redb(PathBuf, Option<Database>);

fn redb_apply(txn: &WriteTransaction, ops: &[Op]) -> Res<()> {
    let (mut recs, mut msgs) = (txn.open_table(RECORDS)?, txn.open_table(MSGS)?);
    for op in ops {
        match op {
            Op::Insert(k, v, false) => drop(recs.insert(k.as_slice(), v.as_slice())?),
            Op::Insert(k, v, true) => drop(msgs.insert(k.as_slice(), v.as_slice())?),
            Op::Update(k, ver) => {
                let old = recs.get(k.as_slice())?.ok_or("missing key")?.value().to_vec();
                recs.insert(k.as_slice(), rewrite(&old, *ver)?.as_slice())?;
                if ver.is_none() {
                    msgs.remove(k.as_slice())?.ok_or("missing message")?;
                }
            }
        }
    }
    Ok(())
}

impl Store for Redb {
    fn commit(&mut self, ops: &[Op]) -> Res<()> {
        let mut txn = self.1.as_ref().ok_or("closed")?.begin_write()?;
        txn.set_durability(Durability::Immediate)?;
        txn.set_quick_repair(true);
        redb_apply(&txn, ops)?;
        Ok(txn.commit()?)
    }
    fn read(&mut self, k: &Key) -> Res<()> {
        let txn = self.1.as_ref().ok_or("closed")?.begin_read()?;
        let table = txn.open_table(RECORDS)?;
        black_box(table.get(k.as_slice())?.ok_or("read missed")?.value().to_vec());
        Ok(())
    }
    fn close(&mut self) {
        self.1 = None;
    }
    fn open_count(&mut self) -> Res<u64> {
        let db = Database::create(&self.0)?;
        let n = match db.begin_read()?.open_table(RECORDS) {
            Ok(table) => table.len()?,
            Err(TableError::TableDoesNotExist(_)) => 0, // a new file
            Err(e) => return Err(e.into()),
        };
        self.1 = Some(db);
        Ok(n)
    }
    fn bytes(&mut self) -> Res<u64> {
        Ok(fs::metadata(&self.0)?.len())
    }
}

struct Sqlite(PathBuf, Option<Connection>);

fn sqlite_apply(c: &Connection, ops: &[Op]) -> Res<()> {
    for op in ops {
        match op {
            Op::Insert(k, v, msg) => {
                let table = if *msg { "messages" } else { "records" };
                c.prepare_cached(&format!("INSERT INTO {table} (k, v) VALUES (?1, ?2)"))?
                    .execute((k.as_slice(), v.as_slice()))?;
            }
            Op::Update(k, ver) => {
                let old: Vec<u8> =
                    c.prepare_cached(SELECT)?.query_row([k.as_slice()], |r| r.get(0))?;
                c.prepare_cached("UPDATE records SET v = ?2 WHERE k = ?1")?
                    .execute((k.as_slice(), rewrite(&old, *ver)?.as_slice()))?;
                let delete = "DELETE FROM messages WHERE k = ?1";
                if ver.is_none() && c.prepare_cached(delete)?.execute([k.as_slice()])? != 1 {
                    return Err("missing message".into());
                }
            }
        }
    }
    Ok(())
}

impl Store for Sqlite {
    fn commit(&mut self, ops: &[Op]) -> Res<()> {
        let c = self.1.as_ref().ok_or("closed")?;
        c.prepare_cached("BEGIN IMMEDIATE")?.execute([])?;
        if let Err(e) = sqlite_apply(c, ops) {
            c.execute_batch("ROLLBACK")?;
            return Err(e);
        }
        c.prepare_cached("COMMIT")?.execute([])?;
        Ok(())
    }
    fn read(&mut self, k: &Key) -> Res<()> {
        let mut st = self.1.as_ref().ok_or("closed")?.prepare_cached(SELECT)?;
        black_box(st.query_row([k.as_slice()], |r| r.get::<_, Vec<u8>>(0))?);
        Ok(())
    }
    fn close(&mut self) {
        self.1 = None;
    }
    fn open_count(&mut self) -> Res<u64> {
        let c = Connection::open(&self.0)?;
        c.execute_batch(
            "PRAGMA journal_mode = WAL; PRAGMA synchronous = FULL;
             CREATE TABLE IF NOT EXISTS records (k BLOB PRIMARY KEY, v BLOB) WITHOUT ROWID;
             CREATE TABLE IF NOT EXISTS messages (k BLOB PRIMARY KEY, v BLOB) WITHOUT ROWID;",
        )?;
        let n: i64 = c.query_row("SELECT count(*) FROM records", [], |r| r.get(0))?;
        self.1 = Some(c);
        Ok(n as u64)
    }
    fn bytes(&mut self) -> Res<u64> {
        let c = self.1.as_ref().ok_or("closed")?;
        if c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get::<_, i64>(0))? != 0 {
            return Err("checkpoint did not complete".into());
        }
        let wal = fs::metadata(self.0.with_extension("sqlite-wal")).map_or(0, |m| m.len());
        Ok(fs::metadata(&self.0)?.len() + wal)
    }
}

/// splitmix64: the same seed gives both stores the same keys and operations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let z = (self.0 ^ (self.0 >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        let z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn key(&mut self) -> Key {
        ((u128::from(self.next()) << 64) | u128::from(self.next())).to_le_bytes()
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn stamped(body: String) -> Vec<u8> {
    [&EXPIRY.to_be_bytes()[..], body.as_bytes()].concat()
}

/// Expiry + one channel line: "<channel id> <channel expiry> <version>\n".
fn record(chid: Key, version: u64) -> Vec<u8> {
    stamped(format!("{:032x} 1767225600 {version}\n", u128::from_be_bytes(chid)))
}

/// Expiry + a 292-byte JSON list of one waiting message.
fn message(chid: Key) -> Vec<u8> {
    let head = format!(
        r#"[{{"chid":"{:032x}","version":"1767225600123","ttl":86400,"data":""#,
        u128::from_be_bytes(chid)
    );
    stamped(format!(r#"{head}{}"}}]"#, "x".repeat(292 - 3 - head.len())))
}

/// CPU time (user + system) of the process so far, in ticks: /proc/self/stat fields 14 and 15.
fn cpu_ticks() -> Res<u64> {
    let stat = fs::read_to_string("/proc/self/stat")?;
    let f: Vec<&str> = stat.rsplit(") ").next().unwrap_or("").split(' ').collect(); // from field 3
    Ok(f.get(11).ok_or("bad stat")?.parse::<u64>()?
        + f.get(12).ok_or("bad stat")?.parse::<u64>()?)
}

struct Row {
    phase: &'static str,
    store: &'static str,
    ops: usize,
    secs: f64,
    lat: Vec<Duration>,
    ticks: u64,
}

/// Runs `steps` timed calls of `step` (each one commit or one read): `ops` operations in all.
fn measure(
    phase: &'static str,
    store: &mut dyn Store,
    (ops, steps): (usize, usize),
    mut step: impl FnMut(&mut dyn Store, usize) -> Res<()>,
) -> Res<Row> {
    let mut lat = Vec::with_capacity(steps);
    let (cpu, start) = (cpu_ticks()?, Instant::now());
    for i in 0..steps {
        let t = Instant::now();
        step(store, i)?;
        lat.push(t.elapsed());
    }
    let (secs, ticks) = (start.elapsed().as_secs_f64(), cpu_ticks()? - cpu);
    Ok(Row { phase, store: "", ops, secs, lat, ticks })
}

/// Closes the store (not timed), then times opening it and counting the records; `REOPENS` times.
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
    Ok(Row { phase: "reopen", store: "", ops: REOPENS, secs, lat, ticks })
}

fn grouped(phase: &'static str, store: &mut dyn Store, ops: &[Op], per: usize) -> Res<Row> {
    let chunks: Vec<&[Op]> = ops.chunks(per).collect();
    measure(phase, store, (ops.len(), chunks.len()), |s, i| s.commit(chunks[i]))
}

/// The phases on one store, in order; returns the rows and the bytes on disk at the end.
fn run(store: &mut dyn Store, n: usize) -> Res<(Vec<Row>, u64)> {
    let mut rng = Rng(0x5eed);
    let keys: Vec<Key> = (0..n).map(|_| rng.key()).collect();
    let mut version = 1_767_225_600_000u64..;
    let mut rows = Vec::new();
    store.open_count()?;

    let regs: Vec<Op> = (keys.iter().zip(&mut version))
        .map(|(k, v)| Op::Insert(*k, record(rng.key(), v), false))
        .collect();
    rows.push(grouped("register", store, &regs, GROUP)?);
    rows.push(reopen(store, n)?);

    let m = MESSAGES.min(n);
    let msgs: Vec<Op> =
        keys[..m].iter().map(|k| Op::Insert(*k, message(rng.key()), true)).collect();
    msgs.chunks(1000).try_for_each(|c| store.commit(c))?;

    let mut update = |rng: &mut Rng, count| -> Vec<Op> {
        (0..count).map(|_| Op::Update(keys[rng.below(n)], version.next())).collect()
    };
    rows.push(grouped("update", store, &update(&mut rng, n), GROUP)?);

    let mut acked = keys[..m].to_vec();
    for i in (1..m).rev() {
        acked.swap(i, rng.below(i + 1));
    }
    let acks: Vec<Op> = acked.into_iter().map(|k| Op::Update(k, None)).collect();
    rows.push(grouped("ack", store, &acks, GROUP)?);

    let reads: Vec<Key> = (0..n).map(|_| keys[rng.below(n)]).collect();
    rows.push(measure("hello", store, (n, n), |s, i| s.read(&reads[i]))?);

    rows.push(grouped("single", store, &update(&mut rng, SINGLES), 1)?);
    Ok((rows, store.bytes()?))
}

fn pct(sorted: &[Duration], q: f64) -> String {
    let i = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    let us = sorted[i].as_secs_f64() * 1e6;
    format!("{us:.*}", usize::from(us < 100.0))
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
    let (mut rows, mut sizes) = (Vec::new(), Vec::new());
    for name in ["redb", "SQLite"] {
        let work = dir.join(format!("store-choice-{}-{name}", std::process::id()));
        fs::create_dir_all(&work)?;
        let file = work.join(format!("store.{}", name.to_lowercase()));
        let mut store: Box<dyn Store> = match name {
            "redb" => Box::new(Redb(file, None)),
            _ => Box::new(Sqlite(file, None)),
        };
        let result = run(store.as_mut(), n);
        drop(store);
        fs::remove_dir_all(&work)?;
        let (mut got, bytes) = result?;
        got.iter_mut().for_each(|r| r.store = name);
        rows.extend(got);
        sizes.push((name, bytes));
    }
    rows.sort_by_key(|r| PHASES.iter().position(|p| *p == r.phase)); // stable: redb first
    let (rec, msg) = (record([0; 16], 1_767_225_600_000).len(), message([0; 16]).len());
    println!("N = {n}; record {rec} bytes, message {msg} bytes; dir {}\n", dir.display());
    println!("| phase | store | ops | ops/s | median µs | p99 µs | CPU µs/op |");
    println!("|---|---|---:|---:|---:|---:|---:|");
    for r in &mut rows {
        r.lat.sort();
        let (rate, cpu) = (r.ops as f64 / r.secs, r.ticks as f64 * TICK_US / r.ops as f64);
        let (phase, store, ops, p50, p99) =
            (r.phase, r.store, r.ops, pct(&r.lat, 0.5), pct(&r.lat, 0.99));
        println!("| {phase} | {store} | {ops} | {rate:.0} | {p50} | {p99} | {cpu:.1} |");
    }
    println!("\n| store | file bytes | bytes/device |\n|---|---:|---:|");
    for (name, bytes) in sizes {
        println!("| {name} | {bytes} | {:.1} |", bytes as f64 / n as f64);
    }
    Ok(())
}
