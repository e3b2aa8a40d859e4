//! White-box crash points (cargo feature `failpoints`).
//!
//! The engine marks every step of its durability protocols with `failpoint!("name")`. Without the
//! feature the macro expands to nothing. With it, a test can arm a point so that reaching it
//! returns an I/O error, panics, or ends the process on the spot (`abort`, which leaves the files
//! exactly as a crash at that instruction would). [`names`] lists every point the engine has.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

/// What an armed point does when reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Return an I/O error (EIO) from the operation.
    Error,
    /// Panic.
    Panic,
    /// Abort the process at once: a crash at this instruction.
    Abort,
}

static ARMED: Mutex<Option<HashMap<String, (Action, u64)>>> = Mutex::new(None);
static ANY_ARMED: AtomicBool = AtomicBool::new(false);

/// Every failpoint the engine has, in protocol order.
pub fn names() -> &'static [&'static str] {
    &[
        "segment.create.before_sync",
        "append.after_write",
        "sync.before",
        "sync.after",
        "rotate.before_sync_old",
        "rotate.after_create",
        "rotate.before_seal",
        "rotate.after_seal",
        "rotate.before_dir_sync",
        "recovery.before_tail_repair",
        "hint.before_sync",
        "hint.before_rename",
        "compaction.before_output_sync",
        "compaction.before_publish",
        "compaction.after_publish",
        "compaction.before_unlink",
        "compaction.after_unlink",
    ]
}

/// Arms `name`: the `skip`+1-th time it is reached, `action` happens.
pub fn arm(name: &str, action: Action, skip: u64) {
    ANY_ARMED.store(true, Ordering::SeqCst);
    ARMED
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get_or_insert_with(HashMap::new)
        .insert(name.to_string(), (action, skip));
}

/// Disarms every point.
pub fn clear() {
    *ARMED.lock().unwrap_or_else(|e| e.into_inner()) = None;
}

/// Arms points from the environment variable `TTLSTORE_FAILPOINT` (`name=abort|panic|error[@skip]`),
/// for child processes of crash tests.
pub fn arm_from_env() {
    let Ok(spec) = std::env::var("TTLSTORE_FAILPOINT") else {
        return;
    };
    for part in spec.split(',').filter(|p| !p.is_empty()) {
        let Some((name, rest)) = part.split_once('=') else {
            continue;
        };
        let (action, skip) = rest
            .split_once('@')
            .map_or((rest, 0), |(a, s)| (a, s.parse().unwrap_or(0)));
        let action = match action {
            "panic" => Action::Panic,
            "error" => Action::Error,
            _ => Action::Abort,
        };
        arm(name, action, skip);
    }
}

#[doc(hidden)]
pub fn hit(name: &str) -> Option<std::io::Error> {
    if !ANY_ARMED.load(Ordering::Relaxed) {
        return None;
    }
    let action = {
        let mut g = ARMED.lock().unwrap_or_else(|e| e.into_inner());
        let map = g.as_mut()?;
        let (action, skip) = map.get_mut(name)?;
        if *skip > 0 {
            *skip -= 1;
            return None;
        }
        let a = *action;
        map.remove(name);
        a
    };
    match action {
        Action::Error => Some(std::io::Error::other(format!("failpoint {name}"))),
        Action::Panic => panic!("failpoint {name}"),
        Action::Abort => std::process::abort(),
    }
}
