//! String commands: GET, SET and its options, the SET variants, counters, APPEND, STRLEN and
//! the multi-key MGET / MSET / MSETNX.
//!
//! Each write is one conditional batch, so what Redis does atomically stays atomic here: SET NX
//! is a compare on existence, MSETNX is all its compares and puts in one entry, and SET ... GET
//! reads the old value in the same entry it replaces it in.

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
use super::syntax_error;
use super::wrong_arity;
use crate::error::Error;
use crate::error::Result;
use crate::replica::kv::wall_clock_ms;
use crate::resp::frame::Frame;

pub(super) const COMMANDS: &[Spec] = &[
    Spec::new("get", 2, Family::Strings, (1, 1, 1)),
    Spec::new("set", -3, Family::Strings, (1, 1, 1)).writes(),
    Spec::new("setnx", 3, Family::Strings, (1, 1, 1)).writes(),
    Spec::new("getset", 3, Family::Strings, (1, 1, 1)).writes(),
    Spec::new("getdel", 2, Family::Strings, (1, 1, 1)).writes(),
    Spec::new("append", 3, Family::Strings, (1, 1, 1)).writes(),
    Spec::new("strlen", 2, Family::Strings, (1, 1, 1)),
    Spec::new("incr", 2, Family::Strings, (1, 1, 1)).writes(),
    Spec::new("incrby", 3, Family::Strings, (1, 1, 1)).writes(),
    Spec::new("decr", 2, Family::Strings, (1, 1, 1)).writes(),
    Spec::new("decrby", 3, Family::Strings, (1, 1, 1)).writes(),
    Spec::new("mget", -2, Family::Strings, (1, -1, 1)),
    Spec::new("mset", -3, Family::Strings, (1, -1, 2)).writes(),
    Spec::new("msetnx", -3, Family::Strings, (1, -1, 2)).writes(),
];

pub(super) async fn execute(session: &mut Session, name: &str, args: &[Bytes]) -> Result<Frame> {
    match (name, args) {
        ("get", [key]) => {
            let value = session.read(|data, now| data.get(key, now)).await?;
            Ok(Frame::optional(value.map(|(value, _)| value)))
        }
        ("set", [key, value, options @ ..]) => set(session, key, value, options).await,
        ("setnx", [key, value]) => {
            let mut request = batch(vec![put(key, value)]);
            request.compares = vec![absent(key)];
            Ok(flag(session.write(request).await?.succeeded))
        }
        ("getset", [key, value]) => {
            let mut request = batch(vec![put(key, value)]);
            request.return_previous = true;
            let previous = first_result(session.write(request).await?).previous;
            Ok(Frame::optional(previous))
        }
        ("getdel", [key]) => {
            let mut request = batch(vec![Op::Delete(proto::DeleteOp { key: key.clone() })]);
            request.return_previous = true;
            let previous = first_result(session.write(request).await?).previous;
            Ok(Frame::optional(previous))
        }
        ("append", [key, value]) => {
            let request = batch(vec![Op::Append(proto::AppendOp {
                key: key.clone(),
                value: value.clone(),
            })]);
            Ok(Frame::Integer(
                first_result(session.write(request).await?).integer,
            ))
        }
        ("strlen", [key]) => {
            let len = session.read(|data, now| data.get(key, now)).await?;
            Ok(Frame::Integer(
                len.map_or(0, |(value, _)| value.len() as i64),
            ))
        }
        ("incr", [key]) => increment(session, key, 1).await,
        ("decr", [key]) => increment(session, key, -1).await,
        ("incrby", [key, delta]) => increment(session, key, integer(delta)?).await,
        ("decrby", [key, delta]) => match integer(delta)?.checked_neg() {
            Some(delta) => increment(session, key, delta).await,
            None => Err(Error::InvalidArgument("decrement would overflow".into())),
        },
        ("mget", keys) => {
            let values = session
                .read(|data, now| {
                    keys.iter()
                        .map(|key| Frame::optional(data.get(key, now).map(|(value, _)| value)))
                        .collect()
                })
                .await?;
            Ok(Frame::Array(values))
        }
        ("mset", pairs) => {
            let request = batch(key_values(name, pairs)?.map(|(k, v)| put(k, v)).collect());
            session.write(request).await?;
            Ok(Frame::ok())
        }
        ("msetnx", pairs) => {
            let pairs: Vec<_> = key_values(name, pairs)?.collect();
            let mut request = batch(pairs.iter().map(|(k, v)| put(k, v)).collect());
            request.compares = pairs.iter().map(|(k, _)| absent(k)).collect();
            Ok(flag(session.write(request).await?.succeeded))
        }
        _ => Err(wrong_arity(name)),
    }
}

