//! A request's time budget. Every request gets one when it is admitted, and every wait inside it
//! — a proposal slot, a Raft round, a forwarded call, a read-index round — uses what is left, so
//! no request outlives the time its client was promised.

use std::time::Duration;
use std::time::Instant;

/// A request's time budget: every wait inside a request uses what is left of it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Deadline {
    at: Instant,
    total: Duration,
}

impl Deadline {
    pub(crate) fn after(total: Duration) -> Self {
        Self {
            at: Instant::now() + total,
            total,
        }
    }

    pub(crate) fn remaining(&self) -> Duration {
        self.at.saturating_duration_since(Instant::now())
    }

    pub(crate) fn total_ms(&self) -> u64 {
        self.total.as_millis() as u64
    }

    /// Runs `fut` within the deadline; `Err(())` when time ran out.
    pub(crate) async fn run<F: std::future::Future>(
        &self,
        fut: F,
    ) -> std::result::Result<F::Output, ()> {
        tokio::time::timeout(self.remaining(), fut)
            .await
            .map_err(|_| ())
    }
}
