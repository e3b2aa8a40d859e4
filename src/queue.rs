//! Durable task queues: [`Queue`], opened with [`Store::queue`] or [`Store::queue_with`].
//!
//! A queue hands out tasks by priority (highest first) and age (oldest first within a priority),
//! leases each popped task to exactly one worker for a visibility timeout, counts the attempts,
//! and moves a task that ran out of attempts to the queue's dead-letter list. Leases, delays and
//! TTLs are absolute deadlines on the store's [`crate::Clock`], written with the task, so they
//! survive a crash or restart unchanged: ready tasks stay ready, leased tasks stay leased until
//! their lease deadline and then come back (at-least-once), acknowledged tasks never come back.
//!
//! # Keys
//! Everything lives in [`Namespace::QUEUES`], so no user key can collide with it. A queue name
//! is 1 to 200 bytes of UTF-8 without a NUL byte; so is a task id.
//! - `c/<queue>`: the queue's metadata: options (visibility timeout, max attempts, default TTL)
//!   and the high-water mark of its counter (see below).
//! - `s/<queue>\0<task id>`: the task's state record, 54 bytes: version, state (ready, delayed,
//!   leased, dead), priority, enqueue sequence, enqueue time, attempts, max attempts, the due time
//!   (delay end or lease deadline, unix ms), the lease token and the TTL deadline.
//! - `p/<queue>\0<task id>`: the payload, written once at push.
//!
//! Both keys of a task carry the task's TTL deadline as their store expiry, so an expired task
//! vanishes from the store by itself (in any state: ready, delayed, leased or dead) and leaves
//! the disk through compaction. Every change that touches several keys (push: payload and
//! state; ack: both deletes; purge: all of them) is one [`crate::WriteBatch`], so a crash never
//! shows half of it. A pop, nack, lease extension or move to the dead-letter list rewrites only
//! the small state record.
//!
//! # Counter, ids and tokens
//! Each queue has one counter: its values order tasks by age (the enqueue sequence), make
//! generated [`TaskId`]s unique (`<unix ms as 16 hex digits><counter as 16 hex digits>`, so they
//! sort by creation) and serve as lease tokens. It is reserved in blocks of 1024: before a value
//! past the durable high-water mark is handed out, the new mark is written (and synced, under
//! the store's sync policy) while the queue's lock is held, so no value is ever handed out twice,
//! also after a crash.
//!
//! # In memory
//! The first handle of a queue in an open store scans its state records once and keeps an
//! ordered view (ready set by priority and sequence, deadlines, dead letters, TTLs) in the
//! store's extension state, shared by every handle of that queue name. Each decision (which task
//! a pop gets, whether a token is current) is taken under that view's lock; the durable write
//! then happens outside the lock, so concurrent workers share the store's group commit, while
//! the task is marked busy so nothing else touches it until the write is done. The view changes
//! only after the write succeeded; a failed write leaves everything as it was.
//!
//! Deadlines are evaluated against the store clock on every operation: a delayed task whose due
//! time passed is ready; a leased task whose lease passed is ready again (its token is stale), or,
//! when it has used all its attempts, is moved to the dead-letter list (a durable write, done by
//! the next pop or dead-letter call). The on-disk record of such a task may still say "delayed"
//! or "leased" with a past deadline; it is read the same way after a restart.
//!
//! # Blocking and fairness
//! [`Queue::pop`] waits up to its timeout (real time). Waiting pops form a FIFO: only the oldest
//! waiter may take a task, then the next one, so pops are served in arrival order and every task
//! goes to exactly one of them per lease. Waiters wake on a push or any other change, when the
//! store's [`crate::ManualClock`] is advanced (delays and leases can end), at the next deadline
//! under a real clock, and when the store is closed ([`crate::Error::Closed`]).
//!
//! # Tokens
//! Every lease has a token. [`Queue::ack`], [`Queue::nack`] and [`Queue::extend_lease`] check it
//! and fail with [`crate::Error::Rejected`], changing nothing, if the lease has run out (its
//! deadline is not after now), the task was leased again, or the task is gone.

use crate::{Error, Expiry, Keyspace, Namespace, Result, Store, Waker, WriteBatch};
use std::cmp::Reverse;
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::fmt;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The longest queue or thread name, and the longest task id, in bytes.
pub const MAX_NAME_LEN: usize = 200;

/// Checks a queue or thread name (or a task id): 1 to [`MAX_NAME_LEN`] bytes, no NUL byte.
pub(crate) fn check_name(what: &str, name: &str) -> Result<()> {
    if name.is_empty() || name.len() > MAX_NAME_LEN || name.contains('\0') {
        return Err(Error::InvalidArgument {
            what: format!(
                "a {what} must be 1 to {MAX_NAME_LEN} bytes long and contain no NUL byte, got {} bytes: {name:?}",
                name.len()
            ),
        });
    }
    Ok(())
}

/// Milliseconds in a duration, saturating.
pub(crate) fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

const COUNTER_BLOCK: u64 = 1024;
const REC_VERSION: u8 = 1;
const REC_LEN: usize = 54;
const META_VERSION: u8 = 1;
const META_LEN: usize = 29;

/// A task's id: unique within its queue. Generated ids are 32 hex digits (creation time in unix
/// ms, then the queue's counter) and sort by creation; custom ids are any 1 to
/// [`MAX_NAME_LEN`] bytes of UTF-8 without a NUL byte.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TaskId(String);

