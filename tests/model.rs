//! Model test: random sequences of writes, TTL changes, batches, clock advances, compactions
//! (with the background expirer and compactor running too) and reopens
//! against an in-memory model of what the store must answer.
//!
//! `PROPTEST_CASES` raises the number of sequences (default 64 in CI).

use proptest::prelude::*;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use ttlstore::{ManualClock, Options, Store, SyncPolicy, WriteBatch};

const T0: u64 = 1_700_000_000_000;

/// One batch entry: a key and either a put (value byte, optional TTL) or a delete.
type BatchEntry = (u8, Option<(u8, Option<u64>)>);

#[derive(Debug, Clone)]
enum Op {
    Put(u8, u8),
    PutTtl(u8, u8, u64),
    Delete(u8),
    Expire(u8, u64),
    Persist(u8),
    Batch(Vec<BatchEntry>),
    Advance(u64),
    Reopen,
    Compact,
}

fn op() -> impl Strategy<Value = Op> {
    let key = 0u8..8;
    let ttl = prop_oneof![Just(0u64), 1u64..50, 50u64..5000];
    prop_oneof![
        4 => (key.clone(), any::<u8>()).prop_map(|(k, v)| Op::Put(k, v)),
        4 => (key.clone(), any::<u8>(), ttl.clone()).prop_map(|(k, v, t)| Op::PutTtl(k, v, t)),
        2 => key.clone().prop_map(Op::Delete),
        2 => (key.clone(), ttl.clone()).prop_map(|(k, t)| Op::Expire(k, t)),
        1 => key.clone().prop_map(Op::Persist),
        2 => prop::collection::vec((key.clone(), prop::option::of((any::<u8>(), prop::option::of(ttl.clone())))), 1..5).prop_map(Op::Batch),
        3 => prop_oneof![1u64..30, 30u64..3000].prop_map(Op::Advance),
        1 => Just(Op::Reopen),
        1 => Just(Op::Compact),
    ]
}

fn key(k: u8) -> Vec<u8> {
    format!("key-{k}").into_bytes()
}

fn value(k: u8, v: u8) -> Vec<u8> {
    // Sizes vary so that segments rotate at different points.
    vec![v; 1 + (usize::from(k) * 37 + usize::from(v)) % 700]
}

struct Model {
    now: u64,
    map: BTreeMap<Vec<u8>, (Vec<u8>, Option<u64>)>,
}

impl Model {
    fn live(&self, k: &[u8]) -> Option<&(Vec<u8>, Option<u64>)> {
        self.map
            .get(k)
            .filter(|(_, e)| e.is_none_or(|e| e > self.now))
    }
    fn put(&mut self, k: Vec<u8>, v: Vec<u8>, ttl: Option<u64>) {
        match ttl {
            Some(0) => {
                self.map.remove(&k);
            }
            Some(t) => {
                self.map.insert(k, (v, Some(self.now + t)));
            }
            None => {
                self.map.insert(k, (v, None));
            }
        }
    }
}

fn open(dir: &std::path::Path, clock: &Arc<ManualClock>) -> Store {
    let opts = Options::default()
        .sync(SyncPolicy::Never)
        .segment_size(4096)
        .compaction_threshold(0.3)
        .clock(clock.clone());
    Store::open_with(dir, opts).expect("open")
}

fn check(store: &Store, model: &Model) {
    for k in 0..8u8 {
        let kb = key(k);
        let want = model.live(&kb);
        let got = store.get_item(&kb).expect("get");
        match (want, &got) {
            (None, None) => {}
            (Some((v, e)), Some(item)) => {
                assert_eq!(&item.value[..], &v[..], "value of {k}");
                assert_eq!(item.expires_at, *e, "expiry of {k}");
                let ttl = store.ttl(&kb).expect("ttl");
                assert_eq!(ttl, e.map(|e| Duration::from_millis(e - model.now)));
            }
            _ => panic!("key {k}: model {want:?}, store {got:?}"),
        }
    }
    let scanned: Vec<Vec<u8>> = store
        .scan_prefix(b"key-")
        .map(|r| r.expect("scan").0)
        .collect();
    let expected: Vec<Vec<u8>> = model
        .map
        .keys()
        .filter(|k| model.live(k).is_some())
        .cloned()
        .collect();
    assert_eq!(scanned, expected);
    let stats = store.stats();
    assert_eq!(stats.live_keys, expected.len() as u64);
    let with_ttl = model
        .map
        .keys()
        .filter(|k| model.live(k).is_some_and(|(_, e)| e.is_some()))
        .count();
    assert_eq!(stats.keys_with_ttl, with_ttl as u64);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(64), ..ProptestConfig::default() })]
    #[test]
    fn store_matches_model(ops in prop::collection::vec(op(), 1..120)) {
        let dir = tempfile::tempdir().unwrap();
        let clock = Arc::new(ManualClock::new(T0));
        let mut store = open(dir.path(), &clock);
        let mut model = Model { now: T0, map: BTreeMap::new() };
        for op in ops {
            match op {
                Op::Put(k, v) => {
                    store.put(&key(k), &value(k, v)).unwrap();
                    model.put(key(k), value(k, v), None);
                }
                Op::PutTtl(k, v, t) => {
                    store.put_with_ttl(&key(k), &value(k, v), Duration::from_millis(t)).unwrap();
                    model.put(key(k), value(k, v), Some(t));
                }
                Op::Delete(k) => {
                    let existed = model.live(&key(k)).is_some();
                    prop_assert_eq!(store.delete(&key(k)).unwrap(), existed);
                    model.map.remove(&key(k));
                }
                Op::Expire(k, t) => {
                    let cur = model.live(&key(k)).cloned();
                    prop_assert_eq!(store.expire(&key(k), Duration::from_millis(t)).unwrap(), cur.is_some());
                    if let Some((v, _)) = cur {
                        model.put(key(k), v, Some(t));
                    }
                }
                Op::Persist(k) => {
                    let cur = model.live(&key(k)).cloned();
                    let had_ttl = cur.as_ref().is_some_and(|(_, e)| e.is_some());
                    prop_assert_eq!(store.persist(&key(k)).unwrap(), had_ttl);
                    if let Some((v, _)) = cur {
                        model.put(key(k), v, None);
                    }
                }
                Op::Batch(items) => {
                    let mut b = WriteBatch::new();
                    for (k, w) in &items {
                        match w {
                            Some((v, Some(t))) => { b.put_with_ttl(&key(*k), &value(*k, *v), Duration::from_millis(*t)); }
                            Some((v, None)) => { b.put(&key(*k), &value(*k, *v)); }
                            None => { b.delete(&key(*k)); }
                        }
                    }
                    store.write_batch(b).unwrap();
                    for (k, w) in items {
                        match w {
                            Some((v, t)) => model.put(key(k), value(k, v), t),
                            None => { model.map.remove(&key(k)); }
                        }
                    }
                }
                Op::Advance(ms) => {
                    clock.advance(Duration::from_millis(ms));
                    model.now += ms;
                }
                Op::Reopen => {
                    drop(store);
                    store = open(dir.path(), &clock);
                }
                Op::Compact => {
                    store.compact().unwrap();
                }
            }
            model.map.retain(|_, (_, e)| e.is_none_or(|e| e > model.now));
            check(&store, &model);
        }
    }
}
