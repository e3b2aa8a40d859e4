//! [`Cache`]: a persistent TTL cache with single-flight loading, TTL jitter, negative caching,
//! refresh-ahead and hit/miss statistics.
//!
//! A cache is a view of the store's [`Namespace::CACHES`] keyspace, built only on the public
//! [`Store`] API. Its entries are ordinary records there, so they survive a restart with their
//! absolute expiry; statistics and loads in flight live in memory only.
//!
//! ```
//! # fn main() -> ttlstore::Result<()> {
//! # let dir = tempfile::tempdir().unwrap();
//! use std::time::Duration;
//! use ttlstore::{CacheOptions, Store};
//!
//! let store = Store::open(dir.path())?;
//! let cache = store.cache("users", CacheOptions::new(Duration::from_secs(60)).jitter(0.1))?;
//! let v = cache.get_or_insert_with(b"42", || Some(b"alice".to_vec()))?;
//! assert_eq!(v.unwrap(), b"alice");
//! // The second call is served from the store; the loader does not run.
//! let v = cache.get_or_insert_with(b"42", || unreachable!())?;
//! assert_eq!(v.unwrap(), b"alice");
//! assert_eq!(cache.stats().loads, 1);
//! # Ok(()) }
//! ```
//!
//! ## Layout
//! - Keys: one byte with the length of the cache's name, the name, then the caller's key. The
//!   length byte makes the prefixes of two caches disjoint (no name's prefix is a prefix of
//!   another's), so caches never collide and a prefix invalidation is an ordered scan of the
//!   cache's own key range.
//! - Values: a tag byte, then the value. Tag `1` is a cached value; tag `0` (alone) is a
//!   negative entry: "the loader said this key does not exist", kept for the negative TTL.
//!
//! ## Loads
//! On a miss, [`Cache::get_or_insert_with`] registers the key in a table of loads in flight
//! shared by every handle of this cache in this open store ([`Store::extension`]). The first
//! caller runs the loader; every other caller for the same key waits on a condition variable and
//! receives the same result: the value, "absent", or the loader's error (nothing is cached on an
//! error). If the loader panics, the waiters get [`CacheError::LoaderPanicked`] and the key is
//! free to load again. A write to a key ([`Cache::insert`], [`Cache::invalidate`],
//! [`Cache::invalidate_prefix`]) while its load is in flight marks that load stale: its result
//! still goes to the callers waiting for it but is not written, so an invalidation is never undone
//! by a load that started before it.

use crate::batch::Expiry;
use crate::error::{Error, Result};
use crate::store::{Keyspace, Namespace, Store, Value};
use crate::{MAX_KEY_LEN, MAX_VALUE_LEN};
use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::ops::Deref;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Tag byte of a negative entry (the value is this byte alone).
const TAG_ABSENT: u8 = 0;
/// Tag byte of a cached value (followed by the value).
const TAG_VALUE: u8 = 1;
/// Keys deleted per batch by [`Cache::invalidate_prefix`].
const INVALIDATE_CHUNK: usize = 1024;

/// Settings of a [`Cache`], built with chained setters from [`CacheOptions::new`].
#[derive(Debug, Clone, PartialEq)]
pub struct CacheOptions {
    ttl: Duration,
    jitter: f64,
    negative_ttl: Option<Duration>,
    refresh_ahead: Option<Duration>,
    seed: Option<u64>,
}

impl CacheOptions {
    /// Entries live for `ttl` (at least 1 ms); no jitter, no negative caching, no refresh-ahead.
    pub fn new(ttl: Duration) -> CacheOptions {
        CacheOptions {
            ttl,
            jitter: 0.0,
            negative_ttl: None,
            refresh_ahead: None,
            seed: None,
        }
    }

    /// A fraction in `0.0..=1.0`: each entry's TTL is shortened by a random part of up to this
    /// fraction of it (never lengthened, never below 1 ms), so entries loaded together do not
    /// all expire in the same instant. Applies to values and negative entries written with the
    /// cache's TTLs, not to [`Cache::insert_with_ttl`]. Default 0.
    pub fn jitter(mut self, fraction: f64) -> Self {
        self.jitter = fraction;
        self
    }

