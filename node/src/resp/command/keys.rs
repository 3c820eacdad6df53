//! Keyspace commands: DEL/UNLINK, EXISTS, the EXPIRE family, TTL/PTTL, PERSIST, TYPE, DBSIZE,
//! KEYS, SCAN and FLUSHDB/FLUSHALL.
//!
//! Relative expiries (EXPIRE, PEXPIRE) travel as TTLs and become deadlines where the leader
//! stamps the entry, so a follower's clock never decides when a key expires. SCAN's cursor is a
//! shard index of the keyspace (see `store::keyspace`), valid on any node and across resizing.
//! FLUSHDB and FLUSHALL empty the whole replicated keyspace, so they are refused unless the node
//! runs with `--resp-allow-flush`.

use bytes::Bytes;
use kvs_client::proto;
use kvs_client::proto::op::Op;

use super::Family;
use super::Session;
use super::Spec;
use super::batch;
use super::first_result;
use super::flag;
use super::integer;
use super::pattern::matches;
use super::syntax_error;
use super::wrong_arity;
use crate::error::Error;
use crate::error::Result;
use crate::resp::frame::Frame;

pub(super) const COMMANDS: &[Spec] = &[
    Spec::new("del", -2, Family::Keys, (1, -1, 1)).writes(),
    Spec::new("unlink", -2, Family::Keys, (1, -1, 1)).writes(),
    Spec::new("exists", -2, Family::Keys, (1, -1, 1)),
    Spec::new("expire", -3, Family::Keys, (1, 1, 1)).writes(),
    Spec::new("pexpire", -3, Family::Keys, (1, 1, 1)).writes(),
    Spec::new("expireat", -3, Family::Keys, (1, 1, 1)).writes(),
    Spec::new("pexpireat", -3, Family::Keys, (1, 1, 1)).writes(),
    Spec::new("ttl", 2, Family::Keys, (1, 1, 1)),
    Spec::new("pttl", 2, Family::Keys, (1, 1, 1)),
    Spec::new("persist", 2, Family::Keys, (1, 1, 1)).writes(),
    Spec::new("type", 2, Family::Keys, (1, 1, 1)),
    Spec::new("dbsize", 1, Family::Keys, (0, 0, 0)),
    Spec::new("keys", 2, Family::Keys, (0, 0, 0)),
    Spec::new("scan", -2, Family::Keys, (0, 0, 0)),
    Spec::new("flushdb", -1, Family::Keys, (0, 0, 0)).admin(),
    Spec::new("flushall", -1, Family::Keys, (0, 0, 0)).admin(),
];

/// SCAN's COUNT when none is given, as in Redis.
const SCAN_DEFAULT_COUNT: usize = 10;
/// The most keys one SCAN step is asked for; a larger COUNT is served in several steps.
const SCAN_MAX_COUNT: usize = 10_000;

pub(super) async fn execute(session: &mut Session, name: &str, args: &[Bytes]) -> Result<Frame> {
    match (name, args) {
        ("del" | "unlink", keys) => {
            let ops = keys
                .iter()
                .map(|key| Op::Delete(proto::DeleteOp { key: key.clone() }))
                .collect();
            let resp = session.write(batch(ops)).await?;
            Ok(Frame::Integer(
                resp.results.iter().filter(|r| r.existed).count() as i64,
            ))
        }
        ("exists", keys) => {
            let count = session
                .read(|data, now| keys.iter().filter(|k| data.get(k, now).is_some()).count())
                .await?;
            Ok(Frame::Integer(count as i64))
        }
        ("expire" | "pexpire" | "expireat" | "pexpireat", [key, when, options @ ..]) => {
            expire(session, name, key, when, options).await
        }
        ("ttl" | "pttl", [key]) => {
            let ttl_ms = session
                .read(|data, now| match data.get(key, now) {
                    None => -2,
                    Some((_, 0)) => -1,
                    Some((_, at)) => at.saturating_sub(now).min(i64::MAX as u64) as i64,
                })
                .await?;
            Ok(Frame::Integer(match ttl_ms {
                ms if ms < 0 || name == "pttl" => ms,
                // Redis rounds to the nearest second.
                ms => (ms + 500) / 1000,
            }))
        }
        ("persist", [key]) => {
            let request = batch(vec![Op::Persist(proto::PersistOp { key: key.clone() })]);
            Ok(Frame::Integer(
                first_result(session.write(request).await?).integer,
            ))
        }
        ("type", [key]) => {
            let found = session
                .read(|data, now| data.get(key, now).is_some())
                .await?;
            Ok(Frame::Simple(if found { "string" } else { "none" }))
        }
        ("dbsize", []) => {
            let len = session.read(|data, _| data.len()).await?;
            Ok(Frame::Integer(len as i64))
        }
        ("keys", [pattern]) => keys(session, pattern).await,
        ("scan", [cursor, options @ ..]) => scan(session, cursor, options).await,
        ("flushdb" | "flushall", options) => {
            if !matches!(options, [] | [_]) {
                return Err(syntax_error());
            }
            if let [mode] = options
                && !mode.eq_ignore_ascii_case(b"sync")
                && !mode.eq_ignore_ascii_case(b"async")
            {
                return Err(syntax_error());
            }
            if !session.replica.config().resp_allow_flush {
                return Err(Error::InvalidArgument(format!(
                    "{} is disabled on this server: it would empty the whole replicated keyspace; \
                     start kvs-node with --resp-allow-flush to allow it",
                    name.to_ascii_uppercase()
                )));
            }
            session
                .write(batch(vec![Op::Clear(proto::ClearOp {})]))
                .await?;
            Ok(Frame::ok())
        }
        _ => Err(wrong_arity(name)),
    }
}

