//! Write keys against the real binaries, on SQLite and on PostgreSQL: `ingest accounts key`
//! prints a key once; from then on the account's requests without it, or with another, get 401
//! with `WWW-Authenticate` and publish nothing, the right key gets 202, and after `--revoke`
//! no key is needed. The key never appears in any log.

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use protocol::{Filter, ServerFrame};
use support::*;
use testkit::bus::{next, subscriber};
use testkit::http::{Client, Reply};
use testkit::postgres::{Postgres, skip_without_postgres};

/// One request for `target`, with an `Authorization` header when given.
async fn get_with(at: SocketAddr, target: &str, authorization: Option<&str>) -> Reply {
    let mut client = Client::connect(at).await;
    let header = authorization.map_or(String::new(), |value| format!("Authorization: {value}\r\n"));
    let request = format!("GET {target} HTTP/1.1\r\nHost: t\r\n{header}\r\n");
    client.send_raw(request.as_bytes()).await;
    client.read_reply(false).await.expect("a reply")
}

/// Waits until a request without a key for account 7 gets `status`: the store's change has
/// reached the running ingest.
async fn until_unkeyed_gets(at: SocketAddr, status: u16) {
    let started = Instant::now();
    while get_with(at, "/7?data=probe", None).await.status != status {
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "account 7 never answered {status} without a key"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Runs `ingest accounts key 7 [--revoke]`; returns stdout, checking stderr holds no key.
fn key_command(db: &Path, extra: &[&str]) -> String {
    let output = accounts(db, &[&["key", "7"], extra].concat());
    let stdout = String::from_utf8_lossy(&output.stdout).trim().to_owned();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert!(!stderr.contains("trk_"), "a key in the log: {stderr}");
    stdout
}

/// The whole promise, against an ingest whose `--db` is `db`.
async fn keys_are_enforced(ingest: &Ingest, db: &Path) {
    let (mut sub, _) = subscriber(ingest.bus.expect("embedded bus"), Filter::All, None).await;
    let key = key_command(db, &[]);
    assert!(key.starts_with("trk_") && key.len() == 68, "{key}");
    until_unkeyed_gets(ingest.http, 401).await;

    let missing = get_with(ingest.http, "/7?data=no", None).await;
    assert_eq!(missing.status, 401);
    assert_eq!(
        missing.header("www-authenticate"),
        Some(r#"Bearer realm="tracker""#)
    );
    assert_eq!(
        missing.body,
        r#"{"error":"unauthorized","reason":"missing_key"}"#
    );
    let wrong = get_with(ingest.http, "/7?data=no", Some("Bearer trk_0000")).await;
    assert_eq!(wrong.status, 401);
    assert_eq!(
        wrong.header("www-authenticate"),
        Some(r#"Bearer realm="tracker", error="invalid_token""#)
    );
    assert_eq!(
        wrong.body,
        r#"{"error":"unauthorized","reason":"wrong_key"}"#
    );
    let other_scheme = get_with(ingest.http, "/7?data=no", Some(&format!("Basic {key}"))).await;
    assert_eq!(other_scheme.status, 401);
    let truncated = &key[..key.len() - 1];
    let almost = get_with(
        ingest.http,
        "/7?data=no",
        Some(&format!("Bearer {truncated}")),
    )
    .await;
    assert_eq!(almost.status, 401);

    let right = get_with(ingest.http, "/7?data=keyed", Some(&format!("Bearer {key}"))).await;
    assert_eq!(right.status, 202, "{}", right.body);
    assert_eq!(
        get_with(ingest.http, "/6?data=open", None).await.status,
        202
    );
    let published = received(&mut sub, 2).await;
    assert_eq!(published, [(7, "keyed".to_owned()), (6, "open".to_owned())]);

    assert!(key_command(db, &["--revoke"]).contains("no write key"));
    until_unkeyed_gets(ingest.http, 202).await;
    let log = ingest.proc.stderr_log();
    assert!(!log.contains(&key[4..]), "the key in ingest's log: {log}");
    let metrics = get_with(ingest.http, "/metrics", None).await.body;
    assert!(
        metrics.contains(r#"requests_total{outcome="unauthorized"}"#),
        "{metrics}"
    );
}

/// The next `n` events published, as (account, data), skipping the waits' probes.
async fn received(sub: &mut testkit::bus::Conn, n: usize) -> Vec<(u64, String)> {
    let mut events = Vec::new();
    while events.len() < n {
        if let ServerFrame::Events(batch) = next(sub).await {
            events.extend(
                batch
                    .into_iter()
                    .filter(|(_, event)| event.data != "probe")
                    .map(|(_, event)| (event.account_id, event.data)),
            );
        }
    }
    events
}

#[tokio::test]
async fn keys_on_sqlite() {
    let ingest = Ingest::start(&[]);
    keys_are_enforced(&ingest, &ingest.db()).await;
}

#[tokio::test]
async fn keys_on_postgres() {
    if skip_without_postgres() {
        return;
    }
    let pg = Postgres::start();
    let url = pg.url();
    let ingest = Ingest::start(&["--db", &url]);
    keys_are_enforced(&ingest, Path::new(&url)).await;
    let stored = pg.psql("SELECT key_hash IS NULL FROM accounts WHERE account_id = 7");
    assert_eq!(stored, "t", "revoked");
}