    /// How long a loader's "absent" answer is remembered. Default: not at all (every lookup of
    /// a missing key runs the loader again).
    pub fn negative_ttl(mut self, ttl: Duration) -> Self {
        self.negative_ttl = Some(ttl);
        self
    }

    /// Refresh-ahead: when [`Cache::get_or_insert_with`] hits an entry that expires within
    /// `window`, it returns the cached value and reloads the key once on a background thread,
    /// writing the result with a fresh TTL. Must be shorter than the TTL. Default: off.
    pub fn refresh_ahead(mut self, window: Duration) -> Self {
        self.refresh_ahead = Some(window);
        self
    }

    /// Seeds the random number generator of the jitter, for reproducible expiries. Default: a
    /// seed from the store's clock and the handle's address.
    pub fn jitter_seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// The TTL.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// The jitter fraction.
    pub fn jitter_fraction(&self) -> f64 {
        self.jitter
    }

    /// The negative TTL, if absent results are cached.
    pub fn negative_ttl_value(&self) -> Option<Duration> {
        self.negative_ttl
    }

    /// The refresh-ahead window, if on.
    pub fn refresh_ahead_window(&self) -> Option<Duration> {
        self.refresh_ahead
    }

    fn validate(&self) -> Result<()> {
        let bad = |what: String| Err(Error::InvalidArgument { what });
        if self.ttl < Duration::from_millis(1) {
            return bad(format!(
                "cache ttl {:?} is below the 1 ms resolution of expiries",
                self.ttl
            ));
        }
        if !(0.0..=1.0).contains(&self.jitter) {
            return bad(format!("cache jitter {} is outside 0.0..=1.0", self.jitter));
        }
        if let Some(n) = self.negative_ttl
            && n < Duration::from_millis(1)
        {
            return bad(format!(
                "cache negative_ttl {n:?} is below 1 ms; leave it unset to not cache absent results"
            ));
        }
        if let Some(w) = self.refresh_ahead
            && (w.is_zero() || w >= self.ttl)
        {
            return bad(format!(
                "cache refresh_ahead window {w:?} must be non-zero and shorter than the ttl {:?}",
                self.ttl
            ));
        }
        Ok(())
    }
}

/// A cached value. Dereferences to `[u8]`. A value read from the store borrows the segment's
/// mapping without a copy (see [`Value`]); one handed over by a concurrent load is shared.
#[derive(Clone)]
pub struct CachedValue(Repr);

#[derive(Clone)]
enum Repr {
    /// The stored record's value; the cached bytes start after the tag byte.
    Stored(Value),
    Shared(Arc<[u8]>),
}

impl Deref for CachedValue {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        match &self.0 {
            Repr::Stored(v) => &v[1..],
            Repr::Shared(b) => b,
        }
    }
}

impl AsRef<[u8]> for CachedValue {
    fn as_ref(&self) -> &[u8] {
        self
    }
}

impl fmt::Debug for CachedValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match std::str::from_utf8(self) {
            Ok(s) => write!(f, "CachedValue({s:?})"),
            Err(_) => write!(f, "CachedValue({:?})", &**self),
        }
    }
}

impl PartialEq for CachedValue {
    fn eq(&self, other: &CachedValue) -> bool {
        **self == **other
    }
}
impl PartialEq<[u8]> for CachedValue {
    fn eq(&self, other: &[u8]) -> bool {
        **self == *other
    }
}
impl PartialEq<&[u8]> for CachedValue {
    fn eq(&self, other: &&[u8]) -> bool {
        **self == **other
    }
}
impl<const N: usize> PartialEq<&[u8; N]> for CachedValue {
    fn eq(&self, other: &&[u8; N]) -> bool {
        **self == other[..]
    }
}
impl PartialEq<Vec<u8>> for CachedValue {
    fn eq(&self, other: &Vec<u8>) -> bool {
        **self == other[..]
    }
}

/// What [`Cache::get`] found.
#[derive(Debug, Clone, PartialEq)]
pub enum Lookup {
    /// A cached value.
    Hit(CachedValue),
    /// A negative entry: a loader said the key does not exist, within the negative TTL.
    Absent,
    /// Nothing cached (or it expired).
    Miss,
}

