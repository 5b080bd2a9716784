//! UAID → the connection that is its live socket. The newest connection wins.

use std::collections::HashMap;

use sm::Uaid;

/// Which connection (slab key) delivers for each UAID.
#[derive(Default)]
pub struct Registry {
    /// Slab keys fit 32 bits (a process holds far fewer sockets), which keeps entries small.
    live: HashMap<Uaid, u32>,
}

impl Registry {
    /// Makes `conn` the UAID's live socket; returns the connection it replaced, if another.
    pub fn bind(&mut self, uaid: Uaid, conn: usize) -> Option<usize> {
        self.live
            .insert(uaid, conn as u32)
            .map(|old| old as usize)
            .filter(|&old| old != conn)
    }

    /// Removes the mapping, but only if it still points at `conn`.
    pub fn unbind(&mut self, uaid: &Uaid, conn: usize) {
        if self.live.get(uaid) == Some(&(conn as u32)) {
            self.live.remove(uaid);
        }
    }

    /// The live connection of a UAID.
    pub fn get(&self, uaid: &Uaid) -> Option<usize> {
        self.live.get(uaid).map(|&k| k as usize)
    }

    /// How many UAIDs are live.
    pub fn len(&self) -> usize {
        self.live.len()
    }

    /// No UAID is live.
    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sm::Id;

    #[test]
    fn newest_wins_and_stale_unbind_is_ignored() {
        let mut r = Registry::default();
        let u = Uaid(Id::fresh([1; 16]));
        assert_eq!(r.bind(u, 1), None);
        assert_eq!(r.bind(u, 1), None);
        assert_eq!(r.bind(u, 2), Some(1));
        r.unbind(&u, 1);
        assert_eq!(r.get(&u), Some(2));
        r.unbind(&u, 2);
        assert_eq!(r.get(&u), None);
        assert_eq!(r.len(), 0);
    }
}
