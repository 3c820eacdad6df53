//! Users and roles (`--auth-file`): who may call what, for every client face.
//!
//! The file holds one user a line, `NAME ROLE sha256:HEX`, so the node never stores a password
//! it could leak; a line that looks like anything else (a plaintext password above all) keeps
//! the node from starting, and its message names the line, never what is on it. Roles are
//! ordered — `readonly` < `readwrite` < `admin` — and each face states the least role a request
//! needs: the gRPC face per method (`grpc::auth`), the RESP face in its command table.
//!
//! The [`Gate`] holds the users the faces check against. It is open (everyone may do
//! everything, as before users existed) without `--auth-file`; with it, [`watch`] re-reads the
//! file when it changes, so a user removed is refused at the next call, and a broken new file
//! is logged and ignored (the users before it stay) rather than locking everyone out.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::sync::RwLock;
use std::time::Duration;
use std::time::SystemTime;

use sha2::Digest;
use sha2::Sha256;
use subtle::ConstantTimeEq;

/// How often [`watch`] looks at the auth file.
const RELOAD_POLL: Duration = Duration::from_secs(1);

/// What a user may do; each role may do everything the roles below it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// Reads of keys and of the cluster's state.
    ReadOnly,
    /// Reads, and writes of keys (not whole-keyspace clears).
    ReadWrite,
    /// Everything: membership, `Initialize`, whole-keyspace clears, backups and restores.
    Admin,
}

impl Role {
    /// Whether this role may make a request that needs `needed`.
    pub(crate) fn allows(self, needed: Role) -> bool {
        self >= needed
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Role::ReadOnly => "readonly",
            Role::ReadWrite => "readwrite",
            Role::Admin => "admin",
        })
    }
}

impl FromStr for Role {
    type Err = ();

    fn from_str(s: &str) -> Result<Self, ()> {
        match s {
            "readonly" => Ok(Role::ReadOnly),
            "readwrite" => Ok(Role::ReadWrite),
            "admin" => Ok(Role::Admin),
            _ => Err(()),
        }
    }
}

/// A password as a client sent it. It has no `Display`, and its `Debug` hides it.
pub(crate) struct Password<'a>(pub(crate) &'a [u8]);

impl fmt::Debug for Password<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Who made a request, once the gate let it in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Caller {
    /// The node runs without `--auth-file`: everyone may do everything.
    Anyone,
    /// An authenticated user.
    User { name: String, role: Role },
}

impl Caller {
    /// Lets `action` (a gRPC method, a RESP command) through if this caller's role allows
    /// `needed`.
    pub(crate) fn require(&self, needed: Role, action: &str) -> Result<(), Denied> {
        match self {
            Caller::Anyone => Ok(()),
            Caller::User { role, .. } if role.allows(needed) => Ok(()),
            Caller::User { name, role } => Err(Denied::NotPermitted {
                user: name.clone(),
                role: *role,
                needed,
                action: action.to_owned(),
            }),
        }
    }
}

/// Why a request was refused; each face words it in its own protocol (`grpc::status`,
/// `resp::status`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// The request carried no credentials.
    #[error("authentication required: this node has users; send a user name and password")]
    NoCredentials,
    /// The credentials were malformed, or name no user, or the password is wrong; which of
    /// these is not told, so names cannot be probed.
    #[error("invalid user name or password")]
    WrongCredentials,
    /// The user's role does not allow the request.
    #[error("user {user} has the {role} role; {action} needs {needed}")]
    NotPermitted {
        /// Who asked.
        user: String,
        /// What they may do.
        role: Role,
        /// What the request needs.
        needed: Role,
        /// The gRPC method or RESP command asked for.
        action: String,
    },
}

/// Why an auth file cannot be used. It names the file and the line, never what the line holds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("auth file {}: {}{reason}", path.display(), line.map(|n| format!("line {n}: ")).unwrap_or_default())]
pub struct AuthFileError {
    path: PathBuf,
    line: Option<usize>,
    reason: String,
}

/// One user of the file.
struct User {
    role: Role,
    hash: [u8; 32],
}