/// EXPIRE, PEXPIRE, EXPIREAT and PEXPIREAT, with Redis 7's checks in Redis 7's order.
async fn expire(
    session: &mut Session,
    name: &str,
    key: &Bytes,
    when: &Bytes,
    options: &[Bytes],
) -> Result<Frame> {
    if let Some(option) = options.first() {
        let known = [&b"nx"[..], b"xx", b"gt", b"lt"]
            .iter()
            .any(|o| option.eq_ignore_ascii_case(o));
        return Err(Error::InvalidArgument(if known {
            format!(
                "{} options NX, XX, GT and LT are not supported by kvs",
                name.to_ascii_uppercase()
            )
        } else {
            format!("Unsupported option {}", String::from_utf8_lossy(option))
        }));
    }
    let invalid = || Error::InvalidArgument(format!("invalid expire time in '{name}' command"));
    let n = integer(when)?;
    let ms = if name.starts_with('p') {
        n
    } else {
        n.checked_mul(1000).ok_or_else(invalid)?
    };
    let absolute = name.ends_with("at");
    let op = if absolute {
        proto::ExpireOp {
            key: key.clone(),
            expires_at_ms: ms.max(0) as u64,
            ttl_ms: None,
        }
    } else {
        // Redis refuses a relative expiry whose deadline overflows.
        let now = i64::try_from(crate::replica::kv::wall_clock_ms()).unwrap_or(i64::MAX);
        ms.checked_add(now).ok_or_else(invalid)?;
        proto::ExpireOp {
            key: key.clone(),
            expires_at_ms: 0,
            ttl_ms: Some(ms.max(0) as u64),
        }
    };
    let resp = session.write(batch(vec![Op::Expire(op)])).await?;
    Ok(flag(first_result(resp).existed))
}

/// Keys visited per step of KEYS, between checks of the reply's size.
const KEYS_STEP: usize = 1024;

/// KEYS: every live key matching `pattern`. The keys are copied from a point-in-time view of
/// the state (taken under the lock in O(shards)), not under the lock, and collecting stops once
/// the reply is past the connection's reply limit — which the connection then refuses — so a
/// huge keyspace costs the node at most one reply limit of memory.
async fn keys(session: &Session, pattern: &Bytes) -> Result<Frame> {
    let (view, now) = session.read(|data, now| (data.clone(), now)).await?;
    let max = session.replica.config().max_reply_bytes;
    let mut keys = Vec::new();
    let mut size = 0usize;
    let mut cursor = 0;
    loop {
        let (next, step) = view.scan(cursor, KEYS_STEP, now, |k| matches(pattern, k));
        for key in step {
            let key = Frame::Bulk(key);
            size += key.encoded_len();
            keys.push(key);
        }
        if next == 0 || size > max {
            return Ok(Frame::Array(keys));
        }
        cursor = next;
    }
}

async fn scan(session: &Session, cursor: &Bytes, options: &[Bytes]) -> Result<Frame> {
    let cursor = std::str::from_utf8(cursor)
        .ok()
        .filter(|c| c.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|c| c.parse::<u64>().ok())
        .ok_or_else(|| Error::InvalidArgument("invalid cursor".into()))?;
    let mut count = SCAN_DEFAULT_COUNT;
    let mut pattern: Option<&Bytes> = None;
    let mut only_strings = true;
    let mut rest = options.iter();
    while let Some(option) = rest.next() {
        let value = rest.next().ok_or_else(syntax_error)?;
        match option.to_ascii_lowercase().as_slice() {
            b"count" => {
                count = usize::try_from(integer(value)?)
                    .ok()
                    .filter(|&c| c >= 1)
                    .ok_or_else(syntax_error)?
                    .min(SCAN_MAX_COUNT);
            }
            b"match" => pattern = Some(value),
            b"type" => only_strings = value.eq_ignore_ascii_case(b"string"),
            _ => return Err(syntax_error()),
        }
    }
    // As in Redis, COUNT is the work of one step; MATCH and TYPE filter what it found.
    let (view, now) = session.read(|data, now| (data.clone(), now)).await?;
    let (next, keys) = view.scan(cursor, count, now, |_| true);
    let keys = keys
        .into_iter()
        .filter(|k| only_strings && pattern.is_none_or(|p| matches(p, k)))
        .map(Frame::Bulk)
        .collect();
    Ok(Frame::Array(vec![
        Frame::bulk(next.to_string()),
        Frame::Array(keys),
    ]))
}
