//! Time: every expiry, lease and delay in ttlstore is an absolute unix time in milliseconds read
//! from a [`Clock`].
//!
//! Production code uses [`SystemClock`]. Tests use [`ManualClock`], which only moves when told
//! to; background threads that wait for a deadline are woken whenever it is advanced, so no test
//! ever sleeps to wait for an expiry.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A callback a clock invokes when its time jumps. Registered by stores and higher layers.
pub type Waker = dyn Fn() + Send + Sync;

/// A source of unix time in milliseconds.
pub trait Clock: Send + Sync + fmt::Debug {
    /// The current unix time in milliseconds.
    fn now_ms(&self) -> u64;

    /// How long to wait in real time for this clock to reach `deadline_ms`, or `None` when the
    /// clock only moves by explicit calls (then waiters wait for a [`Clock::register`]ed wake).
    fn real_wait(&self, deadline_ms: u64) -> Option<Duration> {
        Some(Duration::from_millis(
            deadline_ms.saturating_sub(self.now_ms()),
        ))
    }

    /// Registers a callback to run whenever the clock jumps. A real clock never jumps, so the
    /// default ignores it. The clock holds the callback weakly: dropping the `Arc` unregisters it.
    fn register(&self, waker: Weak<Waker>) {
        let _ = waker;
    }
}

/// The operating system's wall clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0)
    }
}

/// A clock that moves only when told to: for tests of TTLs, leases and delays.
///
/// ```
/// use std::time::Duration;
/// use ttlstore::{Clock, ManualClock};
/// let clock = ManualClock::new(1_700_000_000_000);
/// clock.advance(Duration::from_secs(5));
/// assert_eq!(clock.now_ms(), 1_700_000_005_000);
/// ```
#[derive(Default)]
pub struct ManualClock {
    now: AtomicU64,
    wakers: Mutex<Vec<Weak<Waker>>>,
}

impl fmt::Debug for ManualClock {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ManualClock")
            .field("now_ms", &self.now_ms())
            .finish()
    }
}

impl ManualClock {
    /// A clock standing at `start_unix_ms`.
    pub fn new(start_unix_ms: u64) -> Self {
        ManualClock {
            now: AtomicU64::new(start_unix_ms),
            wakers: Mutex::new(Vec::new()),
        }
    }

    /// Moves the clock forward by `d` and wakes everything waiting on it.
    pub fn advance(&self, d: Duration) {
        self.now.fetch_add(d.as_millis() as u64, Ordering::SeqCst);
        self.wake();
    }

    /// Sets the clock to `unix_ms` (backwards too) and wakes everything waiting on it.
    pub fn set(&self, unix_ms: u64) {
        self.now.store(unix_ms, Ordering::SeqCst);
        self.wake();
    }

    fn wake(&self) {
        let wakers: Vec<Arc<Waker>> = {
            let mut list = self.wakers.lock().unwrap_or_else(|e| e.into_inner());
            list.retain(|w| w.strong_count() > 0);
            list.iter().filter_map(Weak::upgrade).collect()
        };
        for w in wakers {
            w();
        }
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.now.load(Ordering::SeqCst)
    }

    fn real_wait(&self, _deadline_ms: u64) -> Option<Duration> {
        None
    }

    fn register(&self, waker: Weak<Waker>) {
        self.wakers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(waker);
    }
}

impl<C: Clock + ?Sized> Clock for Arc<C> {
    fn now_ms(&self) -> u64 {
        (**self).now_ms()
    }
    fn real_wait(&self, deadline_ms: u64) -> Option<Duration> {
        (**self).real_wait(deadline_ms)
    }
    fn register(&self, waker: Weak<Waker>) {
        (**self).register(waker)
    }
}

/// Milliseconds in a duration, saturating at `u64::MAX`.
pub(crate) fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn manual_clock_wakes_registered_callbacks() {
        let clock = ManualClock::new(10);
        let hits = Arc::new(AtomicUsize::new(0));
        let h = hits.clone();
        let waker: Arc<Waker> = Arc::new(move || {
            h.fetch_add(1, Ordering::SeqCst);
        });
        clock.register(Arc::downgrade(&waker));
        clock.advance(Duration::from_millis(5));
        clock.set(100);
        assert_eq!(clock.now_ms(), 100);
        assert_eq!(hits.load(Ordering::SeqCst), 2);
        drop(waker);
        clock.advance(Duration::from_millis(1));
        assert_eq!(hits.load(Ordering::SeqCst), 2);
    }
}
