//! Background workers: threads that belong to a store, wake on a message (a write that set an
//! earlier deadline, a [`crate::ManualClock`] advance, a request to run now) or on their own
//! deadline, stop through a channel when the last [`crate::Store`] handle drops, are joined there,
//! and poison the store if they panic.

use crate::writer::Poison;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::thread::JoinHandle;
use std::time::Duration;

/// A message to a worker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Msg {
    /// Something changed: look again.
    Wake,
    /// Stop and return.
    Stop,
}

/// What a worker's wait ended with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Woke {
    /// A [`Msg::Wake`] arrived (or several).
    Message,
    /// The timeout passed.
    Timeout,
    /// Stop: return from the worker.
    Stop,
}

/// The receiving side, handed to a worker's body.
#[derive(Debug)]
pub struct Inbox {
    rx: Receiver<Msg>,
}

impl Inbox {
    /// Waits for a message, or for `timeout` when given.
    pub fn wait(&self, timeout: Option<Duration>) -> Woke {
        let first = match timeout {
            Some(t) => match self.rx.recv_timeout(t) {
                Ok(m) => m,
                Err(RecvTimeoutError::Timeout) => return Woke::Timeout,
                Err(RecvTimeoutError::Disconnected) => return Woke::Stop,
            },
            None => match self.rx.recv() {
                Ok(m) => m,
                Err(_) => return Woke::Stop,
            },
        };
        // Drain what else is queued: many wakes are one wake.
        let mut stop = first == Msg::Stop;
        while let Ok(m) = self.rx.try_recv() {
            stop |= m == Msg::Stop;
        }
        if stop { Woke::Stop } else { Woke::Message }
    }
}

/// A running worker.
#[derive(Debug)]
pub struct Worker {
    tx: Sender<Msg>,
    handle: Option<JoinHandle<()>>,
}

impl Worker {
    /// Starts `body` on a thread named `name`. A panic in it poisons the store.
    pub fn spawn(
        name: &str,
        poison: Arc<Poison>,
        body: impl FnOnce(Inbox) + Send + 'static,
    ) -> std::io::Result<Worker> {
        let (tx, rx) = mpsc::channel();
        let thread_name = name.to_string();
        let handle = std::thread::Builder::new()
            .name(format!("ttlstore-{name}"))
            .spawn(move || {
                if let Err(panic) = catch_unwind(AssertUnwindSafe(|| body(Inbox { rx }))) {
                    let what = panic
                        .downcast_ref::<&str>()
                        .map(|s| s.to_string())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_default();
                    poison.poison(format!("background thread {thread_name} panicked: {what}"));
                }
            })?;
        Ok(Worker {
            tx,
            handle: Some(handle),
        })
    }

    /// A handle that wakes the worker.
    pub fn waker(&self) -> Sender<Msg> {
        self.tx.clone()
    }

    /// Wakes the worker.
    pub fn wake(&self) {
        let _ = self.tx.send(Msg::Wake);
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.tx.send(Msg::Stop);
        if let Some(h) = self.handle.take() {
            // A worker never waits for the store's last handle, so this join ends.
            let _ = h.join();
        }
    }
}
