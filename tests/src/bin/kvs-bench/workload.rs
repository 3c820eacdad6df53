//! What the clients ask for, one operation at a time: a mix of reads and writes until a deadline
//! or an operation count, or a load that writes every key of the key space once, in batches,
//! so that reads in later runs find values of the size being measured.
//!
//! All clients draw from one shared workload; that is what lets `--ops` and `--load` divide the
//! work among clients without any client knowing how many others there are.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use bytes::Bytes;
use rand::Rng;

use crate::keys::{KeyChooser, key_name};

/// A load batch stays under etcd's default 1.5 MiB request limit and kvs's 4 MiB batch limit...
const LOAD_BATCH_BYTES: u64 = 1024 * 1024;
/// ...and under both systems' 128 operations per batch or transaction.
const LOAD_BATCH_KEYS: u64 = 100;

/// One request: its key(s) and, for writes, the value.
pub(crate) enum Op {
    Get(Bytes),
    Put(Bytes, Bytes),
    PutMany(Vec<Bytes>, Bytes),
}

impl Op {
    /// Keys the operation touches: what a load counts as done.
    pub(crate) fn keys(&self) -> u64 {
        match self {
            Op::Get(_) | Op::Put(..) => 1,
            Op::PutMany(keys, _) => keys.len() as u64,
        }
    }
}

/// When a mixed run stops.
pub(crate) enum Until {
    Deadline(Instant),
    Ops(u64),
}

/// The work all clients share.
pub(crate) struct Workload {
    shape: Shape,
    value: Bytes,
    /// Operations (keys, for a load) handed out so far; also what the progress line shows.
    issued: AtomicU64,
}

enum Shape {
    Mixed {
        chooser: KeyChooser,
        read_ratio: f64,
        until: Until,
    },
    Load {
        keys: u64,
        batch: u64,
    },
}

impl Workload {
    /// Reads (with probability `read_ratio`) and writes of `value` on keys from `chooser`.
    pub(crate) fn mixed(chooser: KeyChooser, read_ratio: f64, until: Until, value: Bytes) -> Self {
        let shape = Shape::Mixed {
            chooser,
            read_ratio,
            until,
        };
        Workload::new(shape, value)
    }

    /// Writes `value` to each of the keys `0..keys` once.
    pub(crate) fn load(keys: u64, value: Bytes) -> Self {
        let batch = (LOAD_BATCH_BYTES / (value.len() as u64).max(1)).clamp(1, LOAD_BATCH_KEYS);
        Workload::new(Shape::Load { keys, batch }, value)
    }

    fn new(shape: Shape, value: Bytes) -> Self {
        Workload {
            shape,
            value,
            issued: AtomicU64::new(0),
        }
    }

    /// The next operation for a client, or `None` when the run is over.
    pub(crate) fn next(&self, rng: &mut impl Rng) -> Option<Op> {
        match &self.shape {
            Shape::Mixed {
                chooser,
                read_ratio,
                until,
            } => {
                let more = match until {
                    Until::Ops(ops) => self.issued.fetch_add(1, Ordering::Relaxed) < *ops,
                    Until::Deadline(deadline) => {
                        self.issued.fetch_add(1, Ordering::Relaxed);
                        Instant::now() < *deadline
                    }
                };
                if !more {
                    return None;
                }
                let key = key_name(chooser.next(rng));
                Some(if rng.random_bool(*read_ratio) {
                    Op::Get(key)
                } else {
                    Op::Put(key, self.value.clone())
                })
            }
            Shape::Load { keys, batch } => {
                let first = self.issued.fetch_add(*batch, Ordering::Relaxed);
                if first >= *keys {
                    return None;
                }
                let batch = (first..(first + batch).min(*keys)).map(key_name).collect();
                Some(Op::PutMany(batch, self.value.clone()))
            }
        }
    }

    /// Operations (or keys) handed out so far, finished or not.
    pub(crate) fn issued(&self) -> u64 {
        self.issued.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::Distribution;

    #[test]
    fn a_load_writes_every_key_once_in_bounded_batches() {
        let mut rng = rand::rng();
        let workload = Workload::load(1_234, Bytes::from(vec![b'v'; 64 * 1024]));
        let mut seen = Vec::new();
        while let Some(op) = workload.next(&mut rng) {
            let Op::PutMany(keys, value) = op else {
                panic!("a load only writes batches");
            };
            assert!(keys.len() as u64 * value.len() as u64 <= LOAD_BATCH_BYTES);
            seen.extend(keys);
        }
        let expected: Vec<_> = (0..1_234).map(key_name).collect();
        assert_eq!(seen, expected);
    }

    #[test]
    fn a_counted_run_hands_out_exactly_that_many_operations() {
        let mut rng = rand::rng();
        let chooser = KeyChooser::new(Distribution::Uniform, 10);
        let workload = Workload::mixed(chooser, 0.5, Until::Ops(1_000), Bytes::from_static(b"v"));
        let mut ops = 0;
        let mut reads = 0;
        while let Some(op) = workload.next(&mut rng) {
            ops += 1;
            reads += u32::from(matches!(op, Op::Get(_)));
        }
        assert_eq!(ops, 1_000);
        assert!(
            (300..700).contains(&reads),
            "{reads} reads of 1000 at ratio 0.5"
        );
    }
}
