//! `busctl stats --watch [INTERVAL]` against the real busd: JSON lines when piped, a table
//! per refresh with --format text, publishers beside subscribers, busctl's own connection
//! never a subscriber, and a lost busd retried.

use std::time::Duration;

use futures::SinkExt;
use protocol::{ClientFrame, Role};
use serde_json::Value;
use testkit::bus::{Busd, event, join, next, publish};
use testkit::free_port;

mod support;
use support::{WAIT, busctl, busctl_command, json, watch};

fn publisher<'a>(line: &'a Value, name: &str) -> &'a Value {
    line["publishers"]
        .as_array()
        .and_then(|list| list.iter().find(|p| p["name"] == name))
        .unwrap_or_else(|| panic!("no publisher {name} in {line}"))
}

#[tokio::test]
async fn watch_prints_json_lines_with_publishers_and_subscribers() {
    let busd = Busd::start(&[]);
    let bus = busd.addr.to_string();
    let _watcher = watch(&bus, &["--accounts", "1"]);
    let (mut dup, _, _) = join(busd.addr, Role::Publisher, "ingest-dup").await;
    let events: Vec<_> = (0..3).map(|i| event(1, &format!("d{i}"))).collect();
    publish(&mut dup, 1, events.clone()).await;
    // The same batch id again: acknowledged, dropped as a duplicate.
    dup.send(ClientFrame::Publish {
        batch_id: 1,
        events,
    })
    .await
    .unwrap();
    next(&mut dup).await;

    let mut stats = busctl(&["stats", "--bus", &bus, "--watch", "300ms"]);
    let first = json(&stats.stdout_lines(1, WAIT)[0]);
    let (mut steady, _, _) = join(busd.addr, Role::Publisher, "ingest-steady").await;
    for batch in 1..=20 {
        publish(&mut steady, batch, vec![event(2, "s")]).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let lines: Vec<Value> = stats
        .stdout_lines(2, WAIT)
        .iter()
        .map(|l| json(l))
        .collect();
    stats.signal("INT");
    assert!(stats.wait_exit(WAIT).success(), "Ctrl-C ends it");

    assert!(
        first["published_per_sec"].is_null(),
        "no rate from one sample"
    );
    let dup_stats = publisher(&first, "ingest-dup");
    assert_eq!(dup_stats["batches"], 1);
    assert_eq!(dup_stats["events"], 3);
    assert_eq!(dup_stats["duplicate_batches"], 1);
    assert_eq!(dup_stats["connected"], true);
    let last = lines.last().unwrap();
    assert!(last["published_per_sec"].is_number(), "{last}");
    let steady_stats = publisher(last, "ingest-steady");
    assert!(steady_stats["events"].as_u64().unwrap() > 0);
    assert!(steady_stats["events_per_sec"].is_number(), "{last}");
    for line in lines.iter().chain([&first]) {
        let names: Vec<&str> = line["subscribers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["name"].as_str().unwrap())
            .collect();
        assert_eq!(
            names.len(),
            1,
            "the watcher, and not busctl stats: {names:?}"
        );
        assert!(names[0].starts_with("busctl-watch-"), "{names:?}");
    }
    drop(steady);
    drop(dup);

    // Text, piped: a table per refresh, publishers beside the subscribers.
    let mut table = busctl(&[
        "stats", "--bus", &bus, "--watch", "200ms", "--format", "text",
    ]);
    table.wait_stdout("PUBLISHER (ORIGIN)", WAIT);
    table.wait_stdout("PUBLISHER (ORIGIN)", WAIT);
    let row = table.wait_stdout("ingest-dup", WAIT);
    assert!(row.contains(" no "), "disconnected now: {row}");
    table.signal("INT");
    assert!(table.wait_exit(WAIT).success());

    // Without --watch, the one report has the publishers too.
    let mut once = busctl(&["stats", "--bus", &bus, "--format", "json", "--sample", "0s"]);
    let report = json(&once.stdout_lines(1, WAIT)[0]);
    assert!(once.wait_exit(WAIT).success());
    assert_eq!(publisher(&report, "ingest-steady")["events"], 20);
}

#[tokio::test]
async fn a_lost_busd_is_retried_every_interval() {
    let listen = format!("127.0.0.1:{}", free_port());
    let busd = Busd::start_on(&listen, &[]);
    let mut stats = busctl(&["stats", "--bus", &listen, "--watch", "200ms"]);
    let before = json(&stats.stdout_lines(1, WAIT)[0]);
    busd.kill();
    stats.wait_stderr("trying again in 200ms", WAIT);
    let restarted = Busd::start_on(&listen, &[]);
    let after = loop {
        let line = json(&stats.stdout_lines(1, WAIT)[0]);
        if line["epoch"] != before["epoch"] {
            break line;
        }
    };
    assert!(after["epoch"].as_u64() > before["epoch"].as_u64());
    stats.signal("INT");
    assert!(stats.wait_exit(WAIT).success());
    drop(restarted);
}

#[test]
fn a_zero_interval_is_refused() {
    let output = busctl_command(&["stats", "--bus", "127.0.0.1:1", "--watch", "0s"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let help = busctl_command(&["stats", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("--watch [<INTERVAL>]") && help.contains("JSON lines"),
        "{help}"
    );
}

/// On a terminal the table is redrawn in place: the screen is cleared before each one.
#[test]
fn on_a_terminal_the_table_is_redrawn() {
    let busd = Busd::start(&[]);
    let busctl = env!("CARGO_BIN_EXE_busctl");
    let command = format!(
        "timeout -s INT 1 {busctl} stats --bus {} --watch 200ms",
        busd.addr
    );
    // util-linux script gives the command a terminal and copies what it wrote.
    let output = std::process::Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .env_remove("TRACKER_BUS")
        .output()
        .expect("script runs");
    let text = String::from_utf8_lossy(&output.stdout);
    let redraws = text.matches("\x1b[2J\x1b[H").count();
    assert!(redraws >= 2, "cleared before each table: {text:?}");
    assert_eq!(
        text.matches("PUBLISHER (ORIGIN)").count(),
        redraws,
        "{text:?}"
    );
    assert!(
        !text.contains("\"epoch\""),
        "no JSON on a terminal: {text:?}"
    );
}
