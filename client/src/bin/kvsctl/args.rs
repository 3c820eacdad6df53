//! kvsctl's command line, shaped after etcdctl so its users feel at home: global flags may come
//! before or after the command, `--endpoints` takes a comma-separated list, durations read like
//! `10s`. Usage errors are clap's, with clap's exit code 2.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use kvs_client::{Action, Expect};

/// Command-line client for a kvs cluster.
#[derive(Debug, Parser)]
#[command(name = "kvsctl", version)]
#[command(after_help = "Exit codes: 0 ok, 1 compare failed, 2 usage, \
                        3 failed and definitely not applied, 4 outcome unknown (may have been applied).")]
pub(crate) struct Cli {
    /// Client endpoints of the cluster's nodes, comma-separated host:port.
    #[arg(
        long,
        global = true,
        env = "KVSCTL_ENDPOINTS",
        value_delimiter = ',',
        default_value = "127.0.0.1:7379"
    )]
    pub(crate) endpoints: Vec<String>,

    /// Output format.
    #[arg(short = 'o', long, global = true, value_enum, default_value_t = Format::Simple)]
    pub(crate) output: Format,

    /// Overall deadline of each request, retries included (and how long `member add` waits for
    /// the learner to catch up): 10s, 500ms, 2m, 1m30s.
    #[arg(long, global = true, default_value = "10s", value_parser = parse_duration)]
    pub(crate) timeout: Duration,

    /// The user to call as, on a cluster with users (kvs-node --auth-file).
    #[arg(long, global = true, env = "KVSCTL_USER", requires = "password_file")]
    pub(crate) user: Option<String>,

    /// File holding the user's password (all of it but a final line break).
    #[arg(long, global = true, env = "KVSCTL_PASSWORD_FILE", requires = "user")]
    pub(crate) password_file: Option<PathBuf>,
    /// TLS to the nodes (given --cacert, or when an endpoint says https://).
    #[command(flatten)]
    pub(crate) tls: TlsArgs,

    #[command(subcommand)]
    pub(crate) command: Command,
}

/// TLS flags, etcdctl's names.
#[derive(Debug, Args)]
pub(crate) struct TlsArgs {
    /// CA bundle (PEM) the nodes' certificates must come from; turns TLS on.
    #[arg(long, global = true, env = "KVSCTL_CACERT")]
    pub(crate) cacert: Option<PathBuf>,
    /// Client certificate (PEM), for nodes run with --client-cert-auth; needs --key.
    #[arg(
        long = "cert",
        id = "tls_cert",
        global = true,
        env = "KVSCTL_CERT",
        requires = "tls_key"
    )]
    pub(crate) cert: Option<PathBuf>,
    /// Private key (PEM) of --cert.
    #[arg(
        long = "key",
        id = "tls_key",
        global = true,
        env = "KVSCTL_KEY",
        requires = "tls_cert"
    )]
    pub(crate) key: Option<PathBuf>,
}

/// How results are printed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Format {
    /// For people.
    Simple,
    /// One JSON document, for scripts.
    Json,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Set a key to a value; prints OK. Without VALUE the value is read from standard input
    /// (all of it, byte for byte), as etcdctl does.
    Put {
        /// The key.
        key: String,
        /// The value.
        value: Option<String>,
    },
    /// Print a key's value (nothing when the key is absent).
    Get {
        /// The key.
        key: String,
        /// Read the contacted node's local state without confirming leadership: faster, may be
        /// stale.
        #[arg(long)]
        serializable: bool,
    },
    /// Delete a key; prints the number of keys deleted (1 or 0).
    Del {
        /// The key.
        key: String,
    },
    /// Compare-and-swap: change a key only if it holds what is expected; exits 1 if it does not.
    Cas(CasArgs),
    /// Cluster membership.
    #[command(subcommand)]
    Member(MemberCommand),
    /// The cluster's status (leader, term, commit and applied index).
    Status,
    /// Per-endpoint commands.
    #[command(subcommand)]
    Endpoint(EndpointCommand),
    /// Backups: save one from a cluster, check one, seed a new cluster from one.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
}

