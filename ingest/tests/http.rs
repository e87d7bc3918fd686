//! The HTTP contract of the real ingest binary: every status of README's table, and what
//! happens to malformed, oversized and slow requests.

mod support;

use std::time::Duration;

use protocol::Filter;
use support::*;
use testkit::bus::{collect, subscriber};
use testkit::http::{Client, get};

#[tokio::test]
async fn every_status_of_the_table() {
    let ingest = Ingest::start(&[]);
    let at = ingest.http;
    let cases: [(&str, u16, &str); 9] = [
        ("/5?data=hello", 202, r#"{"status":"accepted"}"#),
        ("/abc?data=x", 400, r#"{"error":"bad_account_id"}"#),
        ("/-5?data=x", 400, r#"{"error":"bad_account_id"}"#),
        ("/5", 400, r#"{"error":"bad_data","reason":"missing"}"#),
        (
            "/5?data=%FF%FE",
            400,
            r#"{"error":"bad_data","reason":"not_utf8"}"#,
        ),
        ("/999999?data=x", 404, r#"{"error":"unknown_account"}"#),
        ("/10?data=x", 403, r#"{"error":"inactive_account"}"#),
        ("/healthz", 200, r#"{"status":"ok"}"#),
        (
            "/readyz",
            200,
            r#"{"accounts_loaded":true,"bus_connected":true}"#,
        ),
    ];
    for (target, status, body) in cases {
        let reply = get(at, target).await;
        assert_eq!(
            (reply.status, reply.body.as_str()),
            (status, body),
            "{target}"
        );
        assert_eq!(reply.header("content-type"), Some("application/json"));
    }
    let too_long = format!("/5?data={}", "a".repeat(4097));
    let reply = get(at, &too_long).await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (400, r#"{"error":"bad_data","reason":"too_long"}"#)
    );
    assert_eq!(
        get(at, &format!("/5?data={}", "a".repeat(4096)))
            .await
            .status,
        202
    );

    let mut client = Client::connect(at).await;
    let reply = client.request("DELETE", "/5?data=x").await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (405, r#"{"error":"method_not_allowed"}"#)
    );
    assert_eq!(reply.header("allow"), Some("GET, HEAD"));

    let uri = format!("/5?data={}", "a".repeat(9000));
    let reply = get(at, &uri).await;
    assert_eq!(reply.status, 414);

    let metrics = get(at, "/metrics").await;
    assert_eq!(metrics.status, 200);
    assert!(
        metrics
            .body
            .contains(r#"tracker_ingest_requests_total{outcome="accepted"} 2"#),
        "{}",
        metrics.body
    );
    assert!(
        metrics
            .body
            .contains("tracker_ingest_answer_duration_seconds_bucket")
    );
    assert!(metrics.body.contains("tracker_ingest_accounts 1000"));
}

#[tokio::test]
async fn head_checks_the_same_but_publishes_nothing() {
    let ingest = Ingest::start(&[]);
    let (mut sub, _) = subscriber(ingest.bus.unwrap(), Filter::All, None).await;
    let mut client = Client::connect(ingest.http).await;
    let probe = client.request("HEAD", "/5?data=probe").await;
    assert_eq!(probe.status, 202);
    assert_eq!(probe.header("content-length"), Some("21"));
    assert!(probe.body.is_empty());
    assert_eq!(client.request("HEAD", "/10?data=x").await.status, 403);
    assert_eq!(client.get("/5?data=real").await.status, 202);
    let (events, _) = collect(&mut sub, 1).await;
    assert_eq!(events[0].1.data, "real", "the probe made no event");
}

#[tokio::test]
async fn data_arrives_decoded() {
    let ingest = Ingest::start(&["--origin", "ingest-test"]);
    let (mut sub, _) = subscriber(ingest.bus.unwrap(), Filter::All, None).await;
    let mut client = Client::connect(ingest.http).await;
    for target in [
        "/1?data=a+b%20c",
        "/1?data=%E2%82%AC%20%F0%9F%98%80+%2B",
        "/1?x=1&data=caf%C3%A9&y=2",
        "/1?data=",
    ] {
        assert_eq!(client.get(target).await.status, 202, "{target}");
    }
    let (events, _) = collect(&mut sub, 4).await;
    let data: Vec<&str> = events.iter().map(|(_, e)| e.data.as_str()).collect();
    assert_eq!(data, ["a b c", "€ 😀 +", "café", ""]);
    assert!(
        events
            .iter()
            .all(|(_, e)| e.origin == "ingest-test" && e.account_id == 1)
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_micros() as u64;
    assert!(
        events
            .iter()
            .all(|(_, e)| now - e.timestamp_us < 60_000_000),
        "timestamps are now, in µs"
    );
}

#[tokio::test]
async fn account_changes_apply_without_a_restart() {
    let ingest = Ingest::start(&[]);
    let at = ingest.http;
    assert_eq!(get(at, "/7?data=x").await.status, 202);
    assert!(
        ingest
            .accounts(&["set-active", "7", "false"])
            .status
            .success()
    );
    let start = std::time::Instant::now();
    while get(at, "/7?data=x").await.status != 403 {
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "deactivation applied within a second"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(get(at, "/5000?data=x").await.status, 404);
    assert!(
        ingest
            .accounts(&["add", "--id", "5000", "--name", "newco"])
            .status
            .success()
    );
    let start = std::time::Instant::now();
    while get(at, "/5000?data=x").await.status != 202 {
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "a new account usable within a second"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let listed = ingest.accounts(&["list"]);
    let text = String::from_utf8_lossy(&listed.stdout);
    assert!(
        text.contains("7\taccount-7\tinactive\tno-key\n")
            && text.contains("5000\tnewco\tactive\tno-key\n")
    );
    let missing = ingest.accounts(&["set-active", "123456", "true"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("account 123456 does not exist"));
}

#[tokio::test]
async fn pipelined_requests_are_answered_in_order() {
    let ingest = Ingest::start(&[]);
    let mut client = Client::connect(ingest.http).await;
    let targets = [
        "/1?data=a",
        "/999999?data=b",
        "/10?data=c",
        "/abc",
        "/healthz",
        "/2?data=d",
    ];
    let batch: String = targets
        .iter()
        .map(|t| format!("GET {t} HTTP/1.1\r\nHost: x\r\n\r\n"))
        .collect();
    client.send_raw(batch.as_bytes()).await;
    let mut statuses = Vec::new();
    for _ in targets {
        statuses.push(client.read_reply(false).await.expect("a reply").status);
    }
    assert_eq!(statuses, [202, 404, 403, 400, 200, 202]);
}

#[tokio::test]
async fn http10_and_connection_close_are_honoured() {
    let ingest = Ingest::start(&[]);
    let mut client = Client::connect(ingest.http).await;
    client.send_raw(b"GET /1?data=x HTTP/1.0\r\n\r\n").await;
    assert_eq!(client.read_reply(false).await.unwrap().status, 202);
    assert!(client.closed().await, "HTTP/1.0 closes after the response");
    let mut client = Client::connect(ingest.http).await;
    client
        .send_raw(
            b"GET /1?data=x HTTP/1.1\r\nConnection: close\r\n\r\nGET /1?data=y HTTP/1.1\r\n\r\n",
        )
        .await;
    let reply = client.read_reply(false).await.unwrap();
    assert_eq!(reply.header("connection"), Some("close"));
    assert!(
        client.closed().await,
        "nothing after Connection: close is served"
    );
}

#[tokio::test]
async fn bad_requests_are_answered_or_cut_while_others_are_served() {
    let ingest = Ingest::start(&["--header-timeout", "500ms"]);
    let at = ingest.http;
    let mut healthy = Client::connect(at).await;

    let mut with_body = Client::connect(at).await;
    with_body
        .send_raw(b"GET /1?data=x HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello")
        .await;
    let reply = with_body.read_reply(false).await.unwrap();
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (400, r#"{"error":"body_not_allowed"}"#)
    );
    assert!(with_body.closed().await);
    let mut chunked = Client::connect(at).await;
    chunked
        .send_raw(b"POST /1 HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n")
        .await;
    assert_eq!(chunked.read_reply(false).await.unwrap().status, 400);
    assert!(
        chunked.closed().await,
        "the body is never read as a request"
    );

    let mut flood = Client::connect(at).await;
    let headers: String = (0..40).map(|i| format!("X-{i}: v\r\n")).collect();
    flood
        .send_raw(format!("GET /1?data=x HTTP/1.1\r\n{headers}\r\n").as_bytes())
        .await;
    assert_eq!(flood.read_reply(false).await.unwrap().status, 431);
    let mut big_head = Client::connect(at).await;
    big_head
        .send_raw(format!("GET /1?data=x HTTP/1.1\r\nX: {}\r\n\r\n", "v".repeat(9000)).as_bytes())
        .await;
    assert_eq!(big_head.read_reply(false).await.unwrap().status, 431);

    let mut garbage = Client::connect(at).await;
    garbage
        .send_raw(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n")
        .await;
    assert_eq!(garbage.read_reply(false).await.unwrap().status, 400);

    let mut slow = Client::connect(at).await;
    slow.send_raw(b"GET /1?data=x HTTP/1.1\r\nHost:").await;
    for _ in 0..3 {
        assert_eq!(healthy.get("/1?data=meanwhile").await.status, 202);
        tokio::time::sleep(Duration::from_millis(100)).await;
        slow.send_raw(b" a").await;
    }
    let reply = slow
        .read_reply(false)
        .await
        .expect("a 408 before the close");
    assert_eq!(
        reply.status, 408,
        "a dribbling head does not reset the timeout"
    );
    assert!(slow.closed().await);
    assert_eq!(healthy.get("/1?data=after").await.status, 202);
}

#[tokio::test]
async fn idle_connections_close_after_the_idle_timeout_and_busy_ones_stay() {
    let ingest = Ingest::start(&["--idle-timeout", "2s", "--header-timeout", "200ms"]);
    let at = ingest.http;
    let mut idle = Client::connect(at).await;
    assert_eq!(idle.get("/1?data=once").await.status, 202);
    let mut busy = Client::connect(at).await;
    // Requests every 100 ms for twice the idle timeout: each one moves the deadline on,
    // however the timer behind it is kept.
    let started = std::time::Instant::now();
    for i in 0..25 {
        assert_eq!(busy.get(&format!("/1?data=busy{i}")).await.status, 202);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(started.elapsed() > Duration::from_millis(2500));
    assert_eq!(
        busy.get("/1?data=still").await.status,
        202,
        "a connection in use is not closed for idleness"
    );
    assert!(idle.closed().await, "an idle connection is closed");

    // A head begun right after a request gets the header timeout from its start: the
    // deadline moves sooner than the idle one.
    busy.send_raw(b"GET /1?data=x HTTP/1.1\r\nHost:").await;
    let begun = std::time::Instant::now();
    let reply = busy
        .read_reply(false)
        .await
        .expect("a 408 before the close");
    assert_eq!(reply.status, 408);
    assert!(
        begun.elapsed() < Duration::from_millis(1000),
        "answered at the header timeout, not the idle one: {:?}",
        begun.elapsed()
    );
}

#[test]
fn bad_flags_exit_2() {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_ingest"))
        .args(["--max-head", "lots"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_ingest"))
        .args(["accounts", "set-active", "5", "maybe"])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
}

/// Sends `raw` on a new connection and reads one reply.
async fn raw(at: std::net::SocketAddr, raw: &str) -> testkit::http::Reply {
    let mut client = Client::connect(at).await;
    client.send_raw(raw.as_bytes()).await;
    client
        .read_reply(raw.starts_with("HEAD"))
        .await
        .expect("a reply")
}

#[tokio::test]
async fn request_targets_are_read_as_rfc_9112_says() {
    let ingest = Ingest::start(&[]);
    let at = ingest.http;
    let (mut sub, _) = subscriber(ingest.bus.expect("embedded"), Filter::All, None).await;
    // The absolute-form is the same request as its path.
    let reply = raw(
        at,
        "GET http://ingest.example:8080/5?data=absolute HTTP/1.1\r\nHost: x\r\n\r\n",
    )
    .await;
    assert_eq!(reply.status, 202, "{}", reply.body);
    let (events, _) = collect(&mut sub, 1).await;
    assert_eq!(events[0].1.data, "absolute");
    // A fragment is never sent by a client: it is malformed, not data.
    let reply = raw(at, "GET /5?data=a#frag HTTP/1.1\r\nHost: x\r\n\r\n").await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (400, r#"{"error":"bad_request"}"#)
    );
    // Content-Length is digits only.
    let reply = raw(
        at,
        "GET /5?data=a HTTP/1.1\r\nHost: x\r\nContent-Length: +0\r\n\r\n",
    )
    .await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (400, r#"{"error":"bad_request"}"#)
    );
    let reply = raw(
        at,
        "GET /5?data=zero HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
    )
    .await;
    assert_eq!(reply.status, 202);
    // One account, one URL.
    let reply = get(at, "/0005?data=a").await;
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (400, r#"{"error":"bad_account_id"}"#)
    );
}

#[tokio::test]
async fn no_response_may_be_cached() {
    let ingest = Ingest::start(&[]);
    let at = ingest.http;
    for target in [
        "/5?data=a",
        "/999999?data=a",
        "/abc",
        "/healthz",
        "/readyz",
        "/metrics",
    ] {
        let reply = get(at, target).await;
        assert_eq!(reply.header("cache-control"), Some("no-store"), "{target}");
    }
    let reply = raw(at, "HEAD /5?data=a HTTP/1.1\r\n\r\n").await;
    assert_eq!(reply.header("cache-control"), Some("no-store"));
    let reply = raw(at, "DELETE /5 HTTP/1.1\r\n\r\n").await;
    assert_eq!(
        (reply.status, reply.header("cache-control")),
        (405, Some("no-store"))
    );
}

#[tokio::test]
async fn cors_is_off_by_default_and_exact_when_on() {
    let plain = Ingest::start(&[]);
    let preflight = "OPTIONS /5?data=a HTTP/1.1\r\nOrigin: https://app.example\r\n\
                     Access-Control-Request-Method: GET\r\n\
                     Access-Control-Request-Headers: authorization\r\n\r\n";
    let reply = raw(plain.http, preflight).await;
    assert_eq!(reply.status, 405);
    assert_eq!(reply.header("access-control-allow-origin"), None);

    let ingest = Ingest::start(&["--cors-origin", "https://app.example,https://other.example"]);
    let at = ingest.http;
    let reply = raw(at, preflight).await;
    assert_eq!(reply.status, 204);
    assert_eq!(
        reply.header("access-control-allow-origin"),
        Some("https://app.example")
    );
    assert_eq!(
        reply.header("access-control-allow-methods"),
        Some("GET, HEAD")
    );
    assert_eq!(
        reply.header("access-control-allow-headers"),
        Some("Authorization")
    );
    assert_eq!(reply.header("vary"), Some("Origin"));
    assert_eq!(reply.header("content-length"), None);

    let get_from =
        |origin: &str| format!("GET /5?data=cors HTTP/1.1\r\nHost: x\r\nOrigin: {origin}\r\n\r\n");
    let reply = raw(at, &get_from("https://other.example")).await;
    assert_eq!(reply.status, 202);
    assert_eq!(
        reply.header("access-control-allow-origin"),
        Some("https://other.example")
    );
    let reply = raw(at, &get_from("https://evil.example")).await;
    assert_eq!(
        reply.status, 202,
        "CORS is the browser's check, not an auth check"
    );
    assert_eq!(reply.header("access-control-allow-origin"), None);
    let reply = raw(at, &preflight.replace("app.example", "evil.example")).await;
    assert_eq!(reply.status, 405);
    assert_eq!(reply.header("access-control-allow-origin"), None);
}
