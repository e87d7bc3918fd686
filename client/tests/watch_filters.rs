//! `busctl watch --origin NAME --match REGEX` against the real busd, with `--accounts` and
//! history: busd filters the origins, busctl the data.

use protocol::Event;
use serde_json::Value;
use testkit::bus::{Busd, publish_until_acked};

mod support;
use support::{WAIT, busctl, busctl_command, json};

fn event(i: u64, origin: &str, data: &str) -> Event {
    Event {
        account_id: 1 + i % 2,
        timestamp_us: 1_795_341_600_000_000 + i,
        data: data.into(),
        origin: origin.into(),
        id: i + 1,
    }
}

/// Events 0..12 for accounts 1 and 2 from origins `a`, `b`, `c` in turn, data `x<i>` or
/// `y<i>` by whether i is a multiple of 4.
fn events(from: u64) -> Vec<Event> {
    (from..from + 12)
        .map(|i| {
            let origin = ["a", "b", "c"][(i % 3) as usize];
            let data = if i % 4 == 0 {
                format!("x{i}")
            } else {
                format!("y{i}")
            };
            event(i, origin, &data)
        })
        .collect()
}

fn summary(line: &Value) -> String {
    format!(
        "{}/{}/{}",
        line["account_id"],
        line["origin"].as_str().unwrap_or("-"),
        line["data"].as_str().unwrap_or("-")
    )
}

#[tokio::test]
async fn origins_data_and_accounts_combine() {
    let busd = Busd::start(&[]);
    let bus = busd.addr.to_string();
    let watcher = busctl(&[
        "watch",
        "--bus",
        &bus,
        "--format",
        "json",
        "--origin",
        "a",
        "--origin",
        "c",
        "--match",
        r"^y\d+$",
        "--accounts",
        "1",
    ]);
    watcher.wait_stderr("live (epoch", WAIT);
    publish_until_acked(busd.addr, "p1", 1, events(0)).await;
    // Account 1 is even i; origin a or c is i % 3 != 1; y is i % 4 != 0.
    let expected: Vec<String> = (0..12u64)
        .filter(|i| i % 2 == 0 && i % 3 != 1 && i % 4 != 0)
        .map(|i| format!("{}/{}/y{i}", 1 + i % 2, ["a", "b", "c"][(i % 3) as usize]))
        .collect();
    assert_eq!(expected, ["1/c/y2", "1/a/y6"]);
    let lines = watcher.stdout_lines(expected.len(), WAIT);
    let got: Vec<String> = lines.iter().map(|l| summary(&json(l))).collect();
    assert_eq!(got, expected);
    std::thread::sleep(std::time::Duration::from_millis(300));
    assert!(watcher.stdout.try_recv().is_err(), "nothing else");

    // With history: busd filters the ring by origin, busctl the data; --count counts what
    // is printed.
    let mut history = busctl(&[
        "watch",
        "--bus",
        &bus,
        "--format",
        "json",
        "--from-beginning",
        "--origin",
        "b",
        "--match",
        "x",
        "--count",
        "1",
    ]);
    let lines = history.stdout_lines(1, WAIT);
    assert_eq!(summary(&json(&lines[0])), "1/b/x4");
    assert!(history.wait_exit(WAIT).success());
}

#[test]
fn bad_filters_are_bad_arguments() {
    support::assert_bad_watch_args(&[
        (
            &["--match", "(unclosed"][..],
            "not a usable regular expression",
        ),
        (&["--origin", ""], "cannot be empty"),
        (&["--origin", "a,,b"], "cannot be empty"),
    ]);
    let help = busctl_command(&["watch", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("busd filters them") && help.contains("Applied in busctl"),
        "{help}"
    );
}
