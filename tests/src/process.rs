//! Child processes owned by the harness: a node is spawned with its stderr in a log file, is
//! ready once it prints its one `serving` line ([`Serving`]) on stdout, and is killed (SIGKILL)
//! and reaped when its guard drops, so a failing or panicking test never leaves an orphan behind.

use std::collections::HashSet;
use std::ffi::OsString;
use std::io::BufRead;
use std::io::BufReader;
use std::net::Ipv4Addr;
use std::net::TcpListener;
use std::path::Path;
use std::path::PathBuf;
use std::process::Child;
use std::process::Command;
use std::process::ExitStatus;
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use kvs_node::Serving;
use nix::sys::signal::Signal;
use nix::unistd::Pid;
use tokio::sync::oneshot;

use crate::binaries::tail;

/// A port on 127.0.0.1 that was free a moment ago and that this process has not handed out
/// before. The listener is dropped so the node can bind it; keeping the number lets a restarted
/// node come back on the same address.
pub fn free_port() -> u16 {
    static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    loop {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
        let port = listener
            .local_addr()
            .expect("bound listener has an address")
            .port();
        let mut handed_out = HANDED_OUT.lock().expect("port set lock poisoned");
        if handed_out.get_or_insert_with(HashSet::new).insert(port) {
            return port;
        }
    }
}

/// A child process that is killed and reaped when dropped.
#[derive(Debug)]
pub(crate) struct ChildGuard {
    child: Child,
    /// Set once reaped: the PID may then belong to someone else and must not be signalled.
    exited: Option<ExitStatus>,
}

impl ChildGuard {
    pub(crate) fn spawn(command: &mut Command) -> std::io::Result<Self> {
        Ok(Self {
            child: command.spawn()?,
            exited: None,
        })
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends `signal` unless the process has already been reaped.
    pub(crate) fn signal(&self, signal: Signal) -> nix::Result<()> {
        if self.exited.is_some() {
            return Err(nix::errno::Errno::ESRCH);
        }
        let pid = i32::try_from(self.child.id()).expect("PIDs fit in i32");
        nix::sys::signal::kill(Pid::from_raw(pid), signal)
    }

    /// The exit status if the process has exited, reaping it.
    pub(crate) fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().ok().flatten();
        }
        self.exited
    }

    /// Waits up to `within` for the process to exit on its own.
    pub(crate) async fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(status) = self.try_wait() {
                return Some(status);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub(crate) fn take_stdout(&mut self) -> Option<std::process::ChildStdout> {
        self.child.stdout.take()
    }

    /// SIGKILL and reap; a stopped process dies too.
    pub(crate) fn kill(&mut self) {
        if self.exited.is_none() {
            let _ = self.child.kill();
            self.exited = self.child.wait().ok();
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A running node process and who it said it is.
#[derive(Debug)]
pub(crate) struct NodeProcess {
    pub(crate) child: ChildGuard,
    pub(crate) serving: Serving,
}

/// Spawns `bin args…` with `env` added to its environment and stderr appended to `log`, and
/// waits up to `within` for its `serving` line. On failure the process is killed and the error
/// carries the tail of its log.
pub(crate) async fn spawn_node(
    bin: &Path,
    args: &[OsString],
    env: &[(String, String)],
    log: &Path,
    within: Duration,
) -> Result<NodeProcess, String> {
    let log_file = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| format!("cannot open log {}: {e}", log.display()))?;
    let mut child = ChildGuard::spawn(
        Command::new(bin)
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file),
    )
    .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
    let stdout = child.take_stdout().expect("stdout is piped");
    let (tx, rx) = oneshot::channel();
    // A plain thread: it ends when the node's stdout closes, i.e. when the node dies.
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Ok(serving) = line.parse::<Serving>()
                && let Some(tx) = tx.take()
            {
                let _ = tx.send(serving);
            }
        }
    });
    let describe = |what: String, child: &mut ChildGuard| {
        child.kill();
        format!(
            "{what}: {} {}\n--- tail of {} ---\n{}",
            bin.display(),
            args.iter()
                .map(|a| a.to_string_lossy())
                .collect::<Vec<_>>()
                .join(" "),
            log.display(),
            log_tail(log, 30)
        )
    };
    match tokio::time::timeout(within, rx).await {
        Ok(Ok(serving)) => Ok(NodeProcess { child, serving }),
        Ok(Err(_)) => {
            let status = child.wait_exit(Duration::from_secs(2)).await;
            Err(describe(
                format!("node exited before serving ({status:?})"),
                &mut child,
            ))
        }
        Err(_) => Err(describe(
            format!("node did not announce `serving` within {within:?}"),
            &mut child,
        )),
    }
}

/// The last `lines` lines of a log file.
pub(crate) fn log_tail(log: &Path, lines: usize) -> String {
    match std::fs::read(log) {
        Ok(bytes) => tail(&String::from_utf8_lossy(&bytes), lines),
        Err(e) => format!("(cannot read {}: {e})", log.display()),
    }
}

/// Log file name of generation `generation` of node `index`.
pub(crate) fn log_path(dir: &Path, index: usize, generation: u32) -> PathBuf {
    dir.join(format!("node{index}.{generation}.log"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_bindable_and_distinct() {
        let a = free_port();
        let b = free_port();
        assert_ne!(a, b);
        TcpListener::bind((Ipv4Addr::LOCALHOST, a)).expect("the port is free");
    }

    #[test]
    fn a_dropped_guard_kills_and_reaps_its_process() {
        let guard = ChildGuard::spawn(Command::new("sleep").arg("600")).expect("spawn sleep");
        let pid = Pid::from_raw(i32::try_from(guard.pid()).expect("pid fits"));
        assert_eq!(nix::sys::signal::kill(pid, None), Ok(()));
        drop(guard);
        // Reaped, not a zombie: the PID no longer exists.
        assert_eq!(
            nix::sys::signal::kill(pid, None),
            Err(nix::errno::Errno::ESRCH)
        );
    }

    #[tokio::test]
    async fn a_process_that_exits_before_serving_is_reported_with_its_log() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("n.log");
        let err = spawn_node(
            Path::new("sh"),
            &["-c".into(), "echo bind failed >&2; exit 3".into()],
            &[],
            &log,
            Duration::from_secs(10),
        )
        .await
        .expect_err("never serves");
        assert!(err.contains("exited before serving"), "{err}");
        assert!(err.contains("bind failed"), "{err}");
    }

    #[tokio::test]
    async fn a_serving_line_makes_the_node_ready() {
        let dir = tempfile::tempdir().expect("tempdir");
        let log = dir.path().join("n.log");
        let serving = Serving {
            node_id: 0x0123_4567_89ab_cdef,
            client: "127.0.0.1:1".into(),
            peer: "127.0.0.1:2".into(),
        };
        let script = format!("echo '{serving}'; exec sleep 600");
        let mut node = spawn_node(
            Path::new("sh"),
            &["-c".into(), script.into()],
            &[],
            &log,
            Duration::from_secs(10),
        )
        .await
        .expect("serves");
        assert_eq!(node.serving, serving);
        assert_eq!(node.child.try_wait(), None);
        node.child.signal(Signal::SIGTERM).expect("signal");
        let status = node
            .child
            .wait_exit(Duration::from_secs(10))
            .await
            .expect("exits on SIGTERM");
        assert!(!status.success());
    }
}
