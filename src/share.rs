//! One connection's share of a process-wide byte count (unfinished input held by all sockets,
//! say), kept up to date as it changes and given back when the connection is dropped.

use std::marker::PhantomData;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Which process-wide count a [`Share`] is part of.
pub trait Total {
    /// The count.
    fn total() -> &'static AtomicUsize;
}

/// A part of `T`'s count: four bytes, no pointer, so it costs an idle connection almost nothing.
pub struct Share<T: Total> {
    held: u32,
    total: PhantomData<T>,
}

impl<T: Total> Default for Share<T> {
    fn default() -> Self {
        Share {
            held: 0,
            total: PhantomData,
        }
    }
}

impl<T: Total> Share<T> {
    /// Makes this share `n` bytes (saturating at `u32::MAX`); returns it.
    pub fn set(&mut self, n: usize) -> usize {
        let n = u32::try_from(n).unwrap_or(u32::MAX);
        if n > self.held {
            T::total().fetch_add((n - self.held) as usize, Ordering::Relaxed);
        } else {
            T::total().fetch_sub((self.held - n) as usize, Ordering::Relaxed);
        }
        self.held = n;
        n as usize
    }
}

impl<T: Total> Drop for Share<T> {
    fn drop(&mut self) {
        T::total().fetch_sub(self.held as usize, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    static COUNT: AtomicUsize = AtomicUsize::new(0);
    struct Count;
    impl Total for Count {
        fn total() -> &'static AtomicUsize {
            &COUNT
        }
    }

    #[test]
    fn shares_add_up_and_are_given_back() {
        let mut a = Share::<Count>::default();
        let mut b = Share::<Count>::default();
        assert_eq!(a.set(100), 100);
        b.set(50);
        a.set(30);
        assert_eq!(COUNT.load(Ordering::Relaxed), 80);
        drop(a);
        assert_eq!(COUNT.load(Ordering::Relaxed), 50);
        drop(b);
        assert_eq!(COUNT.load(Ordering::Relaxed), 0);
    }
}