impl TaskId {
    /// A custom id; fails with [`Error::InvalidArgument`] if it is empty, too long or holds NUL.
    pub fn new(id: impl Into<String>) -> Result<TaskId> {
        let id = id.into();
        check_name("task id", &id)?;
        Ok(TaskId(id))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for TaskId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Settings of a queue, kept with the queue (the last [`Store::queue_with`] wins).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QueueOptions {
    /// How long a popped task stays leased before it becomes visible again. Default 30 s.
    pub visibility_timeout: Duration,
    /// Leases a task may get before it moves to the dead-letter list, unless the push says
    /// otherwise. Default 5.
    pub max_attempts: u32,
    /// TTL of tasks whose push gives none; `None` (the default) keeps them until acknowledged.
    pub default_ttl: Option<Duration>,
}

impl Default for QueueOptions {
    fn default() -> Self {
        QueueOptions {
            visibility_timeout: Duration::from_secs(30),
            max_attempts: 5,
            default_ttl: None,
        }
    }
}

impl QueueOptions {
    /// Sets [`QueueOptions::visibility_timeout`].
    pub fn visibility_timeout(mut self, d: Duration) -> Self {
        self.visibility_timeout = d;
        self
    }
    /// Sets [`QueueOptions::max_attempts`].
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = n;
        self
    }
    /// Sets [`QueueOptions::default_ttl`].
    pub fn default_ttl(mut self, ttl: Option<Duration>) -> Self {
        self.default_ttl = ttl;
        self
    }

    fn validate(&self) -> Result<()> {
        if ms(self.visibility_timeout) == 0 {
            return Err(Error::InvalidArgument {
                what: "the visibility timeout must be at least 1 ms".into(),
            });
        }
        if self.max_attempts == 0 {
            return Err(Error::InvalidArgument {
                what: "max_attempts must be at least 1".into(),
            });
        }
        if self.default_ttl.is_some_and(|t| ms(t) == 0) {
            return Err(Error::InvalidArgument {
                what: "a queue's default TTL must be at least 1 ms".into(),
            });
        }
        Ok(())
    }
}

/// Options of one push: [`Queue::push_with`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PushOptions {
    id: Option<String>,
    priority: i32,
    delay: Duration,
    ttl: Option<Duration>,
    max_attempts: Option<u32>,
}

impl PushOptions {
    /// Default options: generated id, priority 0, no delay, the queue's TTL and max attempts.
    pub fn new() -> Self {
        PushOptions::default()
    }
    /// A custom id. Pushing an id that is still in the queue (in any state) is rejected.
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }
    /// The priority: higher is popped first. Default 0.
    pub fn priority(mut self, p: i32) -> Self {
        self.priority = p;
        self
    }
    /// Invisible until this much time has passed on the store clock.
    pub fn delay(mut self, d: Duration) -> Self {
        self.delay = d;
        self
    }
    /// Dropped, whatever its state, once this much time has passed (must be at least 1 ms).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }
    /// Leases before the task moves to the dead-letter list (at least 1).
    pub fn max_attempts(mut self, n: u32) -> Self {
        self.max_attempts = Some(n);
        self
    }
}

/// A leased task, returned by [`Queue::pop`]. Hand it back with [`Queue::ack`],
/// [`Queue::nack`] or keep it with [`Queue::extend_lease`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    /// The task's id.
    pub id: TaskId,
    /// The payload given at push.
    pub payload: Vec<u8>,
    /// Its priority.
    pub priority: i32,
    /// Leases so far, this one included (1 on the first pop).
    pub attempts: u32,
    /// Leases allowed before it moves to the dead-letter list.
    pub max_attempts: u32,
    /// When it was pushed, unix ms.
    pub enqueued_at: u64,
    /// When this lease ends, unix ms (updated by [`Queue::extend_lease`]).
    pub lease_deadline: u64,
    /// When the task is dropped, unix ms, if it has a TTL.
    pub expires_at: Option<u64>,
    token: u64,
}

impl Task {
    /// The lease token: unique per lease within the queue.
    pub fn token(&self) -> u64 {
        self.token
    }
}

/// Where a task is, from [`Queue::task`] and [`Queue::list`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskState {
    /// Visible: the next pops may get it.
    Ready,
    /// Invisible until the given unix ms (a push delay or a nack's retry delay).
    Delayed {
        /// When it becomes ready.
        until: u64,
    },
    /// Leased to a worker until the given unix ms.
    Leased {
        /// When the lease ends.
        until: u64,
    },
    /// In the dead-letter list.
    Dead,
}

/// What [`Queue::task`] and [`Queue::list`] tell about a task (without its payload).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskInfo {
    /// The id.
    pub id: TaskId,
    /// Where it is.
    pub state: TaskState,
    /// Its priority.
    pub priority: i32,
    /// Leases so far.
    pub attempts: u32,
    /// Leases allowed.
    pub max_attempts: u32,
    /// When it was pushed, unix ms.
    pub enqueued_at: u64,
    /// When it is dropped, unix ms, if it has a TTL.
    pub expires_at: Option<u64>,
}

/// A task in the dead-letter list, from [`Queue::dead_letters`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// The id.
    pub id: TaskId,
    /// The payload.
    pub payload: Vec<u8>,
    /// Its priority.
    pub priority: i32,
    /// Leases it had.
    pub attempts: u32,
    /// When it was pushed, unix ms.
    pub enqueued_at: u64,
}

/// Counts from [`Queue::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueStats {
    /// Tasks a pop can get now.
    pub ready: usize,
    /// Tasks leased to workers.
    pub in_flight: usize,
    /// Tasks waiting for their delay.
    pub delayed: usize,
    /// Tasks in the dead-letter list.
    pub dead: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum St {
    Ready = 0,
    Delayed = 1,
    Leased = 2,
    Dead = 3,
}

/// A task's state record (the value of its `s/` key).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Rec {
    st: St,
    priority: i32,
    seq: u64,
    enqueued_at: u64,
    attempts: u32,
    max_attempts: u32,
    /// Delay end (Delayed) or lease deadline (Leased); 0 otherwise.
    due: u64,
    /// The lease token (Leased); 0 otherwise.
    token: u64,
    /// TTL deadline; 0 for none.
    expires_at: u64,
}

