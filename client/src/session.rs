//! A write session: the `WriteId`s of one client, shared by every task that writes through it.
//!
//! Each new write takes the next sequence and holds it as a [`WriteTicket`] until its call ends
//! (answered, given up, or dropped). Every write carries the session's *watermark* — the lowest
//! sequence still held — so the cluster keeps the outcome of every write that may still be
//! retried, however many newer writes of the same session overtake it, and forgets the rest
//! (kvs.proto, `WriteId.acked_below`). A session never holds more than [`MAX_IN_FLIGHT`]
//! sequences past its watermark, which is what the cluster accepts: a new write waits for an old
//! one to end instead.
//!
//! The cluster takes a write from a client id it does not know whose watermark is above 1 as a
//! retry from a session it has forgotten, and refuses it ("session expired, outcome unknown"),
//! so the watermark of a client id must not rise above 1 before the cluster knows the id. A
//! session therefore counts its id as *known* once a write of it is answered by the state machine
//! ([`WriteTicket::answered`]); a write that begins while the id is not known and its first
//! sequence has ended unanswered (refused before it reached the log, or given up) takes a fresh
//! id instead, sequences from 1. A write answered session-expired
//! ([`WriteTicket::session_expired`]) also moves the session to a fresh id, so later writes are
//! not refused in turn; writes still in flight keep the id they were sent with.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::Notify;

use crate::proto;

/// Sequences a session may hold at or past its watermark: the cluster's per-client in-flight
/// limit (kvs.proto, `WriteId`).
pub const MAX_IN_FLIGHT: u64 = 1024;

/// How the cluster's answer to a write from a forgotten session begins (kvs.proto, `WriteId`).
pub const SESSION_EXPIRED: &str = "session expired, outcome unknown";

/// The write identity of one client; cheap to share behind an `Arc`.
#[derive(Debug)]
pub struct WriteSession {
    state: Mutex<Held>,
    released: Notify,
}

#[derive(Debug)]
struct Held {
    /// The client id writes begun now take.
    client_id: u64,
    /// Whether a write of `client_id` was answered by the state machine.
    known: bool,
    /// The last sequence handed out.
    last: u64,
    /// Sequences handed out whose write has not ended.
    unanswered: BTreeSet<u64>,
}

impl Held {
    fn fresh() -> Self {
        Held {
            client_id: rand::random(),
            known: false,
            last: 0,
            unanswered: BTreeSet::new(),
        }
    }

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
            state: Mutex::new(Held::fresh()),
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
        if !held.known && held.watermark() > 1 {
            *held = Held::fresh();
        }
        let acked_below = held.watermark();
        let sequence = held.last + 1;
        if sequence - acked_below >= MAX_IN_FLIGHT {
            return None;
        }
        held.last = sequence;
        held.unanswered.insert(sequence);
        Some(proto::WriteId {
            client_id: held.client_id,
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

    /// The state machine answered this write (applied it, or refused it as it applies): the
    /// cluster knows the client id.
    pub fn answered(&self) {
        let mut held = self.session.lock();
        if held.client_id == self.write_id.client_id {
            held.known = true;
        }
    }

    /// The cluster answered this write "session expired": it has forgotten the client id, so
    /// later writes take a fresh one.
    pub fn session_expired(&self) {
        let mut held = self.session.lock();
        if held.client_id == self.write_id.client_id {
            *held = Held::fresh();
        }
        drop(held);
        self.session.released.notify_waiters();
    }
}

impl Drop for WriteTicket {
    fn drop(&mut self) {
        let mut held = self.session.lock();
        if held.client_id == self.write_id.client_id {
            held.unanswered.remove(&self.write_id.sequence);
        }
        drop(held);
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
        first.answered();
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
    async fn after_a_session_expired_answer_the_next_write_takes_a_fresh_id() {
        let session = WriteSession::new();
        let first = session.begin().await;
        first.answered();
        let expired = session.begin().await;
        let in_flight = session.begin().await;
        let old_id = expired.write_id().client_id;
        expired.session_expired();
        drop(expired);
        let next_ticket = session.begin().await;
        let next = next_ticket.write_id();
        assert_ne!(next.client_id, old_id);
        assert_eq!((next.sequence, next.acked_below), (1, 1));
        assert_eq!(
            in_flight.write_id().client_id,
            old_id,
            "a write in flight keeps its id"
        );
        drop(first);
        drop(in_flight);
        let after = session.begin().await.write_id();
        assert_eq!(
            (after.client_id, after.sequence, after.acked_below),
            (next.client_id, 2, 1),
            "the old id's writes ending do not touch the new id"
        );
    }

    /// The cluster refuses an unknown id whose watermark is above 1, so an id is not used past a
    /// first write that ended unanswered (refused before the log, say).
    #[tokio::test]
    async fn an_id_the_cluster_never_answered_is_not_used_past_its_first_write() {
        let session = WriteSession::new();
        let refused = session.begin().await;
        let concurrent = session.begin().await;
        let id = refused.write_id().client_id;
        drop(refused);
        let next = session.begin().await.write_id();
        assert_ne!(next.client_id, id);
        assert_eq!((next.sequence, next.acked_below), (1, 1));
        assert_eq!(concurrent.write_id().acked_below, 1);

        let answered = session.begin().await;
        answered.answered();
        let known = answered.write_id().client_id;
        drop(answered);
        let after = session.begin().await.write_id();
        assert_eq!(after.client_id, known, "a known id is kept");
        assert!(after.acked_below > 1);
    }

    #[tokio::test]
    async fn a_write_past_the_in_flight_limit_waits_for_the_oldest_to_end() {
        let session = WriteSession::new();
        let oldest = session.begin().await;
        oldest.answered();
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
