//! The commands of the RESP face, one module per family (`connection`, `strings`, `keys`,
//! `server`), and the one dispatcher in front of them.
//!
//! The dispatcher does what Redis does before a command runs — look the name up, check the
//! arity, answer unknown commands and subcommands — with Redis 7's exact wording, so clients
//! and scripts that match on those messages behave the same. Each family then decodes its
//! arguments and calls the replica as the gRPC face does: every write is one conditional batch
//! carrying this connection's `WriteId`, every read goes through `Replica::read`.

mod connection;
mod keys;
mod pattern;
mod server;
mod strings;

use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use kvs_client::WriteSession;
use kvs_client::proto;

use crate::auth::Caller;
use crate::auth::Denied;
use crate::auth::Gate;
use crate::auth::Role;
use crate::error::Error;
use crate::error::Result;
use crate::replica::Replica;
use crate::resp::frame::Frame;
use crate::resp::frame::parse_i64;
use crate::resp::status::error_reply;
use crate::store::command::BatchOutcome;
use crate::store::command::OpResult;
use crate::store::data::StateData;

/// A command as Redis's command table describes it.
#[derive(Debug)]
pub(crate) struct Spec {
    /// Lowercase name; `container|sub` for a subcommand.
    name: &'static str,
    /// Number of arguments including the name; negative means "at least".
    arity: i32,
    family: Family,
    /// First key, last key (negative counts from the end) and step, as `COMMAND` reports them.
    keys: (i8, i8, i8),
    subcommands: &'static [Spec],
    /// The least role that may run it (as Redis's ACL categories say who may); `None` for
    /// the commands a connection may send before it authenticates: AUTH, HELLO and QUIT.
    needs: Option<Role>,
}

#[derive(Debug, Clone, Copy)]
enum Family {
    Connection,
    Strings,
    Keys,
    Server,
}

impl Spec {
    const fn new(name: &'static str, arity: i32, family: Family, keys: (i8, i8, i8)) -> Self {
        Self {
            name,
            arity,
            family,
            keys,
            subcommands: &[],
            needs: Some(Role::ReadOnly),
        }
    }

    /// A command that writes keys.
    const fn writes(self) -> Self {
        Self {
            needs: Some(Role::ReadWrite),
            ..self
        }
    }

    /// A command only `admin` may run.
    const fn admin(self) -> Self {
        Self {
            needs: Some(Role::Admin),
            ..self
        }
    }

    /// A command a connection may send before it authenticates.
    const fn before_auth(self) -> Self {
        Self {
            needs: None,
            ..self
        }
    }

    fn accepts(&self, argc: usize) -> bool {
        let argc = i64::try_from(argc).unwrap_or(i64::MAX);
        let arity = i64::from(self.arity);
        if arity >= 0 {
            argc == arity
        } else {
            argc >= -arity
        }
    }
}

/// Every command this face serves.
fn commands() -> impl Iterator<Item = &'static Spec> {
    connection::COMMANDS
        .iter()
        .chain(strings::COMMANDS)
        .chain(keys::COMMANDS)
        .chain(server::COMMANDS)
}

/// One client connection's state.
pub(crate) struct Session {
    replica: Arc<Replica>,
    /// The users to authenticate against.
    gate: Arc<Gate>,
    /// Who this connection authenticated as; `None` until it does (on a node with users).
    caller: Option<Caller>,
    /// `CLIENT ID`: unique on this node.
    id: u64,
    peer: SocketAddr,
    /// The identity for exactly-once writes, shared by every connection of the listener.
    writes: Arc<WriteSession>,
    name: Option<Bytes>,
    /// Reads of this connection skip ReadIndex (`READONLY`, or the server flag).
    serializable: bool,
    /// `QUIT` was received: reply, then close.
    pub(crate) closing: bool,
}

impl Session {
    pub(crate) fn new(
        replica: Arc<Replica>,
        gate: Arc<Gate>,
        writes: Arc<WriteSession>,
        id: u64,
        peer: SocketAddr,
    ) -> Self {
        let serializable = replica.config().resp_serializable_reads;
        let caller = gate.is_open().then_some(Caller::Anyone);
        Self {
            replica,
            gate,
            caller,
            id,
            peer,
            writes,
            name: None,
            serializable,
            closing: false,
        }
    }

    /// Runs one request (`args` is not empty) and returns its reply.
    pub(crate) async fn execute(&mut self, args: Vec<Bytes>) -> Frame {
        // Boxed: a command's future nests the replica's read and write paths, too deep to keep
        // inline in every connection's future.
        match Box::pin(self.dispatch(&args)).await {
            Ok(frame) => frame,
            Err(err) => error_reply(err, self.replica.leader_hint()),
        }
    }

    async fn dispatch(&mut self, args: &[Bytes]) -> Result<Frame> {
        let Some((name, rest)) = args.split_first() else {
            return Ok(Frame::Null);
        };
        let Some(mut spec) = commands().find(|c| c.name.as_bytes().eq_ignore_ascii_case(name))
        else {
            return Err(unknown_command(args));
        };
        let mut rest = rest;
        if let (false, Some((sub, after))) = (spec.subcommands.is_empty(), rest.split_first()) {
            spec = spec
                .subcommands
                .iter()
                .find(|s| {
                    s.name
                        .split_once('|')
                        .is_some_and(|(_, n)| n.as_bytes().eq_ignore_ascii_case(sub))
                })
                .ok_or_else(|| {
                    Error::InvalidArgument(format!(
                        "unknown subcommand '{}'. Try {} HELP.",
                        lossy(sub, 128),
                        spec.name.to_ascii_uppercase()
                    ))
                })?;
            rest = after;
        }
        if !spec.accepts(args.len()) {
            return Err(wrong_arity(spec.name));
        }
        // As Redis: an unknown command or a wrong arity is told before a missing login.
        if let Some(needed) = spec.needs {
            self.caller
                .as_ref()
                .ok_or(Denied::NoCredentials)?
                .require(needed, spec.name)?;
        }
        match spec.family {
            Family::Connection => connection::execute(self, spec.name, rest).await,
            Family::Strings => strings::execute(self, spec.name, rest).await,
            Family::Keys => keys::execute(self, spec.name, rest).await,
            Family::Server => server::execute(self, spec.name, rest).await,
        }
    }

