//! The server's (or our own) resident memory and CPU time, read from /proc.

use std::io;

use serde::{Deserialize, Serialize};

/// One reading of a process.
#[derive(Clone, Copy, Debug, Serialize, Deserialize)]
pub struct Sample {
    /// VmRSS from /proc/PID/status, in bytes.
    pub rss_bytes: u64,
    /// VmHWM (peak RSS so far) from /proc/PID/status, in bytes.
    #[serde(default)]
    pub hwm_bytes: u64,
    /// utime + stime from /proc/PID/stat, in microseconds.
    pub cpu_us: u64,
}

pub fn sample(pid: u32) -> io::Result<Sample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let rss_bytes = vm_field(&status, "VmRSS:").ok_or_else(|| bad("no VmRSS line"))?;
    let hwm_bytes = vm_field(&status, "VmHWM:").unwrap_or(rss_bytes);
    let cpu_us = cpu_us(&stat).ok_or_else(|| bad("unreadable stat line"))?;
    Ok(Sample {
        rss_bytes,
        hwm_bytes,
        cpu_us,
    })
}

/// CPU time (user + system) this process has used, in microseconds.
pub fn self_cpu_us() -> u64 {
    std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| cpu_us(&s))
        .unwrap_or(0)
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what.to_string())
}

/// A `Vm…:` line of /proc/PID/status (`key` with its colon), in bytes.
fn vm_field(status: &str, key: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with(key))?;
    let mut words = line[key.len()..].split_whitespace();
    let n: u64 = words.next()?.parse().ok()?;
    let unit = match words.next() {
        Some("kB") | None => 1024,
        Some("mB") => 1024 * 1024,
        Some(_) => return None,
    };
    Some(n * unit)
}

fn cpu_us(stat: &str) -> Option<u64> {
    // The command name (field 2) may contain spaces and parentheses: count from the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state); utime is field 14, stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) * 1_000_000 / clock_ticks())
}

fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_files() {
        let status = "Name:\tx\nVmHWM:\t  4096 kB\nVmRSS:\t  2048 kB\n";
        assert_eq!(vm_field(status, "VmRSS:"), Some(2048 * 1024));
        assert_eq!(vm_field(status, "VmHWM:"), Some(4096 * 1024));
        let stat = "42 (a b) c) S 1 2 3 4 5 6 7 8 9 10 150 50 0 0 20 0 1 0";
        assert_eq!(cpu_us(stat), Some(200 * 1_000_000 / clock_ticks()));
        let me = sample(std::process::id()).unwrap();
        assert!(me.rss_bytes > 0 && me.hwm_bytes >= me.rss_bytes);
    }
}
