//! `powerfs DIR`: mounts a power-loss file system on DIR (see `kvs_tests::powerfs`). Prints
//! `mounted` when DIR is served; on SIGUSR1 cuts the power — everything not fsynced is dropped —
//! and prints `cut`; on SIGTERM or SIGINT unmounts and exits.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use kvs_tests::powerfs::PowerFs;
use nix::sys::signal::SigSet;
use nix::sys::signal::Signal;

/// Mount a file system that keeps writes in memory and loses what was not fsynced on SIGUSR1.
#[derive(Debug, Parser)]
#[command(name = "powerfs")]
struct Args {
    /// The directory to mount on (empty).
    dir: PathBuf,
}

fn say(word: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{word}")?;
    out.flush()?;
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // Blocked before the session's threads start, so they inherit the mask and only the wait
    // below takes these signals.
    let mut signals = SigSet::empty();
    for signal in [Signal::SIGUSR1, Signal::SIGTERM, Signal::SIGINT] {
        signals.add(signal);
    }
    signals.thread_block().context("block signals")?;
    let fs = PowerFs::new();
    let session = fs
        .mount(&args.dir)
        .with_context(|| format!("mount on {}", args.dir.display()))?;
    say("mounted")?;
    while signals.wait().context("wait for a signal")? == Signal::SIGUSR1 {
        fs.cut();
        say("cut")?;
    }
    session.umount_and_join().context("unmount")?;
    Ok(())
}
