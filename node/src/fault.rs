//! Test-only fault injection in the node's transport: drop or delay every Raft message,
//! read-index request and forwarded write to and from chosen peers, so a test can partition or
//! slow down a cluster of processes on one machine without touching the host's network; drop
//! client requests before they are served; and drop the replies to writes that were applied, so a
//! test can see that a client's retry is not applied twice.
//!
//! It is inert unless the node runs with `--fault-control-file PATH`. Then the node re-reads that
//! file every 20 ms; each line `block <node-id>` cuts this node off from that peer in
//! both directions (outgoing calls fail as unreachable, incoming messages are refused), a line
//! `delay <node-id> <ms> [<jitter-ms>]` holds every call this node makes to that peer for `ms`
//! plus a random share of `jitter-ms` before sending it, a line `drop-requests <percent>` loses
//! that share of client reads and writes on arrival (nothing answers them before their deadline),
//! a line `drop-replies <percent>` answers that share of applied writes with UNKNOWN instead of
//! their result, a line `failpoint <name> crash|stall <ms>` arms a failpoint of a `failpoints`
//! build (`crate::failpoint`), and an empty or missing file heals everything. A file rather than
//! an RPC, so that a fault written while the node is paused or down takes hold the moment it runs
//! again, and so that no production face grows a control surface.
//!
//! The file's text is one type, [`FaultSet`]: the node reads it with `FromStr`, and the test
//! harness builds the faults it wants and writes their `Display`, so the writer and the reader
//! cannot disagree on the grammar.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::RwLock;
use std::time::Duration;

use crate::failpoint;
use crate::identity::node_id_string;
use crate::identity::parse_node_id;
use crate::lock;

/// How often the control file is re-read.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// The faults in force; inert (and always empty) without a control file.
#[derive(Debug, Default)]
pub(crate) struct Faults {
    current: Option<RwLock<FaultSet>>,
}

/// What a control file asks of one node; its `Display` is the file's text and its `FromStr`
/// reads one. Ordered collections, so that the same faults always make the same text.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FaultSet {
    /// Peers this node is cut off from: `block <node-id>`.
    pub blocked: BTreeSet<u64>,
    /// Per peer, how long this node's calls to it are held: `delay <node-id> <ms> <jitter-ms>`.
    pub delays: BTreeMap<u64, Delay>,
    /// Share of client requests lost on arrival, in percent (0 to 100): `drop-requests
    /// <percent>`, no line for 0.
    pub drop_requests: u8,
    /// Share of applied writes whose reply is dropped, in percent (0 to 100): `drop-replies
    /// <percent>`, no line for 0.
    pub drop_replies: u8,
    /// Failpoints armed in this process: `failpoint <name> <action>`.
    pub failpoints: failpoint::Armed,
}

/// How long calls over a slowed-down link are held: `base` plus a random share of `jitter`. A
/// control line carries whole milliseconds; finer parts are not written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Delay {
    /// The least a call is held.
    pub base: Duration,
    /// The most a call is held on top of `base`.
    pub jitter: Duration,
}

impl Faults {
    /// Faults that never drop anything.
    pub(crate) fn inert() -> Self {
        Self { current: None }
    }

    /// Faults that follow a control file (see [`watch`]).
    pub(crate) fn controlled() -> Self {
        Self {
            current: Some(RwLock::new(FaultSet::default())),
        }
    }

    fn read<T>(&self, f: impl FnOnce(&FaultSet) -> T) -> Option<T> {
        let current = self.current.as_ref()?;
        Some(f(&lock::read(current)))
    }

    /// Whether messages to and from `peer` are dropped.
    pub(crate) fn blocks(&self, peer: u64) -> bool {
        self.read(|set| set.blocked.contains(&peer))
            .unwrap_or(false)
    }

    /// Whether to drop the reply to a write that was just applied (a random draw).
    pub(crate) fn drops_reply(&self) -> bool {
        self.read(|set| set.drop_replies)
            .is_some_and(|percent| rand::random_range(0..100) < percent)
    }

    /// Whether to lose a client request that just arrived (a random draw).
    pub(crate) fn drops_request(&self) -> bool {
        self.read(|set| set.drop_requests)
            .is_some_and(|percent| rand::random_range(0..100) < percent)
    }