#[derive(Debug, Subcommand)]
pub(crate) enum SnapshotCommand {
    /// Stream a consistent point-in-time backup from the leader into FILE (written to
    /// FILE.part, checked, then renamed) or into an object, `s3://BUCKET/KEY` or `file:///PATH`
    /// (a multipart upload completed only once the backup checked out); prints what it holds.
    /// Object stores are configured by AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION and
    /// AWS_ENDPOINT_URL (for S3-compatible stores; `http://` allowed).
    Save {
        /// Where to write the backup: a path or an `s3://` / `file://` URL.
        #[arg(value_name = "FILE|URL")]
        file: PathBuf,
    },
    /// Check a backup's checksums and print its keys, bytes, last index and term and checksum.
    /// Needs no cluster; exits 3 if the backup is damaged.
    Status {
        /// The backup: a path or an `s3://` / `file://` URL.
        #[arg(value_name = "FILE|URL")]
        file: PathBuf,
    },
    /// Load every key of a backup into a new, empty cluster (a fresh membership formed as
    /// usual); refuses a cluster that holds keys. The backup is checked whole before anything
    /// is written.
    Restore {
        /// The backup: a path or an `s3://` / `file://` URL.
        #[arg(value_name = "FILE|URL")]
        file: PathBuf,
    },
}

#[derive(Debug, Args)]
pub(crate) struct CasArgs {
    /// The key.
    pub(crate) key: String,
    #[command(flatten)]
    expect: ExpectArgs,
    #[command(flatten)]
    action: ActionArgs,
}

#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
struct ExpectArgs {
    /// Swap only if the key holds this value.
    #[arg(long, value_name = "VALUE")]
    expect: Option<String>,
    /// Swap only if the key does not exist.
    #[arg(long)]
    expect_absent: bool,
}

#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
struct ActionArgs {
    /// The new value.
    #[arg(value_name = "NEW")]
    new: Option<String>,
    /// Delete the key instead of setting a new value.
    #[arg(long)]
    delete: bool,
}

impl CasArgs {
    /// What the compare expects; clap's group guarantees exactly one of the flags.
    pub(crate) fn expect(&self) -> Expect {
        match &self.expect.expect {
            Some(value) => Expect::Value(value.clone().into()),
            None => Expect::Absent,
        }
    }

    /// What to do if the compare holds; clap's group guarantees exactly one of the two.
    pub(crate) fn action(&self) -> Action {
        match &self.action.new {
            Some(value) => Action::Set(value.clone().into()),
            None => Action::Delete,
        }
    }
}

#[derive(Debug, Subcommand)]
pub(crate) enum MemberCommand {
    /// List the members with the leader's view of their replication.
    List,
    /// Add the node serving clients at ADDR: as a learner, then (unless --learner) promote it
    /// to a voter once it has caught up.
    Add {
        /// The new node's client address, host:port.
        addr: String,
        /// Leave the node a learner.
        #[arg(long)]
        learner: bool,
    },
    /// Move leadership to the voter ID (a switchover); prints the new leader's ID.
    Transfer {
        /// The voter's node ID.
        id: String,
    },
    /// Make a learner a voter.
    Promote {
        /// The member's node ID.
        id: String,
    },
    /// Remove a member (leadership moves away first if it leads). Removing a voter is refused
    /// (exit 3, not applied) unless the voters that remain include a healthy majority: answering
    /// the leader and caught up.
    Remove {
        /// The member's node ID.
        id: String,
        /// Remove it even if the remaining voters do not include a healthy majority; writes then
        /// hang until enough of them come back.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum EndpointCommand {
    /// What each endpoint's node says about itself; exits 3 if any endpoint did not answer.
    Status,
}

/// Parses a duration as a sequence of `<number><unit>` with units `ms`, `s`, `m` and `h`, e.g.
/// `10s`, `500ms`, `1.5s`, `1m30s`, like etcdctl's Go durations.
fn parse_duration(text: &str) -> Result<Duration, String> {
    let invalid = || format!("{text:?} is not a duration like 10s, 500ms, 1m30s or 2h");
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(invalid());
    }
    let mut nanos: u128 = 0;
    while !rest.is_empty() {
        let is_number = |c: char| c.is_ascii_digit() || c == '.';
        let number_end = rest.find(|c: char| !is_number(c)).ok_or_else(invalid)?;
        let (number, tail) = rest.split_at(number_end);
        let unit_end = tail.find(is_number).unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_end);
        let unit_nanos: u128 = match unit {
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return Err(invalid()),
        };
        let component = scaled(number, unit_nanos).ok_or_else(invalid)?;
        nanos = nanos.checked_add(component).ok_or_else(invalid)?;
        rest = tail;
    }
    let nanos = u64::try_from(nanos).map_err(|_| invalid())?;
    if nanos == 0 {
        return Err("the timeout must be more than zero".to_owned());
    }
    Ok(Duration::from_nanos(nanos))
}

