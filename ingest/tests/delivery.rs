//! What a 202 promises, against real processes: an accepted event reaches subscribers exactly
//! once through busd restarts, a full buffer turns into 503s, and shutdown drains.

mod support;

use std::collections::HashSet;
use std::process::Command;
use std::time::Duration;

use protocol::{Filter, Position, Role, ServerFrame};
use support::*;
use testkit::bus::{Busd, collect, join, next_or_closed, subscriber};
use testkit::http::get;
use testkit::{Proc, binary, free_port};

#[tokio::test]
async fn a_busd_restart_under_load_loses_no_accepted_event() {
    let listen = format!("127.0.0.1:{}", free_port());
    let busd = Busd::start_on(&listen, &[]);
    let ingest = Ingest::start(&["--bus", &listen]);
    let watcher = Proc::spawn(
        "busctl",
        Command::new(binary("client", "busctl"))
            .args(["watch", "--bus", &listen, "--format", "json"]),
    );
    watcher.wait_stderr("live (epoch", WAIT);

    let at = ingest.http;
    let load = tokio::spawn(async move {
        let mut accepted = Vec::new();
        for round in 0..30 {
            accepted.extend(send(at, &format!("r{round}"), 50).await);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        accepted
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    busd.terminate();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _busd = Busd::start_on(&listen, &[]);
    let accepted = load.await.unwrap();
    assert!(
        accepted.len() >= 1400,
        "most requests were accepted: {}",
        accepted.len()
    );

    let mut seen = Vec::new();
    let wanted: HashSet<&String> = accepted.iter().collect();
    while seen.len() < accepted.len() {
        let line = watcher
            .stdout
            .recv_timeout(WAIT)
            .expect("every accepted event arrives");
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert!(value.get("gap").is_none(), "no gap: {line}");
        seen.push(value["data"].as_str().unwrap().to_owned());
    }
    let unique: HashSet<&String> = seen.iter().collect();
    assert_eq!(unique.len(), seen.len(), "nothing twice");
    assert_eq!(unique, wanted, "exactly the accepted events");
}

#[tokio::test]
async fn a_full_buffer_answers_503_then_recovers_when_busd_returns() {
    let listen = format!("127.0.0.1:{}", free_port());
    let ingest = Ingest::start(&["--bus", &listen, "--buffer-events", "5"]);
    let at = ingest.http;
    assert_eq!(
        get(at, "/readyz").await.status,
        503,
        "not ready without the bus"
    );
    let accepted = send(at, "early", 5).await;
    assert_eq!(accepted.len(), 5);
    let full = get(at, "/1?data=one-too-many").await;
    assert_eq!(
        (full.status, full.body.as_str()),
        (503, r#"{"error":"bus_unavailable"}"#)
    );
    assert_eq!(full.header("retry-after"), Some("1"));

    let busd = Busd::start_on(&listen, &[]);
    let (_, epoch, _) = join(busd.addr, Role::Subscriber, "peek").await;
    let (mut sub, _) = subscriber(busd.addr, Filter::All, Some(Position { epoch, seq: 0 })).await;
    let (events, _) = collect(&mut sub, 5).await;
    let data: Vec<String> = events.into_iter().map(|(_, e)| e.data).collect();
    assert_eq!(data, accepted, "the buffered events arrive, in order");
    let start = std::time::Instant::now();
    while get(at, "/readyz").await.status != 200 {
        assert!(start.elapsed() < WAIT);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(get(at, "/1?data=later").await.status, 202);
}

#[tokio::test]
async fn sigterm_drains_every_accepted_event_first() {
    let mut ingest = Ingest::start(&[]);
    let (mut sub, _) = subscriber(ingest.bus.unwrap(), Filter::All, None).await;
    let accepted = send(ingest.http, "drain", 300).await;
    ingest.proc.signal("TERM");
    let mut seen = 0;
    loop {
        match next_or_closed(&mut sub).await {
            Some(ServerFrame::Events(events)) => seen += events.len(),
            Some(ServerFrame::Goodbye { last_seq, .. }) => {
                assert_eq!(last_seq as usize, accepted.len());
                break;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(seen, accepted.len());
    assert!(ingest.proc.wait_exit(WAIT).success());
    ingest
        .proc
        .wait_stderr("every accepted event was acknowledged by the bus", WAIT);
}

#[tokio::test]
async fn a_fresh_directory_gets_a_seeded_database() {
    let ingest = Ingest::start(&[]);
    let log = ingest.proc.stderr_log();
    assert!(
        log.contains("created accounts.db and seeded it with 1000 accounts"),
        "{log}"
    );
    assert!(log.contains("accounts loaded accounts=1000"), "{log}");
    assert!(ingest.db().exists());
    assert_eq!(
        get(ingest.http, "/1000?data=x").await.status,
        403,
        "every tenth account is inactive"
    );
    assert_eq!(get(ingest.http, "/999?data=x").await.status, 202);
}
