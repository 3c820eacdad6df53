//! Which node the next attempt goes to.
//!
//! A client starts at its first endpoint and stays wherever calls succeed. After a failure it
//! follows the leader the failed node named (the `kvs-leader` hint), which may be an address it
//! was never given, and otherwise moves on to the next configured endpoint. The choice itself is
//! the pure [`next_index`]; [`Routing`] only keeps the channels and the current position.

use std::sync::{Mutex, PoisonError};

use tonic::transport::Channel;

use crate::endpoint::{Address, Dial};
use crate::error::{Error, Result};

/// How many leader addresses outside the configured endpoints are remembered. A cluster has few
/// members, so this is only a bound against a node sending nonsense hints.
const MAX_LEARNED: usize = 16;

/// One node and the channel to it.
#[derive(Clone, Debug)]
pub(crate) struct Target {
    index: usize,
    address: Address,
    channel: Channel,
}

impl Target {
    /// The node's `host:port`.
    pub(crate) fn address(&self) -> &str {
        self.address.as_str()
    }

    /// The channel to the node (channels are cheap handles to one shared connection).
    pub(crate) fn channel(&self) -> Channel {
        self.channel.clone()
    }
}

/// The known nodes and which of them the next call goes to.
#[derive(Debug)]
pub(crate) struct Routing {
    dial: Dial,
    state: Mutex<Targets>,
}

#[derive(Debug)]
struct Targets {
    /// The configured endpoints first, then leaders learned from hints.
    known: Vec<Target>,
    configured: usize,
    current: usize,
}

impl Routing {
    /// Routing over `endpoints` (duplicates are dropped), starting at the first.
    pub(crate) fn new(endpoints: &[String], dial: Dial) -> Result<Self> {
        let mut known: Vec<Target> = Vec::with_capacity(endpoints.len());
        for endpoint in endpoints {
            let address = Address::parse(endpoint)?;
            if known.iter().all(|target| target.address != address) {
                known.push(Target {
                    index: known.len(),
                    channel: address.channel(&dial),
                    address,
                });
            }
        }
        if known.is_empty() {
            return Err(Error::NoEndpoints);
        }
        Ok(Routing {
            dial,
            state: Mutex::new(Targets {
                configured: known.len(),
                known,
                current: 0,
            }),
        })
    }

    /// Where the next call goes.
    pub(crate) fn current(&self) -> Target {
        let state = self.lock();
        state.known[state.current].clone()
    }

    /// Where to go after an attempt at `failed` failed, naming `leader` if it did.
    pub(crate) fn after_failure(&self, failed: &Target, leader: Option<&str>) -> Target {
        let leader = leader.and_then(|hint| match Address::parse(hint) {
            Ok(address) => Some(address),
            Err(err) => {
                tracing::debug!(%err, "ignoring an unusable leader hint");
                None
            }
        });
        let mut state = self.lock();
        let leader_index = leader.and_then(|address| state.find_or_learn(address, &self.dial));
        let next = next_index(state.configured, failed.index, leader_index);
        state.current = next;
        state.known[next].clone()
    }

    /// A target for one specific endpoint, reusing the channel of a known node.
    pub(crate) fn pinned(&self, endpoint: &str) -> Result<Target> {
        let address = Address::parse(endpoint)?;
        let state = self.lock();
        Ok(match state.position(&address) {
            Some(index) => state.known[index].clone(),
            // Never routed from, so its index only has to differ from every known one.
            None => Target {
                index: usize::MAX,
                channel: address.channel(&self.dial),
                address,
            },
        })
    }

    /// The configured endpoints, in the order given.
    pub(crate) fn configured(&self) -> Vec<Target> {
        let state = self.lock();
        state.known[..state.configured].to_vec()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Targets> {
        // Every update leaves the state consistent, so a panic elsewhere cannot corrupt it.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Targets {
    fn position(&self, address: &Address) -> Option<usize> {
        self.known
            .iter()
            .position(|target| &target.address == address)
    }

    fn find_or_learn(&mut self, address: Address, dial: &Dial) -> Option<usize> {
        if let Some(index) = self.position(&address) {
            return Some(index);
        }
        if self.known.len() >= self.configured + MAX_LEARNED {
            return None;
        }
        let index = self.known.len();
        self.known.push(Target {
            index,
            channel: address.channel(dial),
            address,
        });
        Some(index)
    }
}

/// The next node to try after `failed` failed: the named leader unless that is the node that
/// just failed, otherwise the configured endpoint after `failed` (round robin; a learned leader
/// that failed sends the client back to its first endpoint).
fn next_index(configured: usize, failed: usize, leader: Option<usize>) -> usize {
    match leader {
        Some(leader) if leader != failed => leader,
        _ if failed + 1 < configured => failed + 1,
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn follows_the_named_leader() {
        assert_eq!(next_index(3, 0, Some(2)), 2);
        assert_eq!(next_index(3, 1, Some(4)), 4);
    }

    #[test]
    fn moves_on_round_robin_without_a_usable_hint() {
        assert_eq!(next_index(3, 0, None), 1);
        assert_eq!(next_index(3, 2, None), 0);
        // A node naming itself as leader while failing is not worth retrying at once.
        assert_eq!(next_index(3, 1, Some(1)), 2);
        // A learned leader that failed: back to the configured endpoints.
        assert_eq!(next_index(3, 4, None), 0);
        assert_eq!(next_index(1, 0, None), 0);
    }

    #[tokio::test]
    async fn learns_leaders_outside_the_configured_endpoints() {
        let routing = Routing::new(
            &["a:1".into(), "http://b:1".into(), "a:1".into()],
            Dial::new(Duration::from_secs(1), None).unwrap(),
        )
        .unwrap();
        assert_eq!(routing.configured().len(), 2);
        let first = routing.current();
        assert_eq!(first.address(), "a:1");
        let leader = routing.after_failure(&first, Some("c:1"));
        assert_eq!(leader.address(), "c:1");
        assert_eq!(routing.current().address(), "c:1");
        assert_eq!(routing.configured().len(), 2);
        let back = routing.after_failure(&leader, Some("not an address"));
        assert_eq!(back.address(), "a:1");
    }

    #[tokio::test]
    async fn learned_leaders_are_bounded() {
        let routing = Routing::new(
            &["a:1".into()],
            Dial::new(Duration::from_secs(1), None).unwrap(),
        )
        .unwrap();
        let first = routing.current();
        for port in 1..=(MAX_LEARNED as u16 + 5) {
            routing.after_failure(&first, Some(&format!("leader:{port}")));
        }
        let beyond = routing.after_failure(&first, Some("leader:999"));
        assert_eq!(beyond.address(), "a:1");
    }

    #[test]
    fn needs_at_least_one_endpoint() {
        assert!(matches!(
            Routing::new(&[], Dial::new(Duration::from_secs(1), None).unwrap()),
            Err(Error::NoEndpoints)
        ));
    }
}
