//! busctl against the real busd, over loopback: filters, restarts, crashes, exit codes.

use std::collections::HashSet;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use testkit::bus::{Busd, event, publish_events, publish_until_acked};
use testkit::{Proc, free_port};

mod support;
use support::{WAIT, busctl, json, watch};

/// `busctl publish` of `repeat` copies of `data` for `account`.
fn publish(addr: &str, account: &str, data: &str, repeat: &str) -> Proc {
    busctl(&[
        "publish",
        "--bus",
        addr,
        "--account",
        account,
        "--data",
        data,
        "--repeat",
        repeat,
    ])
}

/// `busctl watch --aggregate` on `addr` (`args` starting with the window), once live.
fn aggregate(addr: &str, args: &[&str]) -> Proc {
    let mut argv = vec!["watch", "--bus", addr, "--aggregate"];
    argv.extend_from_slice(args);
    let proc = busctl(&argv);
    proc.wait_stderr("live (epoch", WAIT);
    proc
}

/// Publishes through the client library's publisher, as ingest does.
async fn publish_data(addr: std::net::SocketAddr, events: &[(u64, String)]) {
    publish_events(addr, "tests", events).await;
}

#[tokio::test]
async fn filtered_events_arrive_in_order_and_others_never() {
    let busd = Busd::start(&[]);
    let addr = busd.addr.to_string();
    let mut watcher = watch(&addr, &["--accounts", "1,5", "--count", "6"]);
    let mut sent = Vec::new();
    for round in 0..3 {
        let batch: Vec<(u64, String)> = (1..=6).map(|a| (a, format!("r{round}-a{a}"))).collect();
        sent.extend(
            batch
                .iter()
                .filter(|(a, _)| [1, 5].contains(a))
                .map(|(_, d)| d.clone()),
        );
        publish_data(busd.addr, &batch).await;
    }
    let lines = watcher.stdout_lines(6, WAIT);
    assert!(watcher.wait_exit(WAIT).success(), "--count exits 0");
    let events: Vec<Value> = lines.iter().map(|l| json(l)).collect();
    let data: Vec<&str> = events.iter().map(|e| e["data"].as_str().unwrap()).collect();
    assert_eq!(data, sent);
    let seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]));
    for e in &events {
        assert!(e["epoch"].as_u64().is_some_and(|epoch| epoch > 0), "{e}");
        assert_eq!(e["origin"], "tests");
        assert_eq!(e["timestamp_us"], 1_795_255_200_123_456u64);
        assert_eq!(e["timestamp"], "2026-11-21T10:00:00.123456Z");
    }
    assert!(watcher.stdout.try_recv().is_err(), "nothing else printed");
}

