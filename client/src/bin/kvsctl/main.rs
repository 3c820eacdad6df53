//! kvsctl: the command-line client of kvs, a thin shell over `kvs_client`.
//!
//! `main` parses the command line, runs one command against the cluster, prints its result and
//! turns the outcome into an exit code in exactly one place ([`exit_code`]), because scripts act
//! on that code: 0 ok, 1 compare failed, 2 usage, 3 failed and definitely not applied (refused
//! credentials and roles among them), 4 outcome unknown. The errors are a small typed enum
//! rather than `anyhow` so that this mapping is an exhaustive match the compiler checks.

mod args;
mod output;
mod snapshot;

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use kvs_client::membership::{self, MAX_CAUGHT_UP_LAG};
use kvs_client::proto::{self, Role};
use kvs_client::{Client, ClientOptions, Credentials, Error, TlsOptions};

use crate::args::{Cli, Command, EndpointCommand, Format, MemberCommand, SnapshotCommand};

/// How often `member add` looks at the learner's progress.
const CATCH_UP_POLL: Duration = Duration::from_millis(100);

/// Why a command failed.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error(transparent)]
    Client(#[from] Error),
    /// `member add` added the learner but did not get to promote it.
    #[error(
        "learner {id} was added but not promoted: {reason}; \
         promote it later with `kvsctl member promote {id}`"
    )]
    NotPromoted { id: String, reason: String },
    /// `endpoint status` printed everything it could, but some endpoints did not answer.
    #[error("{failed} of {total} endpoints did not answer")]
    EndpointsDown { failed: usize, total: usize },
    /// The command ran, but its result could not be printed.
    #[error("cannot write the output: {0}")]
    Output(std::io::Error),
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    /// `snapshot restore` found keys in the cluster it was to seed.
    #[error(
        "the cluster holds {keys} keys; a backup is restored into a new, empty cluster \
         (nothing was written)"
    )]
    NotEmpty { keys: u64 },
    /// `snapshot restore` stopped part way: the cluster holds some of the backup's keys.
    #[error(
        "restore stopped after {written} of {total} keys: {source}; the cluster now holds a \
         partial copy — create a new cluster and restore again"
    )]
    PartlyRestored {
        written: u64,
        total: u64,
        source: Error,
    },
    /// `put` without a value could not read it from standard input.
    #[error("cannot read the value from standard input: {0}")]
    Input(std::io::Error),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(Failure::Runtime)
        .and_then(|runtime| runtime.block_on(run(cli)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("Error: {failure}");
            ExitCode::from(exit_code(&failure))
        }
    }
}

/// The one place failures become exit codes.
fn exit_code(failure: &Failure) -> u8 {
    const COMPARE_FAILED: u8 = 1;
    const USAGE: u8 = 2;
    const NOT_APPLIED: u8 = 3;
    const OUTCOME_UNKNOWN: u8 = 4;
    match failure {
        Failure::Client(Error::CompareFailed) => COMPARE_FAILED,
        Failure::Client(
            Error::InvalidEndpoint { .. }
            | Error::NoEndpoints
            | Error::InvalidOptions(_)
            | Error::InvalidCredentials(_)
            | Error::InvalidLocation { .. }
            | Error::InvalidTls(_),
        ) => USAGE,
        Failure::Client(err) if err.is_definitely_not_applied() => NOT_APPLIED,
        Failure::Client(_) => OUTCOME_UNKNOWN,
        Failure::EndpointsDown { .. }
        | Failure::Runtime(_)
        | Failure::Input(_)
        | Failure::NotEmpty { .. } => NOT_APPLIED,
        Failure::PartlyRestored { .. } => OUTCOME_UNKNOWN,
        // The learner is a member now, which the command's caller may not expect; and once a
        // command ran, failing to print its result says nothing about whether it applied.
        Failure::NotPromoted { .. } | Failure::Output(_) => OUTCOME_UNKNOWN,
    }
}

