//! Model test: random push / pop / ack / nack / extend / clock-advance / reopen / dead-letter
//! sequences against a plain in-memory model of the queue's rules.

use proptest::prelude::*;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;
use ttlstore::{
    Clock, Error, ManualClock, Options, PushOptions, Queue, QueueOptions, QueueStats, Store,
    SyncPolicy, Task,
};

const T0: u64 = 1_700_000_000_000;
const VIS_MS: u64 = 20_000;

#[derive(Debug, Clone)]
enum Op {
    Push {
        prio: i32,
        delay_s: u64,
        ttl_s: Option<u64>,
        max: u32,
    },
    PushDuplicate(usize),
    Pop,
    Ack(usize),
    Nack(usize, u64),
    Extend(usize, u64),
    Advance(u64),
    Reopen,
    Requeue(usize),
    Purge,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..3i32, prop_oneof![Just(0u64), 1..40u64], prop::option::of(1..90u64), 1..4u32)
            .prop_map(|(prio, delay_s, ttl_s, max)| Op::Push { prio, delay_s, ttl_s, max }),
        1 => any::<usize>().prop_map(Op::PushDuplicate),
        4 => Just(Op::Pop),
        3 => any::<usize>().prop_map(Op::Ack),
        2 => (any::<usize>(), prop_oneof![Just(0u64), 1..30u64]).prop_map(|(i, s)| Op::Nack(i, s)),
        1 => (any::<usize>(), 1..40u64).prop_map(|(i, s)| Op::Extend(i, s)),
        3 => prop_oneof![1..5u64, 5..30u64, Just(20u64)].prop_map(Op::Advance),
        1 => Just(Op::Reopen),
        1 => any::<usize>().prop_map(Op::Requeue),
        1 => Just(Op::Purge),
    ]
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum MSt {
    Ready,
    Delayed(u64),
    /// Lease deadline and the lease's number in the model.
    Leased(u64, u64),
    Dead,
}

#[derive(Debug, Clone)]
struct MTask {
    seq: u64,
    prio: i32,
    st: MSt,
    attempts: u32,
    max: u32,
    expires_at: Option<u64>,
}

#[derive(Default)]
struct Model {
    tasks: BTreeMap<String, MTask>,
    next_seq: u64,
    next_lease: u64,
}

enum Logical {
    Ready,
    Delayed,
    Leased(u64),
    Dead,
}

impl Model {
    fn logical(t: &MTask, now: u64) -> Option<Logical> {
        if t.expires_at.is_some_and(|e| e <= now) {
            return None;
        }
        Some(match t.st {
            MSt::Ready => Logical::Ready,
            MSt::Delayed(d) if d > now => Logical::Delayed,
            MSt::Delayed(_) => Logical::Ready,
            MSt::Leased(d, l) if d > now => Logical::Leased(l),
            MSt::Leased(..) if t.attempts >= t.max => Logical::Dead,
            MSt::Leased(..) => Logical::Ready,
            MSt::Dead => Logical::Dead,
        })
    }

    /// Applies the clock: drops expired tasks, settles lapsed states.
    fn settle(&mut self, now: u64) {
        self.tasks.retain(|_, t| Model::logical(t, now).is_some());
        for t in self.tasks.values_mut() {
            t.st = match Model::logical(t, now) {
                Some(Logical::Ready) => MSt::Ready,
                Some(Logical::Dead) => MSt::Dead,
                _ => t.st,
            };
        }
    }

    fn stats(&self, now: u64) -> QueueStats {
        let mut s = QueueStats::default();
        for t in self.tasks.values() {
            match Model::logical(t, now) {
                Some(Logical::Ready) => s.ready += 1,
                Some(Logical::Delayed) => s.delayed += 1,
                Some(Logical::Leased(_)) => s.in_flight += 1,
                Some(Logical::Dead) => s.dead += 1,
                None => {}
            }
        }
        s
    }

    fn pop(&mut self, now: u64) -> Option<(String, u32, u64)> {
        self.settle(now);
        let (id, _) = self
            .tasks
            .iter()
            .filter(|(_, t)| t.st == MSt::Ready)
            .min_by_key(|(_, t)| (std::cmp::Reverse(t.prio), t.seq))?;
        let id = id.clone();
        let t = self.tasks.get_mut(&id)?;
        t.attempts += 1;
        self.next_lease += 1;
        t.st = MSt::Leased(now + VIS_MS, self.next_lease);
        Some((id, t.attempts, self.next_lease))
    }

    /// True if `lease` of `id` is current.
    fn holds(&self, id: &str, lease: u64, now: u64) -> bool {
        self.tasks.get(id).is_some_and(
            |t| matches!(Model::logical(t, now), Some(Logical::Leased(l)) if l == lease),
        )
    }

    fn dead(&self, now: u64) -> Vec<String> {
        let mut v: Vec<(u64, String)> = self
            .tasks
            .iter()
            .filter(|(_, t)| matches!(Model::logical(t, now), Some(Logical::Dead)))
            .map(|(id, t)| (t.seq, id.clone()))
            .collect();
        v.sort();
        v.into_iter().map(|(_, id)| id).collect()
    }
}

fn open(dir: &std::path::Path, clock: &Arc<ManualClock>) -> (Store, Queue) {
    let store = Store::open_with(
        dir,
        Options::default()
            .sync(SyncPolicy::Never)
            .clock(clock.clone()),
    )
    .unwrap();
    let q = store
        .queue_with(
            "m",
            QueueOptions::default().visibility_timeout(Duration::from_millis(VIS_MS)),
        )
        .unwrap();
    (store, q)
}

fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let dir = tempfile::tempdir().unwrap();
    let clock = Arc::new(ManualClock::new(T0));
    let (mut store, mut q) = open(dir.path(), &clock);
    let mut model = Model::default();
    // Leases handed out: the real task and the model's lease number.
    let mut held: Vec<(Task, u64)> = Vec::new();
    let mut pushed = 0u64;
    for op in ops {
        let now = clock.now_ms();
        match op {
            Op::Push {
                prio,
                delay_s,
                ttl_s,
                max,
            } => {
                pushed += 1;
                let id = format!("t{pushed}");
                let mut o = PushOptions::new()
                    .id(id.clone())
                    .priority(prio)
                    .max_attempts(max);
                if delay_s > 0 {
                    o = o.delay(Duration::from_secs(delay_s));
                }
                if let Some(t) = ttl_s {
                    o = o.ttl(Duration::from_secs(t));
                }
                let got = q.push_with(id.as_bytes(), o).unwrap();
                prop_assert_eq!(got.as_str(), id.as_str());
                model.settle(now);
                model.next_seq += 1;
                let st = if delay_s > 0 {
                    MSt::Delayed(now + delay_s * 1000)
                } else {
                    MSt::Ready
                };
                let t = MTask {
                    seq: model.next_seq,
                    prio,
                    st,
                    attempts: 0,
                    max,
                    expires_at: ttl_s.map(|s| now + s * 1000),
                };
                model.tasks.insert(id, t);
            }
            Op::PushDuplicate(i) => {
                model.settle(now);
                if model.tasks.is_empty() {
                    continue;
                }
                let id = model
                    .tasks
                    .keys()
                    .nth(i % model.tasks.len())
                    .unwrap()
                    .clone();
                let before = q.stats().unwrap();
                let err = q.push_with(b"dup", PushOptions::new().id(id)).unwrap_err();
                prop_assert!(matches!(err, Error::Rejected { .. }), "{}", err);
                prop_assert_eq!(q.stats().unwrap(), before);
            }
            Op::Pop => {
                let want = model.pop(now);
                let got = q.pop(Duration::ZERO).unwrap();
                match (want, got) {
                    (None, None) => {}
                    (Some((id, attempts, lease)), Some(task)) => {
                        prop_assert_eq!(task.id.as_str(), id.as_str());
                        prop_assert_eq!(task.attempts, attempts);
                        prop_assert_eq!(&task.payload, &id.as_bytes().to_vec());
                        prop_assert_eq!(task.lease_deadline, now + VIS_MS);
                        held.push((task, lease));
                    }
                    (w, g) => prop_assert!(
                        false,
                        "model pops {:?}, queue pops {:?}",
                        w,
                        g.map(|t| t.id)
                    ),
                }
            }
            Op::Ack(i) | Op::Nack(i, _) | Op::Extend(i, _) => {
                if held.is_empty() {
                    continue;
                }
                let idx = i % held.len();
                let current = model.holds(held[idx].0.id.as_str(), held[idx].1, now);
                let before = q.stats().unwrap();
                let (task, lease) = &mut held[idx];
                let id = task.id.as_str().to_string();
                let r = match op {
                    Op::Ack(_) => q.ack(task),
                    Op::Nack(_, s) => q.nack(task, Duration::from_secs(s)),
                    Op::Extend(_, s) => q.extend_lease(task, Duration::from_secs(s)).map(|_| ()),
                    _ => unreachable!(),
                };
                if !current {
                    prop_assert!(
                        matches!(r, Err(Error::Rejected { .. })),
                        "stale lease accepted: {:?}",
                        r
                    );
                    prop_assert_eq!(q.stats().unwrap(), before, "a refused call changed nothing");
                    continue;
                }
                r.unwrap();
                model.settle(now);
                match op {
                    Op::Ack(_) => {
                        model.tasks.remove(&id);
                    }
                    Op::Nack(_, s) => {
                        let t = model.tasks.get_mut(&id).unwrap();
                        t.st = if t.attempts >= t.max {
                            MSt::Dead
                        } else if s == 0 {
                            MSt::Ready
                        } else {
                            MSt::Delayed(now + s * 1000)
                        };
                    }
                    Op::Extend(_, s) => {
                        let t = model.tasks.get_mut(&id).unwrap();
                        t.st = MSt::Leased(now + s * 1000, *lease);
                    }
                    _ => unreachable!(),
                }
            }
            Op::Advance(s) => clock.advance(Duration::from_secs(s)),
            Op::Reopen => {
                drop(q);
                store.close().unwrap();
                (store, q) = open(dir.path(), &clock);
            }
            Op::Requeue(i) => {
                let dead = model.dead(now);
                let got: Vec<String> = q
                    .dead_letters()
                    .unwrap()
                    .into_iter()
                    .map(|d| d.id.to_string())
                    .collect();
                prop_assert_eq!(&got, &dead);
                if dead.is_empty() {
                    continue;
                }
                let id = &dead[i % dead.len()];
                q.requeue_dead(&ttlstore::TaskId::new(id.clone()).unwrap())
                    .unwrap();
                model.settle(now);
                let t = model.tasks.get_mut(id).unwrap();
                t.st = MSt::Ready;
                t.attempts = 0;
            }
            Op::Purge => {
                let n = model.dead(now).len();
                prop_assert_eq!(q.purge_dead().unwrap(), n);
                model.settle(now);
                model.tasks.retain(|_, t| t.st != MSt::Dead);
            }
        }
        let now = clock.now_ms();
        prop_assert_eq!(q.stats().unwrap(), model.stats(now));
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]
    #[test]
    fn queue_matches_model(ops in prop::collection::vec(op(), 1..80)) {
        run(ops)?;
    }
}
