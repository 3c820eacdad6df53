//! kvs-node.