async fn run(cli: Cli) -> Result<(), Failure> {
    let credentials = match (&cli.user, &cli.password_file) {
        (Some(user), Some(path)) => Some(Credentials::from_password_file(user.as_str(), path)?),
        _ => None,
    };
    let options = ClientOptions {
        timeout: cli.timeout,
        credentials,
        ..ClientOptions::default()
    };
    let tls = &cli.tls;
    let tls = match (&tls.cacert, &tls.cert) {
        (None, None) => None,
        _ => Some(TlsOptions::from_files(
            tls.cacert.as_deref(),
            tls.cert.as_deref(),
            tls.key.as_deref(),
        )?),
    };
    let client = Client::connect_with_tls(cli.endpoints, options, tls)?;
    let format = cli.output;
    let printed = match cli.command {
        Command::Put { key, value } => {
            let value = match value {
                Some(value) => value.into_bytes(),
                None => read_stdin().await?,
            };
            client.put(key, value, None).await?;
            output::ok(format)
        }
        Command::Get { key, serializable } => {
            output::value(format, client.get(key, serializable).await?.as_ref())
        }
        Command::Del { key } => output::deleted(format, client.delete(key).await?),
        Command::Cas(cas) => {
            match client
                .compare_and_swap(cas.key.clone(), cas.expect(), cas.action())
                .await
            {
                Ok(()) => output::swapped(format, true),
                Err(Error::CompareFailed) => {
                    print(&output::swapped(format, false))?;
                    return Err(Error::CompareFailed.into());
                }
                Err(err) => return Err(err.into()),
            }
        }
        Command::Member(MemberCommand::List) => {
            output::members(format, &client.member_list().await?)
        }
        Command::Member(MemberCommand::Add { addr, learner }) => {
            let added = client.add_learner(&addr).await?;
            let member = if learner {
                added
            } else {
                promote_when_caught_up(&client, added, cli.timeout).await?
            };
            output::member(format, &member)
        }
        Command::Member(MemberCommand::Transfer { id }) => {
            let leader = client.transfer_leader(Some(&id)).await?;
            output::leader(format, &leader)
        }
        Command::Member(MemberCommand::Promote { id }) => {
            client.promote(&id).await?;
            output::ok(format)
        }
        Command::Member(MemberCommand::Remove { id, force }) => {
            if force {
                client.force_remove(&id).await?;
            } else {
                client.remove(&id).await?;
            }
            output::ok(format)
        }
        Command::Status => output::status(format, &client.status().await?),
        Command::Snapshot(SnapshotCommand::Save { file }) => {
            let backup = snapshot::Backup::new(&file)?;
            let summary = backup.save(&client, format == Format::Simple).await?;
            output::backup(format, &summary, &format!("saved {}", backup.name()))
        }
        Command::Snapshot(SnapshotCommand::Status { file }) => {
            let summary = snapshot::Backup::new(&file)?.read(|_| Ok(())).await?;
            output::backup(format, &summary, "")
        }
        Command::Snapshot(SnapshotCommand::Restore { file }) => {
            let backup = snapshot::Backup::new(&file)?;
            let (summary, written) = snapshot::restore(&client, &backup).await?;
            let note = format!("restored {written} keys from {}", backup.name());
            output::backup(format, &summary, &note)
        }
        Command::Endpoint(EndpointCommand::Status) => {
            let statuses = client.endpoint_status().await;
            print(&output::endpoints(format, &statuses))?;
            let failed = statuses
                .iter()
                .filter(|status| status.info.is_err())
                .count();
            return match failed {
                0 => Ok(()),
                failed => Err(Failure::EndpointsDown {
                    failed,
                    total: statuses.len(),
                }),
            };
        }
    };
    print(&printed)
}

/// Waits (at most `timeout`) for the new learner to catch up, then promotes it; returns the
/// member as a voter.
async fn promote_when_caught_up(
    client: &Client,
    learner: proto::Member,
    timeout: Duration,
) -> Result<proto::Member, Failure> {
    let not_promoted = |reason: String| Failure::NotPromoted {
        id: learner.id.clone(),
        reason,
    };
    let mut member = learner.clone();
    let wait = async {
        loop {
            match client.member_list().await {
                Ok(members) => {
                    if let Some(seen) = members.into_iter().find(|m| m.id == learner.id) {
                        member = seen;
                        if membership::caught_up(member.matched_index, member.lag) {
                            return Ok(());
                        }
                    }
                }
                Err(err) => tracing::debug!(%err, "listing members while waiting for the learner"),
            }
            tokio::time::sleep(CATCH_UP_POLL).await;
        }
    };
    match tokio::time::timeout(timeout, wait).await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => return Err(not_promoted(err)),
        Err(_) => {
            return Err(not_promoted(format!(
                "it had not caught up before the deadline (matched index {}, lag {}; \
                 promotion needs an acknowledged entry and a lag of at most {MAX_CAUGHT_UP_LAG})",
                member.matched_index, member.lag
            )));
        }
    }
    client
        .promote(&member.id)
        .await
        .map_err(|err| not_promoted(err.to_string()))?;
    member.role = Role::Voter.into();
    Ok(member)
}

async fn read_stdin() -> Result<Vec<u8>, Failure> {
    use tokio::io::AsyncReadExt;
    let mut value = Vec::new();
    tokio::io::stdin()
        .read_to_end(&mut value)
        .await
        .map_err(Failure::Input)?;
    Ok(value)
}

fn print(bytes: &[u8]) -> Result<(), Failure> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(bytes)
        .and_then(|()| stdout.flush())
        .map_err(Failure::Output)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes_follow_the_contract() {
        let unavailable = Error::Unavailable {
            message: "no quorum".into(),
            leader: None,
        };
        let unknown = Error::OutcomeUnknown {
            message: "timed out".into(),
            leader: None,
        };
        let refused = Error::Refused {
            code: tonic::Code::InvalidArgument,
            message: "key too large".into(),
        };
        assert_eq!(exit_code(&Error::CompareFailed.into()), 1);
        assert_eq!(exit_code(&Error::NoEndpoints.into()), 2);
        assert_eq!(exit_code(&unavailable.into()), 3);
        assert_eq!(exit_code(&refused.into()), 3);
        assert_eq!(exit_code(&unknown.into()), 4);
    }
}
