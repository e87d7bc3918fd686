//! Faults in the accounts database file are never silent: a deleted file is reported and a
//! new one reloaded, an empty one is initialised, and the admin commands never create a
//! database by mistake.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use support::*;
use testkit::http::get;

fn stdout(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn stderr(output: &std::process::Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn file_names(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

async fn status(at: std::net::SocketAddr, account: u64) -> u16 {
    get(at, &format!("/{account}?data=x")).await.status
}

async fn metric(at: std::net::SocketAddr, name: &str) -> String {
    let body = get(at, "/metrics").await.body;
    body.lines()
        .find(|l| l.starts_with(name))
        .unwrap_or_else(|| panic!("no {name} in {body}"))
        .to_owned()
}

#[tokio::test]
async fn a_deleted_database_is_reported_and_a_new_one_reloaded() {
    let ingest = Ingest::start(&[]);
    let at = ingest.http;
    let db = ingest.db();
    assert_eq!(status(at, 5).await, 202);
    assert_eq!(status(at, 501).await, 202);
    assert_eq!(
        status(at, 500).await,
        403,
        "every tenth seeded account is inactive"
    );
    assert_eq!(
        metric(at, "tracker_ingest_accounts_file_ok").await,
        "tracker_ingest_accounts_file_ok 1"
    );

    std::fs::remove_file(&db).unwrap();
    let line = ingest
        .proc
        .wait_stderr("keeps serving", Duration::from_secs(2));
    assert!(
        line.contains("ERROR") && line.contains("accounts.db was deleted"),
        "{line}"
    );
    assert_eq!(status(at, 5).await, 202, "known accounts are still served");
    assert_eq!(
        metric(at, "tracker_ingest_accounts_file_ok").await,
        "tracker_ingest_accounts_file_ok 0"
    );

    let refused = ingest.accounts(&["set-active", "5", "false"]);
    assert_eq!(refused.status.code(), Some(1));
    let message = stderr(&refused);
    assert!(
        message.contains(&format!("{} does not exist", db.display()))
            && message.contains("ingest accounts seed --count N"),
        "{message}"
    );
    assert!(!db.exists(), "set-active created nothing");

    let seeded = ingest.accounts(&["seed", "--count", "10"]);
    assert!(seeded.status.success(), "{}", stderr(&seeded));
    assert_eq!(stdout(&seeded), "added 10 accounts\n");
    let start = Instant::now();
    while (
        status(at, 500).await,
        status(at, 501).await,
        status(at, 5).await,
    ) != (404, 404, 202)
    {
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "the new database was reloaded within 2 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    ingest
        .proc
        .wait_stderr("reloaded it in full (10 accounts)", Duration::from_secs(2));
    assert_eq!(
        metric(at, "tracker_ingest_accounts_file_ok").await,
        "tracker_ingest_accounts_file_ok 1"
    );
    assert_eq!(
        metric(at, "tracker_ingest_accounts ").await,
        "tracker_ingest_accounts 10"
    );
    assert_eq!(
        ingest.proc.stderr_log().matches("keeps serving").count(),
        1,
        "the error is logged once per incident"
    );

    assert!(
        ingest
            .accounts(&["set-active", "5", "false"])
            .status
            .success()
    );
    let start = Instant::now();
    while status(at, 5).await != 403 {
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "changes to the new database are followed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn a_zero_byte_database_is_initialised_and_seeded() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("accounts.db"), b"").unwrap();
    let ingest = Ingest::start_in(dir, &[]);
    let log = ingest.proc.stderr_log();
    assert!(
        log.contains("had no accounts table") && log.contains("seeded it with 1000 accounts"),
        "{log}"
    );
    assert_eq!(status(ingest.http, 5).await, 202);
}

#[tokio::test]
async fn an_empty_accounts_table_is_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    let seeded = accounts(&dir.path().join("accounts.db"), &["seed", "--count", "0"]);
    assert!(seeded.status.success(), "{}", stderr(&seeded));
    let ingest = Ingest::start_in(dir, &[]);
    let log = ingest.proc.stderr_log();
    assert!(
        log.contains("is empty: every event request will get 404 until accounts are added"),
        "{log}"
    );
    assert_eq!(status(ingest.http, 5).await, 404);
    assert_eq!(
        get(ingest.http, "/healthz").await.status,
        200,
        "ingest keeps running"
    );
}

#[test]
fn admin_commands_never_create_a_database() {
    let dir = tempfile::tempdir().unwrap();
    let typo = dir.path().join("typo.db");
    for args in [
        &["list"][..],
        &["set-active", "5", "false"],
        &["add", "--id", "7", "--name", "x"],
    ] {
        let output = accounts(&typo, args);
        assert_eq!(output.status.code(), Some(1), "{args:?}");
        assert!(
            stderr(&output).contains("typo.db does not exist"),
            "{}",
            stderr(&output)
        );
        assert!(stdout(&output).is_empty());
    }
    assert!(file_names(dir.path()).is_empty(), "nothing was created");

    let empty = dir.path().join("empty.db");
    std::fs::write(&empty, b"").unwrap();
    let output = accounts(&empty, &["list"]);
    assert_eq!(output.status.code(), Some(1));
    assert!(
        stderr(&output).contains("is not an accounts database"),
        "{}",
        stderr(&output)
    );
    assert_eq!(
        std::fs::metadata(&empty).unwrap().len(),
        0,
        "left as it was"
    );
}

#[test]
fn seed_on_a_new_path_gives_exactly_the_count() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("new.db");
    let seeded = accounts(&db, &["seed", "--count", "5"]);
    assert!(seeded.status.success(), "{}", stderr(&seeded));
    assert_eq!(stdout(&seeded), "added 5 accounts\n");
    let listed = accounts(&db, &["list"]);
    assert!(listed.status.success());
    assert_eq!(stdout(&listed).lines().count(), 5, "{}", stdout(&listed));

    let added = accounts(&db, &["add", "--id", "2000", "--name", "acme"]);
    assert_eq!(stdout(&added), "added account 2000 (acme, active)\n");
    let deactivated = accounts(&db, &["set-active", "5", "false"]);
    assert_eq!(stdout(&deactivated), "account 5 is now inactive\n");
    let again = accounts(&db, &["seed", "--count", "7"]);
    assert_eq!(
        stdout(&again),
        "added 2 accounts\n",
        "existing ids are kept"
    );
    let listed = stdout(&accounts(&db, &["list"]));
    assert_eq!(listed.lines().count(), 8);
    assert!(
        listed.contains("5\taccount-5\tinactive\tno-key\n"),
        "{listed}"
    );
}

/// `delete` says what it did and the running ingest answers the account 404 within a
/// second; `list --format json` prints one object a line that reads back.
#[tokio::test]
async fn a_deleted_account_is_404_and_list_speaks_json() {
    let ingest = Ingest::start(&[]);
    let at = ingest.http;
    assert_eq!(status(at, 5).await, 202);

    let deleted = ingest.accounts(&["delete", "5"]);
    assert!(deleted.status.success(), "{}", stderr(&deleted));
    assert_eq!(stdout(&deleted), "deleted account 5\n");
    let start = Instant::now();
    while status(at, 5).await != 404 {
        assert!(
            start.elapsed() < Duration::from_secs(1),
            "the deletion was applied within a second"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let again = ingest.accounts(&["delete", "5"]);
    assert_eq!(again.status.code(), Some(1));
    assert!(
        stderr(&again).contains("account 5 does not exist"),
        "{}",
        stderr(&again)
    );
    assert!(stdout(&again).is_empty());

    let listed = ingest.accounts(&["list", "--format", "json"]);
    assert!(listed.status.success(), "{}", stderr(&listed));
    let rows: Vec<serde_json::Value> = stdout(&listed)
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(rows.len(), 999, "1,000 seeded, one deleted");
    assert_eq!(
        rows[3],
        serde_json::json!({"account_id": 4, "name": "account-4", "active": true, "key": false})
    );
    assert_eq!(rows[4]["account_id"], 6, "5 is gone");
    assert_eq!(rows[8]["active"], false, "account 10 is inactive");

    let refused = ingest.accounts(&["list", "--format", "yaml"]);
    assert_eq!(refused.status.code(), Some(2), "bad arguments");
}
