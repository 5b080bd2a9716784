//! Consistent hashing: which memcached server holds a key. Adding one server to N moves about
//! 1/(N+1) of the keys, where hash-modulo would move almost all of them.

/// Points on the ring per server; more points even out the share of each server.
const POINTS_PER_SERVER: u32 = 160;

/// FNV-1a with a murmur3 finaliser: stable across builds and processes, so every node agrees.
pub fn hash(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h = h.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    h ^ (h >> 33)
}

/// A hash ring over server names.
#[derive(Debug, Clone)]
pub struct Ring {
    points: Vec<(u64, usize)>,
}

impl Ring {
    /// A ring of these servers (by name, e.g. `127.0.0.1:11211`); index `i` means `servers[i]`.
    pub fn new<S: AsRef<str>>(servers: &[S]) -> Ring {
        let mut points = Vec::with_capacity(servers.len() * POINTS_PER_SERVER as usize);
        for (i, s) in servers.iter().enumerate() {
            for p in 0..POINTS_PER_SERVER {
                points.push((hash(format!("{}#{p}", s.as_ref()).as_bytes()), i));
            }
        }
        points.sort_unstable();
        Ring { points }
    }

    /// Every server, in the order a key prefers them: its own first, then the next ones met
    /// walking the ring (where its copies go).
    pub fn order(&self, key: &str, servers: usize) -> Vec<usize> {
        let mut out = Vec::with_capacity(servers);
        if self.points.is_empty() {
            return (0..servers).collect();
        }
        let h = hash(key.as_bytes());
        let start = self.points.partition_point(|&(p, _)| p < h);
        for k in 0..self.points.len() {
            let s = self.points[(start + k) % self.points.len()].1;
            if !out.contains(&s) {
                out.push(s);
                if out.len() == servers {
                    break;
                }
            }
        }
        out
    }

    /// The server index for a key.
    pub fn pick(&self, key: &str) -> usize {
        if self.points.is_empty() {
            return 0;
        }
        let h = hash(key.as_bytes());
        let at = self.points.partition_point(|&(p, _)| p < h);
        self.points[at % self.points.len()].1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn servers(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.0.{i}:11211")).collect()
    }

    #[test]
    fn adding_a_server_moves_about_one_share_of_keys() {
        let keys: Vec<String> = (0..20_000).map(|i| format!("c/{i:032x}")).collect();
        for n in [1usize, 2, 3, 5, 8] {
            let before = Ring::new(&servers(n));
            let after = Ring::new(&servers(n + 1));
            let moved = keys
                .iter()
                .filter(|k| before.pick(k) != after.pick(k))
                .count();
            let share = moved as f64 / keys.len() as f64;
            let ideal = 1.0 / (n as f64 + 1.0);
            assert!(
                share <= ideal * 1.25,
                "{n}→{}: moved {share:.3}, ideal {ideal:.3}",
                n + 1
            );
            // Every moved key went to the new server.
            assert!(keys
                .iter()
                .filter(|k| before.pick(k) != after.pick(k))
                .all(|k| after.pick(k) == n));
        }
    }

    #[test]
    fn a_keys_order_starts_at_its_server_and_names_each_once() {
        let ring = Ring::new(&servers(5));
        for i in 0..2_000 {
            let k = format!("u/{i:032x}");
            let order = ring.order(&k, 5);
            assert_eq!(order[0], ring.pick(&k));
            let mut sorted = order.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, vec![0, 1, 2, 3, 4]);
        }
        // Second copies spread too: not always the same neighbour.
        let seconds: std::collections::HashSet<usize> = (0..200)
            .map(|i| ring.order(&format!("u/{i:032x}"), 5)[1])
            .collect();
        assert!(seconds.len() >= 4, "{seconds:?}");
    }

    #[test]
    fn keys_spread_evenly_enough() {
        let ring = Ring::new(&servers(4));
        let mut counts = [0usize; 4];
        for i in 0..40_000 {
            counts[ring.pick(&format!("u/{i:032x}"))] += 1;
        }
        for c in counts {
            assert!((7_000..13_000).contains(&c), "{counts:?}");
        }
    }

    #[test]
    fn hash_modulo_would_move_most_keys() {
        // The contrast that motivates the ring: modulo hashing remaps ~n/(n+1) of the keys.
        let keys: Vec<String> = (0..10_000).map(|i| format!("c/{i:032x}")).collect();
        let moved = keys
            .iter()
            .filter(|k| hash(k.as_bytes()) % 4 != hash(k.as_bytes()) % 5)
            .count();
        assert!(moved > keys.len() * 7 / 10);
    }
}
