//! A Jepsen-style correctness harness: concurrent clients record a history of register operations
//! against a real cluster while a nemesis injects faults, and checkers decide whether the history
//! is linearizable, whether acknowledged writes survived, and whether the nodes converged.

pub mod campaign;
pub mod clock;
pub mod convergence;
pub mod failpoint;
pub mod history;
pub mod linearizability;
pub mod lost_writes;
pub mod nemesis;
pub mod power;
pub mod workload;
