//! The command line of the real binaries: environment variables with one meaning each,
//! bad values refused as bad arguments (exit 2), and help that describes every flag.

use std::process::{Command, Output};
use std::time::Duration;

use testkit::{Proc, binary};

const WAIT: Duration = Duration::from_secs(20);

fn ingest() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_ingest"));
    command.env("RUST_LOG", "info");
    command
}

fn run(command: &mut Command) -> Output {
    command.output().expect("the program runs")
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

#[test]
fn bad_values_are_bad_arguments() {
    let dir = tempfile::tempdir().expect("temp dir");
    let cases: [(&[&str], &str); 4] = [
        (&["--listen", "nonsense"], "--listen"),
        (
            &["--embedded-bus-listen", "127.0.0.1"],
            "--embedded-bus-listen",
        ),
        (&["--sync-interval", "0s"], "at least 10ms"),
        (&["accounts", "add", "--id", "x", "--name", "n"], "--id"),
    ];
    for (args, expected) in cases {
        let output = run(ingest().current_dir(dir.path()).args(args));
        assert_eq!(
            output.status.code(),
            Some(2),
            "{args:?}: {}",
            stderr(&output)
        );
        assert!(
            stderr(&output).contains(expected),
            "{args:?}: {}",
            stderr(&output)
        );
    }
    let output = run(Command::new(binary("busd", "busd")).args(["--listen", "7070"]));
    assert_eq!(output.status.code(), Some(2), "{}", stderr(&output));
    assert!(
        !dir.path().join("accounts.db").exists(),
        "nothing was started"
    );
}

#[test]
fn a_taken_address_is_a_failure_to_serve_not_a_bad_argument() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let dir = tempfile::tempdir().expect("temp dir");
    let output = run(ingest().current_dir(dir.path()).args([
        "--listen",
        &addr,
        "--embedded-bus-listen",
        "127.0.0.1:0",
    ]));
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(
        stderr(&output).contains("cannot listen on"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn a_variable_means_one_thing_to_one_program() {
    let dir = tempfile::tempdir().expect("temp dir");
    // TRACKER_LISTEN meant busd's address and ingest's at once: it is ignored, loudly.
    let proc = Proc::spawn(
        "ingest",
        ingest()
            .current_dir(dir.path())
            .env("TRACKER_LISTEN", "127.0.0.1:1")
            .env("TRACKER_INGEST_LISTEN", "127.0.0.1:0")
            .env("TRACKER_INGEST_EMBEDDED_BUS_LISTEN", "127.0.0.1:0")
            .env("TRACKER_ORIGIN", "old-name"),
    );
    proc.wait_stderr("TRACKER_LISTEN is ignored", WAIT);
    proc.wait_stderr("TRACKER_ORIGIN is deprecated", WAIT);
    let line = proc.wait_stderr("origin=", WAIT);
    assert!(
        line.contains("origin=old-name"),
        "the old name still works: {line}"
    );
    assert!(!line.contains("127.0.0.1:1 "), "{line}");
}

#[test]
fn a_bus_from_the_environment_is_said_out_loud() {
    let dir = tempfile::tempdir().expect("temp dir");
    let proc = Proc::spawn(
        "ingest",
        ingest()
            .current_dir(dir.path())
            .args(["--listen", "127.0.0.1:0"])
            .env("TRACKER_BUS", "127.0.0.1:9"),
    );
    proc.wait_stderr("publishing to the bus at 127.0.0.1:9", WAIT);
}

#[test]
fn every_flag_and_argument_has_help() {
    let helps: [&[&str]; 6] = [
        &["-h"],
        &["accounts", "add", "-h"],
        &["accounts", "set-active", "-h"],
        &["accounts", "seed", "-h"],
        &["accounts", "list", "-h"],
        &["accounts", "-h"],
    ];
    for args in helps {
        let output = run(ingest().args(args));
        assert!(output.status.success(), "{args:?}");
        assert_no_bare_entries(&String::from_utf8_lossy(&output.stdout), args);
    }
    for args in [
        &["publish", "-h"][..],
        &["watch", "-h"],
        &["stats", "-h"],
        &["doctor", "-h"],
    ] {
        let output = run(Command::new(binary("client", "busctl")).args(args));
        assert!(output.status.success(), "{args:?}");
        assert_no_bare_entries(&String::from_utf8_lossy(&output.stdout), args);
    }
}

/// Every option or argument in clap's help has a description: on its own line (after two
/// spaces) or on the next, deeper-indented one.
fn assert_no_bare_entries(help: &str, args: &[&str]) {
    let lines: Vec<&str> = help.lines().collect();
    let indent = |line: &str| line.len() - line.trim_start().len();
    for (i, line) in lines.iter().enumerate() {
        let entry = line.trim_start();
        if !(line.starts_with("  ") && (entry.starts_with('-') || entry.starts_with('<'))) {
            continue;
        }
        let inline = entry.contains("  ");
        let below = lines.get(i + 1).is_some_and(|next| {
            let text = next.trim_start();
            indent(next) > indent(line) && !text.is_empty() && !text.starts_with('-')
        });
        assert!(
            inline || below,
            "{args:?}: no description for {entry:?}\n{help}"
        );
    }
}
