//! A write session: the `WriteId`s of one client, shared by every task that writes through it.
//!
//! Each new write takes the next sequence and holds it as a [`WriteTicket`] until its call ends
//! (answered, given up, or dropped). Every write carries the session's *watermark* — the lowest
//! sequence still held — so the cluster keeps the outcome of every write that may still be
//! retried, however many newer writes of the same session overtake it, and forgets the rest
//! (kvs.proto, `WriteId.acked_below`). A session never holds more than [`MAX_IN_FLIGHT`]
//! sequences past its watermark, which is what the cluster accepts: a new write waits for an old
//! one to end instead.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::Notify;

use crate::proto;

/// Sequences a session may hold at or past its watermark: the cluster's per-client in-flight
/// limit (kvs.proto, `WriteId`).
pub const MAX_IN_FLIGHT: u64 = 1024;

/// The write identity of one client; cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct WriteSession {
    client_id: u64,
    state: Mutex<Held>,
    released: Notify,
}

#[derive(Debug, Default)]
struct Held {
    /// The last sequence handed out.
    last: u64,
    /// Sequences handed out whose write has not ended.
    unanswered: BTreeSet<u64>,
}

impl Held {
    fn watermark(&self) -> u64 {
        self.unanswered.first().copied().unwrap_or(self.last + 1)
    }
}

/// One write's hold on its sequence: released when dropped.
#[derive(Debug)]
pub struct WriteTicket {
    session: Arc<WriteSession>,
    write_id: proto::WriteId,
}

impl WriteSession {
    /// A session with a random client id.
    pub fn new() -> Arc<Self> {
        Arc::new(WriteSession {
            client_id: rand::random(),
            state: Mutex::default(),
            released: Notify::new(),
        })
    }

    /// The next write's identity, held until the ticket is dropped. Waits while the session
    /// holds [`MAX_IN_FLIGHT`] sequences past its watermark; bound it with a timeout.
    pub async fn begin(self: &Arc<Self>) -> WriteTicket {
        loop {
            let released = self.released.notified();
            if let Some(write_id) = self.try_begin() {
                return WriteTicket {
                    session: Arc::clone(self),
                    write_id,
                };
            }
            released.await;
        }
    }

    fn try_begin(&self) -> Option<proto::WriteId> {
        let mut held = self.lock();
        let acked_below = held.watermark();
        let sequence = held.last + 1;
        if sequence - acked_below >= MAX_IN_FLIGHT {
            return None;
        }
        held.last = sequence;
        held.unanswered.insert(sequence);
        Some(proto::WriteId {
            client_id: self.client_id,
            sequence,
            acked_below,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Held> {
        // Every update leaves the state consistent, so a panic elsewhere cannot corrupt it.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl WriteTicket {
    /// The identity to send with every attempt of this write.
    pub fn write_id(&self) -> proto::WriteId {
        self.write_id
    }
}

impl Drop for WriteTicket {
    fn drop(&mut self) {
        self.session
            .lock()
            .unanswered
            .remove(&self.write_id.sequence);
        self.session.released.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn the_watermark_is_the_oldest_write_not_ended() {
        let session = WriteSession::new();
        let first = session.begin().await;
        let second = session.begin().await;
        assert_eq!(
            (first.write_id().sequence, first.write_id().acked_below),
            (1, 1)
        );
        assert_eq!(
            (second.write_id().sequence, second.write_id().acked_below),
            (2, 1)
        );
        drop(second);
        assert_eq!(
            session.begin().await.write_id().acked_below,
            1,
            "1 is still held"
        );
        drop(first);
        let next = session.begin().await.write_id();
        assert_eq!((next.sequence, next.acked_below), (4, 4));
    }

    #[tokio::test]
    async fn a_write_past_the_in_flight_limit_waits_for_the_oldest_to_end() {
        let session = WriteSession::new();
        let oldest = session.begin().await;
        let mut held = Vec::new();
        for _ in 1..MAX_IN_FLIGHT {
            held.push(session.begin().await);
        }
        assert_eq!(session.try_begin(), None, "the session is full");
        drop(held.pop());
        assert_eq!(
            session.try_begin(),
            None,
            "a newer write ending does not move the watermark"
        );
        let waiting = tokio::spawn({
            let session = Arc::clone(&session);
            async move { session.begin().await.write_id() }
        });
        drop(oldest);
        let next = tokio::time::timeout(Duration::from_secs(10), waiting)
            .await
            .expect("the waiting write begins once the oldest ends")
            .expect("joined");
        assert_eq!((next.sequence, next.acked_below), (MAX_IN_FLIGHT + 1, 2));
    }
}
