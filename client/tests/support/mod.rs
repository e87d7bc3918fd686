//! What the busctl integration tests share: the binary with the bus variables cleared, a
//! live watcher, and JSON lines.
#![allow(dead_code)]

use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use testkit::Proc;

/// How long a test waits for a process to say something.
pub const WAIT: Duration = Duration::from_secs(20);

/// busctl with `args`, started.
pub fn busctl(args: &[&str]) -> Proc {
    Proc::spawn("busctl", &mut busctl_command(args))
}

/// busctl with `args`, not started; the shared bus variables a developer may have exported
/// are cleared, so only the test's flags count.
pub fn busctl_command(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_busctl"));
    command.args(args);
    for variable in ["TRACKER_BUS", "TRACKER_STREAM", "TRACKER_SUBJECT_PREFIX"] {
        command.env_remove(variable);
    }
    command
}

/// `busctl watch --format json` on `bus`, once it says it is live.
pub fn watch(bus: &str, extra: &[&str]) -> Proc {
    let mut args = vec!["watch", "--bus", bus, "--format", "json"];
    args.extend_from_slice(extra);
    let proc = busctl(&args);
    proc.wait_stderr("live (epoch", WAIT);
    proc
}

/// A line of JSON, or a panic that shows it.
pub fn json(line: &str) -> Value {
    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON: {line:?}: {e}"))
}

/// Each `watch` command line in `cases` is refused as bad arguments (exit 2, nothing on
/// stdout) with a message containing its text.
pub fn assert_bad_watch_args(cases: &[(&[&str], &str)]) {
    for (args, says) in cases {
        let mut argv = vec!["watch", "--bus", "127.0.0.1:1"];
        argv.extend_from_slice(args);
        let output = busctl_command(&argv).output().expect("busctl runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
        assert!(output.stdout.is_empty(), "{args:?}");
    }
}

/// The pinned nats-server, or a skip message and `return` from the test.
#[allow(unused_macros)]
macro_rules! nats_or_skip {
    () => {
        match testkit::nats::server() {
            Some(path) => path,
            None => {
                eprintln!(
                    "skipped: nats-server {} is not installed (.ci/nats-server installs it)",
                    testkit::nats::VERSION
                );
                return;
            }
        }
    };
}

/// Publishes one event of `account` straight to the stream's default subjects, as ingest
/// would, and waits until the stream has stored it.
pub async fn publish_to_stream(
    conn: &client::jetstream::Connection,
    account: u64,
    data: &str,
    id: u64,
) {
    let body = serde_json::json!({
        "account_id": account,
        "timestamp_us": 1_795_255_200_123_456u64,
        "data": data,
        "origin": "tests",
        "id": id,
    });
    let payload = serde_json::to_vec(&body).expect("JSON");
    conn.js
        .publish(format!("tracker.events.{account}"), payload.into())
        .await
        .expect("published")
        .await
        .expect("stored");
}

/// Freezes node `node` of `cluster` (SIGSTOP) after a moment of quiet, asserts that busctl
/// (`reader`, a watcher or a group member) says within 4.5 s that it missed the server's
/// heartbeats, and thaws the node.
pub fn assert_a_frozen_server_is_noticed(
    cluster: &mut testkit::nats::Cluster,
    node: usize,
    reader: &Proc,
) {
    std::thread::sleep(Duration::from_millis(1500));
    cluster.signal(node, "STOP");
    let frozen = std::time::Instant::now();
    reader.wait_stderr("missed idle heartbeat", Duration::from_secs(10));
    let noticed = frozen.elapsed();
    eprintln!("the frozen server was noticed after {noticed:?}");
    cluster.signal(node, "CONT");
    assert!(
        noticed < Duration::from_millis(4500),
        "noticed after {noticed:?}"
    );
}
