//! The one line a node prints on stdout once it serves, `kvs-node <node-id> serving
//! client=<addr> peer=<addr>`: the node writes it, and the processes that start nodes — the demo
//! and the test harness — wait for it to learn that the node is up and who it is. One type with
//! `Display` and `FromStr`, so the writer and its readers cannot drift apart.

use std::fmt;
use std::str::FromStr;

use crate::identity::node_id_string;
use crate::identity::parse_node_id;

/// A node's announcement that it serves: who it is and the addresses it advertises.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Serving {
    /// The node's ID.
    pub node_id: u64,
    /// The address clients reach it on (gRPC API), `host:port`.
    pub client: String,
    /// The address its peers reach it on (Raft), `host:port`.
    pub peer: String,
}

impl fmt::Display for Serving {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "kvs-node {} serving client={} peer={}",
            node_id_string(self.node_id),
            self.client,
            self.peer
        )
    }
}

impl FromStr for Serving {
    /// Why the line is not a serving line, naming it.
    type Err = String;

    fn from_str(line: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("not a serving line ({why}): {line:?}");
        let words: Vec<&str> = line.split_whitespace().collect();
        let ["kvs-node", node_id, "serving", client, peer] = words[..] else {
            return Err(bad(
                "expected `kvs-node <node-id> serving client=<addr> peer=<addr>`",
            ));
        };
        let address = |word: &str, name: &str| {
            word.strip_prefix(name)
                .filter(|addr| !addr.is_empty())
                .map(str::to_string)
                .ok_or_else(|| bad(&format!("no `{name}<addr>`")))
        };
        Ok(Serving {
            node_id: parse_node_id(node_id)
                .ok_or_else(|| bad("the node ID is not 16 hex digits"))?,
            client: address(client, "client=")?,
            peer: address(peer, "peer=")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn the_serving_line_is_parsed() {
        assert_eq!(
            "kvs-node 00ab12cd34ef5678 serving client=127.0.0.1:4000 peer=127.0.0.1:4001".parse(),
            Ok(Serving {
                node_id: 0x00ab_12cd_34ef_5678,
                client: "127.0.0.1:4000".into(),
                peer: "127.0.0.1:4001".into(),
            })
        );
    }

    #[test]
    fn other_lines_are_refused() {
        for line in [
            "kvs-node 12 serving client=a peer=b",
            "kvs-node 00ab12cd34ef5678 serving client=a",
            "kvs-node 00ab12cd34ef5678 serving client=a peer=",
            "kvs-node 00ab12cd34ef5678 serving peer=b client=a",
            "kvs-node 00ab12cd34ef5678 serving client=a peer=b and more",
            "INFO starting",
            "",
        ] {
            let refused = line.parse::<Serving>().expect_err(line);
            assert!(refused.contains(&format!("{line:?}")), "{refused}");
        }
    }

    proptest! {
        #[test]
        fn what_is_written_is_read_back(
            node_id in any::<u64>(),
            client in "[a-z0-9.-]{1,20}:[0-9]{1,5}",
            peer in "[a-z0-9.-]{1,20}:[0-9]{1,5}",
        ) {
            let serving = Serving { node_id, client, peer };
            prop_assert_eq!(serving.to_string().parse(), Ok(serving));
        }
    }
}
