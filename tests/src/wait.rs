//! Bounded waits on conditions: tests poll what a user would observe instead of sleeping, and a
//! wait that runs out fails the test with what it was waiting for.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// How often conditions are re-checked.
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// Waits until `condition` yields `Some`, for at most `timeout` (a single slow check counts
/// against it too); panics with `what` when time runs out.
pub async fn wait_for<T, F, Fut>(timeout: Duration, what: &str, mut condition: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, condition()).await {
            Ok(Some(value)) => return value,
            Ok(None) if Instant::now() + POLL_INTERVAL < deadline => {
                tokio::time::sleep(POLL_INTERVAL).await
            }
            _ => panic!("timed out after {timeout:?} waiting until {what}"),
        }
    }
}

/// Waits until `condition` holds, for at most `timeout`; panics with `what` when time runs out.
pub async fn wait_until<F, Fut>(timeout: Duration, what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let condition = || {
        let check = condition();
        async move { check.await.then_some(()) }
    };
    wait_for(timeout, what, condition).await
}

/// Checks that `condition` holds at every poll for `duration`; panics with `what` the first time
/// it does not. For "this must not happen" properties, where only a window can be watched.
pub async fn holds_for<F, Fut>(duration: Duration, what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + duration;
    loop {
        assert!(
            condition().await,
            "expected {what} to hold for {duration:?}, but it stopped holding"
        );
        if Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU32;
    use std::sync::atomic::Ordering;

    use super::*;

    #[tokio::test]
    async fn wait_until_returns_once_the_condition_holds() {
        let polls = AtomicU32::new(0);
        wait_until(Duration::from_secs(5), "three polls", || async {
            polls.fetch_add(1, Ordering::SeqCst) >= 2
        })
        .await;
        assert_eq!(polls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn wait_for_is_bounded_even_when_a_check_hangs() {
        let started = Instant::now();
        let waited = tokio::spawn(wait_for(Duration::from_millis(200), "never", || {
            std::future::pending::<Option<()>>()
        }))
        .await;
        let panic = waited.expect_err("times out").into_panic();
        let msg = panic.downcast_ref::<String>().expect("a formatted message");
        assert!(msg.contains("waiting until never"), "{msg}");
        assert!(started.elapsed() < Duration::from_secs(2));
    }
}
