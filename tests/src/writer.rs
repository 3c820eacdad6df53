//! A steady writer: a background task doing sequential `kvsctl put`s of unique keys and
//! recording what each one reported, so a test can check after a fault that every acknowledged
//! write survived and every write reported "not applied" really was not.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::kvsctl::Kvsctl;
use crate::kvsctl::KvsctlOutput;
use crate::kvsctl::exit;
use crate::wait::wait_until;

/// What the writer's puts reported.
#[derive(Debug, Clone, Default)]
pub struct WriteLog {
    /// `(key, value)` of every put that exited 0.
    pub acked: Vec<(String, String)>,
    /// Puts that exited 3: definitely not applied.
    pub not_applied: Vec<(String, KvsctlOutput)>,
    /// Puts that exited 4: may or may not have been applied.
    pub unknown: Vec<(String, KvsctlOutput)>,
    /// Anything else (usage errors, crashes, harness timeouts): always a bug.
    pub other: Vec<(String, KvsctlOutput)>,
}

impl WriteLog {
    /// Every put that did not succeed, for messages.
    pub fn failures(&self) -> String {
        let all = self
            .not_applied
            .iter()
            .chain(&self.unknown)
            .chain(&self.other);
        all.map(|(key, out)| format!("{key}: {out}"))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// A running writer; stopped by [`Writer::stop`], aborted on drop.
#[derive(Debug)]
pub struct Writer {
    log: Arc<Mutex<WriteLog>>,
    stop: Arc<AtomicBool>,
    task: Option<JoinHandle<()>>,
}

impl Writer {
    /// Starts putting `<prefix>-000000`, `<prefix>-000001`, … one at a time through `kvsctl`.
    pub fn spawn(kvsctl: Kvsctl, prefix: &str) -> Self {
        let log = Arc::new(Mutex::new(WriteLog::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn({
            let (log, stop, prefix) = (log.clone(), stop.clone(), prefix.to_string());
            async move {
                for seq in 0u64.. {
                    if stop.load(Ordering::SeqCst) {
                        break;
                    }
                    let key = format!("{prefix}-{seq:06}");
                    let value = format!("value-{seq}");
                    let out = kvsctl.run(["put", key.as_str(), value.as_str()]).await;
                    let mut log = log.lock().expect("write log lock poisoned");
                    match out.code {
                        Some(exit::OK) => log.acked.push((key, value)),
                        Some(exit::NOT_APPLIED) => log.not_applied.push((key, out)),
                        Some(exit::UNKNOWN) => log.unknown.push((key, out)),
                        _ => log.other.push((key, out)),
                    }
                }
            }
        });
        Self {
            log,
            stop,
            task: Some(task),
        }
    }

    /// How many puts have been acknowledged so far.
    pub fn acked(&self) -> usize {
        self.log
            .lock()
            .expect("write log lock poisoned")
            .acked
            .len()
    }

    /// Waits until at least `count` puts have been acknowledged.
    pub async fn wait_acked(&self, count: usize, timeout: Duration) {
        let what = format!("the writer has {count} acknowledged puts");
        wait_until(timeout, &what, || async { self.acked() >= count }).await;
        let other = self
            .log
            .lock()
            .expect("write log lock poisoned")
            .other
            .len();
        assert_eq!(other, 0, "writer saw unexpected kvsctl failures");
    }

    /// Stops after the put in flight and returns the log.
    pub async fn stop(mut self) -> WriteLog {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(task) = self.task.take() {
            // Each put is bounded by the kvsctl deadline, so this wait is bounded too.
            task.await.expect("writer task panicked");
        }
        std::mem::take(&mut *self.log.lock().expect("write log lock poisoned"))
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}