/// The users of one auth file.
pub(crate) struct Users {
    by_name: HashMap<String, User>,
}

impl fmt::Debug for Users {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(self.by_name.iter().map(|(name, user)| (name, user.role)))
            .finish()
    }
}

impl Users {
    /// Reads the auth file at `path`.
    pub(crate) fn load(path: &Path) -> Result<Users, AuthFileError> {
        let text = std::fs::read_to_string(path).map_err(|e| AuthFileError {
            path: path.to_owned(),
            line: None,
            reason: format!("cannot read it: {e}"),
        })?;
        Users::parse(&text).map_err(|(line, reason)| AuthFileError {
            path: path.to_owned(),
            line,
            reason,
        })
    }

    /// Parses the file's text; an error names the line (from 1) and what is wrong with it.
    fn parse(text: &str) -> Result<Users, (Option<usize>, String)> {
        let mut by_name: HashMap<String, User> = HashMap::new();
        let mut first_line: HashMap<String, usize> = HashMap::new();
        for (index, line) in text.lines().enumerate() {
            let number = index + 1;
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |reason: &str| Err((Some(number), reason.to_owned()));
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [name, role, secret] = fields[..] else {
                return bad("expected `NAME ROLE sha256:HEX`, three fields");
            };
            let Some(hex) = secret.strip_prefix("sha256:") else {
                return bad(
                    "the password must be given as sha256:<64 hex digits> of it; \
                     a plaintext password is refused",
                );
            };
            let Some(hash) = decode_sha256_hex(hex) else {
                return bad("the hash must be sha256: followed by 64 hex digits");
            };
            let Ok(role) = role.parse::<Role>() else {
                return bad("unknown role (expected admin, readwrite or readonly)");
            };
            if name.contains(':') || !name.bytes().all(|b| b.is_ascii_graphic()) {
                return bad("a user name is printable ASCII without ':'");
            }
            if let Some(first) = first_line.get(name) {
                return Err((
                    Some(number),
                    format!("user {name} is already defined on line {first}"),
                ));
            }
            first_line.insert(name.to_owned(), number);
            by_name.insert(name.to_owned(), User { role, hash });
        }
        if by_name.is_empty() {
            return Err((
                None,
                "it names no user, so nobody could use the node".into(),
            ));
        }
        Ok(Users { by_name })
    }

    /// The role of `name` if `password` is its password. The hashes are compared in constant
    /// time, and an unknown name costs the same work as a known one.
    fn authenticate(&self, name: &str, password: &Password<'_>) -> Option<Role> {
        let offered: [u8; 32] = Sha256::digest(password.0).into();
        let user = self.by_name.get(name);
        let expected = user.map_or([0u8; 32], |u| u.hash);
        let matches: bool = offered.ct_eq(&expected).into();
        user.filter(|_| matches).map(|u| u.role)
    }

    fn len(&self) -> usize {
        self.by_name.len()
    }
}

fn decode_sha256_hex(hex: &str) -> Option<[u8; 32]> {
    if hex.len() != 64 {
        return None;
    }
    let mut hash = [0u8; 32];
    for (byte, pair) in hash.iter_mut().zip(hex.as_bytes().chunks(2)) {
        let pair = std::str::from_utf8(pair).ok()?;
        *byte = u8::from_str_radix(pair, 16).ok()?;
    }
    Some(hash)
}

/// The users every face checks requests against; open without `--auth-file`.
#[derive(Debug)]
pub(crate) struct Gate {
    users: Option<RwLock<Arc<Users>>>,
}

impl Gate {
    /// Everyone may do everything.
    pub(crate) fn open() -> Gate {
        Gate { users: None }
    }

    /// The gate of a node: open without an auth file, else the file's users.
    pub(crate) fn for_file(path: Option<&Path>) -> Result<Gate, AuthFileError> {
        match path {
            None => {
                tracing::warn!(
                    "no --auth-file: this node is open, anyone who reaches its client ports may \
                     read, write, clear every key and change the membership"
                );
                Ok(Gate::open())
            }
            Some(path) => {
                let users = Users::load(path)?;
                tracing::info!(path = %path.display(), users = users.len(), "loaded the auth file");
                Ok(Gate::with(users))
            }
        }
    }