impl Lookup {
    /// The value of a hit.
    pub fn value(&self) -> Option<&CachedValue> {
        match self {
            Lookup::Hit(v) => Some(v),
            _ => None,
        }
    }

    /// The value of a hit, by value.
    pub fn into_value(self) -> Option<CachedValue> {
        match self {
            Lookup::Hit(v) => Some(v),
            _ => None,
        }
    }

    /// True for a hit or a negative entry: the cache answered without a loader.
    pub fn is_cached(&self) -> bool {
        !matches!(self, Lookup::Miss)
    }
}

/// The error of [`Cache::try_get_or_insert_with`].
#[derive(Debug)]
pub enum CacheError<E> {
    /// The store failed (or refused the key, the value or the options).
    Store(Error),
    /// The loader failed. Every caller that waited for the same load gets this same `Arc`;
    /// nothing was cached.
    Loader(Arc<E>),
    /// The loader of this load panicked (or its background thread could not start); nothing was
    /// cached, and the next lookup loads again.
    LoaderPanicked,
}

impl<E> From<Error> for CacheError<E> {
    fn from(e: Error) -> Self {
        CacheError::Store(e)
    }
}

impl<E: fmt::Display> fmt::Display for CacheError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CacheError::Store(e) => e.fmt(f),
            CacheError::Loader(e) => write!(f, "the cache loader failed: {e}"),
            CacheError::LoaderPanicked => {
                f.write_str("the cache loader panicked; nothing was cached, retry the lookup")
            }
        }
    }
}

impl<E: std::error::Error + 'static> std::error::Error for CacheError<E> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            CacheError::Store(e) => Some(e),
            CacheError::Loader(e) => Some(&**e),
            CacheError::LoaderPanicked => None,
        }
    }
}

/// Counters of a cache since it was opened in this process (or since [`Cache::reset_stats`]),
/// shared by every handle of the same cache in the same open store.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CacheStats {
    /// Lookups that found a cached value.
    pub hits: u64,
    /// Lookups that found a negative entry.
    pub negative_hits: u64,
    /// Lookups that found nothing (a caller that then waited for another's load counts here).
    pub misses: u64,
    /// Loader runs, background reloads included.
    pub loads: u64,
    /// Loader runs that failed or panicked.
    pub load_errors: u64,
    /// Time spent in loaders, summed (real time).
    pub load_time: Duration,
}

impl CacheStats {
    /// Lookups counted: hits, negative hits and misses.
    pub fn lookups(&self) -> u64 {
        self.hits + self.negative_hits + self.misses
    }

    /// The share of lookups answered from the cache (hits and negative hits), `0.0..=1.0`;
    /// `0.0` before any lookup.
    pub fn hit_rate(&self) -> f64 {
        let n = self.lookups();
        if n == 0 {
            0.0
        } else {
            (self.hits + self.negative_hits) as f64 / n as f64
        }
    }

    /// Mean time of a loader run; zero before any.
    pub fn mean_load_time(&self) -> Duration {
        if self.loads == 0 {
            Duration::ZERO
        } else {
            Duration::from_nanos(
                u64::try_from(self.load_time.as_nanos() / u128::from(self.loads))
                    .unwrap_or(u64::MAX),
            )
        }
    }
}

#[derive(Default)]
struct Counters {
    hits: AtomicU64,
    negative_hits: AtomicU64,
    misses: AtomicU64,
    loads: AtomicU64,
    load_errors: AtomicU64,
    load_nanos: AtomicU64,
}

/// The result of one load, handed to everyone waiting for it.
#[derive(Clone)]
enum Outcome {
    Loaded(Option<Arc<[u8]>>),
    /// The loader's error, an `Arc<E>` behind `Any` (callers may use different loader types).
    LoaderFailed(Arc<dyn Any + Send + Sync>),
    /// The load succeeded but writing it failed; the store error's text.
    StoreFailed(String),
    Panicked,
}

#[derive(Default)]
struct FlightState {
    /// Set by a write to the key while the load runs: do not write the result.
    stale: bool,
    outcome: Option<Outcome>,
}

#[derive(Default)]
struct Flight {
    state: Mutex<FlightState>,
    done: Condvar,
}

