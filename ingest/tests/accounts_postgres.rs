//! ingest with `--db postgres://...` against a throwaway PostgreSQL: the table is created and
//! seeded on first use, a change made with psql answers differently within a second, and while
//! PostgreSQL is down ingest keeps answering from memory, then catches up. Skipped when
//! PostgreSQL is not installed.

mod support;

use std::time::{Duration, Instant};

use support::*;
use testkit::http::get;
use testkit::postgres::{Postgres, skip_without_postgres};

async fn wait_status(ingest: &Ingest, target: &str, status: u16, within: Duration) -> Duration {
    let started = Instant::now();
    loop {
        if get(ingest.http, target).await.status == status {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < within,
            "{target} never answered {status} within {within:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn accounts_in_postgres_are_created_followed_and_outlive_an_outage() {
    if skip_without_postgres() {
        return;
    }
    let mut pg = Postgres::start();
    let url = pg.url();
    let ingest = Ingest::start(&["--db", &url]);
    let log = ingest.proc.stderr_log();
    assert!(
        log.contains(&format!(
            "created the accounts table in {url} and seeded it with 1000 accounts"
        )),
        "{log}"
    );
    assert!(
        log.contains(&format!("accounts loaded from {url} accounts=1000")),
        "{log}"
    );
    assert_eq!(get(ingest.http, "/1000?data=x").await.status, 403);
    assert_eq!(get(ingest.http, "/999?data=x").await.status, 202);

    pg.psql("UPDATE accounts SET is_active = false WHERE account_id = 999");
    let took = wait_status(&ingest, "/999?data=x", 403, Duration::from_secs(1)).await;
    eprintln!("the deactivation answered 403 after {took:?}");

    pg.stop();
    ingest.proc.wait_stderr("lost PostgreSQL", WAIT);
    assert_eq!(
        get(ingest.http, "/998?data=x").await.status,
        202,
        "served from memory"
    );
    pg.restart();
    pg.psql("DELETE FROM accounts WHERE account_id = 998");
    ingest.proc.wait_stderr("is back after", WAIT);
    wait_status(&ingest, "/998?data=x", 404, Duration::from_secs(1)).await;

    let second = Ingest::start(&["--db", &url]);
    let log = second.proc.stderr_log();
    assert!(!log.contains("created the accounts table"), "{log}");
    assert!(
        log.contains(&format!("accounts loaded from {url} accounts=999")),
        "{log}"
    );
    assert_eq!(get(second.http, "/999?data=x").await.status, 403);
}

#[test]
fn the_accounts_commands_say_they_are_sqlite_only() {
    let output = accounts(
        std::path::Path::new("postgres://ingest:secret@127.0.0.1:1/tracker"),
        &["list"],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("SQLite files only"), "{stderr}");
    assert!(!stderr.contains("secret"), "{stderr}");
}
