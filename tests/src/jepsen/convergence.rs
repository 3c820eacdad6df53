//! Convergence: once faults have healed and clients have stopped, every node's own state (read
//! without consensus) must hold the same value for every key.

use std::collections::BTreeMap;
use std::collections::BTreeSet;

use super::history::Value;

/// What one node holds: key to value (`None`: absent).
pub type NodeState = BTreeMap<String, Option<Value>>;

/// The keys on which the nodes disagree, each with what every node holds, as text.
pub fn divergence(nodes: &[(String, NodeState)]) -> Vec<String> {
    let keys: BTreeSet<&String> = nodes.iter().flat_map(|(_, state)| state.keys()).collect();
    keys.into_iter()
        .filter_map(|key| {
            let values: Vec<Option<Value>> = nodes
                .iter()
                .map(|(_, state)| state.get(key).copied().flatten())
                .collect();
            let agree = values.windows(2).all(|pair| pair[0] == pair[1]);
            (!agree).then(|| {
                let held = nodes
                    .iter()
                    .zip(&values)
                    .map(|((node, _), value)| format!("{node}={value:?}"))
                    .collect::<Vec<_>>()
                    .join(" ");
                format!("{key}: {held}")
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, kv: &[(&str, Option<Value>)]) -> (String, NodeState) {
        let state = kv.iter().map(|(k, v)| (k.to_string(), *v)).collect();
        (name.to_string(), state)
    }

    #[test]
    fn equal_states_have_converged() {
        let nodes = [
            node("n0", &[("a", Some(1)), ("b", None)]),
            node("n1", &[("a", Some(1))]),
        ];
        assert!(divergence(&nodes).is_empty());
    }

    #[test]
    fn a_differing_key_is_named_with_every_value() {
        let nodes = [
            node("n0", &[("a", Some(1)), ("b", Some(2))]),
            node("n1", &[("a", Some(1)), ("b", Some(3))]),
        ];
        assert_eq!(divergence(&nodes), vec!["b: n0=Some(2) n1=Some(3)"]);
    }
}