#[tokio::test]
async fn a_graceful_busd_restart_loses_and_doubles_nothing() {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let busd = Busd::start_on(&listen, &[]);
    let addr = busd.addr;
    let mut watcher = watch(&listen, &[]);
    let publisher = tokio::spawn(async move {
        for batch in 0..40u64 {
            let events: Vec<(u64, String)> = (0..10)
                .map(|i| (i, format!("e{}", batch * 10 + i)))
                .collect();
            publish_data(addr, &events).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    busd.terminate();
    let restarted = Busd::start_on(&listen, &[]);
    publisher.await.unwrap();

    let lines = watcher.stdout_lines(400, WAIT);
    let data: Vec<String> = lines
        .iter()
        .map(|l| json(l)["data"].as_str().unwrap().to_owned())
        .collect();
    let unique: HashSet<&String> = data.iter().collect();
    assert_eq!(unique.len(), 400, "every event exactly once");
    watcher.wait_stderr("nothing was missed", WAIT);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        watcher.stdout.try_recv().is_err(),
        "no duplicates and no gap lines"
    );
    watcher.signal("INT");
    assert!(watcher.wait_exit(WAIT).success());
    let summary = watcher.wait_stderr("events,", WAIT);
    assert!(
        summary.contains("400 events, 0 gaps, 1 reconnects"),
        "{summary}"
    );
    drop(restarted);
}

#[tokio::test]
async fn two_restarts_while_away_are_a_gap_never_nothing_missed() {
    let listen = format!("127.0.0.1:{}", free_port());
    let busd = Busd::start_on(&listen, &[]);
    let mut watcher = watch(&listen, &["--exit-on-gap"]);
    publish_data(busd.addr, &[(1, "first run".into())]).await;
    assert_eq!(json(&watcher.stdout_lines(1, WAIT)[0])["data"], "first run");
    // The watcher sleeps through a whole run of busd, whose event it never sees.
    watcher.signal("STOP");
    busd.terminate();
    let middle = Busd::start_on(&listen, &[]);
    publish_data(middle.addr, &[(1, "missed".into())]).await;
    middle.terminate();
    let _last = Busd::start_on(&listen, &[]);
    watcher.signal("CONT");
    let gap = json(&watcher.stdout_lines(1, WAIT)[0]);
    assert!(gap["gap"]["missed"].is_null(), "unknown size: {gap}");
    assert_eq!(
        watcher.wait_exit(WAIT).code(),
        Some(3),
        "--exit-on-gap fired"
    );
    let log = watcher.stderr_log();
    assert!(!log.contains("nothing was missed"), "{log}");
    assert!(log.contains("a run this watcher never saw"), "{log}");
}

#[tokio::test]
async fn a_copy_resent_after_a_crash_is_printed_once() {
    let listen = format!("127.0.0.1:{}", free_port());
    let busd = Busd::start_on(&listen, &[]);
    let watcher = watch(&listen, &[]);
    let batch: Vec<_> = (0..3).map(|i| event(1, &format!("once-{i}"))).collect();
    publish_until_acked(busd.addr, "resender", 1, batch.clone()).await;
    assert_eq!(watcher.stdout_lines(3, WAIT).len(), 3);
    // A crash before the ack reached the publisher: it sends the same events again to the
    // next busd, which numbers them afresh.
    busd.kill();
    let busd = Busd::start_on(&listen, &[]);
    watcher.wait_stderr("without a Goodbye", WAIT);
    publish_until_acked(busd.addr, "resender", 1, batch).await;
    publish_data(busd.addr, &[(1, "new".into())]).await;
    let lines = watcher.stdout_lines(2, WAIT);
    assert!(json(&lines[0])["gap"].is_object(), "{}", lines[0]);
    assert_eq!(json(&lines[1])["data"], "new", "the copies were dropped");
}

#[tokio::test]
async fn a_busd_crash_is_reported_as_a_gap_of_unknown_size() {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let busd = Busd::start_on(&listen, &[]);
    let watcher = watch(&listen, &[]);
    publish_data(busd.addr, &[(1, "before".into())]).await;
    assert_eq!(json(&watcher.stdout_lines(1, WAIT)[0])["data"], "before");
    busd.kill();
    let busd = Busd::start_on(&listen, &[]);
    watcher.wait_stderr("without a Goodbye", WAIT);
    let gap = json(&watcher.stdout_lines(1, WAIT)[0]);
    assert_eq!(gap["gap"]["from_seq"], 2);
    assert!(
        gap["gap"]["to_seq"].is_null() && gap["gap"]["missed"].is_null(),
        "{gap}"
    );
    publish_data(busd.addr, &[(1, "after".into())]).await;
    let after = json(&watcher.stdout_lines(1, WAIT)[0]);
    assert_eq!(
        (after["data"].as_str(), after["seq"].as_u64()),
        (Some("after"), Some(1))
    );
}

#[tokio::test]
async fn exit_on_gap_exits_3() {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let busd = Busd::start_on(&listen, &[]);
    let mut watcher = watch(&listen, &["--exit-on-gap"]);
    busd.kill();
    let _busd = Busd::start_on(&listen, &[]);
    assert_eq!(watcher.wait_exit(WAIT).code(), Some(3));
}

#[tokio::test]
async fn busctl_waits_for_a_busd_that_is_not_there_yet() {
    let listen = format!("127.0.0.1:{}", free_port());
    let watcher = busctl(&["watch", "--bus", &listen, "--format", "json"]);
    watcher.wait_stderr("reconnecting (attempt 2", WAIT);
    let busd = Busd::start_on(&listen, &[]);
    watcher.wait_stderr("live (epoch", WAIT);
    publish_data(busd.addr, &[(9, "finally".into())]).await;
    assert_eq!(json(&watcher.stdout_lines(1, WAIT)[0])["data"], "finally");
}

#[tokio::test]
async fn a_silent_busd_is_noticed_and_left_then_resumed() {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let busd = Busd::start_on(&listen, &[]);
    let watcher = watch(&listen, &[]);
    publish_data(busd.addr, &[(1, "one".into())]).await;
    watcher.stdout_lines(1, WAIT);
    // A stopped process keeps its sockets open but says nothing: a half-open connection.
    busd.signal("STOP");
    watcher.wait_stderr("quiet (last heartbeat", WAIT);
    watcher.wait_stderr("no heartbeat for", WAIT);
    busd.signal("CONT");
    watcher.wait_stderr("resumed after seq 1", WAIT);
    publish_data(busd.addr, &[(1, "two".into())]).await;
    assert_eq!(json(&watcher.stdout_lines(1, WAIT)[0])["data"], "two");
}

#[tokio::test]
async fn max_outage_exits_4() {
    let listen = format!("127.0.0.1:{}", free_port());
    let mut watcher = busctl(&["watch", "--bus", &listen, "--max-outage", "1s"]);
    assert_eq!(watcher.wait_exit(WAIT).code(), Some(4));
    watcher.wait_stderr("giving up", WAIT);
}

#[test]
fn bad_arguments_exit_2_with_a_clear_message() {
    for (args, expected) in [
        (vec!["watch", "--accounts", "5-1"], "5 is after 1"),
        (
            vec!["watch", "--accounts", "x"],
            "\"x\" is not an account id",
        ),
        (
            vec!["watch", "--aggregate", "5 parsecs"],
            "unknown time unit",
        ),
        (vec!["watch", "--max-outage", "soon"], "--max-outage"),
        (
            vec!["watch", "--all", "--accounts", "1"],
            "cannot be used with",
        ),
        (vec!["frobnicate"], "unrecognized subcommand"),
        (vec!["watch", "--count", "0"], "--count"),
        (
            vec!["publish", "--account", "1", "--data", "x", "--repeat", "0"],
            "--repeat",
        ),
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_busctl"))
            .args(&args)
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
    }
    let help = Command::new(env!("CARGO_BIN_EXE_busctl"))
        .args(["watch", "--help"])
        .output()
        .unwrap();
    assert!(help.status.success());
    assert!(String::from_utf8_lossy(&help.stdout).contains("4  bus unreachable"));
}

#[tokio::test]
async fn aggregate_prints_json_windows_when_piped() {
    let busd = Busd::start(&[]);
    let addr = busd.addr.to_string();
    let watcher = aggregate(&addr, &["500ms", "--top", "2"]);
    let batch: Vec<(u64, String)> = [7, 7, 7, 3, 3, 9]
        .iter()
        .map(|&a| (a, "x".to_owned()))
        .collect();
    publish_data(busd.addr, &batch).await;
    let window = loop {
        let window = json(&watcher.stdout_lines(1, WAIT)[0]);
        if window["events"] != 0 {
            break window;
        }
    };
    assert_eq!(window["events"], 6);
    assert_eq!(window["accounts_seen"], 3);
    assert_eq!(window["top"][0]["account_id"], 7);
    assert_eq!(window["top"][0]["count"], 3);
    assert_eq!(window["top"].as_array().unwrap().len(), 2);
    assert!(window["lag_p99_us"].as_u64().is_some());
}

#[tokio::test]
async fn publish_and_stats() {
    let busd = Busd::start(&[]);
    let addr = busd.addr.to_string();
    let mut watcher = watch(&addr, &["--accounts", "3", "--count", "5"]);
    let mut publish = publish(&addr, "3", "hi there", "5");
    assert!(publish.wait_exit(WAIT).success());
    let lines = watcher.stdout_lines(5, WAIT);
    assert!(lines.iter().all(|l| {
        json(l)["data"] == "hi there"
            && json(l)["origin"]
                .as_str()
                .is_some_and(|o| o.starts_with("busctl-"))
    }));
    assert!(watcher.wait_exit(WAIT).success());

    let mut stats = busctl(&[
        "stats", "--bus", &addr, "--format", "json", "--sample", "200ms",
    ]);
    let report = json(&stats.stdout_lines(1, WAIT)[0]);
    assert!(stats.wait_exit(WAIT).success());
    assert_eq!(report["published"], 5);
    assert!(report["published_per_sec"].is_number());
    assert_eq!(
        report["subscribers"].as_array().map(Vec::len),
        Some(0),
        "stats' own connection is not a subscriber: {report}"
    );
    let mut table = busctl(&["stats", "--bus", &addr, "--sample", "0s"]);
    let text = table.stdout_lines(5, WAIT).join("\n");
    assert!(table.wait_exit(WAIT).success());
    assert!(
        text.contains("published 5") && text.contains("DELIVERED"),
        "{text}"
    );
}

#[tokio::test]
async fn a_wrong_token_is_fatal_not_retried() {
    let busd = Busd::start(&["--token", "s3cret"]);
    let addr = busd.addr.to_string();
    let mut watcher = busctl(&["watch", "--bus", &addr, "--token", "nope"]);
    assert_eq!(watcher.wait_exit(WAIT).code(), Some(1));
    watcher.wait_stderr("missing or wrong token", WAIT);
    let mut ok = busctl(&["stats", "--bus", &addr, "--sample", "0s"]);
    assert_eq!(
        ok.wait_exit(WAIT).code(),
        Some(1),
        "stats without the token is refused too"
    );
    for variable in ["TRACKER_BUS_TOKEN", "TRACKER_TOKEN"] {
        let mut with_env = Proc::spawn(
            "busctl",
            Command::new(env!("CARGO_BIN_EXE_busctl"))
                .args(["stats", "--bus", &addr, "--sample", "0s"])
                .env(variable, "s3cret"),
        );
        assert!(with_env.wait_exit(WAIT).success(), "{variable} is read");
        if variable == "TRACKER_TOKEN" {
            with_env.wait_stderr("TRACKER_TOKEN is deprecated", WAIT);
        }
    }
}

#[tokio::test]
async fn aggregate_windows_follow_an_explicit_format() {
    let busd = Busd::start(&[]);
    let addr = busd.addr.to_string();
    let watcher = aggregate(&addr, &["300ms", "--format", "text"]);
    publish_data(busd.addr, &[(4, "x".into())]).await;
    let deadline = std::time::Instant::now() + WAIT;
    let mut table = String::new();
    while !table.contains("account       count") {
        assert!(std::time::Instant::now() < deadline, "no table: {table}");
        table.push_str(&watcher.stdout_lines(1, WAIT)[0]);
    }
    assert!(
        !table.starts_with('{'),
        "--format text is a table even piped: {table}"
    );
}

#[tokio::test]
async fn publish_streams_a_large_repeat() {
    let busd = Busd::start(&[]);
    let addr = busd.addr.to_string();
    let mut watcher = watch(&addr, &["--accounts", "2", "--count", "100000"]);
    let mut publish = publish(&addr, "2", "y", "100000");
    assert!(publish.wait_exit(WAIT).success());
    publish.wait_stderr("published 100000 events", WAIT);
    assert!(watcher.wait_exit(WAIT).success(), "all 100,000 arrived");
}

/// Every status line on stderr starts with the time it was written (RFC 3339, UTC).
#[tokio::test]
async fn status_lines_start_with_their_time() {
    let busd = Busd::start(&[]);
    let before = std::time::SystemTime::now() - Duration::from_secs(1);
    let mut watcher = watch(&busd.addr.to_string(), &[]);
    watcher.signal("INT");
    assert!(watcher.wait_exit(WAIT).success());
    watcher.wait_stderr("events,", WAIT);
    let after = std::time::SystemTime::now() + Duration::from_secs(1);
    let log = watcher.stderr_log();
    assert!(log.lines().count() >= 3, "{log}");
    for line in log.lines() {
        let (stamp, rest) = line.split_once(' ').unwrap_or_else(|| panic!("{line:?}"));
        assert!(rest.starts_with("busctl: "), "{line:?}");
        assert!(stamp.ends_with('Z'), "UTC: {line:?}");
        let at = humantime::parse_rfc3339(stamp).unwrap_or_else(|e| panic!("{line:?}: {e}"));
        assert!(before <= at && at <= after, "{line:?} is now");
    }
}
