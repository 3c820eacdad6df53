//! Failpoints (TiKV's `fail` crate): named places on the storage path — log append, log fsync,
//! apply, snapshot build and install — where a test build can crash the node like a power cut
//! or stall it like a slow disk, so a test can show that no acknowledged write is lost whichever
//! step a node dies in.
//!
//! They exist only with the `failpoints` cargo feature, which the test harness builds into a
//! binary of its own name, `kvs-node-failpoints`. Without it `failpoint!` expands to nothing, the
//! `fail` crate is not linked and no failpoint name is in the binary, so the node that is
//! shipped and benchmarked carries none of this.
//!
//! A failpoint is armed through the fault control file (`crate::fault`): a line
//! `failpoint <name> crash`, `failpoint <name> error` or `failpoint <name> stall <ms>`, part of a
//! [`FaultSet`](crate::fault::FaultSet), whose words after `failpoint` are read by `parse` here
//! and written by [`Action`]'s `Display`. Crashing aborts the process (`std::process::abort`),
//! never unwinds: a panic could be caught by the task running the storage call and the node would
//! go on as if nothing happened. Failing makes the step return an I/O error (EIO), as a dying disk
//! would, so a test can show what the node does when its storage refuses. Stalling sleeps for a bounded time each time the point is
//! passed, until the line is removed.

use std::collections::BTreeMap;
use std::fmt;

/// The failpoints this binary has: every name a [`failpoint!`] site uses.
#[cfg(feature = "failpoints")]
const NAMES: [&str; 5] = [
    "log-append",
    "log-fsync",
    "apply",
    "snapshot-build",
    "snapshot-install",
];
/// Built without the `failpoints` feature: none.
#[cfg(not(feature = "failpoints"))]
const NAMES: [&str; 0] = [];

/// The longest stall a control line may ask for, so a stalled node always comes back.
const MAX_STALL_MS: u64 = 60_000;

/// The environment variable that, set to `1` for the failpoint build, makes the node skip the
/// raft log's fsyncs: its writes are handed to the operating system and acknowledged without
/// reaching the disk. A power-loss campaign (`jepsen --nemesis power`) runs it to show that it
/// finds the acknowledged writes this loses. The shipped build ignores it.
pub const SKIP_FSYNC_ENV: &str = "KVS_FAILPOINTS_SKIP_FSYNC";

/// Whether this process skips the log's fsyncs (see [`SKIP_FSYNC_ENV`]); never without the
/// `failpoints` feature.
pub(crate) fn fsync_skipped() -> bool {
    #[cfg(feature = "failpoints")]
    {
        static SKIPPED: std::sync::LazyLock<bool> =
            std::sync::LazyLock::new(|| std::env::var_os(SKIP_FSYNC_ENV).is_some_and(|v| v == "1"));
        *SKIPPED
    }
    #[cfg(not(feature = "failpoints"))]
    false
}

/// Marks a failpoint named by a string literal listed in `NAMES`, in a function that returns
/// `Result<_, E>` with `E: From<std::io::Error>`. Compiles to nothing without the `failpoints`
/// feature.
macro_rules! failpoint {
    ($name:literal) => {
        #[cfg(feature = "failpoints")]
        fail::fail_point!($name, |arg| Err($crate::failpoint::fire($name, arg).into()));
    };
}
pub(crate) use failpoint;

/// What an armed failpoint does when the node passes it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// Abort the process on the spot.
    Crash,
    /// Return an I/O error (EIO) from the step, every time.
    Fail,
    /// Sleep this many milliseconds, every time.
    Stall(u64),
}

/// The words of a control line after the failpoint's name, as `parse` reads them.
impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Action::Crash => f.write_str("crash"),
            Action::Fail => f.write_str("error"),
            Action::Stall(ms) => write!(f, "stall {ms}"),
        }
    }
}

/// Armed failpoints by name.
pub type Armed = BTreeMap<String, Action>;

/// Parses the words after `failpoint` on a control line: `<name> crash`, `<name> error` or
/// `<name> stall <ms>`.
/// `None` when the name is not a failpoint of this binary (none is, without the feature) or
/// the action is malformed.
pub(crate) fn parse(words: &[&str]) -> Option<(String, Action)> {
    let (name, action) = match *words {
        [name, "crash"] => (name, Action::Crash),
        [name, "error"] => (name, Action::Fail),
        [name, "stall", ms] => (
            name,
            Action::Stall(ms.parse().ok().filter(|ms| *ms <= MAX_STALL_MS)?),
        ),
        _ => return None,
    };
    NAMES.contains(&name).then(|| (name.to_string(), action))
}

