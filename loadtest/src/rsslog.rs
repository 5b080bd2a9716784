//! `--rss-csv`: the server's memory over time, one CSV row every `--sample-secs` and one at
//! every phase barrier, flushed at once so the file can be watched while the run goes on.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use crate::procstat;
use crate::progress::Snapshot;

pub struct RssLog {
    out: BufWriter<File>,
    pid: u32,
    every: Duration,
    start: Instant,
    next: Instant,
}

impl RssLog {
    pub fn create(path: &Path, pid: u32, every_secs: f64) -> io::Result<Self> {
        let mut out = BufWriter::new(File::create(path)?);
        writeln!(
            out,
            "elapsed_s,phase,rss_kib,hwm_kib,cpu_s,online,cycles,puts,received"
        )?;
        out.flush()?;
        let now = Instant::now();
        let every = Duration::from_secs_f64(every_secs);
        Ok(Self {
            out,
            pid,
            every,
            start: now,
            next: now + every,
        })
    }

    pub fn due(&self, now: Instant) -> bool {
        now >= self.next
    }

    /// Samples the server and writes a row labelled `phase`; a failed sample is a row of blanks.
    pub fn row(&mut self, phase: &str, snap: &Snapshot) {
        let now = Instant::now();
        if now >= self.next {
            self.next = now + self.every;
        }
        let (rss, hwm, cpu) = match procstat::sample(self.pid) {
            Ok(s) => (
                (s.rss_bytes / 1024).to_string(),
                (s.hwm_bytes / 1024).to_string(),
                format!("{:.2}", s.cpu_us as f64 / 1e6),
            ),
            Err(_) => (String::new(), String::new(), String::new()),
        };
        let _ = writeln!(
            self.out,
            "{:.1},{},{},{},{},{},{},{},{}",
            now.duration_since(self.start).as_secs_f64(),
            phase.replace(',', ";"),
            rss,
            hwm,
            cpu,
            snap.open,
            snap.cycles,
            snap.sent,
            snap.received
        );
        let _ = self.out.flush();
    }
}
