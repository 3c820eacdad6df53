//! Running `kvsctl` the way a user does: a process per command, judged by its exit code and
//! output. Every run is bounded; a hung `kvsctl` is killed and reported as such.

use std::ffi::OsStr;
use std::ffi::OsString;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;
use std::time::Instant;

/// `kvsctl` exit codes (the CLI contract).
pub mod exit {
    /// Success.
    pub const OK: i32 = 0;
    /// A compare-and-swap compare did not hold.
    pub const COMPARE_FAILED: i32 = 1;
    /// Bad usage.
    pub const USAGE: i32 = 2;
    /// The request failed and was definitely not applied.
    pub const NOT_APPLIED: i32 = 3;
    /// The outcome is unknown: the request may have been applied.
    pub const UNKNOWN: i32 = 4;
}

/// Longest any single `kvsctl` run may take before the harness kills it.
const RUN_DEADLINE: Duration = Duration::from_secs(60);

/// A `kvsctl` bound to a set of endpoints; cheap to clone into writer tasks.
#[derive(Debug, Clone)]
pub struct Kvsctl {
    bin: PathBuf,
    endpoints: Vec<String>,
    /// `--user` and `--password-file`, on a cluster with users.
    user: Option<(String, PathBuf)>,
    env: Vec<(String, String)>,
    /// Flags before the command on every run (TLS material).
    global: Vec<String>,
}

/// What one `kvsctl` run did.
#[derive(Debug, Clone)]
pub struct KvsctlOutput {
    /// The command line after `--endpoints …`, for messages.
    pub args: Vec<String>,
    /// The exit code; `None` when killed (by a signal or the harness deadline).
    pub code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
    /// Wall time from spawn to exit.
    pub elapsed: Duration,
}

impl Kvsctl {
    pub(crate) fn new(bin: PathBuf, endpoints: Vec<String>) -> Self {
        Self {
            bin,
            endpoints,
            user: None,
            env: Vec::new(),
            global: Vec::new(),
        }
    }

    /// This `kvsctl` with `args` before the command on every run.
    pub fn with_args(mut self, args: Vec<String>) -> Self {
        self.global = args;
        self
    }

    /// This `kvsctl` run as `user` with the password in `password_file`.
    pub fn as_user(&self, user: &str, password_file: &std::path::Path) -> Self {
        Self {
            user: Some((user.to_owned(), password_file.to_owned())),
            ..self.clone()
        }
    }

    /// The same kvsctl with `env` added to its environment (an object store's variables).
    pub fn with_env(mut self, env: impl IntoIterator<Item = (String, String)>) -> Self {
        self.env.extend(env);
        self
    }

    /// The command that runs `kvsctl --endpoints <endpoints> [--user … --password-file …]
    /// <args…>`, for a test that watches the process itself.
    pub fn command<I, S>(&self, args: I) -> tokio::process::Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut command = tokio::process::Command::new(&self.bin);
        command
            .arg("--endpoints")
            .arg(self.endpoints.join(","))
            .args(self.user.iter().flat_map(|(user, file)| {
                [
                    OsString::from("--user"),
                    user.into(),
                    "--password-file".into(),
                    file.into(),
                ]
            }))
            .args(&self.global)
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        command
    }

    /// The endpoints passed as `--endpoints a,b,c`.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// Runs `kvsctl --endpoints <endpoints> <args…>`.
    pub async fn run<I, S>(&self, args: I) -> KvsctlOutput
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let args: Vec<OsString> = args
            .into_iter()
            .map(|a| a.as_ref().to_os_string())
            .collect();
        let shown = args.iter().map(|a| shorten(&a.to_string_lossy())).collect();
        let started = Instant::now();
        let run = self.command(&args).output();
        let (code, stdout, stderr) = match tokio::time::timeout(RUN_DEADLINE, run).await {
            Ok(Ok(out)) => (
                out.status.code(),
                String::from_utf8_lossy(&out.stdout).into_owned(),
                String::from_utf8_lossy(&out.stderr).into_owned(),
            ),
            Ok(Err(e)) => (
                None,
                String::new(),
                format!("kvs-tests: cannot run {}: {e}", self.bin.display()),
            ),
            Err(_) => (
                None,
                String::new(),
                format!("kvs-tests: killed after {RUN_DEADLINE:?}"),
            ),
        };
        KvsctlOutput {
            args: shown,
            code,
            stdout,
            stderr,
            elapsed: started.elapsed(),
        }
    }
}

impl KvsctlOutput {
    /// Whether it exited 0.
    pub fn success(&self) -> bool {
        self.code == Some(exit::OK)
    }

    /// Standard output; panics with the whole run unless it exited 0.
    pub fn ok(&self) -> &str {
        assert!(self.success(), "expected success from {self}");
        &self.stdout
    }

    /// Standard output parsed as JSON; panics unless it exited 0 and printed JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.ok())
            .unwrap_or_else(|e| panic!("output is not JSON ({e}): {self}"))
    }

    /// Standard output and standard error together, for checking a message wherever it went.
    pub fn text(&self) -> String {
        format!("{}{}", self.stdout, self.stderr)
    }
}

impl fmt::Display for KvsctlOutput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`kvsctl {}` exited {:?} after {:?}\n  stdout: {}\n  stderr: {}",
            self.args.join(" "),
            self.code,
            self.elapsed,
            shorten(self.stdout.trim_end()),
            shorten(self.stderr.trim_end())
        )
    }
}

/// Long arguments (oversized keys, big values) are shown by length only.
fn shorten(text: &str) -> String {
    const MAX: usize = 400;
    if text.len() <= MAX {
        return text.to_string();
    }
    let cut = (0..=MAX)
        .rev()
        .find(|i| text.is_char_boundary(*i))
        .unwrap_or(0);
    format!("{}… ({} bytes)", &text[..cut], text.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_are_judged_by_exit_code_and_output() {
        use std::os::unix::fs::PermissionsExt;
        // A stand-in for kvsctl: prints the endpoint list, complains, exits with its argument.
        let dir = tempfile::tempdir().expect("tempdir");
        let fake = dir.path().join("kvsctl");
        std::fs::write(
            &fake,
            "#!/bin/sh\necho \"$1 $2\"; echo oops >&2; exit \"$3\"\n",
        )
        .expect("write");
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let kvsctl = Kvsctl::new(fake, vec!["a".into(), "b".into()]);
        let out = kvsctl.run(["4"]).await;
        assert_eq!(out.code, Some(exit::UNKNOWN));
        assert_eq!(out.stdout, "--endpoints a,b\n");
        assert_eq!(out.text(), "--endpoints a,b\noops\n");
        assert!(!out.success());
        assert!(out.to_string().contains("exited Some(4)"), "{out}");
    }

    #[test]
    fn long_arguments_are_shortened() {
        let long = "k".repeat(5000);
        let shown = shorten(&long);
        assert!(
            shown.len() < 500 && shown.ends_with("(5000 bytes)"),
            "{shown}"
        );
    }
}
