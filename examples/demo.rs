//! The README demo: a key, a message thread and a task queue keep their contents and TTLs across
//! a restart.
//!
//! `cargo run --example demo [DIR]` (default `./demo-data`). Re-runnable: each run starts by
//! clearing what an earlier run left in the thread and the queue (the thread's offsets go on
//! from where they were: they are never reused).

use std::time::Duration;
use ttlstore::{Options, PushOptions, QueueOptions, Store, SyncPolicy, TaskState, ThreadOptions};

const KEY: &[u8] = b"session:42";
const THREAD: &str = "demo-chat";
const QUEUE: &str = "demo-jobs";

fn secs_left(now: u64, at: u64) -> f64 {
    at.saturating_sub(now) as f64 / 1000.0
}

fn open(dir: &str) -> ttlstore::Result<Store> {
    Store::open_with(dir, Options::default().sync(SyncPolicy::Always))
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "./demo-data".to_string());
    println!("ttlstore demo in {dir}\n");

    // --- first run of the "application" ---
    let store = open(&dir)?;
    store.put_with_ttl(KEY, b"alice", Duration::from_secs(3600))?;
    println!(
        "wrote key {:?} = \"alice\" with a TTL of 1 h",
        String::from_utf8_lossy(KEY)
    );

    let thread = store.thread_with(
        THREAD,
        ThreadOptions::default().default_ttl(Some(Duration::from_secs(600))),
    )?;
    thread.trim_before(thread.next_offset())?;
    let first = thread.append(b"alice: hi bob")?;
    thread.append(b"bob: hi alice")?;
    thread.append_with_ttl(
        b"alice: this one vanishes in 2 min",
        Duration::from_secs(120),
    )?;
    let last = thread.next_offset();
    println!(
        "thread {THREAD:?}: appended offsets {first}..{last} (policy TTL 10 min, one message 2 min)"
    );

    let queue = store.queue_with(
        QUEUE,
        QueueOptions::default().visibility_timeout(Duration::from_secs(300)),
    )?;
    let cleared = queue.clear()?;
    if cleared > 0 {
        println!("queue {QUEUE:?}: cleared {cleared} task(s) left by an earlier run");
    }
    let urgent = queue.push_with(b"send invoice #7", PushOptions::new().priority(10))?;
    let normal = queue.push_with(
        b"resize avatar",
        PushOptions::new().ttl(Duration::from_secs(900)),
    )?;
    let later = queue.push_with(
        b"weekly report",
        PushOptions::new().delay(Duration::from_secs(3600)),
    )?;
    let leased = queue
        .pop(Duration::from_secs(1))?
        .ok_or("a task should be ready")?;
    println!(
        "queue {QUEUE:?}: pushed 3 tasks; leased {} ({:?}) until the lease ends in {:.1} s",
        leased.id,
        String::from_utf8_lossy(&leased.payload),
        secs_left(store.now_ms(), leased.lease_deadline)
    );
    drop((thread, queue));
    store.close()?;
    println!("\n-- store closed; reopening --\n");

    // --- after the restart ---
    let store = open(&dir)?;
    let now = store.now_ms();
    let item = store.get_item(KEY)?.ok_or("the key is gone")?;
    println!(
        "key {:?} = {:?}, {:.1} s to live",
        String::from_utf8_lossy(KEY),
        String::from_utf8_lossy(&item.value),
        secs_left(now, item.expires_at.ok_or("the key lost its TTL")?)
    );

    println!("threads in the store: {:?}", store.threads()?);
    let thread = store.thread(THREAD)?;
    let msgs = thread.read(first, 100)?;
    for m in &msgs {
        let ttl = m.expires_at.map_or("no TTL".to_string(), |at| {
            format!("{:.1} s to live", secs_left(now, at))
        });
        println!(
            "  #{:<4} {:<36} {ttl}",
            m.offset,
            format!("{:?}", String::from_utf8_lossy(&m.payload))
        );
    }
    if msgs.len() != 3 || thread.next_offset() != last {
        return Err("the thread did not survive the restart intact".into());
    }

    let queue = store.queue(QUEUE)?;
    println!("queue {QUEUE:?}: {:?}", queue.stats()?);
    for info in queue.list()? {
        let state = match info.state {
            TaskState::Ready => "ready".to_string(),
            TaskState::Delayed { until } => {
                format!("delayed, visible in {:.1} s", secs_left(now, until))
            }
            TaskState::Leased { until } => {
                format!("leased, lease ends in {:.1} s", secs_left(now, until))
            }
            TaskState::Dead => "dead letter".to_string(),
        };
        let ttl = info.expires_at.map_or(String::new(), |at| {
            format!(", {:.1} s to live", secs_left(now, at))
        });
        println!(
            "  {} priority {:>2}, attempt {}/{}: {state}{ttl}",
            info.id, info.priority, info.attempts, info.max_attempts
        );
    }
    let state_of = |id| queue.task(id).map(|i| i.map(|i| i.state));
    let intact = matches!(state_of(&urgent)?, Some(TaskState::Leased { .. }))
        && state_of(&normal)? == Some(TaskState::Ready)
        && matches!(state_of(&later)?, Some(TaskState::Delayed { .. }));
    if !intact || leased.id != urgent {
        return Err("the queue did not survive the restart intact".into());
    }
    // The lease taken before the restart is still good.
    queue.ack(&leased)?;
    println!(
        "acknowledged {} with the lease taken before the restart",
        leased.id
    );
    drop((thread, queue));
    store.close()?;
    Ok(())
}