    /// Holds a call to `peer` for as long as the link to it is slowed down (a random draw).
    pub(crate) async fn hold(&self, peer: u64) {
        let delay = self.read(|set| set.delays.get(&peer).copied()).flatten();
        if let Some(Delay { base, jitter }) = delay {
            tokio::time::sleep(base + jitter.mul_f64(rand::random())).await;
        }
    }

    fn set(&self, faults: FaultSet) {
        if let Some(current) = &self.current {
            let mut current = lock::write(current);
            if *current != faults {
                let names: Vec<String> =
                    faults.blocked.iter().map(|&p| node_id_string(p)).collect();
                tracing::warn!(blocked = ?names, drop_replies = faults.drop_replies, drop_requests = faults.drop_requests, delayed = faults.delays.len(), failpoints = ?faults.failpoints, "fault injection: faults changed");
                failpoint::arm(&current.failpoints, &faults.failpoints);
                *current = faults;
            }
        }
    }
}

/// Keeps `faults` in step with the control file at `path` until `stop` resolves. A file that
/// cannot be parsed is reported and leaves the faults as they were. Once a new file is in force
/// its text is copied to `PATH.in-force`, so a test can wait for it instead of guessing.
pub(crate) async fn watch(
    faults: std::sync::Arc<Faults>,
    path: PathBuf,
    stop: impl Future<Output = ()>,
) {
    let mut stop = std::pin::pin!(stop);
    let mut in_force: Option<String> = None;
    let acknowledged = path.with_extension("in-force");
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
        if in_force.as_ref() == Some(&text) {
            continue;
        }
        match text.parse() {
            Ok(set) => {
                faults.set(set);
                if let Err(e) = tokio::fs::write(&acknowledged, &text).await {
                    tracing::warn!(path = %acknowledged.display(), error = %e, "fault injection: cannot acknowledge");
                }
                in_force = Some(text);
            }
            Err(line) => {
                tracing::warn!(path = %path.display(), line, "fault injection: bad control line")
            }
        }
    }
}

impl fmt::Display for FaultSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for &peer in &self.blocked {
            writeln!(f, "block {}", node_id_string(peer))?;
        }
        for (&peer, delay) in &self.delays {
            let (base, jitter) = (delay.base.as_millis(), delay.jitter.as_millis());
            writeln!(f, "delay {} {base} {jitter}", node_id_string(peer))?;
        }
        if self.drop_requests > 0 {
            writeln!(f, "drop-requests {}", self.drop_requests)?;
        }
        if self.drop_replies > 0 {
            writeln!(f, "drop-replies {}", self.drop_replies)?;
        }
        for (name, action) in &self.failpoints {
            writeln!(f, "failpoint {name} {action}")?;
        }
        Ok(())
    }
}

impl FromStr for FaultSet {
    /// The first bad line.
    type Err = String;

    /// Skips blank lines and `#` comments; a later line for the same peer, percentage or
    /// failpoint replaces an earlier one.
    fn from_str(text: &str) -> Result<Self, String> {
        let mut set = FaultSet::default();
        let lines = text
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with('#'));
        for line in lines {
            let bad = || line.to_string();
            let percent = |p: &str| p.parse().ok().filter(|p| *p <= 100).ok_or_else(bad);
            let ms = |ms: &str| ms.parse().map(Duration::from_millis).map_err(|_| bad());
            match line.split_whitespace().collect::<Vec<_>>()[..] {
                ["block", id] => {
                    set.blocked.insert(parse_node_id(id).ok_or_else(bad)?);
                }
                ["drop-replies", p] => set.drop_replies = percent(p)?,
                ["drop-requests", p] => set.drop_requests = percent(p)?,
                ["delay", id, base, ref jitter @ ..] if jitter.len() <= 1 => {
                    let id = parse_node_id(id).ok_or_else(bad)?;
                    let base = ms(base)?;
                    let jitter = jitter.first().map_or(Ok(Duration::ZERO), |j| ms(j))?;
                    set.delays.insert(id, Delay { base, jitter });
                }
                ["failpoint", ref point @ ..] => {
                    let (name, action) = failpoint::parse(point).ok_or_else(bad)?;
                    set.failpoints.insert(name, action);
                }
                _ => return Err(bad()),
            }
        }
        Ok(set)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn parse(text: &str) -> Result<FaultSet, String> {
        text.parse()
    }

