//! Connection commands: PING, ECHO, HELLO, QUIT, SELECT, READONLY/READWRITE, CLIENT and
//! COMMAND — what redis-cli and client libraries send on their own when they connect.
//!
//! AUTH and HELLO's AUTH option log a connection in as a user of the `--auth-file`
//! (`crate::auth`); before that, a node with users answers every other command but QUIT with
//! NOAUTH.
//!
//! kvs has one database (SELECT 0 only) and speaks RESP2 (HELLO 3 is refused with Redis's
//! NOPROTO, which every client falls back from). READONLY switches the connection to
//! serializable reads of this node's state; READWRITE switches back to the server's default.

use bytes::Bytes;

use super::Family;
use super::Session;
use super::Spec;
use super::commands;
use super::integer;
use super::wrong_arity;
use crate::auth::Caller;
use crate::auth::Denied;
use crate::auth::Password;
use crate::error::Error;
use crate::error::Result;
use crate::resp::frame::Frame;
use crate::resp::frame::parse_i64;

pub(super) const COMMANDS: &[Spec] = &[
    Spec::new("ping", -1, Family::Connection, (0, 0, 0)),
    Spec::new("echo", 2, Family::Connection, (0, 0, 0)),
    Spec::new("auth", -2, Family::Connection, (0, 0, 0)).before_auth(),
    Spec::new("hello", -1, Family::Connection, (0, 0, 0)).before_auth(),
    Spec::new("quit", -1, Family::Connection, (0, 0, 0)).before_auth(),
    Spec::new("select", 2, Family::Connection, (0, 0, 0)),
    Spec::new("readonly", 1, Family::Connection, (0, 0, 0)),
    Spec::new("readwrite", 1, Family::Connection, (0, 0, 0)),
    Spec {
        subcommands: &[
            Spec::new("client|setname", 3, Family::Connection, (0, 0, 0)),
            Spec::new("client|getname", 2, Family::Connection, (0, 0, 0)),
            Spec::new("client|id", 2, Family::Connection, (0, 0, 0)),
            Spec::new("client|info", 2, Family::Connection, (0, 0, 0)),
            Spec::new("client|list", -2, Family::Connection, (0, 0, 0)),
            Spec::new("client|setinfo", 4, Family::Connection, (0, 0, 0)),
        ],
        ..Spec::new("client", -2, Family::Connection, (0, 0, 0))
    },
    Spec {
        subcommands: &[
            Spec::new("command|count", 2, Family::Connection, (0, 0, 0)),
            Spec::new("command|docs", -2, Family::Connection, (0, 0, 0)),
            Spec::new("command|info", -2, Family::Connection, (0, 0, 0)),
        ],
        ..Spec::new("command", -1, Family::Connection, (0, 0, 0))
    },
];

/// The Redis version this face answers as: the 7.0 command set, RESP2.
pub(super) const REDIS_VERSION: &str = "7.0.0";

pub(super) async fn execute(session: &mut Session, name: &str, args: &[Bytes]) -> Result<Frame> {
    match (name, args) {
        ("ping", []) => Ok(Frame::Simple("PONG")),
        ("ping", [message]) | ("echo", [message]) => Ok(Frame::Bulk(message.clone())),
        ("auth", [password]) => auth(session, None, password),
        ("auth", [user, password]) => auth(session, Some(user), password),
        ("auth", _) => Err(super::syntax_error()),
        ("hello", args) => hello(session, args),
        ("quit", _) => {
            session.closing = true;
            Ok(Frame::ok())
        }
        ("select", [index]) => {
            let index = integer(index)?;
            if index != 0 {
                return Err(Error::InvalidArgument("DB index is out of range".into()));
            }
            Ok(Frame::ok())
        }
        ("readonly", []) => {
            session.serializable = true;
            Ok(Frame::ok())
        }
        ("readwrite", []) => {
            session.serializable = session.replica.config().resp_serializable_reads;
            Ok(Frame::ok())
        }
        ("client|setname", [client_name]) => {
            set_name(session, client_name)?;
            Ok(Frame::ok())
        }
        ("client|getname", []) => Ok(Frame::optional(session.name.clone())),
        ("client|id", []) => Ok(Frame::Integer(session.id as i64)),
        // This node lists only the asking connection: enough for tools that look themselves up.
        ("client|info" | "client|list", _) => Ok(Frame::bulk(format!(
            "id={} addr={} name={} db=0 user={}\n",
            session.id,
            session.peer,
            String::from_utf8_lossy(session.name.as_deref().unwrap_or_default()),
            match &session.caller {
                Some(Caller::User { name, .. }) => name.as_str(),
                _ => DEFAULT_USER,
            }
        ))),
        ("client|setinfo", [_, _]) => Ok(Frame::ok()),
        ("command", []) => Ok(Frame::Array(commands().map(describe).collect())),
        ("command|count", []) => Ok(Frame::Integer(commands().count() as i64)),
        // No documentation to give: redis-cli falls back to its built-in help.
        ("command|docs", _) => Ok(Frame::Array(vec![])),
        ("command|info", names) => Ok(Frame::Array(
            names
                .iter()
                .map(|n| {
                    commands()
                        .find(|c| c.name.as_bytes().eq_ignore_ascii_case(n))
                        .map_or(Frame::Null, describe)
                })
                .collect(),
        )),
        _ => Err(wrong_arity(name)),
    }
}

