//! What happened: every operation a client attempted on one register (key), with when it was
//! invoked, when its answer came back, and what the answer said.
//!
//! Outcomes follow Jepsen: `Ok` carries the answer, `Fail` means the operation definitely did not
//! take effect (so the checker drops it), `Info` means it may have taken effect at any moment
//! after its invocation — or never. Values are unique numbers per write, so any read names the
//! one write it saw.

use std::fmt;
use std::time::Duration;

/// A register value; every write in a run writes a value no other write writes.
pub type Value = u64;

/// What a client asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Call {
    /// Read the register.
    Get,
    /// Set the register to a value.
    Put(Value),
    /// Remove the register's value.
    Delete,
    /// Set the register to `new` if it holds `expect` (`None`: if it is absent).
    Cas {
        /// What the register must hold for the swap.
        expect: Option<Value>,
        /// What it holds after a swap.
        new: Value,
    },
}

/// What a client was told when the call succeeded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Return {
    /// The value read; `None` when absent.
    Get(Option<Value>),
    /// The put took effect.
    Put,
    /// The delete took effect; whether there was a value to delete.
    Delete {
        /// The register held a value before.
        existed: bool,
    },
    /// The compare-and-swap took effect; whether the compare held.
    Cas {
        /// The compare held and the new value was set.
        swapped: bool,
    },
}

/// How an operation ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Answered; the answer is part of the history.
    Ok(Return),
    /// Definitely did not take effect.
    Fail,
    /// May or may not have taken effect (a timeout, a lost connection).
    Info,
}

/// One operation of one client on one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Operation {
    /// The client that made the call; a client makes one call at a time.
    pub process: usize,
    /// The register.
    pub key: String,
    /// The call.
    pub call: Call,
    /// When it was invoked, since the start of the run.
    pub invoke: Duration,
    /// When its answer (or failure) came back, since the start of the run.
    pub complete: Duration,
    /// How it ended.
    pub outcome: Outcome,
}

impl Operation {
    /// Whether the operation changes the register when it takes effect.
    pub fn is_write(&self) -> bool {
        !matches!(self.call, Call::Get)
    }

    /// The value this operation writes when it takes effect, if it writes one.
    pub(crate) fn written(&self) -> Option<Value> {
        match self.call {
            Call::Put(value) | Call::Cas { new: value, .. } => Some(value),
            Call::Get | Call::Delete => None,
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let value = |v: Option<Value>| v.map_or_else(|| "absent".to_string(), |v| v.to_string());
        let call = match self.call {
            Call::Get => "get".to_string(),
            Call::Put(v) => format!("put {v}"),
            Call::Delete => "delete".to_string(),
            Call::Cas { expect, new } => format!("cas {} -> {new}", value(expect)),
        };
        let outcome = match self.outcome {
            Outcome::Ok(Return::Get(v)) => format!("ok {}", value(v)),
            Outcome::Ok(Return::Put) => "ok".to_string(),
            Outcome::Ok(Return::Delete { existed }) => format!("ok existed={existed}"),
            Outcome::Ok(Return::Cas { swapped }) => format!("ok swapped={swapped}"),
            Outcome::Fail => "fail".to_string(),
            Outcome::Info => "info".to_string(),
        };
        write!(
            f,
            "{:>10.3}s {:>10.3}s  p{:<3} {:<8} {:<24} {outcome}",
            self.invoke.as_secs_f64(),
            self.complete.as_secs_f64(),
            self.process,
            self.key,
            call
        )
    }
}

/// A run's operations, in no particular order.
#[derive(Clone, Debug, Default)]
pub struct History {
    /// Every recorded operation.
    pub operations: Vec<Operation>,
}

/// Counts of operations by outcome.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OutcomeCounts {
    /// Answered.
    pub ok: usize,
    /// Definitely not applied.
    pub fail: usize,
    /// Unknown.
    pub info: usize,
}

impl OutcomeCounts {
    /// All operations.
    pub fn total(&self) -> usize {
        self.ok + self.fail + self.info
    }
}

impl History {
    /// How many operations ended each way.
    pub fn counts(&self) -> OutcomeCounts {
        let mut counts = OutcomeCounts::default();
        for op in &self.operations {
            match op.outcome {
                Outcome::Ok(_) => counts.ok += 1,
                Outcome::Fail => counts.fail += 1,
                Outcome::Info => counts.info += 1,
            }
        }
        counts
    }

    /// The operations on each key, keys in order, each key's operations by invocation time.
    pub fn by_key(&self) -> Vec<(String, Vec<Operation>)> {
        let mut keys: std::collections::BTreeMap<&str, Vec<Operation>> = Default::default();
        for op in &self.operations {
            keys.entry(op.key.as_str()).or_default().push(op.clone());
        }
        keys.into_iter()
            .map(|(key, mut ops)| {
                ops.sort_by_key(|op| (op.invoke, op.process));
                (key.to_string(), ops)
            })
            .collect()
    }
}

/// The operations as text, one a line, for a file a person reads.
pub fn render(operations: &[Operation]) -> String {
    let mut out = format!(
        "{:>11} {:>11}  {:<4} {:<8} {:<24} outcome\n",
        "invoke", "complete", "proc", "key", "call"
    );
    for op in operations {
        out.push_str(&op.to_string());
        out.push('\n');
    }
    out
}