    #[test]
    fn block_lines_name_peers_and_comments_are_skipped() {
        let text = "# isolate node 2\nblock 00000000000000ab\n\n  block 0000000000000002 \n";
        let set = parse(text).expect("valid");
        assert_eq!(set.blocked, BTreeSet::from([0xab, 2]));
        assert_eq!(set.drop_replies, 0);
        assert_eq!(parse(""), Ok(FaultSet::default()));
        assert_eq!(parse("drop-replies 40").map(|s| s.drop_replies), Ok(40));
        assert_eq!(parse("drop-requests 30").map(|s| s.drop_requests), Ok(30));
    }

    #[test]
    fn delay_lines_name_a_peer_a_delay_and_an_optional_jitter() {
        let set = parse(
            "delay 0000000000000002 150 50
delay 0000000000000003 20",
        )
        .expect("valid");
        let delay = |base, jitter| Delay {
            base: Duration::from_millis(base),
            jitter: Duration::from_millis(jitter),
        };
        assert_eq!(
            set.delays,
            BTreeMap::from([(2, delay(150, 50)), (3, delay(20, 0))])
        );
    }

    #[test]
    fn a_bad_line_is_named() {
        assert_eq!(parse("block nope"), Err("block nope".into()));
        assert_eq!(parse("delay 1 2"), Err("delay 1 2".into()));
        let too_many = "delay 0000000000000002 1 2 3";
        assert_eq!(parse(too_many), Err(too_many.into()));
        assert_eq!(parse("drop-replies 101"), Err("drop-replies 101".into()));
        assert_eq!(parse("drop-requests -1"), Err("drop-requests -1".into()));
    }

    #[test]
    fn faults_are_written_one_line_each_in_the_documented_grammar() {
        let set = FaultSet {
            blocked: BTreeSet::from([2, 0xab]),
            delays: BTreeMap::from([(
                3,
                Delay {
                    base: Duration::from_millis(150),
                    jitter: Duration::from_millis(50),
                },
            )]),
            drop_requests: 30,
            drop_replies: 40,
            failpoints: failpoint::Armed::new(),
        };
        assert_eq!(
            set.to_string(),
            "block 0000000000000002\nblock 00000000000000ab\ndelay 0000000000000003 150 50\n\
             drop-requests 30\ndrop-replies 40\n"
        );
        assert_eq!(
            FaultSet::default().to_string(),
            "",
            "healed is an empty file"
        );
    }

    fn any_fault_set() -> impl Strategy<Value = FaultSet> {
        let ms = || (0..=u64::from(u32::MAX)).prop_map(Duration::from_millis);
        let delay = (ms(), ms()).prop_map(|(base, jitter)| Delay { base, jitter });
        (
            prop::collection::btree_set(any::<u64>(), 0..4),
            prop::collection::btree_map(any::<u64>(), delay, 0..4),
            0..=100u8,
            0..=100u8,
            failpoint::any_armed(),
        )
            .prop_map(
                |(blocked, delays, drop_requests, drop_replies, failpoints)| FaultSet {
                    blocked,
                    delays,
                    drop_requests,
                    drop_replies,
                    failpoints,
                },
            )
    }

    proptest! {
        #[test]
        fn what_is_written_is_read_back(set in any_fault_set()) {
            prop_assert_eq!(parse(&set.to_string()), Ok(set));
        }
    }

    #[test]
    fn inert_faults_block_nothing_and_ignore_updates() {
        let everything = FaultSet {
            blocked: BTreeSet::from([1]),
            drop_replies: 100,
            drop_requests: 100,
            ..FaultSet::default()
        };
        let inert = Faults::inert();
        inert.set(everything.clone());
        assert!(!inert.blocks(1) && !inert.drops_reply() && !inert.drops_request());
        let controlled = Faults::controlled();
        controlled.set(everything);
        assert!(controlled.blocks(1) && !controlled.blocks(2) && controlled.drops_reply());
        assert!(controlled.drops_request());
    }

    #[tokio::test(start_paused = true)]
    async fn a_delayed_link_holds_calls_to_that_peer_only() {
        let faults = Faults::controlled();
        faults.set(parse("delay 0000000000000002 300 100").expect("valid"));
        let start = tokio::time::Instant::now();
        faults.hold(3).await;
        assert_eq!(start.elapsed(), Duration::ZERO);
        faults.hold(2).await;
        let held = start.elapsed();
        assert!(
            (Duration::from_millis(300)..=Duration::from_millis(400)).contains(&held),
            "{held:?}"
        );
    }
}
