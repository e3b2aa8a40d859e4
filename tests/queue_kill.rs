//! Kill test: a child process pushes, pops and acknowledges tasks under `SyncPolicy::Always`,
//! printing each step once it returned; the parent SIGKILLs it at a random moment, reopens the
//! store and checks that no acknowledged task reappears and no pushed, unacknowledged task is
//! missing. Then the next round's child carries on with the same directory.
//!
//! The child is this same test binary, run again (`current_exe`) with `CHILD_DIR` set.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;
use ttlstore::{ManualClock, Options, QueueOptions, Store, SyncPolicy, TaskId};

const CHILD_DIR: &str = "TTLSTORE_QUEUE_KILL_DIR";
const CHILD_ROUND: &str = "TTLSTORE_QUEUE_KILL_ROUND";
const ROUNDS: u64 = 12;
const T0: u64 = 1_700_000_000_000;
const HOUR_MS: u64 = 3_600_000;
const SIGKILL: i32 = 9;

fn open(dir: &str, round: u64) -> (Store, ttlstore::Queue) {
    // Each round's clock is an hour later, so the leases of a killed round have lapsed.
    let clock = Arc::new(ManualClock::new(T0 + round * HOUR_MS));
    let opts = Options::default()
        .sync(SyncPolicy::Always)
        .segment_size(256 << 10)
        .clock(clock);
    let store = Store::open_with(dir, opts).unwrap();
    let q = store
        .queue_with(
            "kill",
            QueueOptions::default()
                .visibility_timeout(Duration::from_secs(60))
                .max_attempts(10_000),
        )
        .unwrap();
    (store, q)
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// The child: runs until killed (or a generous cap), one line per completed step.
fn child(dir: &str, round: u64) {
    use std::io::Write;
    let (_store, q) = open(dir, round);
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (round + 1));
    let out = std::io::stdout();
    let say = |line: String| {
        let mut o = out.lock();
        writeln!(o, "{line}").unwrap();
        o.flush().unwrap();
    };
    for i in 0..200_000u64 {
        if rng.next() % 20 < 11 {
            let id = q
                .push(format!("round {round} step {i}").as_bytes())
                .unwrap();
            say(format!("P {id}"));
        } else if let Some(t) = q.pop(Duration::ZERO).unwrap() {
            say(format!("L {}", t.id));
            if rng.next().is_multiple_of(6) {
                q.nack(&t, Duration::ZERO).unwrap();
                say(format!("N {}", t.id));
            } else {
                say(format!("a {}", t.id));
                q.ack(&t).unwrap();
                say(format!("A {}", t.id));
            }
        }
    }
}

#[test]
fn acked_tasks_never_return_and_pushed_tasks_are_never_lost() {
    if let Ok(dir) = std::env::var(CHILD_DIR) {
        let round = std::env::var(CHILD_ROUND).unwrap().parse().unwrap();
        child(&dir, round);
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let dir_s = dir.path().to_str().unwrap().to_string();
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    eprintln!("queue_kill seed {seed}");
    let mut rng = Rng(seed);
    let (mut pushed, mut acked, mut ack_started) = (HashSet::new(), HashSet::new(), HashSet::new());
    let mut kills = 0;
    let mut checked_present = 0;
    for round in 0..ROUNDS {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "acked_tasks_never_return_and_pushed_tasks_are_never_lost",
                "--exact",
                "--nocapture",
            ])
            .args(["--test-threads", "1"])
            .env(CHILD_DIR, &dir_s)
            .env(CHILD_ROUND, round.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut reader = BufReader::new(child.stdout.take().unwrap());
        let kill_after = 5 + rng.next() % 200;
        let mut lines = Vec::new();
        let mut seen = 0;
        let mut line = String::new();
        while seen < kill_after {
            line.clear();
            if reader.read_line(&mut line).unwrap() == 0 {
                break;
            }
            if line.starts_with(['P', 'A', 'a', 'L', 'N']) {
                seen += 1;
            }
            lines.push(line.clone());
        }
        child.kill().unwrap();
        let status = child.wait().unwrap();
        {
            use std::os::unix::process::ExitStatusExt;
            if status.signal() == Some(SIGKILL) {
                kills += 1;
            }
        }
        // What the child printed before it died also happened.
        let mut rest = String::new();
        reader.read_to_string(&mut rest).unwrap();
        lines.extend(rest.split_inclusive('\n').map(str::to_string));
        for l in lines.iter().filter(|l| l.ends_with('\n')) {
            let l = l.trim_end();
            match l.split_once(' ') {
                Some(("P", id)) => {
                    pushed.insert(id.to_string());
                }
                Some(("a", id)) => {
                    ack_started.insert(id.to_string());
                }
                Some(("A", id)) => {
                    acked.insert(id.to_string());
                }
                _ => {}
            }
        }
        let (store, q) = open(&dir_s, round);
        for id in &acked {
            let info = q.task(&TaskId::new(id.clone()).unwrap()).unwrap();
            assert!(
                info.is_none(),
                "round {round}: acked task {id} came back: {info:?} (seed {seed})"
            );
        }
        for id in pushed
            .iter()
            .filter(|id| !acked.contains(*id) && !ack_started.contains(*id))
        {
            let info = q.task(&TaskId::new(id.clone()).unwrap()).unwrap();
            assert!(
                info.is_some(),
                "round {round}: pushed task {id} is missing (seed {seed})"
            );
            checked_present += 1;
        }
        drop(q);
        store.close().unwrap();
    }
    assert!(
        kills >= 10,
        "only {kills} of {ROUNDS} children were killed mid-run"
    );
    assert!(
        !acked.is_empty() && checked_present > 0,
        "the children did some work"
    );
}
