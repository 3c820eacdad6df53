//! Read-index batching: concurrent linearizable reads on one node share one ReadIndex round.
//!
//! A round (on the leader a quorum-confirmed `get_read_log_id`, on a follower one `ReadIndex`
//! RPC to the leader) yields an index at least the commit index at the moment the round
//! *started*. A read that arrives while a round is in flight may follow a write committed after
//! that round started, so it must not take that round's index: it waits for the next round.
//! Every read that arrives during one round shares the next, so a node runs one round at a time
//! however many reads it serves, and a read waits for at most about two rounds.
//!
//! The rounds run on one task that owns the queue of waiting reads. A read that gives up (its
//! deadline passed) only drops its reply slot; it never cancels a round others are waiting on.

use std::future::Future;

use tokio::sync::mpsc;
use tokio::sync::oneshot;

/// Most reads queued for the next round; more wait for room (within their own deadline).
const QUEUE_CAPACITY: usize = 4096;

/// Where a read asks for the outcome of the next round.
#[derive(Debug)]
pub(crate) struct ReadRounds<T> {
    waiting: mpsc::Sender<oneshot::Sender<T>>,
}

/// The other end of [`ReadRounds`]: runs rounds for the reads that wait.
#[derive(Debug)]
pub(crate) struct RoundRunner<T> {
    waiting: mpsc::Receiver<oneshot::Sender<T>>,
}

/// A queue of reads and the runner that serves it; start the runner with [`RoundRunner::run`].
pub(crate) fn read_rounds<T>() -> (ReadRounds<T>, RoundRunner<T>) {
    let (tx, rx) = mpsc::channel(QUEUE_CAPACITY);
    (ReadRounds { waiting: tx }, RoundRunner { waiting: rx })
}

impl<T> ReadRounds<T> {
    /// The outcome of the first round that starts after this call; `None` once the runner has
    /// stopped.
    pub(crate) async fn next_round(&self) -> Option<T> {
        let (reply, outcome) = oneshot::channel();
        self.waiting.send(reply).await.ok()?;
        outcome.await.ok()
    }
}