impl Rec {
    fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(REC_LEN);
        v.push(REC_VERSION);
        v.push(self.st as u8);
        v.extend_from_slice(&self.priority.to_be_bytes());
        v.extend_from_slice(&self.seq.to_be_bytes());
        v.extend_from_slice(&self.enqueued_at.to_be_bytes());
        v.extend_from_slice(&self.attempts.to_be_bytes());
        v.extend_from_slice(&self.max_attempts.to_be_bytes());
        v.extend_from_slice(&self.due.to_be_bytes());
        v.extend_from_slice(&self.token.to_be_bytes());
        v.extend_from_slice(&self.expires_at.to_be_bytes());
        v
    }

    fn decode(b: &[u8]) -> Option<Rec> {
        if b.len() != REC_LEN || b[0] != REC_VERSION {
            return None;
        }
        let u64_at = |i: usize| {
            b.get(i..i + 8)
                .and_then(|s| s.try_into().ok())
                .map(u64::from_be_bytes)
        };
        let u32_at = |i: usize| {
            b.get(i..i + 4)
                .and_then(|s| s.try_into().ok())
                .map(u32::from_be_bytes)
        };
        let st = match b[1] {
            0 => St::Ready,
            1 => St::Delayed,
            2 => St::Leased,
            3 => St::Dead,
            _ => return None,
        };
        Some(Rec {
            st,
            priority: u32_at(2)? as i32,
            seq: u64_at(6)?,
            enqueued_at: u64_at(14)?,
            attempts: u32_at(22)?,
            max_attempts: u32_at(26)?,
            due: u64_at(30)?,
            token: u64_at(38)?,
            expires_at: u64_at(46)?,
        })
    }

    fn expiry(&self) -> Expiry {
        if self.expires_at == 0 {
            Expiry::Never
        } else {
            Expiry::At(self.expires_at)
        }
    }

    fn expired(&self, now: u64) -> bool {
        self.expires_at != 0 && self.expires_at <= now
    }

    /// The state a reader sees at `now` (deadlines applied); `None` once expired.
    fn logical(&self, now: u64) -> Option<TaskState> {
        if self.expired(now) {
            return None;
        }
        Some(match self.st {
            St::Ready => TaskState::Ready,
            St::Delayed if self.due > now => TaskState::Delayed { until: self.due },
            St::Delayed => TaskState::Ready,
            St::Leased if self.due > now => TaskState::Leased { until: self.due },
            St::Leased if self.attempts >= self.max_attempts => TaskState::Dead,
            St::Leased => TaskState::Ready,
            St::Dead => TaskState::Dead,
        })
    }

    fn info(&self, id: &str, now: u64) -> Option<TaskInfo> {
        Some(TaskInfo {
            id: TaskId(id.to_string()),
            state: self.logical(now)?,
            priority: self.priority,
            attempts: self.attempts,
            max_attempts: self.max_attempts,
            enqueued_at: self.enqueued_at,
            expires_at: (self.expires_at != 0).then_some(self.expires_at),
        })
    }
}

#[derive(Debug, Clone, Copy)]
struct Meta {
    hwm: u64,
    opts: QueueOptions,
}

impl Meta {
    fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(META_LEN);
        v.push(META_VERSION);
        v.extend_from_slice(&self.hwm.to_be_bytes());
        v.extend_from_slice(&ms(self.opts.visibility_timeout).to_be_bytes());
        v.extend_from_slice(&self.opts.max_attempts.to_be_bytes());
        v.extend_from_slice(&self.opts.default_ttl.map_or(0, ms).to_be_bytes());
        v
    }

    fn decode(b: &[u8]) -> Option<Meta> {
        if b.len() != META_LEN || b[0] != META_VERSION {
            return None;
        }
        let u64_at = |i: usize| {
            b.get(i..i + 8)
                .and_then(|s| s.try_into().ok())
                .map(u64::from_be_bytes)
        };
        let max_attempts = b
            .get(17..21)
            .and_then(|s| s.try_into().ok())
            .map(u32::from_be_bytes)?;
        let ttl = u64_at(21)?;
        Some(Meta {
            hwm: u64_at(1)?,
            opts: QueueOptions {
                visibility_timeout: Duration::from_millis(u64_at(9)?),
                max_attempts,
                default_ttl: (ttl != 0).then(|| Duration::from_millis(ttl)),
            },
        })
    }
}

fn meta_key(name: &str) -> Vec<u8> {
    let mut k = b"c/".to_vec();
    k.extend_from_slice(name.as_bytes());
    k
}

fn task_prefix(kind: u8, name: &str) -> Vec<u8> {
    let mut k = vec![kind, b'/'];
    k.extend_from_slice(name.as_bytes());
    k.push(0);
    k
}

fn task_key(kind: u8, name: &str, id: &str) -> Vec<u8> {
    let mut k = task_prefix(kind, name);
    k.extend_from_slice(id.as_bytes());
    k
}

/// Describes a key of [`Namespace::QUEUES`] for people (used by the inspect tool).
pub(crate) fn describe_key(key: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(key).ok()?;
    if let Some(name) = text.strip_prefix("c/") {
        return (!name.contains('\0'))
            .then(|| format!("queue {name:?}: metadata (options, id counter)"));
    }
    let (kind, rest) = (text.get(..2)?, text.get(2..)?);
    let (name, id) = rest.split_once('\0')?;
    if name.is_empty() || id.is_empty() {
        return None;
    }
    match kind {
        "s/" => Some(format!("queue {name:?}: task {id:?} state")),
        "p/" => Some(format!("queue {name:?}: task {id:?} payload")),
        _ => None,
    }
}

/// Describes a state record's value for people (the inspect tool shows it beside the bytes);
/// `None` if it does not decode as one.
pub(crate) fn describe_state(value: &[u8]) -> Option<String> {
    let r = Rec::decode(value)?;
    let state = match r.st {
        St::Ready => "ready".to_string(),
        St::Delayed => format!("delayed until {}", r.due),
        St::Leased => format!("leased until {} (token {})", r.due, r.token),
        St::Dead => "dead".to_string(),
    };
    Some(format!(
        "{state}, priority {}, attempt {}/{}",
        r.priority, r.attempts, r.max_attempts
    ))
}

struct Entry {
    rec: Rec,
    /// A write for this task is in flight; nothing else may touch it until it is done.
    busy: bool,
    /// Its push is not yet durable.
    pending: bool,
}

