//! Finding, or installing with apt-get, the programs the comparison runs against.

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Once;

/// The path of `program` on PATH or in the sbin directories.
pub fn find(program: &str) -> Option<PathBuf> {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(["/usr/sbin", "/sbin", "/usr/local/sbin"])
        .map(|dir| PathBuf::from(dir).join(program))
        .find(|p| p.is_file())
}

/// `program`, installed from Debian's `package` first when it is missing and we are root.
pub fn ensure(program: &str, package: &str) -> Result<PathBuf, String> {
    if let Some(path) = find(program) {
        return Ok(path);
    }
    let installed = apt_install(package);
    match find(program) {
        Some(path) => Ok(path),
        None if installed => Err(format!("{package} installed but {program} not found")),
        None => Err(format!(
            "{program} is missing and `apt-get install {package}` failed"
        )),
    }
}

/// Debian's `package`'s program at `path`, installed first when it is missing and we are
/// root: for a program that must be Debian's build even when another comes first on PATH.
pub fn ensure_at(path: &Path, package: &str) -> Result<PathBuf, String> {
    if path.is_file() {
        return Ok(path.to_owned());
    }
    if apt_install(package) {
        if path.is_file() {
            return Ok(path.to_owned());
        }
        return Err(format!(
            "{package} installed but {} not found",
            path.display()
        ));
    }
    Err(format!(
        "{} is missing and `apt-get install {package}` failed",
        path.display()
    ))
}

/// `apt-get install package`, after one `apt-get update` per run; whether it succeeded.
fn apt_install(package: &str) -> bool {
    static UPDATE: Once = Once::new();
    UPDATE.call_once(|| {
        let _ = Command::new("apt-get")
            .args(["update", "-qq"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    });
    Command::new("apt-get")
        .args(["install", "-y", "-qq", package])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A free loopback port (released before use).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_or(0, |a| a.port())
}

/// Waits until something accepts connections on `addr`.
pub fn wait_listening(addr: &str) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        if std::net::TcpStream::connect(addr).is_ok() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    false
}

/// Starts `command` (output discarded) and waits until it accepts connections on `addr`.
pub fn spawn_listening(
    command: &mut Command,
    addr: &str,
    name: &str,
) -> Result<crate::process::Running, String> {
    let child = command
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0) // stopped as a group by `Running`
        .spawn()
        .map_err(|e| format!("{name}: {e}"))?;
    let running = crate::process::Running(child);
    if wait_listening(addr) {
        Ok(running)
    } else {
        Err(format!("{name} did not start"))
    }
}

/// Resident memory of a process, in bytes (Linux).
pub fn rss(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib * 1024)
}
