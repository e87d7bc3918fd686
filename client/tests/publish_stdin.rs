//! `busctl publish` reading events from stdin against the real busd: text and JSON lines,
//! malformed lines reported and skipped, `--rate`, and a busd restart in the middle losing
//! and doubling nothing.

use std::io::Write;
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use testkit::bus::Busd;
use testkit::free_port;

mod support;
use support::{WAIT, busctl_command, json, watch};

/// `busctl publish --bus <bus> <args>` with stdin a pipe the test writes to.
fn publisher(bus: &str, args: &[&str]) -> Child {
    let mut argv = vec!["publish", "--bus", bus];
    argv.extend_from_slice(args);
    busctl_command(&argv)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("busctl runs")
}

fn finish(mut child: Child, input: &str) -> Output {
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(input.as_bytes()).expect("written");
    drop(stdin);
    child.wait_with_output().expect("busctl ends")
}

fn data_of(lines: &[String]) -> Vec<String> {
    lines
        .iter()
        .map(|l| {
            let line = json(l);
            format!("{}:{}", line["account_id"], line["data"].as_str().unwrap())
        })
        .collect()
}

#[tokio::test]
async fn text_and_json_lines_are_published_and_bad_ones_skipped() {
    let busd = Busd::start(&[]);
    let bus = busd.addr.to_string();
    let mut watcher = watch(&bus, &["--count", "4"]);
    let input = "5\thello world\n\
                 {\"account_id\":7,\"data\":\"from json\",\"seq\":99,\"origin\":\"old\"}\n\
                 oops\n\
                 \n\
                 x\tbad account\n\
                 {\"account_id\":1}\n\
                 5\ttabs\tinside\r\n\
                 6\tno newline at the end";
    let output = finish(publisher(&bus, &[]), input);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(0), "{stderr}");
    assert!(
        stderr.contains("line 3: expected account<TAB>data"),
        "{stderr}"
    );
    assert!(
        stderr.contains("line 5: \"x\" is not an account id"),
        "{stderr}"
    );
    assert!(stderr.contains("line 6: not an event in JSON"), "{stderr}");
    assert!(
        stderr.contains("published 4 events") && stderr.contains("skipped 3 malformed lines"),
        "{stderr}"
    );
    assert!(output.stdout.is_empty());
    let lines = watcher.stdout_lines(4, WAIT);
    assert_eq!(
        data_of(&lines),
        [
            "5:hello world",
            "7:from json",
            "5:tabs\tinside",
            "6:no newline at the end"
        ]
    );
    assert!(watcher.wait_exit(WAIT).success());
}

#[tokio::test]
async fn rate_spaces_the_events_out() {
    let busd = Busd::start(&[]);
    let bus = busd.addr.to_string();
    let watcher = watch(&bus, &["--count", "11"]);
    let input: String = (0..11).map(|i| format!("1\te{i}\n")).collect();
    let start = Instant::now();
    let output = finish(publisher(&bus, &["--rate", "20/s"]), &input);
    let took = start.elapsed();
    assert!(output.status.success());
    assert!(
        took >= Duration::from_millis(500),
        "11 events at 20/s: {took:?}"
    );
    assert_eq!(watcher.stdout_lines(11, WAIT).len(), 11);

    // --rate paces --repeat too.
    let start = Instant::now();
    let repeat = busctl_command(&[
        "publish",
        "--bus",
        &bus,
        "--account",
        "1",
        "--data",
        "r",
        "--repeat",
        "5",
        "--rate",
        "10",
    ])
    .output()
    .unwrap();
    assert!(repeat.status.success());
    assert!(start.elapsed() >= Duration::from_millis(400));
}

#[tokio::test]
async fn a_busd_restart_while_reading_stdin_loses_and_doubles_nothing() {
    let listen = format!("127.0.0.1:{}", free_port());
    let busd = Busd::start_on(&listen, &[]);
    let watcher = watch(&listen, &[]);
    let mut child = publisher(&listen, &[]);
    let mut stdin = child.stdin.take().expect("stdin");
    for i in 0..200 {
        writeln!(stdin, "{}\te{i}", i % 3).unwrap();
    }
    stdin.flush().unwrap();
    assert_eq!(watcher.stdout_lines(200, WAIT).len(), 200);
    busd.terminate();
    for i in 200..400 {
        writeln!(stdin, "{}\te{i}", i % 3).unwrap();
    }
    stdin.flush().unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let _restarted = Busd::start_on(&listen, &[]);
    drop(stdin);
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(stderr.contains("published 400 events"), "{stderr}");
    let rest = watcher.stdout_lines(200, WAIT);
    let data: Vec<String> = rest
        .iter()
        .map(|l| json(l)["data"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(
        data,
        (200..400).map(|i| format!("e{i}")).collect::<Vec<_>>()
    );
    std::thread::sleep(Duration::from_millis(300));
    assert!(watcher.stdout.try_recv().is_err(), "no copies");
}

#[test]
fn bad_publish_arguments_are_refused() {
    for (args, says) in [
        (&["--rate", "0/s"][..], "is not a rate"),
        (&["--account", "1"], "--data"),
        (&["--data", "x"], "--account"),
        (&["--repeat", "3"], "--data"),
    ] {
        let mut argv = vec!["publish", "--bus", "127.0.0.1:1"];
        argv.extend_from_slice(args);
        let output = busctl_command(&argv)
            .stdin(Stdio::null())
            .output()
            .expect("busctl runs");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
    let help = busctl_command(&["publish", "--help"]).output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("reported on stderr with its line number"),
        "{help}"
    );
}
