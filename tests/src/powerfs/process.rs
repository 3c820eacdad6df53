//! The harness's side of a `powerfs` process: mount a volume on a directory, cut its power,
//! unmount it when dropped. The process prints `mounted` once it serves the directory and `cut`
//! after each cut it was asked for with SIGUSR1, so every step is awaited, never guessed.

use std::io::BufRead;
use std::io::BufReader;
use std::path::Path;
use std::process::Child;
use std::process::Command;
use std::process::Stdio;
use std::sync::mpsc;
use std::time::Duration;

use nix::sys::signal::Signal;
use nix::sys::signal::kill;
use nix::unistd::Pid;

/// How long mounting, a cut or an unmount may take on a loaded machine.
const STEP_TIMEOUT: Duration = Duration::from_secs(30);

/// A running `powerfs` with its volume mounted.
#[derive(Debug)]
pub struct PowerFsProcess {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl PowerFsProcess {
    /// Runs `binary` (the `powerfs` tool) on `dir`, created if missing, and waits until it is
    /// mounted.
    pub fn mount(binary: &Path, dir: &Path) -> Result<Self, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let mut child = Command::new(binary)
            .arg(dir)
            .stdout(Stdio::piped())
            .stdin(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run {}: {e}", binary.display()))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let (send, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if send.send(line).is_err() {
                    break;
                }
            }
        });
        let mut process = Self { child, lines };
        process.expect("mounted")?;
        Ok(process)
    }

    /// Cuts the power: the volume keeps only what was fsynced. Whatever runs on it should be
    /// dead first, as it would be.
    pub fn cut(&mut self) -> Result<(), String> {
        self.signal(Signal::SIGUSR1)?;
        self.expect("cut")
    }

    fn signal(&self, signal: Signal) -> Result<(), String> {
        let pid = Pid::from_raw(i32::try_from(self.child.id()).expect("pids fit in i32"));
        kill(pid, signal).map_err(|e| format!("{signal} to powerfs: {e}"))
    }

    fn expect(&mut self, word: &str) -> Result<(), String> {
        match self.lines.recv_timeout(STEP_TIMEOUT) {
            Ok(line) if line == word => Ok(()),
            Ok(line) => Err(format!("powerfs said {line:?}, not {word:?}")),
            Err(_) => Err(format!(
                "powerfs did not say {word:?} within {STEP_TIMEOUT:?} (exited: {:?})",
                self.child.try_wait()
            )),
        }
    }
}

impl Drop for PowerFsProcess {
    /// Unmounts (SIGTERM) and reaps, killing the process if it does not exit in time.
    fn drop(&mut self) {
        let _ = self.signal(Signal::SIGTERM);
        let deadline = std::time::Instant::now() + STEP_TIMEOUT;
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
