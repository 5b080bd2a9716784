//! The host's limits that cap connections, read at start, so that a limit is a warning in the
//! log rather than a discovery at 800,000 devices.
//!
//! Each server connection is one descriptor (against `RLIMIT_NOFILE`, itself capped by
//! `fs.nr_open`, and the host's `fs.file-max`), one conntrack entry when conntrack tracks the
//! port, and, after it closes, one TIME-WAIT bucket on the side that closed first. The listen
//! backlog is capped by `net.core.somaxconn`.

use std::fs;

use crate::config::ServerConfig;

/// Descriptors kept out of `max_connections` for listeners, storage connections, files and the
/// admin listener: a twentieth of the open-files limit, 64 to 1024.
pub fn fd_reserve(nofile: u64) -> u64 {
    (nofile / 20).clamp(64, 1024)
}

/// What one reading of the host found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Host {
    /// `RLIMIT_NOFILE`, soft and hard (`u64::MAX`: unlimited; `None`: unreadable).
    pub nofile: (Option<u64>, Option<u64>),
    /// `fs.nr_open`: the most any process may raise `RLIMIT_NOFILE` to.
    pub nr_open: Option<u64>,
    /// `fs.file-max`: descriptors in the whole host.
    pub file_max: Option<u64>,
    /// `net.core.somaxconn`: the longest listen backlog.
    pub somaxconn: Option<u64>,
    /// `net.netfilter.nf_conntrack_max`, when conntrack is loaded.
    pub conntrack_max: Option<u64>,
    /// `net.ipv4.tcp_max_tw_buckets`.
    pub tw_buckets: Option<u64>,
}

fn number(path: &str) -> Option<u64> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// `Max open files` (soft, hard) in the text of `/proc/self/limits`; `u64::MAX` for "unlimited".
pub fn open_files_in(text: &str) -> (Option<u64>, Option<u64>) {
    let Some(line) = text.lines().find_map(|l| l.strip_prefix("Max open files")) else {
        return (None, None);
    };
    let mut values = line.split_whitespace().map(|v| match v {
        "unlimited" => Some(u64::MAX),
        n => n.parse().ok(),
    });
    (values.next().flatten(), values.next().flatten())
}

fn nofile() -> (Option<u64>, Option<u64>) {
    open_files_in(&fs::read_to_string("/proc/self/limits").unwrap_or_default())
}

impl Host {
    /// Reads this host.
    pub fn read() -> Host {
        Host {
            nofile: nofile(),
            nr_open: number("/proc/sys/fs/nr_open"),
            file_max: number("/proc/sys/fs/file-max"),
            somaxconn: number("/proc/sys/net/core/somaxconn"),
            conntrack_max: number("/proc/sys/net/netfilter/nf_conntrack_max"),
            tw_buckets: number("/proc/sys/net/ipv4/tcp_max_tw_buckets"),
        }
    }

    /// One warning per host-wide limit (sysctl) that caps `max_connections` (or the backlog)
    /// below its setting, each naming the sysctl that raises it. The process's own open-files
    /// limit is [`fit_to`]'s: it lowers `max_connections` to fit.
    pub fn warnings(&self, max_connections: u64, backlog: u64) -> Vec<String> {
        let reserve = fd_reserve(self.nofile.0.unwrap_or(u64::MAX));
        let wanted = max_connections + reserve;
        let mut out = Vec::new();
        let checks = [
            (
                self.nr_open,
                "fs.nr_open",
                "no process may raise its open-files limit above it",
            ),
            (
                self.file_max,
                "fs.file-max",
                "descriptors of the whole host, clients on it included",
            ),
            (
                self.conntrack_max,
                "net.netfilter.nf_conntrack_max",
                "connections conntrack can track, if it tracks this port",
            ),
        ];
        for (value, name, what) in checks {
            if let Some(v) = value.filter(|v| *v < wanted) {
                out.push(format!(
                    "{name} is {v} ({what}): below server.max_connections = {max_connections}; \
                     raise it: sysctl -w {name}={wanted} (and in /etc/sysctl.d/)"
                ));
            }
        }
        if let Some(v) = self.tw_buckets.filter(|v| *v < max_connections) {
            out.push(format!(
                "net.ipv4.tcp_max_tw_buckets is {v}: when more than that many connections close at \
                 once (a restart of a load balancer or of this server) the rest skip TIME-WAIT; \
                 sysctl -w net.ipv4.tcp_max_tw_buckets={max_connections}"
            ));
        }
        if let Some(v) = self.somaxconn.filter(|v| *v < backlog) {
            out.push(format!(
                "net.core.somaxconn is {v}: the kernel shortens server.listen_backlog = {backlog} to \
                 it, so a burst of reconnecting devices overflows the queue sooner; \
                 sysctl -w net.core.somaxconn={backlog}"
            ));
        }
        out
    }
}