    /// Applies one batch through Raft as the next write of this connection.
    async fn write(&mut self, mut batch: proto::BatchRequest) -> Result<BatchOutcome> {
        let timeout = self.replica.config().request_timeout();
        let ticket = tokio::time::timeout(timeout, self.writes.begin())
            .await
            .map_err(|_| Error::Busy("too many RESP writes in flight on this node".into()))?;
        batch.write_id = Some(ticket.write_id());
        let result = self.replica.write(batch).await;
        match &result {
            Ok(_) | Err(Error::Refused { .. }) => ticket.answered(),
            Err(e) if is_session_expired(e) => ticket.session_expired(),
            Err(_) => {}
        }
        result
    }

    /// Reads the state, linearizably unless this connection reads serializably; `f` gets the
    /// state and the cluster time to judge expiry by.
    async fn read<T>(&self, f: impl FnOnce(&StateData, u64) -> T) -> Result<T> {
        self.replica
            .read(self.serializable, |data, _, now| f(data, now))
            .await
    }
}

/// Whether the cluster answered a write "session expired" (`kvs_client::WriteSession`), here or
/// relayed from the leader.
fn is_session_expired(e: &Error) -> bool {
    match e {
        Error::OutcomeLost(message) => message.contains(kvs_client::SESSION_EXPIRED),
        Error::Forwarded(status) => {
            status.code() == tonic::Code::DataLoss
                && status.message().contains(kvs_client::SESSION_EXPIRED)
        }
        _ => false,
    }
}

/// Redis's `-ERR wrong number of arguments for 'get' command`.
fn wrong_arity(name: &str) -> Error {
    Error::InvalidArgument(format!("wrong number of arguments for '{name}' command"))
}

/// Redis's `-ERR syntax error`.
fn syntax_error() -> Error {
    Error::InvalidArgument("syntax error".into())
}

/// An argument read as Redis reads integers (`string2ll`).
fn integer(arg: &[u8]) -> Result<i64> {
    parse_i64(arg)
        .ok_or_else(|| Error::InvalidArgument("value is not an integer or out of range".into()))
}

/// Redis 7's unknown-command message: the name and the first arguments, quoted, cut at 128
/// bytes.
fn unknown_command(args: &[Bytes]) -> Error {
    const MAX: usize = 128;
    let mut listed = String::new();
    for arg in args.iter().skip(1) {
        if listed.len() >= MAX {
            break;
        }
        let room = MAX - listed.len();
        listed.push('\'');
        listed.push_str(&lossy(arg, room));
        listed.push_str("' ");
    }
    let name = args.first().map_or(String::new(), |n| lossy(n, MAX));
    Error::InvalidArgument(format!(
        "unknown command '{name}', with args beginning with: {listed}"
    ))
}

/// Up to `max` bytes of `bytes` as text, for messages.
fn lossy(bytes: &[u8], max: usize) -> String {
    String::from_utf8_lossy(&bytes[..bytes.len().min(max)]).into_owned()
}

/// A batch of ops, as one write.
fn batch(ops: Vec<proto::op::Op>) -> proto::BatchRequest {
    proto::BatchRequest {
        ops: ops.into_iter().map(crate::replica::kv::op).collect(),
        ..Default::default()
    }
}

/// The first op's result of a batch that ran.
fn first_result(resp: BatchOutcome) -> OpResult {
    resp.results.into_iter().next().unwrap_or_default()
}

/// `true` as Redis's `:1`, `false` as `:0`.
fn flag(value: bool) -> Frame {
    Frame::Integer(i64::from(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arity_follows_the_redis_convention() {
        let get = Spec::new("get", 2, Family::Strings, (1, 1, 1));
        assert!(get.accepts(2) && !get.accepts(1) && !get.accepts(3));
        let del = Spec::new("del", -2, Family::Keys, (1, -1, 1));
        assert!(del.accepts(2) && del.accepts(9) && !del.accepts(1));
    }

    #[test]
    fn unknown_commands_are_named_as_redis_names_them() {
        let args: Vec<Bytes> = ["foo", "a", "b"].map(Bytes::from).to_vec();
        assert_eq!(
            unknown_command(&args).to_string(),
            "invalid request: unknown command 'foo', with args beginning with: 'a' 'b' "
        );
        let long: Vec<Bytes> = vec![Bytes::from_static(b"x"), Bytes::from(vec![b'y'; 300])];
        let Error::InvalidArgument(message) = unknown_command(&long) else {
            panic!("an invalid argument")
        };
        assert_eq!(
            message,
            format!(
                "unknown command 'x', with args beginning with: '{}' ",
                "y".repeat(128)
            )
        );
    }

    #[test]
    fn command_names_are_unique() {
        let mut names: Vec<&str> = commands().map(|c| c.name).collect();
        names.sort_unstable();
        let count = names.len();
        names.dedup();
        assert_eq!(names.len(), count);
    }
}
