//! ingest with `--db postgres://...` against a throwaway PostgreSQL: the table is created and
//! seeded on first use, a change made with psql answers differently within a second, and while
//! PostgreSQL is down ingest keeps answering from memory, then catches up. Skipped when
//! PostgreSQL is not installed.

mod support;

use std::time::{Duration, Instant};

use support::*;
use testkit::http::get;
use testkit::postgres::{Postgres, available};

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
    if !available() {
        eprintln!("skipped: PostgreSQL (initdb, pg_ctl, postgres, psql) is not installed");
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
    let metrics = get(ingest.http, "/metrics").await.body;
    assert!(
        metrics.contains("tracker_ingest_accounts_store_up 0"),
        "{metrics}"
    );
    pg.restart();
    pg.psql("DELETE FROM accounts WHERE account_id = 998");
    ingest.proc.wait_stderr("is back after", WAIT);
    wait_status(&ingest, "/998?data=x", 404, Duration::from_secs(1)).await;
    let metrics = get(ingest.http, "/metrics").await.body;
    assert!(
        metrics.contains("tracker_ingest_accounts_store_up 1"),
        "{metrics}"
    );

    let second = Ingest::start(&["--db", &url]);
    let log = second.proc.stderr_log();
    assert!(!log.contains("created the accounts table"), "{log}");
    assert!(
        log.contains(&format!("accounts loaded from {url} accounts=999")),
        "{log}"
    );
    assert_eq!(get(second.http, "/999?data=x").await.status, 403);
}

/// `ingest accounts` on PostgreSQL: seed creates the table with exactly the accounts asked
/// for, the other commands change and list it, and an unreachable server is a clear error
/// with the password left out.
#[test]
fn the_accounts_commands_work_on_postgres() {
    if !available() {
        eprintln!("skipped: PostgreSQL (initdb, pg_ctl, postgres, psql) is not installed");
        return;
    }
    let pg = Postgres::start();
    let url = pg.url();
    let db = std::path::Path::new(&url);
    let run = |args: &[&str]| {
        let output = accounts(db, args);
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(output.status.success(), "{args:?}: {stderr}");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    let refused = accounts(db, &["list"]);
    assert_eq!(refused.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("has no accounts table"), "{stderr}");

    assert_eq!(run(&["seed", "--count", "5"]), "added 5 accounts\n");
    assert_eq!(run(&["seed", "--count", "7"]), "added 2 accounts\n");
    run(&["add", "--id", "100", "--name", "hundred", "--inactive"]);
    run(&["set-active", "3", "false"]);
    let list = run(&["list"]);
    assert!(list.contains("3\taccount-3\tinactive\tno-key\n"), "{list}");
    assert!(list.ends_with("100\thundred\tinactive\tno-key\n"), "{list}");
    assert_eq!(pg.psql("SELECT count(*) FROM accounts"), "8");

    let output = accounts(
        std::path::Path::new("postgres://ingest:secret@127.0.0.1:1/tracker"),
        &["list"],
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("cannot use postgres://ingest:***@127.0.0.1:1/tracker"),
        "{stderr}"
    );
    assert!(!stderr.contains("secret"), "{stderr}");
}