/// Raises the soft open-files limit to the hard one (the soft default of 1024 is there for
/// programs using select(2), which this one does not).
fn raise_nofile() {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 || lim.rlim_cur >= lim.rlim_max {
            return;
        }
        lim.rlim_cur = lim.rlim_max;
        if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
            log::warn!(
                "cannot raise the open-files limit to {}: {}",
                lim.rlim_max,
                std::io::Error::last_os_error()
            );
        }
    }
}

/// Fits `server` to the open-files limit `nofile`: `max_connections` leaves `fd_reserve`
/// descriptors free. Returns what was changed.
pub fn fit_to(server: &mut ServerConfig, nofile: u64) -> Vec<String> {
    let mut out = Vec::new();
    let reserve = fd_reserve(nofile);
    let most = nofile.saturating_sub(reserve).max(1) as usize;
    if server.max_connections > most {
        out.push(format!(
            "server.max_connections lowered from {} to {most}: the open-files limit \
             (RLIMIT_NOFILE) is {nofile} and {reserve} descriptors are kept for listeners, \
             storage and files; raise the limit to {} or more (systemd LimitNOFILE=, \
             docker run --ulimit nofile=, ulimit -n)",
            server.max_connections,
            server.max_connections as u64 + reserve
        ));
        server.max_connections = most;
    }
    out
}

/// At start: raises the open-files limit, logs each host limit that caps the configured
/// `max_connections` (or backlog), and fits `server` to the open-files limit.
pub fn fit(server: &mut ServerConfig) {
    raise_nofile();
    let host = Host::read();
    let configured = server.max_connections as u64;
    let mut said = host.warnings(configured, u64::from(server.listen_backlog));
    if let Some(nofile) = host.nofile.0 {
        said.extend(fit_to(server, nofile));
    }
    for w in said {
        log::warn!("host limit: {w}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roomy() -> Host {
        Host {
            nofile: (Some(2_000_000), Some(2_000_000)),
            nr_open: Some(2_000_000),
            file_max: Some(10_000_000),
            somaxconn: Some(65535),
            conntrack_max: None,
            tw_buckets: Some(2_000_000),
        }
    }

    #[test]
    fn a_roomy_host_gives_no_warning() {
        assert!(roomy().warnings(1_000_000, 4096).is_empty());
    }

    #[test]
    fn each_capping_limit_gets_one_warning_naming_its_setting() {
        let tight = Host {
            nofile: (Some(20_000), Some(20_000)),
            nr_open: Some(1_048_576),
            file_max: Some(2_470_000),
            somaxconn: Some(4096),
            conntrack_max: Some(262_144),
            tw_buckets: Some(262_144),
        };
        let mut w = tight.warnings(1_050_000, 8192);
        let mut server = ServerConfig {
            max_connections: 1_050_000,
            ..ServerConfig::default()
        };
        w.extend(fit_to(&mut server, 20_000));
        assert_eq!(w.len(), 5, "{w:#?}");
        for needle in [
            "RLIMIT_NOFILE",
            "fs.nr_open",
            "nf_conntrack_max",
            "tcp_max_tw_buckets",
            "somaxconn",
        ] {
            assert_eq!(
                w.iter().filter(|l| l.contains(needle)).count(),
                1,
                "{needle}: {w:#?}"
            );
        }
        assert!(w[4].contains("lowered from 1050000 to 19000"), "{}", w[4]);
        // fs.file-max (2.47M) holds 1.05M.
        assert!(!w.iter().any(|l| l.contains("fs.file-max")));
    }

    #[test]
    fn max_connections_leaves_the_reserve_free() {
        let mut s = ServerConfig::default();
        assert_eq!((s.max_connections, s.device_share()), (100_000, 95_000));
        let said = fit_to(&mut s, 20_000);
        assert_eq!((s.max_connections, s.device_share()), (19_000, 18_050));
        assert_eq!(said.len(), 1, "{said:?}");
        assert!(
            said[0].contains("lowered from 100000 to 19000"),
            "{}",
            said[0]
        );
        let said = fit_to(&mut s, 300);
        assert_eq!((s.max_connections, s.device_share()), (236, 225));
        assert_eq!(said.len(), 1, "{said:?}");
        // A roomy host changes nothing.
        let mut s = ServerConfig::default();
        assert!(fit_to(&mut s, 1_048_576).is_empty());
        assert_eq!(s.max_connections, 100_000);
    }

    #[test]
    fn this_host_can_be_read() {
        let h = Host::read();
        assert!(h.nofile.0.is_some() && h.file_max.is_some(), "{h:?}");
    }
}