struct View {
    opts: QueueOptions,
    next_seq: u64,
    hwm: u64,
    tasks: HashMap<String, Entry>,
    /// Visible tasks, highest priority then oldest first (not busy).
    ready: BTreeSet<(Reverse<i32>, u64, String)>,
    /// Delay ends and lease deadlines of delayed and leased tasks (not busy).
    timed: BTreeSet<(u64, String)>,
    /// Dead letters by sequence (not busy).
    dead: BTreeSet<(u64, String)>,
    /// TTL deadlines (not busy).
    expiring: BTreeSet<(u64, String)>,
    waiters: VecDeque<u64>,
    next_ticket: u64,
}

impl View {
    fn index(&mut self, id: &str, rec: &Rec) {
        let id = id.to_string();
        match rec.st {
            St::Ready => {
                self.ready
                    .insert((Reverse(rec.priority), rec.seq, id.clone()));
            }
            St::Delayed | St::Leased => {
                self.timed.insert((rec.due, id.clone()));
            }
            St::Dead => {
                self.dead.insert((rec.seq, id.clone()));
            }
        }
        if rec.expires_at != 0 {
            self.expiring.insert((rec.expires_at, id));
        }
    }

    fn unindex(&mut self, id: &str, rec: &Rec) {
        let id = id.to_string();
        match rec.st {
            St::Ready => {
                self.ready
                    .remove(&(Reverse(rec.priority), rec.seq, id.clone()));
            }
            St::Delayed | St::Leased => {
                self.timed.remove(&(rec.due, id.clone()));
            }
            St::Dead => {
                self.dead.remove(&(rec.seq, id.clone()));
            }
        }
        if rec.expires_at != 0 {
            self.expiring.remove(&(rec.expires_at, id));
        }
    }

    fn insert(&mut self, id: String, rec: Rec) {
        self.index(&id, &rec);
        self.tasks.insert(
            id,
            Entry {
                rec,
                busy: false,
                pending: false,
            },
        );
    }

    /// Marks a task busy and takes it out of the ordered sets; returns its record.
    fn begin(&mut self, id: &str) -> Option<Rec> {
        let e = self.tasks.get_mut(id)?;
        if e.busy {
            return None;
        }
        e.busy = true;
        let rec = e.rec.clone();
        self.unindex(id, &rec);
        Some(rec)
    }

    /// Ends a [`View::begin`]: the task now has `new` (`None`: removed) if the write
    /// succeeded, its old record otherwise.
    fn finish(&mut self, id: &str, new: Option<Rec>, ok: bool) {
        let Some(e) = self.tasks.get_mut(id) else {
            return;
        };
        e.busy = false;
        if ok || e.pending {
            e.pending = false;
            match (ok, new) {
                (true, Some(rec)) => {
                    e.rec = rec.clone();
                    self.index(id, &rec);
                }
                _ => {
                    self.tasks.remove(id);
                }
            }
        } else {
            let rec = e.rec.clone();
            self.index(id, &rec);
        }
    }

    fn remove_idle(&mut self, id: &str) {
        if let Some(e) = self.tasks.get(id)
            && !e.busy
        {
            let rec = e.rec.clone();
            self.unindex(id, &rec);
            self.tasks.remove(id);
        }
    }

    /// Applies the deadlines that passed at `now` in memory: drops expired tasks, makes due
    /// delayed tasks and lapsed leases ready. Lapsed leases without attempts left are marked
    /// busy and returned with their dead-letter record, to be written by the caller.
    fn advance(&mut self, now: u64) -> Vec<(String, Rec)> {
        let expired: Vec<String> = self
            .expiring
            .iter()
            .take_while(|(t, _)| *t <= now)
            .map(|(_, id)| id.clone())
            .collect();
        for id in expired {
            self.remove_idle(&id);
        }
        let due: Vec<String> = self
            .timed
            .iter()
            .take_while(|(t, _)| *t <= now)
            .map(|(_, id)| id.clone())
            .collect();
        let mut to_dead = Vec::new();
        for id in due {
            let Some(old) = self.tasks.get(&id).map(|e| e.rec.clone()) else {
                continue;
            };
            let mut rec = old.clone();
            if rec.st == St::Leased && rec.attempts >= rec.max_attempts {
                if self.begin(&id).is_some() {
                    rec.st = St::Dead;
                    rec.due = 0;
                    rec.token = 0;
                    to_dead.push((id, rec));
                }
                continue;
            }
            self.unindex(&id, &old);
            rec.st = St::Ready;
            rec.due = 0;
            rec.token = 0;
            self.index(&id, &rec);
            if let Some(e) = self.tasks.get_mut(&id) {
                e.rec = rec;
            }
        }
        to_dead
    }

    fn alloc_ticket(&mut self) -> u64 {
        self.next_ticket += 1;
        self.next_ticket
    }
}

struct Shared {
    view: Mutex<View>,
    cv: Condvar,
}

/// The per-store, per-queue-name state: the view and the waker registered with the clock and
/// for [`Store::close`]. Holds no [`Store`].
struct QueueExt {
    shared: Arc<Shared>,
    _waker: Arc<Waker>,
}

/// A durable task queue in a [`Store`]. Cheap to clone; every handle of the same queue name in
/// the same open store shares one state. See the [module docs](self) for the guarantees.
///
/// ```
/// # fn main() -> ttlstore::Result<()> {
/// # let dir = tempfile::tempdir().unwrap();
/// use std::time::Duration;
/// let store = ttlstore::Store::open(dir.path())?;
/// let q = store.queue("emails")?;
/// let id = q.push(b"to: alice")?;
/// let task = q.pop(Duration::from_secs(1))?.expect("a task is ready");
/// assert_eq!(task.id, id);
/// q.ack(&task)?;
/// assert!(q.is_empty()?);
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Queue {
    store: Store,
    ks: Keyspace,
    name: Arc<str>,
    ext: Arc<QueueExt>,
}

