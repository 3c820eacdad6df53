//! Test-only fault injection in the peer transport: drop every Raft message, read-index request
//! and forwarded write to and from chosen peers, so a test can partition a cluster of processes
//! on one machine without touching the host's network.
//!
//! It is inert unless the node runs with `--fault-control-file PATH`. Then the node re-reads that
//! file every [`POLL_INTERVAL`]; each line `block <node-id>` cuts this node off from that peer in
//! both directions (outgoing calls fail as unreachable, incoming messages are refused), and an
//! empty or missing file heals everything. A file rather than an RPC, so that a fault written
//! while the node is paused or down takes hold the moment it runs again, and so that no
//! production face grows a control surface.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::RwLock;
use std::time::Duration;

use crate::identity::node_id_string;
use crate::identity::parse_node_id;

/// How often the control file is re-read.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// The peers this node is cut off from; inert (and always empty) without a control file.
#[derive(Debug, Default)]
pub(crate) struct Faults {
    blocked: Option<RwLock<HashSet<u64>>>,
}

impl Faults {
    /// Faults that never drop anything.
    pub(crate) fn inert() -> Self {
        Self { blocked: None }
    }

    /// Faults that follow a control file (see [`watch`]).
    pub(crate) fn controlled() -> Self {
        Self {
            blocked: Some(RwLock::new(HashSet::new())),
        }
    }

    /// Whether messages to and from `peer` are dropped.
    pub(crate) fn blocks(&self, peer: u64) -> bool {
        self.blocked.as_ref().is_some_and(|blocked| {
            blocked
                .read()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .contains(&peer)
        })
    }

    fn set(&self, peers: HashSet<u64>) {
        if let Some(blocked) = &self.blocked {
            let mut blocked = blocked
                .write()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if *blocked != peers {
                let names: Vec<String> = peers.iter().map(|&p| node_id_string(p)).collect();
                tracing::warn!(blocked = ?names, "fault injection: peer links changed");
                *blocked = peers;
            }
        }
    }
}

/// Keeps `faults` in step with the control file at `path` until `stop` resolves. A file that
/// cannot be parsed is reported and leaves the faults as they were.
pub(crate) async fn watch(
    faults: std::sync::Arc<Faults>,
    path: PathBuf,
    stop: impl Future<Output = ()>,
) {
    let mut stop = std::pin::pin!(stop);
    let mut tick = tokio::time::interval(POLL_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = tick.tick() => {}
        }
        let text = match tokio::fs::read_to_string(&path).await {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "fault injection: cannot read the control file");
                continue;
            }
        };
        match parse(&text) {
            Ok(peers) => faults.set(peers),
            Err(line) => {
                tracing::warn!(path = %path.display(), line, "fault injection: bad control line")
            }
        }
    }
}

/// The peers a control file blocks; the first bad line on error.
fn parse(text: &str) -> Result<HashSet<u64>, String> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
        .map(
            |line| match line.split_whitespace().collect::<Vec<_>>()[..] {
                ["block", id] => parse_node_id(id).ok_or_else(|| line.to_string()),
                _ => Err(line.to_string()),
            },
        )
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_lines_name_peers_and_comments_are_skipped() {
        let text = "# isolate node 2\nblock 00000000000000ab\n\n  block 0000000000000002 \n";
        assert_eq!(parse(text), Ok(HashSet::from([0xab, 2])));
        assert_eq!(parse(""), Ok(HashSet::new()));
    }

    #[test]
    fn a_bad_line_is_named() {
        assert_eq!(parse("block nope"), Err("block nope".into()));
        assert_eq!(parse("delay 1 2"), Err("delay 1 2".into()));
    }

    #[test]
    fn inert_faults_block_nothing_and_ignore_updates() {
        let inert = Faults::inert();
        inert.set(HashSet::from([1]));
        assert!(!inert.blocks(1));
        let controlled = Faults::controlled();
        controlled.set(HashSet::from([1]));
        assert!(controlled.blocks(1) && !controlled.blocks(2));
    }
}