/// Moves the process's failpoints from `before` to `after`: arms the new and changed ones and
/// disarms (and wakes) the ones no longer asked for.
pub(crate) fn arm(before: &Armed, after: &Armed) {
    #[cfg(feature = "failpoints")]
    {
        for name in before.keys().filter(|name| !after.contains_key(*name)) {
            fail::remove(name);
        }
        for (name, action) in after {
            if before.get(name) != Some(action) {
                let actions = match action {
                    Action::Crash => "return".to_string(),
                    Action::Fail => "return(eio)".to_string(),
                    Action::Stall(ms) => format!("sleep({ms})"),
                };
                fail::cfg(name.as_str(), &actions).expect("the actions of a parsed line are valid");
            }
        }
    }
    #[cfg(not(feature = "failpoints"))]
    // Nothing can be armed: `parse` knows no names in this build.
    let _ = (before, after);
}

/// Any failpoints this build can arm (none without the feature), for the round-trip tests of
/// the control file.
#[cfg(test)]
pub(crate) fn any_armed() -> impl proptest::strategy::Strategy<Value = Armed> {
    use proptest::prelude::*;
    let action = prop_oneof![
        Just(Action::Crash),
        Just(Action::Fail),
        (0..=MAX_STALL_MS).prop_map(Action::Stall)
    ];
    proptest::collection::vec(proptest::option::of(action), NAMES.len()).prop_map(|actions| {
        NAMES
            .iter()
            .zip(actions)
            .filter_map(|(name, action)| Some((name.to_string(), action?)))
            .collect()
    })
}

/// Called by an armed failpoint: an `error` one (armed with an argument) gives the I/O error
/// its step returns; a `crash` one never returns.
#[cfg(feature = "failpoints")]
pub(crate) fn fire(name: &str, arg: Option<String>) -> std::io::Error {
    match arg {
        Some(_) => {
            tracing::error!(failpoint = name, "failpoint: failing with an I/O error");
            std::io::Error::from_raw_os_error(nix::errno::Errno::EIO as i32)
        }
        None => crash(name),
    }
}

/// Dies the way a power cut would, leaving whatever was not yet fsynced to the recovery code.
#[cfg(feature = "failpoints")]
fn crash(name: &str) -> ! {
    tracing::error!(failpoint = name, "failpoint: crashing (abort)");
    std::process::abort()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(feature = "failpoints")]
    #[test]
    fn control_words_name_a_failpoint_and_a_bounded_action() {
        assert_eq!(
            parse(&["log-fsync", "crash"]),
            Some(("log-fsync".into(), Action::Crash))
        );
        assert_eq!(
            parse(&["apply", "stall", "250"]),
            Some(("apply".into(), Action::Stall(250)))
        );
        assert_eq!(
            parse(&["snapshot-build", "error"]),
            Some(("snapshot-build".into(), Action::Fail))
        );
        assert_eq!(parse(&["apply", "stall", "600000"]), None);
        assert_eq!(parse(&["apply", "panic"]), None);
        assert_eq!(parse(&["no-such-point", "crash"]), None);
    }

    #[cfg(feature = "failpoints")]
    #[test]
    fn an_armed_stall_holds_until_disarmed() {
        fn step() -> std::io::Result<()> {
            failpoint!("snapshot-install");
            Ok(())
        }
        fn passes() -> std::time::Duration {
            let start = std::time::Instant::now();
            step().expect("a stall is not an error");
            start.elapsed()
        }
        // Long enough that a loaded machine cannot make the disarmed pass look stalled.
        let stall = std::time::Duration::from_millis(500);
        let stalled = Armed::from([("snapshot-install".into(), Action::Stall(500))]);
        arm(&Armed::new(), &stalled);
        assert!(passes() >= stall);
        arm(&stalled, &Armed::new());
        assert!(passes() < stall);
    }

    #[cfg(not(feature = "failpoints"))]
    #[test]
    fn without_the_feature_no_failpoint_exists() {
        assert_eq!(parse(&["log-fsync", "crash"]), None);
        assert_eq!(parse(&["apply", "stall", "10"]), None);
    }
}
