//! `busctl watch --format template --template '...'` against the real busd: each event as
//! the template says, and mistakes refused as bad arguments.

use testkit::bus::{Busd, publish_events};

mod support;
use support::{WAIT, busctl, busctl_command};

#[tokio::test]
async fn events_print_as_the_template_says() {
    let busd = Busd::start(&[]);
    let addr = busd.addr.to_string();
    let template = "{account_id}|{data}|{origin}|{timestamp}|{{seq={seq}}}";
    let watcher = busctl(&[
        "watch",
        "--bus",
        &addr,
        "--format",
        "template",
        "--template",
        template,
        "--count",
        "2",
    ]);
    watcher.wait_stderr("live (epoch", WAIT);
    let events = [(5, "hello world".to_owned()), (6, "two\nlines".to_owned())];
    publish_events(busd.addr, "tests", &events).await;
    let lines = watcher.stdout_lines(2, WAIT);
    assert_eq!(
        lines,
        [
            "5|hello world|tests|2026-11-21T10:00:00.123456Z|{seq=1}",
            "6|two\\nlines|tests|2026-11-21T10:00:00.123456Z|{seq=2}",
        ]
    );

    // --template alone implies the template format.
    let alone = busctl(&[
        "watch",
        "--bus",
        &addr,
        "--template",
        "{data}",
        "--count",
        "1",
    ]);
    alone.wait_stderr("live (epoch", WAIT);
    publish_events(busd.addr, "tests", &[(1, "only".to_owned())]).await;
    assert_eq!(alone.stdout_lines(1, WAIT), ["only"]);
}

#[test]
fn template_mistakes_are_bad_arguments() {
    support::assert_bad_watch_args(&[
        (
            &["--template", "{acount_id}"][..],
            "unknown field {acount_id}",
        ),
        (&["--template", "{data"], "is not closed"),
        (
            &["--format", "template"],
            "--format template needs --template",
        ),
        (
            &["--format", "json", "--template", "{data}"],
            "--template needs --format template",
        ),
        (
            &["--template", "{data}", "--aggregate", "1s"],
            "cannot be used with",
        ),
    ]);
    let help = busctl_command(&["watch", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(help.contains("{timestamp} {account_id} {data}"), "{help}");
}

/// A gap prints as the text line, before the templated events after it.
#[tokio::test]
async fn a_gap_prints_as_the_text_line() {
    let busd = Busd::start(&["--replay-bytes", "1KiB"]);
    let events: Vec<(u64, String)> = (0..60).map(|i| (1, format!("e{i}"))).collect();
    publish_events(busd.addr, "tests", &events).await;
    let addr = busd.addr.to_string();
    let watcher = busctl(&[
        "watch",
        "--bus",
        &addr,
        "--from-beginning",
        "--template",
        "{seq} {data}",
        "--count",
        "1",
    ]);
    let lines = watcher.stdout_lines(2, WAIT);
    assert!(lines[0].starts_with("GAP  missed "), "{lines:?}");
    assert!(
        lines[1].ends_with(" e59") || lines[1].contains(" e"),
        "{lines:?}"
    );
    let seq: u64 = lines[1].split(' ').next().unwrap().parse().unwrap();
    assert!(lines[0].contains(&format!("and {}", seq - 1)), "{lines:?}");
}