/// Per open store and cache name: the loads in flight and the counters. Holds no [`Store`].
#[derive(Default)]
struct Shared {
    flights: Mutex<HashMap<Vec<u8>, Arc<Flight>>>,
    /// Signalled when `flights` becomes empty.
    idle: Condvar,
    stats: Counters,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while one of these short critical sections held the lock leaves consistent data
    // (each section only inserts, removes or sets one field), so the poison flag is ignored.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Shared {
    fn mark_stale(&self, matches: impl Fn(&[u8]) -> bool) {
        let flights: Vec<Arc<Flight>> = lock(&self.flights)
            .iter()
            .filter(|(k, _)| matches(k))
            .map(|(_, f)| f.clone())
            .collect();
        for f in flights {
            lock(&f.state).stale = true;
        }
    }
}

/// Owns a registered load: completing it publishes the outcome; dropping it without completing
/// (the loader panicked, or its thread never started) publishes [`Outcome::Panicked`].
struct LoadGuard {
    shared: Arc<Shared>,
    key: Vec<u8>,
    flight: Arc<Flight>,
    armed: bool,
    ran: bool,
}

impl LoadGuard {
    /// Sets the outcome computed by `f` under the flight's lock (so a concurrent write to the
    /// key either happens before `f` and marks it stale, or after `f` is done), then wakes the
    /// waiters and removes the flight from the table.
    fn complete(mut self, f: impl FnOnce(&FlightState) -> Outcome) -> Outcome {
        self.armed = false;
        let outcome = {
            let mut st = lock(&self.flight.state);
            let o = f(&st);
            st.outcome = Some(o.clone());
            o
        };
        self.finish();
        outcome
    }

    fn finish(&self) {
        self.flight.done.notify_all();
        let mut flights = lock(&self.shared.flights);
        if flights
            .get(&self.key)
            .is_some_and(|f| Arc::ptr_eq(f, &self.flight))
        {
            flights.remove(&self.key);
        }
        if flights.is_empty() {
            self.shared.idle.notify_all();
        }
    }
}

impl Drop for LoadGuard {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let c = &self.shared.stats;
        if self.ran {
            c.loads.fetch_add(1, Ordering::Relaxed);
        }
        c.load_errors.fetch_add(1, Ordering::Relaxed);
        lock(&self.flight.state).outcome = Some(Outcome::Panicked);
        self.finish();
    }
}

/// A persistent TTL cache over a [`Store`]; see the [module docs](crate::cache). Cheap to clone;
/// `Send + Sync`. Made by [`Store::cache`].
#[derive(Clone)]
pub struct Cache {
    inner: Arc<CacheInner>,
}

struct CacheInner {
    ks: Keyspace,
    name: String,
    prefix: Vec<u8>,
    opts: CacheOptions,
    rng: AtomicU64,
    shared: Arc<Shared>,
}

impl fmt::Debug for Cache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Cache")
            .field("name", &self.inner.name)
            .field("options", &self.inner.opts)
            .finish_non_exhaustive()
    }
}

/// What a read of the store found for a key.
enum Found {
    Hit(CachedValue, Option<u64>),
    Absent,
    Miss,
}

impl Store {
    /// Opens the cache `name` (1 to 255 bytes) in this store's [`Namespace::CACHES`]. Its
    /// entries persist with the store; the options belong to this handle (open the same name
    /// again with other options to write with other TTLs). Handles of the same name share their
    /// loads in flight and their statistics.
    pub fn cache(&self, name: &str, options: CacheOptions) -> Result<Cache> {
        if name.is_empty() || name.len() > 255 {
            return Err(Error::InvalidArgument {
                what: format!(
                    "cache names must be 1 to 255 bytes long, {name:?} is {}",
                    name.len()
                ),
            });
        }
        options.validate()?;
        let shared = self.extension::<Shared>(name, || Ok(Shared::default()))?;
        let mut prefix = Vec::with_capacity(1 + name.len());
        // Fits: checked above.
        prefix.push(name.len() as u8);
        prefix.extend_from_slice(name.as_bytes());
        let seed = options
            .seed
            .unwrap_or_else(|| self.now_ms() ^ (Arc::as_ptr(&shared) as u64).rotate_left(29));
        Ok(Cache {
            inner: Arc::new(CacheInner {
                ks: self.namespace(Namespace::CACHES),
                name: name.to_string(),
                prefix,
                opts: options,
                rng: AtomicU64::new(seed),
                shared,
            }),
        })
    }
}