/// `number` (digits with at most one decimal point) times `unit_nanos`, in integers so that
/// `3ms` is exactly three milliseconds.
fn scaled(number: &str, unit_nanos: u128) -> Option<u128> {
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    if (whole.is_empty() && fraction.is_empty()) || fraction.contains('.') {
        return None;
    }
    let whole: u128 = if whole.is_empty() {
        0
    } else {
        whole.parse().ok()?
    };
    // Digits beyond nanosecond precision of an hour do not matter.
    let fraction = &fraction[..fraction.len().min(15)];
    let fraction_nanos = if fraction.is_empty() {
        0
    } else {
        let digits = u32::try_from(fraction.len()).ok()?;
        fraction.parse::<u128>().ok()? * unit_nanos / 10u128.pow(digits)
    };
    whole.checked_mul(unit_nanos)?.checked_add(fraction_nanos)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;
    use proptest::prelude::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn humane_durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
    }

    #[test]
    fn durations_without_a_known_unit_or_zero_are_refused() {
        for bad in ["", "10", "s", "10x", "1.2.3s", "-1s", "0s", "0ms0s", "1 s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} was accepted");
        }
        assert!(parse_duration("99999999999999999h").is_err());
    }

    #[test]
    fn global_flags_go_before_or_after_the_command() {
        let before = Cli::try_parse_from(["kvsctl", "-o", "json", "--timeout", "2s", "status"])
            .expect("flags before the command");
        let after = Cli::try_parse_from(["kvsctl", "status", "-o", "json", "--timeout", "2s"])
            .expect("flags after the command");
        for cli in [before, after] {
            assert_eq!(cli.output, Format::Json);
            assert_eq!(cli.timeout, Duration::from_secs(2));
        }
    }

    #[test]
    fn cas_needs_exactly_one_expectation_and_one_action() {
        let ok = Cli::try_parse_from(["kvsctl", "cas", "k", "--expect-absent", "--delete"]);
        assert!(ok.is_ok());
        for bad in [
            vec!["kvsctl", "cas", "k", "new"],
            vec![
                "kvsctl",
                "cas",
                "k",
                "--expect",
                "a",
                "--expect-absent",
                "new",
            ],
            vec!["kvsctl", "cas", "k", "--expect", "a"],
            vec!["kvsctl", "cas", "k", "--expect", "a", "new", "--delete"],
        ] {
            let err = Cli::try_parse_from(&bad).expect_err("accepted");
            assert_eq!(err.exit_code(), 2, "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn whole_durations_parse_exactly(n in 1u64..1_000_000, unit in 0usize..4) {
            let (suffix, millis) = [("ms", 1), ("s", 1_000), ("m", 60_000), ("h", 3_600_000)][unit];
            prop_assert_eq!(
                parse_duration(&format!("{n}{suffix}")),
                Ok(Duration::from_millis(n * millis))
            );
        }

        #[test]
        fn any_text_is_parsed_without_panicking(text in ".{0,20}") {
            let _ = parse_duration(&text);
        }
    }
}
