//! Graceful shutdown of request handling: once draining, new requests are refused (as surely not
//! applied) while requests already running are counted until they finish.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::sync::Notify;

use crate::deadline::Deadline;
use crate::error::Error;
use crate::identity::node_id_string;
use crate::replica::Leadership;
use crate::replica::Replica;

#[derive(Debug, Default)]
struct DrainState {
    closing: AtomicBool,
    in_flight: AtomicUsize,
    idle: Notify,
}

/// Counts in-flight requests and refuses new ones once closing.
#[derive(Debug, Clone, Default)]
pub(crate) struct Drain {
    state: Arc<DrainState>,
}

/// Held for the duration of one request.
#[derive(Debug)]
pub(crate) struct RequestGuard {
    state: Arc<DrainState>,
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        if self.state.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.state.idle.notify_waiters();
        }
    }
}

impl Drain {
    /// Admits one request, unless the node is shutting down.
    pub(crate) fn enter(&self) -> Result<RequestGuard, Error> {
        self.state.in_flight.fetch_add(1, Ordering::AcqRel);
        let guard = RequestGuard {
            state: self.state.clone(),
        };
        if self.state.closing.load(Ordering::Acquire) {
            return Err(Error::ShuttingDown);
        }
        Ok(guard)
    }

    pub(crate) fn is_closing(&self) -> bool {
        self.state.closing.load(Ordering::Acquire)
    }

    /// Stops admitting requests and waits up to `timeout` for the running ones to finish;
    /// returns how many were still running.
    pub(crate) async fn close(&self, timeout: Duration) -> usize {
        self.state.closing.store(true, Ordering::Release);
        let wait = async {
            loop {
                let idle = self.state.idle.notified();
                if self.state.in_flight.load(Ordering::Acquire) == 0 {
                    return;
                }
                idle.await;
            }
        };
        let _ = tokio::time::timeout(timeout, wait).await;
        self.state.in_flight.load(Ordering::Acquire)
    }
}

impl Replica {
    /// Whether the node has stopped taking new requests.
    pub(crate) fn is_draining(&self) -> bool {
        self.drain.is_closing()
    }

    /// The first half of a graceful stop, within `grace`: refuse new requests, let running ones
    /// finish (for up to half the grace period), then hand leadership to a caught-up voter so
    /// the cluster does not wait an election timeout for a new leader.
    pub(crate) async fn drain_and_hand_off(&self, grace: &Deadline) {
        let still_running = self.drain.close(grace.remaining() / 2).await;
        if still_running > 0 {
            tracing::warn!(still_running, "requests still running at shutdown");
        }
        if matches!(self.leadership(), Leadership::Here) {
            // A healthy voter takes over within a couple of election timeouts; waiting longer
            // would only eat the time Raft needs to stop.
            let hand_off = Deadline::after(
                grace
                    .remaining()
                    .min(Duration::from_millis(3 * self.config.election_timeout_ms)),
            );
            match self.hand_off_leadership(None, &hand_off).await {
                Ok(to) => tracing::info!(to = node_id_string(to), "handed leadership off"),
                Err(e) => tracing::warn!(error = %e, "could not hand leadership off"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn close_waits_for_running_requests_and_refuses_new_ones() {
        let drain = Drain::default();
        let guard = drain.enter().expect("open");
        let closer = tokio::spawn({
            let drain = drain.clone();
            async move { drain.close(Duration::from_secs(5)).await }
        });
        tokio::task::yield_now().await;
        assert!(matches!(drain.enter(), Err(Error::ShuttingDown)));
        drop(guard);
        assert_eq!(closer.await.expect("join"), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn close_gives_up_after_its_timeout() {
        let drain = Drain::default();
        let _stuck = drain.enter().expect("open");
        assert_eq!(drain.close(Duration::from_secs(1)).await, 1);
    }
}
