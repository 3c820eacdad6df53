//! The workload: concurrent clients doing random gets, puts, deletes and compare-and-swaps on a
//! few keys through `kvs-client`, each operation recorded with its invoke and complete times.
//!
//! Each client draws its operations from its own generator seeded from the run's seed, so a seed
//! names the same stream of requests every time (what the cluster answers still depends on
//! timing). Every write writes a value no other write writes. An error the client library
//! reports as definitely not applied makes the operation `Fail`; any other error leaves it `Info`.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::time::Duration;

use kvs_client::Action;
use kvs_client::Client;
use kvs_client::ClientOptions;
use kvs_client::Error;
use kvs_client::Expect;
use rand::Rng;
use rand::SeedableRng;
use rand::rngs::StdRng;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::history::Call;
use super::history::History;
use super::history::Operation;
use super::history::Outcome;
use super::history::Return;
use super::history::Value;

/// Shape of the load.
#[derive(Clone, Debug)]
pub struct WorkloadOptions {
    /// Concurrent clients, each doing one operation at a time.
    pub clients: usize,
    /// Keys the clients share.
    pub keys: usize,
    /// Serve reads from whichever node answers, without consensus (may be stale): the unsafe
    /// mode the checker must catch.
    pub serializable_reads: bool,
    /// Deadline of one operation, retries included.
    pub timeout: Duration,
}

impl Default for WorkloadOptions {
    fn default() -> Self {
        Self {
            clients: 5,
            keys: 4,
            serializable_reads: false,
            timeout: Duration::from_secs(4),
        }
    }
}

impl WorkloadOptions {
    /// The name of key `k`.
    pub fn key(k: usize) -> String {
        format!("jepsen-{k}")
    }

    /// Every key the clients use.
    pub fn key_names(&self) -> Vec<String> {
        (0..self.keys).map(Self::key).collect()
    }

    /// Client options for one workload client.
    pub fn client_options(&self) -> ClientOptions {
        ClientOptions {
            timeout: self.timeout,
            attempt_timeout: Duration::from_secs(2).min(self.timeout),
            ..ClientOptions::default()
        }
    }
}

/// Collects operations from every client, timed against one start instant.
#[derive(Debug)]
pub struct Recorder {
    start: Instant,
    operations: Mutex<Vec<Operation>>,
}

impl Recorder {
    /// A recorder whose clock starts now.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            start: Instant::now(),
            operations: Mutex::new(Vec::new()),
        })
    }

    /// Time since the start.
    pub fn now(&self) -> Duration {
        self.start.elapsed()
    }

    /// Runs `call` on `key` through `client` and records it as `process`; returns the outcome.
    pub async fn run(
        &self,
        client: &Client,
        process: usize,
        key: &str,
        call: Call,
        serializable: bool,
    ) -> Outcome {
        let invoke = self.now();
        let outcome = apply(client, key, call, serializable).await;
        let op = Operation {
            process,
            key: key.to_string(),
            call,
            invoke,
            complete: self.now(),
            outcome,
        };
        self.operations
            .lock()
            .expect("recorder lock poisoned")
            .push(op);
        outcome
    }

    /// Everything recorded so far.
    pub fn history(&self) -> History {
        History {
            operations: self
                .operations
                .lock()
                .expect("recorder lock poisoned")
                .clone(),
        }
    }
}

/// Carries out one call and classifies what came back.
async fn apply(client: &Client, key: &str, call: Call, serializable: bool) -> Outcome {
    let value = |v: Value| v.to_string();
    let unsure = |err: Error| {
        if err.is_definitely_not_applied() {
            Outcome::Fail
        } else {
            Outcome::Info
        }
    };
    match call {
        Call::Get => match client.get(key.to_string(), serializable).await {
            Ok(found) => Outcome::Ok(Return::Get(found.map(|kv| parse_value(&kv.value)))),
            // A read changes nothing, so an unanswered read is simply dropped.
            Err(_) => Outcome::Fail,
        },
        Call::Put(v) => match client.put(key.to_string(), value(v), None).await {
            Ok(()) => Outcome::Ok(Return::Put),
            Err(err) => unsure(err),
        },
        Call::Delete => match client.delete(key.to_string()).await {
            Ok(existed) => Outcome::Ok(Return::Delete { existed }),
            Err(err) => unsure(err),
        },
        Call::Cas { expect, new } => {
            let expect = expect.map_or(Expect::Absent, |v| Expect::Value(value(v).into()));
            let action = Action::Set(value(new).into());
            match client
                .compare_and_swap(key.to_string(), expect, action)
                .await
            {
                Ok(()) => Outcome::Ok(Return::Cas { swapped: true }),
                Err(Error::CompareFailed) => Outcome::Ok(Return::Cas { swapped: false }),
                Err(err) => unsure(err),
            }
        }
    }
}

