//! Node and cluster identity.
//!
//! A node ID is born with a node's state and dies with it: a wiped or restarted in-memory node is
//! a new member, never its predecessor, so one seat can never vote twice. A cluster ID is born
//! when a cluster is initialized and adopted by each node when it is first added. IDs are
//! numbers inside and 16 / 32 lowercase hex digits everywhere a person or a program sees them.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::RwLock;

use crate::lock;

/// Formats a node ID the way every interface shows it.
pub fn node_id_string(id: u64) -> String {
    format!("{id:016x}")
}

/// Parses a node ID as shown by [`node_id_string`].
pub fn parse_node_id(s: &str) -> Option<u64> {
    if s.len() != 16 {
        return None;
    }
    u64::from_str_radix(s, 16).ok()
}

/// A fresh random node ID (never 0, so 0 can mean "none" on the wire).
pub(crate) fn new_node_id() -> u64 {
    loop {
        let id = rand::random::<u64>();
        if id != 0 {
            return id;
        }
    }
}

fn new_cluster_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// What a durable node remembers about who it is: the text of its identity file, one
/// `name=value` line per field, written by the node and read back on every start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoredIdentity {
    pub(crate) node_id: u64,
    pub(crate) cluster_id: Option<String>,
}

impl fmt::Display for StoredIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "node_id={}", node_id_string(self.node_id))?;
        writeln!(f, "cluster_id={}", self.cluster_id.as_deref().unwrap_or(""))
    }
}

impl FromStr for StoredIdentity {
    /// Why the text is not an identity file.
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || format!("{:?}", text.trim());
        let mut node_id = None;
        let mut cluster_id = None;
        for line in text.lines() {
            match line.split_once('=') {
                Some(("node_id", v)) => node_id = Some(parse_node_id(v).ok_or_else(bad)?),
                Some(("cluster_id", "")) => {}
                Some(("cluster_id", v))
                    if v.len() == 32 && v.bytes().all(|b| b.is_ascii_hexdigit()) =>
                {
                    cluster_id = Some(v.to_string());
                }
                _ => return Err(bad()),
            }
        }
        Ok(StoredIdentity {
            node_id: node_id.ok_or_else(bad)?,
            cluster_id,
        })
    }
}

/// Writes a durable node's identity file; the data directory provides it, and its errors name
/// the file.
pub(crate) type SaveIdentity = Arc<dyn Fn(&StoredIdentity) -> std::io::Result<()> + Send + Sync>;

/// This node's identity, shared by every face of the node.
#[derive(Clone)]
pub(crate) struct Identity {
    node_id: u64,
    cluster_id: Arc<RwLock<Option<String>>>,
    /// Rewrites a durable node's identity file when the node joins a cluster.
    save: Option<SaveIdentity>,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("node_id", &node_id_string(self.node_id))
            .field("cluster_id", &self.cluster_id())
            .field("durable", &self.save.is_some())
            .finish()
    }
}

impl Identity {
    /// A volatile identity: gone with the process.
    pub(crate) fn new(node_id: u64) -> Self {
        Self {
            node_id,
            cluster_id: Arc::new(RwLock::new(None)),
            save: None,
        }
    }

    /// A durable identity, as stored (and saved back with `save`).
    pub(crate) fn stored(stored: StoredIdentity, save: SaveIdentity) -> Self {
        Self {
            node_id: stored.node_id,
            cluster_id: Arc::new(RwLock::new(stored.cluster_id)),
            save: Some(save),
        }
    }

    /// Records a newly learned cluster ID before anyone relies on it.
    fn save(&self, cluster_id: &str) {
        let Some(save) = &self.save else { return };
        let stored = StoredIdentity {
            node_id: self.node_id,
            cluster_id: Some(cluster_id.to_string()),
        };
        if let Err(e) = save(&stored) {
            // The cluster ID is re-learned from the leader after a restart; the node ID is
            // already on disk, so identity safety does not depend on this write.
            tracing::error!(error = %e, "cannot save the cluster ID");
        }
    }

    pub(crate) fn node_id(&self) -> u64 {
        self.node_id
    }

    /// The cluster this node belongs to, if any.
    pub(crate) fn cluster_id(&self) -> Option<String> {
        lock::read(&self.cluster_id).clone()
    }

    /// Creates a cluster ID for a cluster this node is initializing; returns the existing one if
    /// the node already has one.
    pub(crate) fn create_cluster(&self) -> String {
        let mut guard = lock::write(&self.cluster_id);
        if let Some(existing) = guard.as_ref() {
            return existing.clone();
        }
        let created = new_cluster_id();
        self.save(&created);
        *guard = Some(created.clone());
        created
    }

    /// Checks a peer message's identity envelope, adopting the sender's cluster ID when this node
    /// has none yet and `may_adopt` (only a leader's replication may make a node join). Call it
    /// only for a message that passed every other check: see [`Identity::check`].
    pub(crate) fn admit(&self, cluster_id: &str, to: u64, may_adopt: bool) -> Result<(), Mismatch> {
        self.judge(cluster_id, to, may_adopt, true)
    }