/// The user `AUTH password` logs in as, as in Redis.
const DEFAULT_USER: &str = "default";

/// AUTH [user] password. On a node without users, `AUTH user password` is accepted and ignored
/// and `AUTH password` refused, as Redis does while its default user has no password. A failed
/// AUTH leaves the connection as it was.
fn auth(session: &mut Session, user: Option<&[u8]>, password: &[u8]) -> Result<Frame> {
    if session.gate.is_open() {
        if user.is_none() {
            return Err(Error::InvalidArgument(
                "AUTH <password> called without any password configured for the default user. \
                 Are you sure your configuration is correct?"
                    .into(),
            ));
        }
        return Ok(Frame::ok());
    }
    let user = user.unwrap_or(DEFAULT_USER.as_bytes());
    let user = std::str::from_utf8(user).map_err(|_| Denied::WrongCredentials)?;
    session.caller = Some(session.gate.caller(Some((user, &Password(password))))?);
    Ok(Frame::ok())
}

/// HELLO [protover [AUTH user pass] [SETNAME name]], as Redis 7 parses it. On a node without
/// users AUTH is accepted and ignored, as Redis does without a password; with users, a
/// connection must have authenticated already or authenticate here.
fn hello(session: &mut Session, args: &[Bytes]) -> Result<Frame> {
    if let Some(version) = args.first() {
        let version = parse_i64(version).ok_or_else(|| {
            Error::InvalidArgument("Protocol version is not an integer or out of range".into())
        })?;
        if version != 2 {
            // An answer, not a failure: clients fall back to RESP2 on this exact reply.
            return Ok(Frame::Error("NOPROTO unsupported protocol version".into()));
        }
    }
    let mut options = args.iter().skip(1);
    let mut new_name = None;
    let mut credentials = None;
    while let Some(option) = options.next() {
        let remaining = options.len();
        if option.eq_ignore_ascii_case(b"auth") && remaining >= 2 {
            credentials = options.next().zip(options.next());
        } else if option.eq_ignore_ascii_case(b"setname") && remaining >= 1 {
            new_name = options.next();
        } else {
            return Err(Error::InvalidArgument(format!(
                "Syntax error in HELLO option '{}'",
                String::from_utf8_lossy(option)
            )));
        }
    }
    if let Some((user, password)) = credentials
        && !session.gate.is_open()
    {
        auth(session, Some(user), password)?;
    }
    if session.caller.is_none() {
        return Ok(Frame::Error(
            "NOAUTH HELLO must be called with the client already authenticated, otherwise the \
             HELLO <proto> AUTH <user> <pass> option can be used to authenticate the client and \
             select the RESP protocol version at the same time"
                .into(),
        ));
    }
    if let Some(client_name) = new_name {
        set_name(session, client_name)?;
    }
    let role = match session.replica.leadership() {
        crate::replica::Leadership::Here => "master",
        _ => "replica",
    };
    Ok(Frame::Array(vec![
        Frame::bulk("server"),
        Frame::bulk("redis"),
        Frame::bulk("version"),
        Frame::bulk(REDIS_VERSION),
        Frame::bulk("proto"),
        Frame::Integer(2),
        Frame::bulk("id"),
        Frame::Integer(session.id as i64),
        Frame::bulk("mode"),
        Frame::bulk("standalone"),
        Frame::bulk("role"),
        Frame::bulk(role),
        Frame::bulk("modules"),
        Frame::Array(vec![]),
    ]))
}

/// Names the connection; an empty name clears it. Redis refuses blanks and control bytes.
fn set_name(session: &mut Session, name: &Bytes) -> Result<()> {
    if !name.iter().all(|b| (b'!'..=b'~').contains(b)) {
        return Err(Error::InvalidArgument(
            "Client names cannot contain spaces, newlines or special characters.".into(),
        ));
    }
    session.name = (!name.is_empty()).then(|| name.clone());
    Ok(())
}

/// One command as `COMMAND` describes it (Redis 7's ten fields, without flags, ACL categories,
/// tips or key specs).
fn describe(spec: &Spec) -> Frame {
    let (first, last, step) = spec.keys;
    Frame::Array(vec![
        Frame::bulk(spec.name),
        Frame::Integer(spec.arity.into()),
        Frame::Array(vec![]),
        Frame::Integer(first.into()),
        Frame::Integer(last.into()),
        Frame::Integer(step.into()),
        Frame::Array(vec![]),
        Frame::Array(vec![]),
        Frame::Array(vec![]),
        Frame::Array(spec.subcommands.iter().map(describe).collect()),
    ])
}