    fn with(users: Users) -> Gate {
        Gate {
            users: Some(RwLock::new(Arc::new(users))),
        }
    }

    /// Whether requests need credentials.
    pub(crate) fn is_open(&self) -> bool {
        self.users.is_none()
    }

    /// Who a request comes from: `credentials` are the user name and password it carried.
    pub(crate) fn caller(
        &self,
        credentials: Option<(&str, &Password<'_>)>,
    ) -> Result<Caller, Denied> {
        let Some(users) = &self.users else {
            return Ok(Caller::Anyone);
        };
        let (name, password) = credentials.ok_or(Denied::NoCredentials)?;
        let users = users.read().unwrap_or_else(|e| e.into_inner()).clone();
        match users.authenticate(name, password) {
            Some(role) => Ok(Caller::User {
                name: name.to_owned(),
                role,
            }),
            None => Err(Denied::WrongCredentials),
        }
    }

    fn replace(&self, new: Users) {
        if let Some(users) = &self.users {
            *users.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(new);
        }
    }
}

/// What tells one version of the file from the next.
type Fingerprint = Option<(SystemTime, u64)>;

fn fingerprint(path: &Path) -> Fingerprint {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}

/// Follows the auth file at `path`: each time it changes, loads it into `gate`.
struct Reloader {
    path: PathBuf,
    seen: Fingerprint,
}

impl Reloader {
    fn new(path: PathBuf) -> Reloader {
        let seen = fingerprint(&path);
        Reloader { path, seen }
    }