impl fmt::Debug for Queue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Queue")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Store {
    /// Opens (creating if needed) the task queue `name`, with the options it was last given
    /// (or the defaults).
    pub fn queue(&self, name: &str) -> Result<Queue> {
        Queue::open(self, name, None)
    }

    /// Opens (creating if needed) the task queue `name` and sets its options, durably.
    pub fn queue_with(&self, name: &str, opts: QueueOptions) -> Result<Queue> {
        opts.validate()?;
        Queue::open(self, name, Some(opts))
    }

    /// The names of the queues in this store, sorted.
    pub fn queues(&self) -> Result<Vec<String>> {
        let mut out = Vec::new();
        for item in self.namespace(Namespace::QUEUES).scan_prefix(b"c/") {
            let (k, _) = item?;
            if let Some(name) = k.get(2..).and_then(|n| std::str::from_utf8(n).ok()) {
                out.push(name.to_string());
            }
        }
        Ok(out)
    }
}

fn load(ks: &Keyspace, name: &str) -> Result<View> {
    let meta = match ks.get(&meta_key(name))? {
        Some(v) => Some(Meta::decode(&v).ok_or_else(|| Error::Rejected {
            reason: format!(
                "queue {name:?}: its metadata record is not in a format this version reads"
            ),
        })?),
        None => None,
    };
    let mut view = View {
        opts: meta.map(|m| m.opts).unwrap_or_default(),
        next_seq: meta.map_or(0, |m| m.hwm),
        hwm: 0,
        tasks: HashMap::new(),
        ready: BTreeSet::new(),
        timed: BTreeSet::new(),
        dead: BTreeSet::new(),
        expiring: BTreeSet::new(),
        waiters: VecDeque::new(),
        next_ticket: 0,
    };
    let prefix = task_prefix(b's', name);
    let mut max_seen = 0;
    for item in ks.scan_prefix(&prefix) {
        let (k, v) = item?;
        let id = k
            .get(prefix.len()..)
            .and_then(|b| std::str::from_utf8(b).ok())
            .map(str::to_string);
        let (Some(id), Some(rec)) = (id, Rec::decode(&v)) else {
            return Err(Error::Rejected {
                reason: format!(
                    "queue {name:?}: a task state record is not in a format this version reads"
                ),
            });
        };
        max_seen = max_seen.max(rec.seq).max(rec.token);
        view.insert(id, rec);
    }
    view.next_seq = view.next_seq.max(max_seen.saturating_add(1));
    // Nothing from here on is reserved yet: the first allocation writes a new mark.
    view.hwm = view.next_seq;
    Ok(view)
}

impl Queue {
    fn open(store: &Store, name: &str, opts: Option<QueueOptions>) -> Result<Queue> {
        check_name("queue name", name)?;
        let ks = store.namespace(Namespace::QUEUES);
        let ext = store.extension::<QueueExt>(name, || {
            let shared = Arc::new(Shared {
                view: Mutex::new(load(&ks, name)?),
                cv: Condvar::new(),
            });
            let s = shared.clone();
            let waker: Arc<Waker> = Arc::new(move || {
                drop(lock(&s.view));
                s.cv.notify_all();
            });
            store.clock().register(Arc::downgrade(&waker));
            store.on_close(Arc::downgrade(&waker));
            Ok(QueueExt {
                shared,
                _waker: waker,
            })
        })?;
        let q = Queue {
            store: store.clone(),
            ks,
            name: name.into(),
            ext,
        };
        {
            let mut v = lock(&q.ext.shared.view);
            let exists = q.ks.contains_key(&meta_key(name))?;
            if !exists || opts.is_some_and(|o| o != v.opts) {
                let meta = Meta {
                    hwm: v.hwm,
                    opts: opts.unwrap_or(v.opts),
                };
                q.ks.put_with(&meta_key(name), &meta.encode(), Expiry::Never)?;
                v.opts = meta.opts;
            }
        }
        Ok(q)
    }

    /// The queue's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The queue's options.
    pub fn options(&self) -> QueueOptions {
        lock(&self.ext.shared.view).opts
    }

    fn now(&self) -> u64 {
        self.store.now_ms()
    }

