//! `busctl doctor` against a real ingest with its embedded busd.

use std::process::Command;
use std::time::Duration;

use testkit::bus::Busd;
use testkit::{Proc, binary};

const WAIT: Duration = Duration::from_secs(20);

/// ingest on free ports in a fresh directory; returns it with its HTTP and bus addresses.
fn ingest(dir: &std::path::Path, extra: &[&str]) -> (Proc, String, String) {
    let mut command = Command::new(binary("ingest", "ingest"));
    command
        .current_dir(dir)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--embedded-bus-listen",
            "127.0.0.1:0",
        ])
        .args(extra);
    let proc = Proc::spawn("ingest", &mut command);
    let addr = |line: String| {
        line.split("listening on ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .map(str::to_owned)
            .unwrap_or_default()
    };
    let bus = if extra.contains(&"--bus") {
        String::new()
    } else {
        addr(proc.wait_stderr("embedded busd listening on", WAIT))
    };
    let http = addr(proc.wait_stderr("origin=", WAIT));
    (proc, format!("http://{http}"), bus)
}

fn doctor(args: &[&str]) -> (Option<i32>, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_busctl"))
        .arg("doctor")
        .args(args)
        .output()
        .unwrap();
    (
        output.status.code(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

#[test]
fn a_healthy_pipeline_passes_every_hop() {
    let dir = tempfile::tempdir().unwrap();
    let (_ingest, http, bus) = ingest(dir.path(), &[]);
    let (code, out) = doctor(&["--ingest", &http, "--bus", &bus, "--account", "5"]);
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains("bus      ok") && out.contains("ingest   ok") && out.contains("delivery ok"),
        "{out}"
    );
}

#[test]
fn each_failing_hop_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let (_ingest, http, bus) = ingest(dir.path(), &[]);
    let (code, out) = doctor(&["--ingest", &http, "--bus", &bus, "--account", "10"]);
    assert_eq!(code, Some(1));
    assert!(
        out.contains("ingest   FAIL") && out.contains("403"),
        "{out}"
    );

    let (code, out) = doctor(&["--ingest", "http://127.0.0.1:1", "--bus", &bus]);
    assert_eq!(code, Some(1));
    assert!(
        out.contains("ingest   FAIL") && out.contains("cannot connect"),
        "{out}"
    );

    let (code, out) = doctor(&["--ingest", &http, "--bus", "127.0.0.1:1"]);
    assert_eq!(code, Some(1));
    assert!(out.contains("bus      FAIL"), "{out}");

    // ingest forwards to its own busd; watching another one, the canary never shows up.
    let other = Busd::start(&[]);
    let (code, out) = doctor(&[
        "--ingest",
        &http,
        "--bus",
        &other.addr.to_string(),
        "--timeout",
        "1s",
    ]);
    assert_eq!(code, Some(1));
    assert!(out.contains("delivery FAIL"), "{out}");
}