/// A put that clears any expiry, as a plain Redis SET does.
fn put(key: &Bytes, value: &Bytes) -> Op {
    Op::Put(proto::PutOp {
        key: key.clone(),
        value: value.clone(),
        ..Default::default()
    })
}

/// The compare "`key` does not exist".
fn absent(key: &Bytes) -> proto::Compare {
    proto::Compare {
        key: key.clone(),
        target: Some(proto::compare::Target::Exists(false)),
    }
}

/// `key value [key value ...]` pairs; an odd count is a wrong arity, as in Redis.
fn key_values<'a>(
    name: &str,
    args: &'a [Bytes],
) -> Result<impl Iterator<Item = (&'a Bytes, &'a Bytes)>> {
    if !args.len().is_multiple_of(2) {
        return Err(wrong_arity(name));
    }
    Ok(args.chunks_exact(2).map(|pair| (&pair[0], &pair[1])))
}

async fn increment(session: &mut Session, key: &Bytes, delta: i64) -> Result<Frame> {
    let request = batch(vec![Op::Increment(proto::IncrementOp {
        key: key.clone(),
        delta,
    })]);
    Ok(Frame::Integer(
        first_result(session.write(request).await?).integer,
    ))
}

/// SET's expiry options.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expiry<'a> {
    Clear,
    KeepTtl,
    /// EX, PX, EXAT or PXAT with its raw argument.
    Set {
        absolute: bool,
        seconds: bool,
        arg: &'a [u8],
    },
}

/// SET's options, parsed as Redis parses them: first every flag (conflicts are syntax errors),
/// then the expiry's number.
#[derive(Debug, PartialEq, Eq)]
struct SetOptions<'a> {
    /// `Some(false)` for NX (must not exist), `Some(true)` for XX.
    exists: Option<bool>,
    get: bool,
    expiry: Expiry<'a>,
}

fn parse_set_options(options: &[Bytes]) -> Result<SetOptions<'_>> {
    let mut parsed = SetOptions {
        exists: None,
        get: false,
        expiry: Expiry::Clear,
    };
    let mut rest = options.iter();
    while let Some(option) = rest.next() {
        let option = option.to_ascii_lowercase();
        match option.as_slice() {
            b"nx" | b"xx" => {
                let exists = option == b"xx";
                if parsed.exists.is_some_and(|e| e != exists) {
                    return Err(syntax_error());
                }
                parsed.exists = Some(exists);
            }
            b"get" => parsed.get = true,
            b"keepttl" if matches!(parsed.expiry, Expiry::Clear | Expiry::KeepTtl) => {
                parsed.expiry = Expiry::KeepTtl;
            }
            b"ex" | b"px" | b"exat" | b"pxat" => {
                let (absolute, seconds) = (option.ends_with(b"at"), option.starts_with(b"e"));
                // Redis lets the same option repeat (the last wins), never mix with another.
                let compatible = match parsed.expiry {
                    Expiry::Clear => true,
                    Expiry::KeepTtl => false,
                    Expiry::Set {
                        absolute: a,
                        seconds: s,
                        ..
                    } => (a, s) == (absolute, seconds),
                };
                let arg = rest
                    .next()
                    .filter(|_| compatible)
                    .ok_or_else(syntax_error)?;
                parsed.expiry = Expiry::Set {
                    absolute,
                    seconds,
                    arg,
                };
            }
            _ => return Err(syntax_error()),
        }
    }
    Ok(parsed)
}