impl<T: Clone> RoundRunner<T> {
    /// Runs `round` once for each batch of waiting reads until `stop` resolves, and gives every
    /// read of the batch its outcome. A batch is the reads queued when the round starts, so none
    /// of them arrived after it started.
    pub(crate) async fn run<F, Fut>(mut self, mut round: F, stop: impl Future<Output = ()>)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = T>,
    {
        let mut stop = std::pin::pin!(stop);
        let mut batch = Vec::new();
        loop {
            let received = tokio::select! {
                biased;
                () = &mut stop => return,
                n = self.waiting.recv_many(&mut batch, QUEUE_CAPACITY) => n,
            };
            if received == 0 {
                return;
            }
            batch.retain(|reply| !reply.is_closed());
            if batch.is_empty() {
                continue;
            }
            let outcome = tokio::select! {
                biased;
                () = &mut stop => return,
                outcome = round() => outcome,
            };
            for reply in batch.drain(..) {
                let _ = reply.send(outcome.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::AtomicU64;
    use std::sync::atomic::Ordering;

    use futures::FutureExt;
    use tokio::sync::Mutex;

    use super::*;

    /// A fake round function: each round announces its number on `started`, then waits for the
    /// test to release it with the index it returns.
    struct FakeRounds {
        started: mpsc::UnboundedReceiver<u64>,
        release: mpsc::UnboundedSender<u64>,
        count: Arc<AtomicU64>,
        stop: Option<oneshot::Sender<()>>,
        runner: tokio::task::JoinHandle<()>,
    }

    fn start() -> (Arc<ReadRounds<u64>>, FakeRounds) {
        let (rounds, runner) = read_rounds::<u64>();
        let (started_tx, started) = mpsc::unbounded_channel();
        let (release, release_rx) = mpsc::unbounded_channel::<u64>();
        let release_rx = Arc::new(Mutex::new(release_rx));
        let count = Arc::new(AtomicU64::new(0));
        let (stop, stop_rx) = oneshot::channel::<()>();
        let round = {
            let count = count.clone();
            move || {
                let n = count.fetch_add(1, Ordering::SeqCst) + 1;
                let started = started_tx.clone();
                let release = release_rx.clone();
                async move {
                    started.send(n).expect("the test listens");
                    release
                        .lock()
                        .await
                        .recv()
                        .await
                        .expect("the test releases")
                }
            }
        };
        let runner = tokio::spawn(runner.run(round, async move {
            let _ = stop_rx.await;
        }));
        (
            Arc::new(rounds),
            FakeRounds {
                started,
                release,
                count,
                stop: Some(stop),
                runner,
            },
        )
    }

    impl FakeRounds {
        async fn started(&mut self) -> u64 {
            tokio::time::timeout(std::time::Duration::from_secs(5), self.started.recv())
                .await
                .expect("a round starts in time")
                .expect("the runner is alive")
        }

        fn finish_with(&self, index: u64) {
            self.release.send(index).expect("the round waits");
        }
    }

    /// Polls a read once, so it is queued before the test goes on.
    fn queue<'a>(
        rounds: &'a ReadRounds<u64>,
    ) -> std::pin::Pin<Box<impl Future<Output = Option<u64>> + 'a>> {
        let mut read = Box::pin(rounds.next_round());
        assert!((&mut read).now_or_never().is_none(), "no round has ended");
        read
    }

    #[tokio::test]
    async fn a_read_arriving_mid_round_waits_for_the_next_round() {
        let (rounds, mut fake) = start();
        let first = queue(&rounds);
        assert_eq!(fake.started().await, 1);
        // Arrives while round 1 is in flight: a write may have committed after round 1 started.
        let second = queue(&rounds);
        fake.finish_with(10);
        assert_eq!(first.await, Some(10));
        assert_eq!(
            fake.started().await,
            2,
            "the waiting read starts a new round"
        );
        fake.finish_with(20);
        assert_eq!(
            second.await,
            Some(20),
            "not the index of the round in flight"
        );
    }

    #[tokio::test]
    async fn reads_that_arrive_during_one_round_share_the_next() {
        let (rounds, mut fake) = start();
        let first = queue(&rounds);
        assert_eq!(fake.started().await, 1);
        let waiting: Vec<_> = (0..50).map(|_| queue(&rounds)).collect();
        fake.finish_with(10);
        assert_eq!(first.await, Some(10));
        assert_eq!(fake.started().await, 2);
        fake.finish_with(20);
        for read in waiting {
            assert_eq!(read.await, Some(20));
        }
        assert_eq!(fake.count.load(Ordering::SeqCst), 2, "51 reads, two rounds");
    }

    #[tokio::test]
    async fn a_read_that_gave_up_does_not_start_a_round() {
        let (rounds, mut fake) = start();
        let first = queue(&rounds);
        assert_eq!(fake.started().await, 1);
        drop(queue(&rounds));
        fake.finish_with(10);
        assert_eq!(first.await, Some(10));
        let later = queue(&rounds);
        assert_eq!(fake.started().await, 2);
        fake.finish_with(20);
        assert_eq!(later.await, Some(20));
        assert_eq!(
            fake.count.load(Ordering::SeqCst),
            2,
            "no round for the abandoned read"
        );
    }

    #[tokio::test]
    async fn reads_end_when_the_runner_stops() {
        let (rounds, mut fake) = start();
        let waiting = queue(&rounds);
        assert_eq!(fake.started().await, 1);
        fake.stop
            .take()
            .expect("running")
            .send(())
            .expect("the runner listens");
        assert_eq!(waiting.await, None);
        (&mut fake.runner)
            .await
            .expect("the runner stopped cleanly");
        assert_eq!(rounds.next_round().await, None);
    }
}