/// A stored value; anything this workload did not write reads as a value nobody wrote, which
/// the checker then flags.
fn parse_value(bytes: &[u8]) -> Value {
    std::str::from_utf8(bytes)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(Value::MAX)
}

/// Running clients; stopped with [`Workload::stop`], aborted on drop.
#[derive(Debug)]
pub struct Workload {
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
}

impl Workload {
    /// Starts `options.clients` clients against `endpoints`, recording into `recorder`.
    pub fn spawn(
        endpoints: Vec<String>,
        options: &WorkloadOptions,
        seed: u64,
        recorder: Arc<Recorder>,
    ) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        // One `Client` per node, shared by the processes, as an application shares one between
        // its tasks: clients start at different nodes, so every node serves and forwards.
        let shared: Vec<Client> = (0..endpoints.len().clamp(1, options.clients.max(1)))
            .map(|first| {
                let mut endpoints = endpoints.clone();
                endpoints.rotate_left(first);
                Client::connect(endpoints, options.client_options())
                    .expect("valid endpoints and options")
            })
            .collect();
        let tasks = (0..options.clients)
            .map(|process| {
                let client = shared[process % shared.len()].clone();
                let (stop, recorder, options) = (stop.clone(), recorder.clone(), options.clone());
                let rng = StdRng::seed_from_u64(seed.wrapping_add(process as u64));
                tokio::spawn(async move {
                    let mut process = ClientProcess::new(process, rng);
                    while !stop.load(Ordering::SeqCst) {
                        let (key, call) = process.next(&options);
                        let outcome = recorder
                            .run(&client, process.id, &key, call, options.serializable_reads)
                            .await;
                        process.learn(&key, call, outcome);
                    }
                })
            })
            .collect();
        Self { stop, tasks }
    }

    /// Stops after the operations in flight, which are bounded by the client deadline.
    pub async fn stop(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for task in self.tasks.drain(..) {
            if let Err(e) = task.await
                && e.is_panic()
            {
                std::panic::resume_unwind(e.into_panic());
            }
        }
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// One client's generator and what it last saw of each key (so its compare-and-swaps often
/// expect the right value).
struct ClientProcess {
    id: usize,
    rng: StdRng,
    sequence: u64,
    last_seen: std::collections::HashMap<String, Option<Value>>,
}

impl ClientProcess {
    fn new(id: usize, rng: StdRng) -> Self {
        Self {
            id,
            rng,
            sequence: 0,
            last_seen: Default::default(),
        }
    }

    /// A value no other write of the run writes: the client in the high bits.
    fn fresh_value(&mut self) -> Value {
        self.sequence += 1;
        ((self.id as u64 + 1) << 32) | self.sequence
    }

    fn next(&mut self, options: &WorkloadOptions) -> (String, Call) {
        let key = WorkloadOptions::key(self.rng.random_range(0..options.keys));
        let call = match self.rng.random_range(0..100) {
            0..40 => Call::Get,
            40..65 => Call::Put(self.fresh_value()),
            65..75 => Call::Delete,
            _ => Call::Cas {
                expect: self.last_seen.get(&key).copied().flatten(),
                new: self.fresh_value(),
            },
        };
        (key, call)
    }

    fn learn(&mut self, key: &str, call: Call, outcome: Outcome) {
        let seen = match (call, outcome) {
            (Call::Get, Outcome::Ok(Return::Get(value))) => value,
            (Call::Put(value), Outcome::Ok(_)) => Some(value),
            (Call::Delete, Outcome::Ok(_)) => None,
            (Call::Cas { new, .. }, Outcome::Ok(Return::Cas { swapped: true })) => Some(new),
            _ => return,
        };
        self.last_seen.insert(key.to_string(), seen);
    }
}