impl Cache {
    /// The cache's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// This handle's options.
    pub fn options(&self) -> &CacheOptions {
        &self.inner.opts
    }

    /// The store.
    pub fn store(&self) -> &Store {
        self.inner.ks.store()
    }

    /// What is cached for `key`: a value, a negative entry, or nothing. Counts a hit, a negative
    /// hit or a miss.
    pub fn get(&self, key: &[u8]) -> Result<Lookup> {
        let found = self.read(key)?;
        let c = &self.inner.shared.stats;
        Ok(match found {
            Found::Hit(v, _) => {
                c.hits.fetch_add(1, Ordering::Relaxed);
                Lookup::Hit(v)
            }
            Found::Absent => {
                c.negative_hits.fetch_add(1, Ordering::Relaxed);
                Lookup::Absent
            }
            Found::Miss => {
                c.misses.fetch_add(1, Ordering::Relaxed);
                Lookup::Miss
            }
        })
    }

    /// The absolute expiry (unix ms) of what is cached for `key` (a value or a negative entry);
    /// `None` if nothing is. Not counted in the statistics.
    pub fn expires_at(&self, key: &[u8]) -> Result<Option<u64>> {
        let full = self.full_key(key)?;
        Ok(self.inner.ks.get_item(&full)?.and_then(|i| i.expires_at))
    }

    /// Caches `value` for `key` with the cache's TTL (jittered).
    pub fn insert(&self, key: &[u8], value: &[u8]) -> Result<()> {
        let ttl = self.entry_ttl(self.inner.opts.ttl);
        self.insert_inner(key, value, ttl)
    }

    /// Caches `value` for `key` for exactly `ttl` (no jitter; at least 1 ms).
    pub fn insert_with_ttl(&self, key: &[u8], value: &[u8], ttl: Duration) -> Result<()> {
        if ttl < Duration::from_millis(1) {
            return Err(Error::InvalidArgument {
                what: format!("cache ttl {ttl:?} is below 1 ms; use invalidate to remove an entry"),
            });
        }
        self.insert_inner(key, value, ttl)
    }

    fn insert_inner(&self, key: &[u8], value: &[u8], ttl: Duration) -> Result<()> {
        let full = self.full_key(key)?;
        let record = encode_value(value)?;
        self.inner.shared.mark_stale(|k| k == key);
        self.inner.ks.put_with(&full, &record, Expiry::After(ttl))
    }

    /// Removes what is cached for `key` (a value or a negative entry). True if something was.
    pub fn invalidate(&self, key: &[u8]) -> Result<bool> {
        let full = self.full_key(key)?;
        self.inner.shared.mark_stale(|k| k == key);
        self.inner.ks.delete(&full)
    }

    /// Removes every entry whose key starts with `prefix` (all of them for an empty prefix),
    /// walking only that range of the ordered index. Returns how many were removed.
    pub fn invalidate_prefix(&self, prefix: &[u8]) -> Result<u64> {
        let mut full = self.inner.prefix.clone();
        full.extend_from_slice(prefix);
        if full.len() > MAX_KEY_LEN {
            return Err(self.key_too_long(prefix.len()));
        }
        self.inner.shared.mark_stale(|k| k.starts_with(prefix));
        let mut removed = 0u64;
        loop {
            let keys = self.inner.ks.keys_with_prefix(&full, INVALIDATE_CHUNK);
            if keys.is_empty() {
                return Ok(removed);
            }
            let mut batch = self.inner.ks.batch();
            for (k, _) in &keys {
                batch.delete(k);
            }
            self.store().write_batch(batch)?;
            removed += keys.len() as u64;
        }
    }

