//! `busctl watch --last N | --since | --from-beginning` against the real busd: history from
//! the replay ring, then live events, and a gap line first when the ring no longer reaches
//! back as far as asked.

use std::time::Duration;

use protocol::Event;
use serde_json::Value;
use testkit::bus::{Busd, publish_until_acked};

mod support;
use support::{WAIT, busctl, json};

/// 2026-11-22T10:00:00Z, in µs.
const T0: u64 = 1_795_341_600_000_000;
const MINUTE: u64 = 60_000_000;

/// Event `i` of the history: account 1 or 2 by parity, a minute apart from T0.
fn event(i: u64) -> Event {
    Event {
        account_id: 1 + i % 2,
        timestamp_us: T0 + i * MINUTE,
        data: format!("e{i}"),
        origin: "history".into(),
        id: i + 1,
    }
}

/// busctl watch --format json on `bus` with `args`, its first `n` lines once it is live.
fn watch_lines(bus: &str, args: &[&str], n: usize) -> Vec<Value> {
    let mut argv = vec!["watch", "--bus", bus, "--format", "json"];
    argv.extend_from_slice(args);
    let mut watcher = busctl(&argv);
    let lines = watcher.stdout_lines(n, WAIT);
    if args.contains(&"--count") {
        assert!(watcher.wait_exit(WAIT).success(), "{args:?}");
    }
    lines.iter().map(|l| json(l)).collect()
}

fn data(lines: &[Value]) -> Vec<&str> {
    lines
        .iter()
        .map(|l| l["data"].as_str().unwrap_or("GAP"))
        .collect()
}

#[tokio::test]
async fn history_comes_first_then_live_events() {
    let busd = Busd::start(&[]);
    let bus = busd.addr.to_string();
    publish_until_acked(busd.addr, "history", 1, (0..10).map(event).collect()).await;

    let last = watch_lines(&bus, &["--accounts", "1", "--last", "2", "--count", "2"], 2);
    assert_eq!(data(&last), ["e6", "e8"], "the last two of account 1");

    let all = watch_lines(&bus, &["--from-beginning", "--count", "10"], 10);
    assert_eq!(
        data(&all),
        (0..10).map(|i| format!("e{i}")).collect::<Vec<_>>()
    );

    let since = watch_lines(
        &bus,
        &["--since", "2026-11-22T11:07:00+01:00", "--count", "3"],
        3,
    );
    assert_eq!(data(&since), ["e7", "e8", "e9"], "an offset is honoured");
    let zulu = watch_lines(
        &bus,
        &[
            "--since",
            "2026-11-22T10:09:00Z",
            "--accounts",
            "2",
            "--count",
            "1",
        ],
        1,
    );
    assert_eq!(data(&zulu), ["e9"]);

    // History, then what is published after: one watch, in order, nothing twice.
    let watcher = busctl(&["watch", "--bus", &bus, "--format", "json", "--last", "1"]);
    let first = watcher.stdout_lines(1, WAIT);
    assert_eq!(json(&first[0])["data"], "e9");
    watcher.wait_stderr("live (epoch", WAIT);
    publish_until_acked(busd.addr, "history", 2, vec![event(10)]).await;
    let next = watcher.stdout_lines(1, WAIT);
    assert_eq!(json(&next[0])["data"], "e10");
    std::thread::sleep(Duration::from_millis(300));
    assert!(watcher.stdout.try_recv().is_err(), "nothing else");

    // A duration back from now: the events are days old, so none.
    let mut recent = busctl(&["watch", "--bus", &bus, "--since", "10m", "--format", "json"]);
    recent.wait_stderr("live (epoch", WAIT);
    publish_until_acked(
        busd.addr,
        "history",
        3,
        vec![Event {
            timestamp_us: plumbing::clock::now_us(),
            ..event(11)
        }],
    )
    .await;
    let line = recent.stdout_lines(1, WAIT);
    assert_eq!(json(&line[0])["data"], "e11", "only the live event");
    recent.signal("INT");
    recent.wait_exit(WAIT);
}

#[tokio::test]
async fn history_older_than_the_ring_is_a_gap_line_first() {
    let busd = Busd::start(&["--replay-bytes", "2KiB"]);
    let bus = busd.addr.to_string();
    for batch in 0..10 {
        let events = (batch * 10..batch * 10 + 10).map(event).collect();
        publish_until_acked(busd.addr, "history", batch + 1, events).await;
    }
    for args in [
        &["--from-beginning"][..],
        &["--last", "1000"],
        &["--since", "2026-11-22T10:00:00Z"],
    ] {
        let mut argv = args.to_vec();
        argv.extend(["--count", "1"]);
        let lines = watch_lines(&bus, &argv, 2);
        let gap = &lines[0]["gap"];
        assert_eq!(gap["from_seq"], 1, "{args:?}: {lines:?}");
        let to_seq = gap["to_seq"].as_u64().unwrap();
        assert_eq!(
            lines[1]["seq"],
            to_seq + 1,
            "{args:?}: then the oldest held"
        );
    }
    let held = watch_lines(&bus, &["--last", "3", "--count", "3"], 3);
    assert_eq!(data(&held), ["e97", "e98", "e99"], "held: no gap");
}

#[test]
fn history_flags_are_checked() {
    support::assert_bad_watch_args(&[
        (&["--since", "yesterday"][..], "neither a duration"),
        (&["--last", "0"], "--last"),
        (&["--last", "3", "--from-beginning"], "cannot be used with"),
        (&["--since", "5m", "--last", "3"], "cannot be used with"),
    ]);
}