    fn view(&self) -> MutexGuard<'_, View> {
        lock(&self.ext.shared.view)
    }

    fn notify(&self) {
        self.ext.shared.cv.notify_all();
    }

    fn wait<'a>(
        &'a self,
        g: MutexGuard<'a, View>,
        timeout: Option<Duration>,
    ) -> MutexGuard<'a, View> {
        let cv = &self.ext.shared.cv;
        match timeout {
            Some(t) => cv.wait_timeout(g, t).unwrap_or_else(|e| e.into_inner()).0,
            None => cv.wait(g).unwrap_or_else(|e| e.into_inner()),
        }
    }

    fn rejected(&self, id: &str, why: &str) -> Error {
        Error::Rejected {
            reason: format!(
                "queue {:?}, task {id:?}: {why}; nothing was changed",
                &*self.name
            ),
        }
    }

    /// Hands out the next value of the queue's counter, first making a new high-water mark
    /// durable if the reserved block is used up. Called with the view locked.
    fn alloc_seq(&self, v: &mut View) -> Result<u64> {
        if v.next_seq >= v.hwm {
            let hwm = v.next_seq.saturating_add(COUNTER_BLOCK);
            let meta = Meta { hwm, opts: v.opts };
            self.ks
                .put_with(&meta_key(&self.name), &meta.encode(), Expiry::Never)?;
            v.hwm = hwm;
        }
        let s = v.next_seq;
        v.next_seq += 1;
        Ok(s)
    }

    fn put_state(&self, b: &mut WriteBatch, id: &str, rec: &Rec) {
        b.put_with(&task_key(b's', &self.name, id), &rec.encode(), rec.expiry());
    }

    /// Writes `batch` outside the lock for a task taken with [`View::begin`], then finishes it.
    fn commit<'a>(
        &'a self,
        g: MutexGuard<'a, View>,
        id: &str,
        batch: WriteBatch,
        new: Option<Rec>,
    ) -> Result<()> {
        drop(g);
        let r = self.store.write_batch(batch);
        let mut g = self.view();
        g.finish(id, new, r.is_ok());
        drop(g);
        self.notify();
        r
    }

    /// Applies passed deadlines, writing moves to the dead-letter list.
    fn settle<'a>(&'a self, mut g: MutexGuard<'a, View>) -> Result<MutexGuard<'a, View>> {
        loop {
            let to_dead = g.advance(self.now());
            if to_dead.is_empty() {
                return Ok(g);
            }
            drop(g);
            let mut b = self.ks.batch();
            for (id, rec) in &to_dead {
                self.put_state(&mut b, id, rec);
            }
            let r = self.store.write_batch(b);
            g = self.view();
            for (id, rec) in to_dead {
                g.finish(&id, Some(rec), r.is_ok());
            }
            self.notify();
            r?;
        }
    }

    /// Waits until no write is in flight for `id`.
    fn idle<'a>(&'a self, mut g: MutexGuard<'a, View>, id: &str) -> MutexGuard<'a, View> {
        while g.tasks.get(id).is_some_and(|e| e.busy) {
            g = self.wait(g, None);
        }
        g
    }

    /// Pushes a task with default options; returns its generated id.
    pub fn push(&self, payload: &[u8]) -> Result<TaskId> {
        self.push_with(payload, PushOptions::default())
    }

    /// Pushes a task. Fails with [`Error::Rejected`] if `opts` names an id that is still in
    /// the queue, [`Error::InvalidArgument`] for a bad id, TTL or attempt count.
    pub fn push_with(&self, payload: &[u8], opts: PushOptions) -> Result<TaskId> {
        if let Some(id) = &opts.id {
            check_name("task id", id)?;
        }
        if opts.ttl.is_some_and(|t| ms(t) == 0) {
            return Err(Error::InvalidArgument {
                what: "a task's TTL must be at least 1 ms".into(),
            });
        }
        if opts.max_attempts == Some(0) {
            return Err(Error::InvalidArgument {
                what: "max_attempts must be at least 1".into(),
            });
        }
        if payload.len() > crate::MAX_VALUE_LEN {
            return Err(Error::ValueTooLarge {
                len: payload.len(),
                max: crate::MAX_VALUE_LEN,
            });
        }
        let mut g = self.view();
        let now = self.now();
        if let Some(id) = &opts.id {
            g = self.idle(g, id);
            if let Some(e) = g.tasks.get(id) {
                if e.rec.expired(now) {
                    g.remove_idle(id);
                } else {
                    let state = match e.rec.logical(now) {
                        Some(TaskState::Ready) => "ready",
                        Some(TaskState::Delayed { .. }) => "delayed",
                        Some(TaskState::Leased { .. }) => "leased",
                        _ => "in the dead-letter list",
                    };
                    return Err(self.rejected(
                        id,
                        &format!("this id is already queued ({state}); not pushed again"),
                    ));
                }
            }
        }
        let seq = self.alloc_seq(&mut g)?;
        let id = opts
            .id
            .clone()
            .unwrap_or_else(|| format!("{now:016x}{seq:016x}"));
        let delay = ms(opts.delay);
        let ttl = opts.ttl.or(g.opts.default_ttl);
        let rec = Rec {
            st: if delay == 0 { St::Ready } else { St::Delayed },
            priority: opts.priority,
            seq,
            enqueued_at: now,
            attempts: 0,
            max_attempts: opts.max_attempts.unwrap_or(g.opts.max_attempts),
            due: if delay == 0 {
                0
            } else {
                now.saturating_add(delay)
            },
            token: 0,
            expires_at: ttl.map_or(0, |t| now.saturating_add(ms(t))),
        };
        g.tasks.insert(
            id.clone(),
            Entry {
                rec: rec.clone(),
                busy: true,
                pending: true,
            },
        );
        let mut b = self.ks.batch();
        b.put_with(&task_key(b'p', &self.name, &id), payload, rec.expiry());
        self.put_state(&mut b, &id, &rec);
        self.commit(g, &id, b, Some(rec))?;
        Ok(TaskId(id))
    }

    /// Takes the next visible task, waiting up to `timeout` (real time) for one; `Ok(None)` if
    /// none came. The task is leased for the visibility timeout and its attempt count goes up
    /// by one. Concurrent pops are served in arrival order. Fails with [`Error::Closed`] when
    /// the store is closed, also while waiting.
    pub fn pop(&self, timeout: Duration) -> Result<Option<Task>> {
        let deadline = Instant::now().checked_add(timeout);
        let ticket = {
            let mut g = self.view();
            let t = g.alloc_ticket();
            g.waiters.push_back(t);
            t
        };
        let r = self.pop_inner(ticket, deadline);
        let mut g = self.view();
        g.waiters.retain(|t| *t != ticket);
        drop(g);
        self.notify();
        r
    }

    fn pop_inner(&self, ticket: u64, deadline: Option<Instant>) -> Result<Option<Task>> {
        let mut g = self.view();
        loop {
            if self.store.is_closed() {
                return Err(Error::Closed);
            }
            g = self.settle(g)?;
            let now = self.now();
            let first = g.ready.first().map(|(_, _, id)| id.clone());
            if let (true, Some(id)) = (g.waiters.front() == Some(&ticket), first) {
                let Some(old) = g.begin(&id) else { continue };
                let mut rec = old.clone();
                let mut b = self.ks.batch();
                if rec.attempts >= rec.max_attempts {
                    // Only reachable for a record written by a pop that crashed between its
                    // write and its return: out of attempts, so it goes to the dead letters.
                    rec.st = St::Dead;
                    rec.due = 0;
                    rec.token = 0;
                    self.put_state(&mut b, &id, &rec);
                    self.commit(g, &id, b, Some(rec))?;
                    g = self.view();
                    continue;
                }
                let token = match self.alloc_seq(&mut g) {
                    Ok(t) => t,
                    Err(e) => {
                        g.finish(&id, None, false);
                        return Err(e);
                    }
                };
                rec.st = St::Leased;
                rec.attempts += 1;
                rec.due = now.saturating_add(ms(g.opts.visibility_timeout));
                rec.token = token;
                g.waiters.pop_front();
                // The next waiter may take its turn while this lease is written.
                self.notify();
                self.put_state(&mut b, &id, &rec);
                self.commit(g, &id, b, Some(rec.clone()))?;
                match self.ks.get(&task_key(b'p', &self.name, &id))? {
                    Some(payload) => {
                        return Ok(Some(Task {
                            id: TaskId(id),
                            payload: payload.to_vec(),
                            priority: rec.priority,
                            attempts: rec.attempts,
                            max_attempts: rec.max_attempts,
                            enqueued_at: rec.enqueued_at,
                            lease_deadline: rec.due,
                            expires_at: (rec.expires_at != 0).then_some(rec.expires_at),
                            token,
                        }));
                    }
                    None => {
                        // Its TTL ran out meanwhile: it is gone; take our turn again.
                        g = self.view();
                        g.waiters.push_front(ticket);
                        continue;
                    }
                }
            }
            let now_i = Instant::now();
            let mut wait = match deadline {
                Some(d) if d <= now_i => return Ok(None),
                Some(d) => Some(d - now_i),
                None => None,
            };
            if let Some((due, _)) = g.timed.first()
                && let Some(rw) = self.store.clock().real_wait(*due)
            {
                let rw = rw.max(Duration::from_millis(1));
                wait = Some(wait.map_or(rw, |w| w.min(rw)));
            }
            g = self.wait(g, wait);
        }
    }

    /// Checks that `task` holds the current, unexpired lease; returns the task's record.
    fn check_lease(&self, g: &View, task: &Task, now: u64) -> Result<Rec> {
        let id = task.id.as_str();
        let Some(e) = g
            .tasks
            .get(id)
            .filter(|e| !e.pending && !e.rec.expired(now))
        else {
            return Err(self.rejected(
                id,
                "the task is no longer in the queue (acknowledged, expired or purged)",
            ));
        };
        if e.rec.st != St::Leased || e.rec.token != task.token {
            return Err(self.rejected(
                id,
                &format!(
                    "lease token {} is stale: the lease ran out and the task was given back or leased to another worker",
                    task.token
                ),
            ));
        }
        if e.rec.due <= now {
            return Err(self.rejected(
                id,
                &format!("the lease ran out at {} (now {now})", e.rec.due),
            ));
        }
        Ok(e.rec.clone())
    }

    /// Completes a leased task: it is removed for good. Fails with [`Error::Rejected`],
    /// changing nothing, if `task`'s lease is no longer current.
    pub fn ack(&self, task: &Task) -> Result<()> {
        let g = self.idle(self.view(), task.id.as_str());
        self.check_lease(&g, task, self.now())?;
        let mut g = g;
        g.begin(task.id.as_str());
        let mut b = self.ks.batch();
        b.delete(&task_key(b's', &self.name, task.id.as_str()));
        b.delete(&task_key(b'p', &self.name, task.id.as_str()));
        self.commit(g, task.id.as_str(), b, None)
    }

    /// Gives a leased task back: visible again after `retry_after` (at once for zero), or moved
    /// to the dead-letter list if it has used all its attempts. Fails with [`Error::Rejected`],
    /// changing nothing, if `task`'s lease is no longer current.
    pub fn nack(&self, task: &Task, retry_after: Duration) -> Result<()> {
        let g = self.idle(self.view(), task.id.as_str());
        let now = self.now();
        let mut rec = self.check_lease(&g, task, now)?;
        let delay = ms(retry_after);
        rec.token = 0;
        if rec.attempts >= rec.max_attempts {
            rec.st = St::Dead;
            rec.due = 0;
        } else if delay == 0 {
            rec.st = St::Ready;
            rec.due = 0;
        } else {
            rec.st = St::Delayed;
            rec.due = now.saturating_add(delay);
        }
        let mut g = g;
        g.begin(task.id.as_str());
        let mut b = self.ks.batch();
        self.put_state(&mut b, task.id.as_str(), &rec);
        self.commit(g, task.id.as_str(), b, Some(rec))
    }

    /// Extends the lease of `task` to `d` from now (a heartbeat); returns the new deadline and
    /// updates `task.lease_deadline`. Fails with [`Error::Rejected`], changing nothing, if the
    /// lease is no longer current; with [`Error::InvalidArgument`] for a zero `d`.
    pub fn extend_lease(&self, task: &mut Task, d: Duration) -> Result<u64> {
        if ms(d) == 0 {
            return Err(Error::InvalidArgument {
                what: "a lease extension must be at least 1 ms".into(),
            });
        }
        let g = self.idle(self.view(), task.id.as_str());
        let now = self.now();
        let mut rec = self.check_lease(&g, task, now)?;
        rec.due = now.saturating_add(ms(d));
        let due = rec.due;
        let mut g = g;
        g.begin(task.id.as_str());
        let mut b = self.ks.batch();
        self.put_state(&mut b, task.id.as_str(), &rec);
        self.commit(g, task.id.as_str(), b, Some(rec))?;
        task.lease_deadline = due;
        Ok(due)
    }

    /// The tasks in the dead-letter list, oldest first, with their payloads.
    pub fn dead_letters(&self) -> Result<Vec<DeadLetter>> {
        let g = self.settle(self.view())?;
        let ids: Vec<(String, Rec)> = g
            .dead
            .iter()
            .filter_map(|(_, id)| g.tasks.get(id).map(|e| (id.clone(), e.rec.clone())))
            .collect();
        drop(g);
        let mut out = Vec::with_capacity(ids.len());
        for (id, rec) in ids {
            if let Some(payload) = self.ks.get(&task_key(b'p', &self.name, &id))? {
                out.push(DeadLetter {
                    id: TaskId(id),
                    payload: payload.to_vec(),
                    priority: rec.priority,
                    attempts: rec.attempts,
                    enqueued_at: rec.enqueued_at,
                });
            }
        }
        Ok(out)
    }

    /// Puts a dead letter back in the queue, ready, with its attempt count reset to zero.
    /// Fails with [`Error::Rejected`] if `id` is not in the dead-letter list.
    pub fn requeue_dead(&self, id: &TaskId) -> Result<()> {
        let g = self.settle(self.view())?;
        let mut g = self.idle(g, id.as_str());
        let now = self.now();
        let rec = match g.tasks.get(id.as_str()) {
            Some(e) if !e.pending && e.rec.logical(now) == Some(TaskState::Dead) => e.rec.clone(),
            _ => return Err(self.rejected(id.as_str(), "the task is not in the dead-letter list")),
        };
        g.begin(id.as_str());
        let rec = Rec {
            st: St::Ready,
            attempts: 0,
            due: 0,
            token: 0,
            ..rec
        };
        let mut b = self.ks.batch();
        self.put_state(&mut b, id.as_str(), &rec);
        self.commit(g, id.as_str(), b, Some(rec))
    }

    /// Removes every dead letter; returns how many.
    pub fn purge_dead(&self) -> Result<usize> {
        let g = self.settle(self.view())?;
        let ids: Vec<String> = g.dead.iter().map(|(_, id)| id.clone()).collect();
        self.remove_all(g, ids)
    }

    /// Removes every task, whatever its state (ready, delayed, leased, dead), in one atomic
    /// write; returns how many. The leases of removed tasks are refused afterwards.
    pub fn clear(&self) -> Result<usize> {
        let mut g = self.settle(self.view())?;
        while g.tasks.values().any(|e| e.busy) {
            g = self.wait(g, None);
        }
        let ids: Vec<String> = g.tasks.keys().cloned().collect();
        self.remove_all(g, ids)
    }

    /// Deletes the tasks `ids` (not busy) in one batch.
    fn remove_all<'a>(&'a self, mut g: MutexGuard<'a, View>, ids: Vec<String>) -> Result<usize> {
        let mut b = self.ks.batch();
        for id in &ids {
            g.begin(id);
            b.delete(&task_key(b's', &self.name, id));
            b.delete(&task_key(b'p', &self.name, id));
        }
        drop(g);
        let r = self.store.write_batch(b);
        let mut g = self.view();
        for id in &ids {
            g.finish(id, None, r.is_ok());
        }
        drop(g);
        self.notify();
        r.map(|()| ids.len())
    }

    /// Counts by state, at the store clock's now.
    pub fn stats(&self) -> Result<QueueStats> {
        let g = self.view();
        let now = self.now();
        let mut s = QueueStats::default();
        for e in g.tasks.values().filter(|e| !e.pending) {
            match e.rec.logical(now) {
                Some(TaskState::Ready) => s.ready += 1,
                Some(TaskState::Delayed { .. }) => s.delayed += 1,
                Some(TaskState::Leased { .. }) => s.in_flight += 1,
                Some(TaskState::Dead) => s.dead += 1,
                None => {}
            }
        }
        Ok(s)
    }

    /// Tasks a pop can get now.
    pub fn len(&self) -> Result<usize> {
        Ok(self.stats()?.ready)
    }

    /// Tasks leased to workers now.
    pub fn in_flight(&self) -> Result<usize> {
        Ok(self.stats()?.in_flight)
    }

    /// Tasks waiting for their delay.
    pub fn delayed(&self) -> Result<usize> {
        Ok(self.stats()?.delayed)
    }

    /// True if no task is ready, leased or delayed (dead letters do not count).
    pub fn is_empty(&self) -> Result<bool> {
        let s = self.stats()?;
        Ok(s.ready + s.in_flight + s.delayed == 0)
    }

    /// How many [`Queue::pop`] calls on this queue (through any handle of this open store) are
    /// waiting right now.
    pub fn waiting_pops(&self) -> usize {
        self.view().waiters.len()
    }

    /// Where the task `id` is, or `None` if it is not in the queue (never pushed, acknowledged,
    /// expired or purged).
    pub fn task(&self, id: &TaskId) -> Result<Option<TaskInfo>> {
        let g = self.view();
        let now = self.now();
        Ok(g.tasks
            .get(id.as_str())
            .filter(|e| !e.pending)
            .and_then(|e| e.rec.info(id.as_str(), now)))
    }

    /// Every task in the queue (dead letters included), oldest first.
    pub fn list(&self) -> Result<Vec<TaskInfo>> {
        let g = self.view();
        let now = self.now();
        let mut v: Vec<(u64, TaskInfo)> = g
            .tasks
            .iter()
            .filter(|(_, e)| !e.pending)
            .filter_map(|(id, e)| e.rec.info(id, now).map(|i| (e.rec.seq, i)))
            .collect();
        v.sort_by_key(|(s, _)| *s);
        Ok(v.into_iter().map(|(_, i)| i).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let r = Rec {
            st: St::Leased,
            priority: -7,
            seq: 9,
            enqueued_at: 1,
            attempts: 2,
            max_attempts: 3,
            due: 77,
            token: 5,
            expires_at: 99,
        };
        assert_eq!(Rec::decode(&r.encode()), Some(r));
        let m = Meta {
            hwm: 4096,
            opts: QueueOptions::default().default_ttl(Some(Duration::from_secs(3))),
        };
        let back = Meta::decode(&m.encode()).unwrap();
        assert_eq!((back.hwm, back.opts), (m.hwm, m.opts));
        assert_eq!(Rec::decode(&[1, 2, 3]), None);
    }

    #[test]
    fn keys_are_described() {
        assert_eq!(
            describe_key(&task_key(b's', "jobs", "t1")).unwrap(),
            "queue \"jobs\": task \"t1\" state"
        );
        assert_eq!(
            describe_key(&task_key(b'p', "jobs", "t1")).unwrap(),
            "queue \"jobs\": task \"t1\" payload"
        );
        assert!(
            describe_key(&meta_key("jobs"))
                .unwrap()
                .contains("metadata")
        );
        assert_eq!(describe_key(b"zz"), None);
        assert_eq!(describe_key(b"s/jobs"), None);
    }
}