    /// The cached value of `key`, or the loader's answer on a miss. On a miss exactly one caller
    /// per key runs `loader` while the others wait for its result (single flight). `None` from
    /// the loader means "absent": it is remembered for the negative TTL if one is set. With
    /// refresh-ahead, a hit close to expiry returns the cached value and runs `loader` on a
    /// background thread (hence `Send + 'static`).
    ///
    /// Fails with the store's error; if a concurrent caller's load of the same key panicked,
    /// with [`Error::Rejected`].
    pub fn get_or_insert_with<F>(&self, key: &[u8], loader: F) -> Result<Option<CachedValue>>
    where
        F: FnOnce() -> Option<Vec<u8>> + Send + 'static,
    {
        match self.try_get_or_insert_with(key, move || Ok::<_, std::convert::Infallible>(loader()))
        {
            Ok(v) => Ok(v),
            Err(CacheError::Store(e)) => Err(e),
            Err(CacheError::Loader(e)) => match *e {},
            Err(CacheError::LoaderPanicked) => Err(Error::Rejected {
                reason: format!(
                    "the loader for this key of cache {:?} panicked; nothing was cached",
                    self.inner.name
                ),
            }),
        }
    }

    /// Like [`Cache::get_or_insert_with`] with a fallible loader. A loader error is returned to
    /// the caller that ran it and to every caller that waited for it, as the same
    /// [`CacheError::Loader`] `Arc`, and nothing is cached. A waiter whose loader has another
    /// error type than the one that ran gets [`CacheError::Store`] with [`Error::Rejected`].
    pub fn try_get_or_insert_with<F, E>(
        &self,
        key: &[u8],
        loader: F,
    ) -> Result<Option<CachedValue>, CacheError<E>>
    where
        F: FnOnce() -> Result<Option<Vec<u8>>, E> + Send + 'static,
        E: Send + Sync + 'static,
    {
        let c = &self.inner.shared.stats;
        match self.read(key)? {
            Found::Hit(v, expires_at) => {
                c.hits.fetch_add(1, Ordering::Relaxed);
                if let (Some(window), Some(at)) = (self.inner.opts.refresh_ahead, expires_at)
                    && at.saturating_sub(self.store().now_ms()) <= crate::clock::duration_ms(window)
                {
                    self.spawn_refresh(key, loader);
                }
                return Ok(Some(v));
            }
            Found::Absent => {
                c.negative_hits.fetch_add(1, Ordering::Relaxed);
                return Ok(None);
            }
            Found::Miss => {
                c.misses.fetch_add(1, Ordering::Relaxed);
            }
        }
        let guard = match self.register(key) {
            Ok(guard) => guard,
            Err(flight) => return self.wait(&flight),
        };
        // Another load may have finished between our read and the registration: it wrote before
        // leaving the table, so a second read sees its result and no second load runs.
        match self.read(key) {
            Ok(Found::Hit(v, _)) => {
                let shared: Arc<[u8]> = Arc::from(&*v);
                guard.complete(|_| Outcome::Loaded(Some(shared)));
                return Ok(Some(v));
            }
            Ok(Found::Absent) => {
                guard.complete(|_| Outcome::Loaded(None));
                return Ok(None);
            }
            Ok(Found::Miss) => {}
            Err(e) => {
                let msg = e.to_string();
                guard.complete(|_| Outcome::StoreFailed(msg));
                return Err(CacheError::Store(e));
            }
        }
        self.run_load(guard, loader, false)
    }

    /// Counters since open or the last reset.
    pub fn stats(&self) -> CacheStats {
        let c = &self.inner.shared.stats;
        CacheStats {
            hits: c.hits.load(Ordering::Relaxed),
            negative_hits: c.negative_hits.load(Ordering::Relaxed),
            misses: c.misses.load(Ordering::Relaxed),
            loads: c.loads.load(Ordering::Relaxed),
            load_errors: c.load_errors.load(Ordering::Relaxed),
            load_time: Duration::from_nanos(c.load_nanos.load(Ordering::Relaxed)),
        }
    }

    /// Sets every counter to zero (for every handle of this cache).
    pub fn reset_stats(&self) {
        let c = &self.inner.shared.stats;
        for a in [
            &c.hits,
            &c.negative_hits,
            &c.misses,
            &c.loads,
            &c.load_errors,
            &c.load_nanos,
        ] {
            a.store(0, Ordering::Relaxed);
        }
    }

    /// Waits up to `timeout` until no load of this cache is in flight (background refreshes
    /// included). True if none is.
    pub fn wait_for_loads(&self, timeout: Duration) -> bool {
        let shared = &self.inner.shared;
        let flights = lock(&shared.flights);
        let (flights, _) = shared
            .idle
            .wait_timeout_while(flights, timeout, |f| !f.is_empty())
            .unwrap_or_else(|e| e.into_inner());
        flights.is_empty()
    }