    /// Loads the file into `gate` if it changed since last seen; a version that cannot be used
    /// is logged once and the users before it stay.
    fn poll(&mut self, gate: &Gate) {
        let now = fingerprint(&self.path);
        if now == self.seen {
            return;
        }
        self.seen = now;
        match Users::load(&self.path) {
            Ok(users) => {
                tracing::info!(path = %self.path.display(), users = users.len(), "reloaded the auth file");
                gate.replace(users);
            }
            Err(e) => {
                tracing::warn!(error = %e, "the changed auth file is not used; the users before it stay");
            }
        }
    }
}

/// Reloads the auth file at `path` into `gate` whenever it changes, until `stop` resolves.
pub(crate) async fn watch(gate: Arc<Gate>, path: PathBuf, stop: impl Future<Output = ()>) {
    let mut reloader = Reloader::new(path);
    let mut stop = std::pin::pin!(stop);
    let mut tick = tokio::time::interval(RELOAD_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = tick.tick() => reloader.poll(&gate),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hash_of(password: &str) -> String {
        let digest: [u8; 32] = Sha256::digest(password.as_bytes()).into();
        digest.iter().map(|b| format!("{b:02x}")).collect()
    }

    fn file(lines: &[String]) -> String {
        lines.join("\n")
    }

    fn alice_and_bob() -> String {
        file(&[
            "# users".into(),
            String::new(),
            format!("alice admin sha256:{}", hash_of("a-secret")),
            format!("  bob readonly sha256:{}  ", hash_of("b-secret")),
        ])
    }

    #[test]
    fn users_authenticate_with_their_own_password_only() {
        let users = Users::parse(&alice_and_bob()).expect("a valid file");
        assert_eq!(
            users.authenticate("alice", &Password(b"a-secret")),
            Some(Role::Admin)
        );
        assert_eq!(
            users.authenticate("bob", &Password(b"b-secret")),
            Some(Role::ReadOnly)
        );
        assert_eq!(users.authenticate("bob", &Password(b"a-secret")), None);
        assert_eq!(users.authenticate("carol", &Password(b"a-secret")), None);
        assert_eq!(users.authenticate("alice", &Password(b"")), None);
    }

    #[test]
    fn roles_include_the_ones_below() {
        assert!(Role::Admin.allows(Role::ReadWrite) && Role::Admin.allows(Role::Admin));
        assert!(Role::ReadWrite.allows(Role::ReadOnly) && !Role::ReadWrite.allows(Role::Admin));
        assert!(!Role::ReadOnly.allows(Role::ReadWrite));
        for role in [Role::ReadOnly, Role::ReadWrite, Role::Admin] {
            assert_eq!(role.to_string().parse::<Role>(), Ok(role));
        }
    }

    /// Every refusal names its line and never echoes a password or a hash.
    #[test]
    fn bad_lines_are_refused_without_echoing_them() {
        let hash = hash_of("pw");
        let cases = [
            ("alice admin hunter2".to_owned(), 1, "plaintext"),
            ("alice admin sha256:abc".to_owned(), 1, "64 hex digits"),
            (
                format!("alice admin sha256:{}", "zz".repeat(32)),
                1,
                "64 hex digits",
            ),
            (format!("alice root sha256:{hash}"), 1, "unknown role"),
            (
                format!("alice admin sha256:{hash} extra"),
                1,
                "three fields",
            ),
            ("hunter2".to_owned(), 1, "three fields"),
            (format!("a:b admin sha256:{hash}"), 1, "without ':'"),
            (
                format!("# c\nalice admin sha256:{hash}\nalice readonly sha256:{hash}"),
                3,
                "already defined on line 2",
            ),
        ];
        for (text, line, reason) in cases {
            let err = Users::parse(&text).expect_err(&text);
            assert_eq!(err.0, Some(line), "{text}");
            assert!(err.1.contains(reason), "{text}: {}", err.1);
            for secret in ["hunter2", &hash, "abc", "zz"] {
                assert!(!err.1.contains(secret), "{text}: {} echoes it", err.1);
            }
        }
        assert_eq!(Users::parse("# nobody\n").expect_err("empty").0, None);
    }

    #[test]
    fn an_open_gate_lets_anyone_in_and_a_closed_one_checks() {
        assert_eq!(Gate::open().caller(None), Ok(Caller::Anyone));
        let gate = Gate::with(Users::parse(&alice_and_bob()).expect("valid"));
        assert_eq!(gate.caller(None), Err(Denied::NoCredentials));
        assert_eq!(
            gate.caller(Some(("bob", &Password(b"nope")))),
            Err(Denied::WrongCredentials)
        );
        let bob = gate
            .caller(Some(("bob", &Password(b"b-secret"))))
            .expect("bob");
        assert_eq!(
            bob.require(Role::ReadWrite, "set"),
            Err(Denied::NotPermitted {
                user: "bob".into(),
                role: Role::ReadOnly,
                needed: Role::ReadWrite,
                action: "set".into(),
            })
        );
        assert_eq!(bob.require(Role::ReadOnly, "get"), Ok(()));
    }

    #[test]
    fn secrets_do_not_show_in_debug_output() {
        let hash = hash_of("a-secret");
        let users = Users::parse(&alice_and_bob()).expect("valid");
        let shown = format!("{users:?} {:?}", Password(b"a-secret"));
        assert!(
            !shown.contains("a-secret") && !shown.contains(&hash),
            "{shown}"
        );
        assert!(shown.contains("alice"), "{shown}");
    }

    /// A changed file takes effect; a broken one is ignored and the users before it stay.
    #[test]
    fn a_changed_file_reloads_and_a_broken_one_is_ignored() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("users");
        std::fs::write(&path, alice_and_bob()).expect("write");
        let gate = Gate::with(Users::load(&path).expect("valid"));
        let mut reloader = Reloader::new(path.clone());
        let bob = || gate.caller(Some(("bob", &Password(b"b-secret"))));
        assert!(bob().is_ok());

        let alice_only = format!("alice admin sha256:{}\n", hash_of("a-secret"));
        std::fs::write(&path, &alice_only).expect("write");
        reloader.poll(&gate);
        assert_eq!(bob(), Err(Denied::WrongCredentials));

        std::fs::write(&path, "alice admin plaintext-password-here\n").expect("write");
        reloader.poll(&gate);
        let alice = gate.caller(Some(("alice", &Password(b"a-secret"))));
        assert!(alice.is_ok(), "the users before a broken file stay");
    }
}
