//! SIGKILL test of message threads under `SyncPolicy::Always`: a child process appends to two
//! threads from several OS threads (single appends and atomic batches, some with a TTL) and reports
//! every acknowledged append; the parent kills it at a random moment, reopens, and checks that
//! every acknowledged message is there with its payload and expiry, that offsets have no gaps and
//! are never reused across restarts, and that a batch is there whole or not at all.
//!
//! `TTLSTORE_THREAD_KILLS` raises the number of kills (default 12).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};
use ttlstore::{ManualClock, Options, Store, SyncPolicy};

const T0: u64 = 1_700_000_000_000;
const CHILD: &str = "TTLSTORE_THREAD_KILL_DIR";
const NAMES: [&str; 2] = ["chat", "events"];

fn open(dir: &str) -> Store {
    let clock = Arc::new(ManualClock::new(T0));
    let opts = Options::default()
        .sync(SyncPolicy::Always)
        .segment_size(64 << 10)
        .clock(clock);
    Store::open_with(dir, opts).expect("open")
}

fn payload(name: &str, writer: usize, i: u64, part: usize) -> Vec<u8> {
    format!("{name}/{writer}/{i}/{part}").into_bytes()
}

fn child(dir: &str) {
    let store = open(dir);
    let out = Arc::new(std::sync::Mutex::new(std::io::stdout()));
    std::thread::scope(|s| {
        for writer in 0..4usize {
            let (store, out) = (store.clone(), out.clone());
            s.spawn(move || {
                let name = NAMES[writer % 2];
                let thread = store.thread(name).expect("thread");
                for i in 0..u64::MAX {
                    // Each line: name, first offset, count, ttl flag, writer, i.
                    let (first, n, ttl) = match i % 3 {
                        0 => (
                            thread.append(&payload(name, writer, i, 0)).expect("append"),
                            1,
                            false,
                        ),
                        1 => {
                            let p = payload(name, writer, i, 0);
                            (
                                thread
                                    .append_with_ttl(&p, Duration::from_secs(3600))
                                    .expect("append"),
                                1,
                                true,
                            )
                        }
                        _ => {
                            let ps: Vec<Vec<u8>> =
                                (0..3).map(|part| payload(name, writer, i, part)).collect();
                            let r = thread.append_batch(&ps).expect("batch");
                            (r.start, r.end - r.start, false)
                        }
                    };
                    let mut o = out.lock().unwrap_or_else(|e| e.into_inner());
                    writeln!(o, "A {name} {first} {n} {} {writer} {i}", u8::from(ttl))
                        .expect("stdout");
                    o.flush().expect("stdout");
                }
            });
        }
    });
}

#[test]
fn acknowledged_appends_survive_sigkill_without_gaps() {
    if let Ok(dir) = std::env::var(CHILD) {
        child(&dir);
        return;
    }
    let kills: usize = std::env::var("TTLSTORE_THREAD_KILLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12);
    let dir = tempfile::tempdir().unwrap();
    let dir_s = dir.path().to_str().unwrap().to_string();
    // Everything acknowledged so far, per thread: offset → (payload, has ttl).
    let mut acked: BTreeMap<&str, BTreeMap<u64, (Vec<u8>, bool)>> = BTreeMap::new();
    let mut seed: u64 = 0x5DEE_CE66_D1CE_4E5B;
    for round in 0..kills {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "acknowledged_appends_survive_sigkill_without_gaps",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD, &dir_s)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let lines_before_kill = 5 + (seed % 200) as usize;
        let mut reader = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        let mut got = 0;
        let started = Instant::now();
        while got < lines_before_kill && started.elapsed() < Duration::from_secs(20) {
            line.clear();
            if reader.read_line(&mut line).unwrap() == 0 {
                break;
            }
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.first() != Some(&"A") {
                continue;
            }
            let name = if f[1] == NAMES[0] { NAMES[0] } else { NAMES[1] };
            let (first, n, ttl): (u64, u64, bool) =
                (f[2].parse().unwrap(), f[3].parse().unwrap(), f[4] == "1");
            let (writer, i): (usize, u64) = (f[5].parse().unwrap(), f[6].parse().unwrap());
            for k in 0..n {
                let prev = acked
                    .entry(name)
                    .or_default()
                    .insert(first + k, (payload(name, writer, i, k as usize), ttl));
                assert!(
                    prev.is_none(),
                    "round {round}: offset {} of {name} reused",
                    first + k
                );
            }
            got += 1;
        }
        child.kill().unwrap();
        // Drain what the child printed after the kill decision: those acks count too.
        let mut rest = String::new();
        let _ = std::io::Read::read_to_string(&mut reader, &mut rest);
        for l in rest.lines() {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() == 7 && f[0] == "A" {
                let name = if f[1] == NAMES[0] { NAMES[0] } else { NAMES[1] };
                let (first, n, ttl): (u64, u64, bool) =
                    (f[2].parse().unwrap(), f[3].parse().unwrap(), f[4] == "1");
                let (writer, i): (usize, u64) = (f[5].parse().unwrap(), f[6].parse().unwrap());
                for k in 0..n {
                    acked
                        .entry(name)
                        .or_default()
                        .insert(first + k, (payload(name, writer, i, k as usize), ttl));
                }
            }
        }
        child.wait().unwrap();

        let store = open(&dir_s);
        for name in NAMES {
            let thread = store.thread(name).unwrap();
            let next = thread.next_offset();
            let all = thread.read(0, usize::MAX).unwrap();
            // No gaps: offsets run 0, 1, 2, … up to next_offset (nothing trims or expires here).
            for (i, m) in all.iter().enumerate() {
                assert_eq!(m.offset, i as u64, "round {round}: gap in {name}");
            }
            assert_eq!(
                all.len() as u64,
                next,
                "round {round}: {name} next_offset {next}"
            );
            let mine = acked.get(name).cloned().unwrap_or_default();
            for (off, (p, ttl)) in &mine {
                let m = all
                    .get(*off as usize)
                    .unwrap_or_else(|| panic!("round {round}: acked {name}#{off} lost"));
                assert_eq!(&m.payload, p, "round {round}: {name}#{off}");
                assert_eq!(
                    m.expires_at.is_some(),
                    *ttl,
                    "round {round}: {name}#{off} expiry"
                );
            }
            // A batch is whole or absent: every message's batch-mates are there too.
            for m in &all {
                let text = String::from_utf8(m.payload.clone()).unwrap();
                let parts: Vec<&str> = text.split('/').collect();
                if parts[2].parse::<u64>().unwrap() % 3 == 2 {
                    let part: u64 = parts[3].parse().unwrap();
                    let first = m.offset - part;
                    for k in 0..3 {
                        let mate = all
                            .get((first + k) as usize)
                            .unwrap_or_else(|| panic!("round {round}: torn batch in {name}"));
                        assert_eq!(
                            mate.payload,
                            payload(
                                name,
                                parts[1].parse().unwrap(),
                                parts[2].parse().unwrap(),
                                k as usize
                            )
                        );
                    }
                }
            }
            // What reached the disk without its ack is kept as acknowledged from here on: offsets
            // are never handed out again.
            let entry = acked.entry(name).or_default();
            for m in all {
                let ttl = m.expires_at.is_some();
                entry.entry(m.offset).or_insert((m.payload, ttl));
            }
        }
        drop(store);
    }
    assert!(
        acked.values().map(BTreeMap::len).sum::<usize>() > kills,
        "too few appends to mean anything"
    );
}
