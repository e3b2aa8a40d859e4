//! The fuzz targets of `fuzz/` as ordinary tests on stable Rust: every function of
//! `ttlstore::fuzzing` runs over every committed seed in `fuzz/corpus/<target>/`, then over a few
//! hundred inputs made from the seeds by random bit flips, truncations, splices and byte runs.
//!
//! Environment: `TTLSTORE_FUZZ_CASES=N` generated inputs per target (default 300);
//! `TTLSTORE_FUZZ_SEED=S` their seed. `TTLSTORE_WRITE_SEEDS=1` with
//! `cargo test --test fuzz_corpus write_seed_corpus -- --ignored` regenerates the seed files.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use ttlstore::fuzzing;
use ttlstore::storage::SimStorage;
use ttlstore::{ManualClock, Options, Store, SyncPolicy, WriteBatch};

type Target = fn(&[u8]);

const TARGETS: [(&str, Target); 4] = [
    ("decode_segment", fuzzing::decode_segment),
    ("decode_hint", fuzzing::decode_hint),
    ("open_directory", fuzzing::open_directory),
    ("operation_sequence", fuzzing::operation_sequence),
];

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz")
        .join("corpus")
        .join(target)
}

fn seeds(target: &str) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(corpus_dir(target))
        .unwrap_or_else(|e| panic!("no seed corpus for {target}: {e}"))
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("seed-")
        })
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(rng: &mut Rng, seed: &[u8], other: &[u8]) -> Vec<u8> {
    let mut v = seed.to_vec();
    for _ in 0..1 + rng.below(4) {
        match rng.below(5) {
            0 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] ^= 1 << rng.below(8);
            }
            1 => v.truncate(rng.below(v.len() + 1)),
            2 if !other.is_empty() => {
                let at = rng.below(v.len() + 1);
                let from = rng.below(other.len());
                let len = rng.below(other.len() - from + 1).min(256);
                v.splice(at..at, other[from..from + len].iter().copied());
            }
            3 if !v.is_empty() => {
                let i = rng.below(v.len());
                let len = rng.below(16).min(v.len() - i);
                let b = [0u8, 0xff, 0x80][rng.below(3)];
                v[i..i + len].fill(b);
            }
            _ => v.extend((0..rng.below(64)).map(|_| rng.next() as u8)),
        }
    }
    v
}

#[test]
fn every_target_accepts_every_committed_seed() {
    for (target, f) in TARGETS {
        let seeds = seeds(target);
        assert!(
            seeds.len() >= 3,
            "{target}: expected committed seeds, found {}",
            seeds.len()
        );
        for (name, data) in &seeds {
            eprintln!("{target}/{name}");
            f(data);
        }
    }
}