    /// Loads of this cache in flight now.
    pub fn loads_in_flight(&self) -> usize {
        lock(&self.inner.shared.flights).len()
    }

    fn full_key(&self, key: &[u8]) -> Result<Vec<u8>> {
        if key.is_empty() {
            return Err(Error::InvalidKey { len: 0 });
        }
        let len = self.inner.prefix.len() + key.len();
        if len > MAX_KEY_LEN {
            return Err(self.key_too_long(key.len()));
        }
        let mut full = Vec::with_capacity(len);
        full.extend_from_slice(&self.inner.prefix);
        full.extend_from_slice(key);
        Ok(full)
    }

    fn key_too_long(&self, len: usize) -> Error {
        Error::InvalidArgument {
            what: format!(
                "a key of cache {:?} may be at most {} bytes (the store's limit less the cache's prefix), this one is {len}",
                self.inner.name,
                MAX_KEY_LEN - self.inner.prefix.len()
            ),
        }
    }

    fn read(&self, key: &[u8]) -> Result<Found> {
        let full = self.full_key(key)?;
        let Some(item) = self.inner.ks.get_item(&full)? else {
            return Ok(Found::Miss);
        };
        match item.value.first() {
            Some(&TAG_VALUE) => Ok(Found::Hit(
                CachedValue(Repr::Stored(item.value)),
                item.expires_at,
            )),
            Some(&TAG_ABSENT) if item.value.len() == 1 => Ok(Found::Absent),
            _ => Err(Error::Rejected {
                reason: format!(
                    "cache {:?}: the entry for key {key:?} is not in the cache's format (written by another program \
                     or a newer ttlstore); invalidate it",
                    self.inner.name
                ),
            }),
        }
    }

    /// The TTL of one entry: `base` shortened by a random part of up to `jitter * base`.
    fn entry_ttl(&self, base: Duration) -> Duration {
        let jitter = self.inner.opts.jitter;
        let ms = crate::clock::duration_ms(base);
        if jitter == 0.0 {
            return Duration::from_millis(ms.max(1));
        }
        let unit = (splitmix(&self.inner.rng) >> 11) as f64 / (1u64 << 53) as f64;
        let cut = ((ms as f64) * jitter * unit) as u64;
        Duration::from_millis(ms.saturating_sub(cut).max(1))
    }

    /// Registers a load of `key`: `Ok` with the guard if this caller is to run it, `Err` with
    /// the flight to wait for if one is already running.
    fn register(&self, key: &[u8]) -> std::result::Result<LoadGuard, Arc<Flight>> {
        let shared = &self.inner.shared;
        let mut flights = lock(&shared.flights);
        if let Some(f) = flights.get(key) {
            return Err(f.clone());
        }
        let flight = Arc::new(Flight::default());
        flights.insert(key.to_vec(), flight.clone());
        Ok(LoadGuard {
            shared: shared.clone(),
            key: key.to_vec(),
            flight,
            armed: true,
            ran: false,
        })
    }