/// SET's expiry as a put's TTL, keep flag and absolute deadline, validated as Redis does.
fn put_expiry(expiry: Expiry<'_>) -> Result<(Option<u64>, bool, Option<u64>)> {
    let Expiry::Set {
        absolute,
        seconds,
        arg,
    } = expiry
    else {
        return Ok((None, expiry == Expiry::KeepTtl, None));
    };
    let invalid = || Error::InvalidArgument("invalid expire time in 'set' command".into());
    let n = integer(arg)?;
    let ms = if seconds {
        n.checked_mul(1000)
    } else {
        Some(n)
    }
    .filter(|&ms| ms > 0)
    .ok_or_else(invalid)?;
    if absolute {
        return Ok((None, false, Some(ms as u64)));
    }
    // Redis refuses a relative expiry whose deadline overflows.
    let now = i64::try_from(wall_clock_ms()).unwrap_or(i64::MAX);
    ms.checked_add(now).ok_or_else(invalid)?;
    Ok((Some(ms as u64), false, None))
}

async fn set(
    session: &mut Session,
    key: &Bytes,
    value: &Bytes,
    options: &[Bytes],
) -> Result<Frame> {
    let options = parse_set_options(options)?;
    let (ttl_ms, keep_ttl, expires_at_ms) = put_expiry(options.expiry)?;
    let mut request = batch(vec![Op::Put(proto::PutOp {
        key: key.clone(),
        value: value.clone(),
        ttl_ms,
        keep_ttl,
        expires_at_ms,
    })]);
    request.return_previous = options.get;
    if let Some(exists) = options.exists {
        request.compares = vec![proto::Compare {
            key: key.clone(),
            target: Some(proto::compare::Target::Exists(exists)),
        }];
        // SET NX GET on an existing key answers its value: an empty append reads it in the
        // same entry without changing it.
        if options.get && !exists {
            request.else_ops = vec![crate::replica::kv::op(Op::Append(proto::AppendOp {
                key: key.clone(),
                value: Bytes::new(),
            }))];
        }
    }
    let resp = session.write(request).await?;
    Ok(match (options.get, resp.succeeded) {
        (true, _) => Frame::optional(first_result(resp).previous),
        (false, true) => Frame::ok(),
        (false, false) => Frame::Null,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(args: &[&'static str]) -> Result<SetOptions<'static>> {
        let args: &'static [Bytes] = Vec::leak(
            args.iter()
                .map(|a| Bytes::from_static(a.as_bytes()))
                .collect(),
        );
        parse_set_options(args)
    }

    #[test]
    fn set_options_conflict_as_in_redis() {
        for bad in [
            &["nx", "xx"][..],
            &["ex", "1", "px", "1"],
            &["exat", "1", "ex", "1"],
            &["keepttl", "ex", "1"],
            &["ex", "1", "keepttl"],
            &["ex"],
            &["bogus"],
        ] {
            assert_eq!(
                options(bad).map_err(|e| e.to_string()).err().as_deref(),
                Some("invalid request: syntax error"),
                "{bad:?}"
            );
        }
        let parsed = options(&["NX", "get", "PxAt", "12", "nx"]).expect("valid");
        assert_eq!(parsed.exists, Some(false));
        assert!(parsed.get);
        assert_eq!(
            put_expiry(parsed.expiry).expect("valid"),
            (None, false, Some(12))
        );
    }

    #[test]
    fn expire_times_are_validated_after_the_flags() {
        let check = |args: &[&'static str]| {
            options(args)
                .and_then(|o| put_expiry(o.expiry))
                .map_err(|e| e.to_string())
        };
        assert_eq!(check(&["ex", "2"]), Ok((Some(2000), false, None)));
        assert_eq!(check(&["px", "1", "px", "7"]), Ok((Some(7), false, None)));
        assert_eq!(check(&["keepttl"]), Ok((None, true, None)));
        for (args, message) in [
            (
                &["ex", "0"][..],
                "invalid request: invalid expire time in 'set' command",
            ),
            (
                &["px", "-5"],
                "invalid request: invalid expire time in 'set' command",
            ),
            (
                &["ex", "9223372036854775807"],
                "invalid request: invalid expire time in 'set' command",
            ),
            (
                &["ex", "x"],
                "invalid request: value is not an integer or out of range",
            ),
        ] {
            assert_eq!(check(args), Err(message.to_string()), "{args:?}");
        }
    }
}