    /// What [`Identity::admit`] would say, without adopting anything: a message that has yet to
    /// be decoded and checked must not make a fresh node join a cluster.
    pub(crate) fn check(&self, cluster_id: &str, to: u64, may_adopt: bool) -> Result<(), Mismatch> {
        self.judge(cluster_id, to, may_adopt, false)
    }

    fn judge(
        &self,
        cluster_id: &str,
        to: u64,
        may_adopt: bool,
        adopt: bool,
    ) -> Result<(), Mismatch> {
        if to != self.node_id {
            return Err(Mismatch::WrongNode {
                addressed: to,
                actual: self.node_id,
            });
        }
        let mut guard = lock::write(&self.cluster_id);
        match guard.as_deref() {
            Some(own) if own == cluster_id => Ok(()),
            Some(own) => Err(Mismatch::WrongCluster {
                sender: cluster_id.to_string(),
                own: own.to_string(),
            }),
            None if may_adopt && !cluster_id.is_empty() && !adopt => Ok(()),
            None if may_adopt && !cluster_id.is_empty() => {
                tracing::info!(cluster_id, "joined cluster");
                self.save(cluster_id);
                *guard = Some(cluster_id.to_string());
                Ok(())
            }
            None => Err(Mismatch::NoCluster),
        }
    }
}

/// Why a peer message was not for this node.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Mismatch {
    #[error("message addressed to node {} but this is node {}", node_id_string(*.addressed), node_id_string(*.actual))]
    WrongNode { addressed: u64, actual: u64 },
    #[error("message from cluster {sender} but this node belongs to cluster {own}")]
    WrongCluster { sender: String, own: String },
    #[error("this node belongs to no cluster yet")]
    NoCluster,
    #[error("node {} is not a member of this node's configuration", node_id_string(*.from))]
    NotMember { from: u64 },
    #[error("node {} sent from {actual}, but its peer address is {expected}", node_id_string(*.from))]
    WrongAddress {
        from: u64,
        expected: String,
        actual: std::net::IpAddr,
    },
    #[error("the envelope names node {} but the message speaks for node {}", node_id_string(*.envelope), node_id_string(*.message))]
    WrongSender { envelope: u64, message: u64 },
    #[error("term {term} is out of reach of this node's term {current}")]
    TermOutOfReach { term: u64, current: u64 },
    #[error("node {} presented no peer certificate", node_id_string(*.from))]
    NoCertificate { from: u64 },
    #[error("the peer certificate does not name node {}'s peer address {peer_addr}", node_id_string(*.from))]
    CertificateForAnother { from: u64, peer_addr: String },
}

impl Mismatch {
    /// The value of the `kvs-peer-reject` metadata for this rejection.
    pub(crate) fn code(&self) -> &'static str {
        match self {
            Mismatch::WrongNode { .. } => "wrong-node",
            Mismatch::WrongCluster { .. } => "wrong-cluster",
            Mismatch::NoCluster => "no-cluster",
            Mismatch::NotMember { .. } => "not-member",
            Mismatch::WrongAddress { .. } => "wrong-address",
            Mismatch::WrongSender { .. } => "wrong-sender",
            Mismatch::TermOutOfReach { .. } => "term-out-of-reach",
            Mismatch::NoCertificate { .. } => "no-certificate",
            Mismatch::CertificateForAnother { .. } => "certificate-for-another",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_ids_round_trip_as_16_hex_digits() {
        let id = 0x00ab_cdef_0123_4567;
        let s = node_id_string(id);
        assert_eq!(s, "00abcdef01234567");
        assert_eq!(parse_node_id(&s), Some(id));
        assert_eq!(parse_node_id("abc"), None);
        assert_eq!(parse_node_id("zzzzzzzzzzzzzzzz"), None);
    }

    #[test]
    fn a_message_for_a_former_node_id_is_rejected() {
        let me = Identity::new(7);
        me.create_cluster();
        let cluster = me.cluster_id().expect("created");
        assert_eq!(
            me.admit(&cluster, 6, true),
            Err(Mismatch::WrongNode {
                addressed: 6,
                actual: 7
            })
        );
        assert_eq!(me.admit(&cluster, 7, false), Ok(()));
    }

    #[test]
    fn a_new_node_adopts_the_cluster_only_from_replication() {
        let me = Identity::new(1);
        assert_eq!(me.admit("c1", 1, false), Err(Mismatch::NoCluster));
        assert_eq!(me.check("c1", 1, true), Ok(()));
        assert_eq!(me.cluster_id(), None, "a check adopts nothing");
        assert_eq!(me.admit("c1", 1, true), Ok(()));
        assert_eq!(me.cluster_id().as_deref(), Some("c1"));
        assert!(matches!(
            me.admit("c2", 1, true),
            Err(Mismatch::WrongCluster { .. })
        ));
    }
}