    fn wait<E: Send + Sync + 'static>(
        &self,
        flight: &Flight,
    ) -> Result<Option<CachedValue>, CacheError<E>> {
        let st = lock(&flight.state);
        let st = flight
            .done
            .wait_while(st, |s| s.outcome.is_none())
            .unwrap_or_else(|e| e.into_inner());
        let outcome = st.outcome.clone();
        drop(st);
        match outcome {
            Some(Outcome::Loaded(v)) => Ok(v.map(|b| CachedValue(Repr::Shared(b)))),
            Some(Outcome::LoaderFailed(any)) => match any.downcast::<E>() {
                Ok(e) => Err(CacheError::Loader(e)),
                Err(_) => Err(CacheError::Store(Error::Rejected {
                    reason: format!(
                        "a concurrent load of this key of cache {:?} failed (with another loader's error type)",
                        self.inner.name
                    ),
                })),
            },
            Some(Outcome::StoreFailed(msg)) => Err(CacheError::Store(Error::Rejected {
                reason: format!(
                    "a concurrent load of this key of cache {:?} could not be cached: {msg}",
                    self.inner.name
                ),
            })),
            Some(Outcome::Panicked) => Err(CacheError::LoaderPanicked),
            // wait_while returned, so the outcome is set.
            None => Err(CacheError::LoaderPanicked),
        }
    }

    /// Runs `loader` for the load `guard` owns, writes its result unless the load went stale,
    /// and hands the outcome to the waiters. `refresh`: a background reload of a present entry,
    /// whose "absent" answer removes the entry when absent results are not cached.
    fn run_load<F, E>(
        &self,
        mut guard: LoadGuard,
        loader: F,
        refresh: bool,
    ) -> Result<Option<CachedValue>, CacheError<E>>
    where
        F: FnOnce() -> Result<Option<Vec<u8>>, E>,
        E: Send + Sync + 'static,
    {
        let c = &self.inner.shared.stats;
        guard.ran = true;
        let start = Instant::now();
        let result = loader();
        let nanos = u64::try_from(start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        c.loads.fetch_add(1, Ordering::Relaxed);
        c.load_nanos.fetch_add(nanos, Ordering::Relaxed);
        let value = match result {
            Ok(v) => v,
            Err(e) => {
                c.load_errors.fetch_add(1, Ordering::Relaxed);
                let e = Arc::new(e);
                let any: Arc<dyn Any + Send + Sync> = e.clone();
                guard.complete(|_| Outcome::LoaderFailed(any));
                return Err(CacheError::Loader(e));
            }
        };
        let key = guard.key.clone();
        let mut write_err = None;
        let shared: Option<Arc<[u8]>> = value.as_deref().map(Arc::from);
        let published = shared.clone();
        guard.complete(|st| {
            if st.stale {
                return Outcome::Loaded(published);
            }
            match self.write_result(&key, value.as_deref(), refresh) {
                Ok(()) => Outcome::Loaded(published),
                Err(e) => {
                    let msg = e.to_string();
                    write_err = Some(e);
                    Outcome::StoreFailed(msg)
                }
            }
        });
        match write_err {
            Some(e) => Err(CacheError::Store(e)),
            None => Ok(shared.map(|b| CachedValue(Repr::Shared(b)))),
        }
    }

    fn write_result(&self, key: &[u8], value: Option<&[u8]>, refresh: bool) -> Result<()> {
        let full = self.full_key(key)?;
        match (value, self.inner.opts.negative_ttl) {
            (Some(v), _) => {
                let record = encode_value(v)?;
                let ttl = self.entry_ttl(self.inner.opts.ttl);
                self.inner.ks.put_with(&full, &record, Expiry::After(ttl))
            }
            (None, Some(neg)) => {
                let ttl = self.entry_ttl(neg);
                self.inner
                    .ks
                    .put_with(&full, &[TAG_ABSENT], Expiry::After(ttl))
            }
            (None, None) if refresh => self.inner.ks.delete(&full).map(|_| ()),
            (None, None) => Ok(()),
        }
    }

    /// Starts one background reload of `key` unless a load of it is already in flight.
    fn spawn_refresh<F, E>(&self, key: &[u8], loader: F)
    where
        F: FnOnce() -> Result<Option<Vec<u8>>, E> + Send + 'static,
        E: Send + Sync + 'static,
    {
        let Ok(guard) = self.register(key) else {
            return;
        };
        let cache = self.clone();
        // If the thread cannot start, the closure (and the guard in it) is dropped: the guard
        // publishes the failure and frees the key; the caller still has its cached value.
        let _ = std::thread::Builder::new()
            .name("ttlstore-cache-refresh".into())
            .spawn(move || {
                let _ = cache.run_load(guard, loader, true);
            });
    }
}

fn encode_value(value: &[u8]) -> Result<Vec<u8>> {
    if value.len() > MAX_VALUE_LEN - 1 {
        return Err(Error::ValueTooLarge {
            len: value.len(),
            max: MAX_VALUE_LEN - 1,
        });
    }
    let mut record = Vec::with_capacity(1 + value.len());
    record.push(TAG_VALUE);
    record.extend_from_slice(value);
    Ok(record)
}

/// splitmix64 over a shared counter.
fn splitmix(state: &AtomicU64) -> u64 {
    let mut z = state
        .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
        .wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}