#[test]
fn every_target_survives_mutated_seeds() {
    let cases: usize = std::env::var("TTLSTORE_FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    let seed: u64 = std::env::var("TTLSTORE_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    let mut rng = Rng(seed);
    for (target, f) in TARGETS {
        let seeds = seeds(target);
        for case in 0..cases {
            let a = &seeds[rng.below(seeds.len())].1;
            let b = &seeds[rng.below(seeds.len())].1;
            let input = mutate(&mut rng, a, b);
            let r = std::panic::catch_unwind(|| f(&input));
            if r.is_err() {
                let path =
                    std::env::temp_dir().join(format!("ttlstore-fuzz-{target}-{seed}-{case}"));
                std::fs::write(&path, &input).unwrap();
                panic!(
                    "{target} failed on a mutated seed (TTLSTORE_FUZZ_SEED={seed}, case {case}); input saved to {}",
                    path.display()
                );
            }
        }
    }
}

/// A store's files after a few hundred writes, rotations and a compaction: (is_hint, id, bytes).
fn sample_store_files() -> Vec<(bool, u8, Vec<u8>)> {
    let fs = SimStorage::with_file_capacity(9, 1 << 20);
    let dir = Path::new("/seed/db");
    let clock = Arc::new(ManualClock::new(1_700_000_000_000));
    let opts = Options::default()
        .sync(SyncPolicy::Never)
        .segment_size(4096)
        .background_threads(false)
        .clock(clock.clone())
        .storage(fs.clone());
    let store = Store::open_with(dir, opts).unwrap();
    for i in 0..120u32 {
        let k = format!("k{}", i % 40);
        match i % 7 {
            0 => store
                .put_with_ttl(
                    k.as_bytes(),
                    &[i as u8; 40],
                    Duration::from_secs(u64::from(i) + 1),
                )
                .unwrap(),
            3 => {
                store.delete(k.as_bytes()).unwrap();
            }
            5 => {
                let mut b = WriteBatch::new();
                b.put(b"batch-a", b"1")
                    .delete(b"k1")
                    .put(k.as_bytes(), b"from a batch");
                store.write_batch(b).unwrap();
            }
            _ => store
                .put(k.as_bytes(), &vec![i as u8; 60 + (i as usize % 50)])
                .unwrap(),
        }
        if i == 80 {
            clock.advance(Duration::from_secs(30));
            store.compact().unwrap();
        }
    }
    drop(store);
    fs.file_names()
        .into_iter()
        .filter_map(|p| {
            let name = p.file_name()?.to_string_lossy().into_owned();
            let (digits, hint) = match name.split_once('.') {
                Some((d, "seg")) => (d.to_string(), false),
                Some((d, "hint")) => (d.to_string(), true),
                _ => return None,
            };
            let id: u8 = digits.parse::<u64>().ok()?.try_into().ok()?;
            Some((hint, id, fs.read_file(&p)?))
        })
        .collect()
}

/// Writes the seed corpus (run by hand after a format change; the files are committed).
#[test]
#[ignore = "regenerates fuzz/corpus; run with TTLSTORE_WRITE_SEEDS=1"]
fn write_seed_corpus() {
    if std::env::var("TTLSTORE_WRITE_SEEDS").as_deref() != Ok("1") {
        return;
    }
    let files = sample_store_files();
    assert!(files.len() >= 3, "{files:?}");
    let write = |target: &str, name: &str, data: &[u8]| {
        let d = corpus_dir(target);
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(format!("seed-{name}")), data).unwrap();
    };
    let segs: Vec<_> = files.iter().filter(|f| !f.0).collect();
    for (hint, id, bytes) in &files {
        if !hint {
            write("decode_segment", &format!("segment-{id}"), bytes);
        }
    }
    for (hint, id, bytes) in &files {
        if *hint {
            let seg_len = files
                .iter()
                .find(|f| !f.0 && f.1 == *id)
                .map_or(0, |f| f.2.len() as u64);
            let mut input = seg_len.to_le_bytes().to_vec();
            input.extend_from_slice(bytes);
            write("decode_hint", &format!("hint-{id}"), &input);
            let mut damaged = input.clone();
            if let Some(last) = damaged.last_mut() {
                *last ^= 0x5a;
            }
            write("decode_hint", &format!("hint-{id}-bad-crc"), &damaged);
            write(
                "decode_hint",
                &format!("hint-{id}-cut"),
                &input[..input.len().min(70)],
            );
        }
    }
    write("decode_segment", "empty", &[]);
    write("decode_segment", "header-only", &segs[0].2[..40]);
    for mode in 0..3u8 {
        write(
            "open_directory",
            &format!("store-mode{mode}"),
            &fuzzing::encode_directory(mode, &files),
        );
    }
    let only_segs: Vec<_> = files.iter().filter(|f| !f.0).cloned().collect();
    write(
        "open_directory",
        "segments-only",
        &fuzzing::encode_directory(0, &only_segs),
    );
    write(
        "open_directory",
        "last-segment",
        &fuzzing::encode_directory(0, &only_segs[only_segs.len() - 1..]),
    );
    // Programs: opcode, key byte, arguments (see fuzzing::operation_sequence).
    let programs: [(&str, Vec<u8>); 5] = [
        (
            "puts-and-reopen",
            vec![
                1, 0, 0, 3, 7, 0, 1, 5, 1, 0, 2, 3, 2, 4, 0, 1, 10, 0, 3, 1, 10, 0,
            ],
        ),
        (
            "ttl-advance",
            vec![
                2, 2, 1, 9, 100, 0, 2, 3, 2, 200, 0, 7, 0, 150, 0, 4, 3, 50, 0, 5, 3, 7, 0, 255, 0,
                10, 0,
            ],
        ),
        (
            "batch-compact",
            vec![
                6, 0, 3, 1, 1, 2, 2, 3, 0, 6, 0, 2, 5, 1, 6, 0, 8, 0, 10, 0, 3, 1, 8, 0,
            ],
        ),
        (
            "faults",
            vec![
                0, 1, 20, 7, 9, 0, 1, 0, 0, 2, 30, 8, 9, 0, 2, 1, 0, 3, 10, 9, 10, 0, 0, 4, 10, 0,
            ],
        ),
        (
            "power-loss",
            vec![
                3, 0, 1, 40, 1, 2, 5, 5, 7, 0, 11, 0, 0, 3, 9, 2, 9, 0, 0, 1, 11, 0, 10, 0,
            ],
        ),
    ];
    for (name, p) in programs {
        write("operation_sequence", name, &p);
    }
    let mut rng = Rng(77);
    let long: Vec<u8> = (0..2000).map(|_| rng.next() as u8).collect();
    write("operation_sequence", "random-long", &long);
}
