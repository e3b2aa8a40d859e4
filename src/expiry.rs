//! Active expiry: a background thread that sleeps until the earliest deadline in the expiry heap,
//! then logs one expire record per due key (a bounded batch, one append), removes the keys from
//! the index and tells subscribers.
//!
//! Reads never depend on it: they compare the expiry with the clock themselves. The expirer only
//! makes expiry durable (so the key stays gone whatever the clock does later) and lets compaction
//! free the space.
//!
//! Notifications are at-least-once: a key is reported when its expire record is appended; a key
//! whose deadline passed while the process was down, or whose expire record did not reach the disk
//! before a crash, is still in the log without an expire record, so the expirer reports it after
//! the next open. Notifications produced while nobody is subscribed are kept (up to
//! [`BACKLOG_LIMIT`]) for the first subscriber.

use crate::background::{Inbox, Woke};
use crate::error::Result;
use crate::format::EncOp;
use crate::store::{Inner, Namespace};
use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver, Sender};

/// Keys the expirer handles in one append before it yields to writers.
pub const EXPIRE_BATCH: usize = 256;
/// Notifications kept while nobody is subscribed.
pub const BACKLOG_LIMIT: usize = 1 << 20;

/// A key that expired, from [`crate::Store::subscribe_expired`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpiredKey {
    /// The key's namespace.
    pub namespace: Namespace,
    /// The key.
    pub key: Vec<u8>,
    /// When it expired (unix ms).
    pub expires_at: u64,
    /// The sequence of the write that set the value and its TTL.
    pub seq: u64,
}

/// Fan-out of expiry notifications.
#[derive(Debug, Default)]
pub struct Notifier {
    inner: Mutex<NotifierState>,
}

#[derive(Debug, Default)]
struct NotifierState {
    subscribers: Vec<Sender<ExpiredKey>>,
    backlog: VecDeque<ExpiredKey>,
    dropped: u64,
}

impl Notifier {
    /// A new receiver of every notification from now on (plus the backlog, for the first one).
    pub fn subscribe(&self) -> Receiver<ExpiredKey> {
        let (tx, rx) = mpsc::channel();
        let mut st = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        for k in st.backlog.drain(..) {
            let _ = tx.send(k);
        }
        st.subscribers.push(tx);
        rx
    }

    /// Sends `keys` to every live subscriber, or keeps them if there is none.
    pub fn notify(&self, keys: Vec<ExpiredKey>) {
        let mut st = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        st.subscribers
            .retain(|tx| keys.first().is_none_or(|k| tx.send(k.clone()).is_ok()));
        if st.subscribers.is_empty() {
            for k in keys {
                if st.backlog.len() >= BACKLOG_LIMIT {
                    st.backlog.pop_front();
                    st.dropped += 1;
                }
                st.backlog.push_back(k);
            }
            return;
        }
        for k in keys.into_iter().skip(1) {
            for tx in &st.subscribers {
                let _ = tx.send(k.clone());
            }
        }
    }

    /// Notifications dropped because the backlog was full.
    pub fn dropped(&self) -> u64 {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).dropped
    }
}

/// Expires up to `limit` due keys now. Returns how many due keys it handled.
pub fn expire_due(inner: &Inner, limit: usize) -> Result<usize> {
    let mut w = inner.log.lock()?;
    let now = inner.opts.clock.now_ms();
    let due = inner.state.write().index.due(now, limit);
    if due.is_empty() {
        return Ok(0);
    }
    let ops: Vec<EncOp<'_>> = due
        .iter()
        .map(|(ns, key, e)| EncOp::Expire {
            ns: *ns,
            key,
            target_seq: e.seq,
        })
        .collect();
    let mut applied = Vec::with_capacity(ops.len());
    // `due` handed the keys' heap entries out with them: those not removed after all (the
    // write failed, or an expire came back stale, which the writer lock rules out) get theirs
    // back, or they would never be expired.
    if let Err(e) = inner.commit_internal(&mut w, &ops, Some(&mut applied)) {
        inner.state.write().index.requeue(&due);
        return Err(e);
    }
    if applied
        .iter()
        .any(|a| matches!(a, crate::state::Applied::Stale))
    {
        inner.state.write().index.requeue(&due);
    }
    drop(w);
    let processed = due.len();
    let keys = due
        .into_iter()
        .zip(applied)
        .filter(|(_, a)| matches!(a, crate::state::Applied::Changed { .. }))
        .map(|((ns, key, e), _)| ExpiredKey {
            namespace: Namespace(ns),
            key,
            expires_at: e.expires_at,
            seq: e.seq,
        })
        .collect::<Vec<_>>();
    inner
        .expired_total
        .fetch_add(keys.len() as u64, Ordering::Relaxed);
    inner.notifier.notify(keys);
    Ok(processed)
}

/// The expirer thread's body.
pub fn worker(inner: &Inner, inbox: &Inbox) {
    loop {
        let now = inner.opts.clock.now_ms();
        let next = inner.state.write().index.next_expiry();
        let timeout = match next {
            Some(t) if t <= now => {
                match expire_due(inner, EXPIRE_BATCH) {
                    Ok(n) if n > 0 => {
                        if let Some(tx) = inner.log.on_seal.get() {
                            let _ = tx.send(crate::background::Msg::Wake);
                        }
                        std::thread::yield_now();
                        continue;
                    }
                    // Nothing due after all (raced with a write), or the store refuses writes
                    // (poisoned or closed): wait for a message or the stop.
                    Ok(_) => None,
                    Err(_) => None,
                }
            }
            Some(t) => {
                inner.expirer_deadline.store(t, Ordering::SeqCst);
                inner.opts.clock.real_wait(t)
            }
            None => {
                inner.expirer_deadline.store(u64::MAX, Ordering::SeqCst);
                None
            }
        };
        if inbox.wait(timeout) == Woke::Stop {
            return;
        }
    }
}
