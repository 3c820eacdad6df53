//! Server commands: INFO (sections `server`, `replication`, `keyspace`) and WAIT.
//!
//! INFO describes this node in Redis's field names where one fits (`role`, `connected_slaves`,
//! `db0:keys=`) and `kvs_*` fields for what Redis has no word for (the Raft leader). WAIT has
//! nothing to wait for: a write is acknowledged only once a majority holds it, so WAIT answers
//! at once with how many other members are known to hold everything this node has applied.

use bytes::Bytes;

use super::Family;
use super::Session;
use super::Spec;
use super::connection::REDIS_VERSION;
use super::wrong_arity;
use crate::error::Error;
use crate::error::Result;
use crate::identity::node_id_string;
use crate::replica::Leadership;
use crate::resp::frame::Frame;
use crate::resp::frame::parse_i64;

pub(super) const COMMANDS: &[Spec] = &[
    Spec::new("info", -1, Family::Server, (0, 0, 0)),
    Spec::new("wait", 3, Family::Server, (0, 0, 0)),
];

pub(super) async fn execute(session: &mut Session, name: &str, args: &[Bytes]) -> Result<Frame> {
    match (name, args) {
        ("info", sections) => Ok(Frame::bulk(info(session, sections))),
        ("wait", [replicas, timeout]) => {
            parse_i64(replicas).ok_or_else(|| {
                Error::InvalidArgument("value is not an integer or out of range".into())
            })?;
            match parse_i64(timeout) {
                None => Err(Error::InvalidArgument(
                    "timeout is not an integer or out of range".into(),
                )),
                Some(t) if t < 0 => Err(Error::InvalidArgument("timeout is negative".into())),
                Some(_) => Ok(Frame::Integer(caught_up_replicas(session))),
            }
        }
        _ => Err(wrong_arity(name)),
    }
}

/// Other members known to have replicated this node's applied index: the leader knows each
/// one's progress; any other node knows only that a majority holds every committed entry.
fn caught_up_replicas(session: &Session) -> i64 {
    let replica = &session.replica;
    let metrics = replica.metrics();
    let me = replica.identity().node_id();
    let applied = metrics.last_applied.map_or(0, |l| l.index);
    let others = match (replica.leadership(), &metrics.replication) {
        (Leadership::Here, Some(progress)) => progress
            .iter()
            .filter(|(id, matched)| **id != me && matched.is_some_and(|m| m.index >= applied))
            .count(),
        _ => metrics.membership_config.membership().voter_ids().count() / 2,
    };
    others as i64
}

fn info(session: &Session, sections: &[Bytes]) -> String {
    let wanted = |section: &str| {
        sections.is_empty()
            || sections.iter().any(|s| {
                s.eq_ignore_ascii_case(section.as_bytes())
                    || s.eq_ignore_ascii_case(b"all")
                    || s.eq_ignore_ascii_case(b"default")
                    || s.eq_ignore_ascii_case(b"everything")
            })
    };
    let replica = &session.replica;
    let mut out = String::new();
    if wanted("server") {
        out.push_str(&format!(
            "# Server\r\nredis_version:{REDIS_VERSION}\r\nredis_mode:standalone\r\n\
             kvs_version:{}\r\nkvs_node_id:{}\r\nprocess_id:{}\r\n\r\n",
            env!("CARGO_PKG_VERSION"),
            node_id_string(replica.identity().node_id()),
            std::process::id(),
        ));
    }
    if wanted("replication") {
        let metrics = replica.metrics();
        let (role, leader) = match replica.leadership() {
            Leadership::Here => ("master", replica.advertised().addr.clone()),
            Leadership::There { addr, .. } => ("slave", addr.addr),
            Leadership::Unknown => ("slave", String::new()),
        };
        let voters = metrics.membership_config.membership().voter_ids().count();
        out.push_str(&format!(
            "# Replication\r\nrole:{role}\r\nconnected_slaves:{}\r\nkvs_leader:{leader}\r\n\
             kvs_term:{}\r\nkvs_applied_index:{}\r\n\r\n",
            voters.saturating_sub(1),
            metrics.current_term,
            metrics.last_applied.map_or(0, |l| l.index),
        ));
    }
    if wanted("keyspace") {
        let keys = replica.key_count();
        out.push_str("# Keyspace\r\n");
        if keys > 0 {
            out.push_str(&format!("db0:keys={keys},expires=0,avg_ttl=0\r\n"));
        }
        out.push_str("\r\n");
    }
    out
}
