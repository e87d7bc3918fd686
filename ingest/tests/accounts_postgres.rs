//! ingest with `--db postgres://...` against a throwaway PostgreSQL, over HTTP with the real
//! binary: the table is created and seeded on first use; a change made with psql answers
//! differently within a second, on every instance following the database; while PostgreSQL
//! is down (even under full load) ingest keeps answering from memory, and when it comes back
//! ingest catches up on what it missed; an address ingest cannot use stops it at once, with a
//! message that names the problem and never shows the password. Skipped when PostgreSQL is
//! not installed, except in CI, where that fails them.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use support::load::Load;
use support::*;
use testkit::http::get;
use testkit::postgres::{Postgres, skip_without_postgres};
use tokio::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

/// How soon after its commit a change must be answered: the product's promise.
const PROMISE: Duration = Duration::from_secs(1);

/// How soon ingest must give up on a database address it cannot use.
const PROMPTLY: Duration = Duration::from_secs(5);

/// What the load test sends: accounts whose status nothing changes, and that status.
const LOAD_MIX: [(u64, u16); 8] = [
    (1, 202),
    (2, 202),
    (3, 202),
    (4, 202),
    (7, 202),
    (8, 202),
    (10, 403),
    (1_000_001, 404),
];

/// The first ingest on an empty database creates the accounts table and seeds it, a second
/// one loads what is there; a change is answered within a second; while PostgreSQL is down
/// ingest answers from memory, and a change made before it reconnects is caught up.
#[tokio::test]
async fn accounts_in_postgres_are_created_followed_and_outlive_an_outage() {
    if skip_without_postgres() {
        return;
    }
    let _quiet = quiet().await;
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

/// Every ingest on a database follows it by itself: two instances both answer a change made
/// with psql, an update and then a new account, within a second of its commit.
#[tokio::test]
async fn two_instances_see_a_change_within_a_second() {
    if skip_without_postgres() {
        return;
    }
    let _quiet = quiet().await;
    let pg = Postgres::start();
    let (one, two) = (following(&pg), following(&pg));

    let committed = pg.commit("UPDATE accounts SET is_active = false WHERE account_id = 999");
    let (took_one, took_two) = tokio::join!(
        seen(one.http, "/999?data=x", 403, committed),
        seen(two.http, "/999?data=x", 403, committed),
    );
    within_promise("the deactivation", [took_one, took_two]);

    let committed = pg.commit("INSERT INTO accounts VALUES (5000, 'new', true)");
    let (took_one, took_two) = tokio::join!(
        seen(one.http, "/5000?data=x", 202, committed),
        seen(two.http, "/5000?data=x", 202, committed),
    );
    within_promise("the new account", [took_one, took_two]);
}

/// PostgreSQL stopping and coming back under full load costs no request: while a client
/// hammers ingest on several keep-alive connections (data of 1 to 4096 bytes), every request
/// during the outage gets the answer its account's status calls for, from memory (no 5xx, no
/// connection error); /metrics shows the accounts store down, then up; and a change made
/// after the restart is answered within a second of ingest's reconnection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_restart_under_load_is_answered_from_memory() {
    if skip_without_postgres() {
        return;
    }
    let _alone = alone().await;
    let mut pg = Postgres::start();
    let ingest = following(&pg);
    let load = Load::start(ingest.http, 4, &LOAD_MIX, 4096);
    load.wait_for(1000, WAIT).await;
    assert_eq!(store_up(ingest.http).await, 1, "following PostgreSQL");

    pg.stop();
    ingest.proc.wait_stderr("lost PostgreSQL", WAIT);
    assert_eq!(store_up(ingest.http).await, 0, "PostgreSQL is gone");
    let before = load.answered();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let during = load.answered() - before;

    pg.restart();
    let restarted = Instant::now();
    let committed = pg.commit("UPDATE accounts SET is_active = false WHERE account_id = 999");
    ingest.proc.wait_stderr("is back after", WAIT);
    let back = SystemTime::now();
    eprintln!(
        "ingest reconnected {:?} after the restart",
        restarted.elapsed()
    );
    let took = seen(ingest.http, "/999?data=x", 403, committed.max(back)).await;
    assert_eq!(store_up(ingest.http).await, 1, "following PostgreSQL again");

    let failures = load.stop().await;
    eprintln!("{during} requests answered during the outage; the change took {took:?}");
    assert_eq!(failures.count, 0, "{:#?}", failures.first);
    assert!(during >= 100, "only {during} requests during the outage");
    within_promise("the change after the reconnection", [took]);
}

/// A change committed while ingest's connection is gone never reaches it as a notification:
/// the catch-up when ingest reconnects applies it, updates, inserts and deletions alike. The
/// change and the killing of ingest's connection commit together, so ingest cannot be
/// listening again before the change is made.
#[tokio::test]
async fn a_change_made_while_disconnected_is_caught_up_on_reconnection() {
    if skip_without_postgres() {
        return;
    }
    let _quiet = quiet().await;
    let pg = Postgres::start();
    let ingest = following(&pg);
    assert_statuses(ingest.http, [("/5", 202), ("/6", 202), ("/5000", 404)]).await;

    let killed = pg.psql(
        "BEGIN;
         UPDATE accounts SET is_active = false WHERE account_id = 5;
         DELETE FROM accounts WHERE account_id = 6;
         INSERT INTO accounts VALUES (5000, 'new', true);
         SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity
             WHERE datname = 'tracker' AND pid <> pg_backend_pid();
         COMMIT",
    );
    assert_eq!(killed, "t", "ingest's one connection was terminated");
    let back = ingest.proc.wait_stderr("is back after", WAIT);
    assert!(
        back.contains("changes=3"),
        "caught up on reconnection: {back}"
    );
    assert_statuses(ingest.http, [("/5", 403), ("/6", 404), ("/5000", 202)]).await;
}

/// A URL that does not parse is a bad argument: ingest stops at once with exit code 2 (as
/// for every bad argument) and says what it expected.
#[test]
fn an_unparseable_url_is_refused_at_once() {
    let exit = run_until_exit(
        &["--db", "postgres://ingest@127.0.0.1:notaport/tracker"],
        PROMPTLY,
    );
    assert_eq!(exit.code, Some(2), "{}", exit.stderr);
    assert!(
        exit.stderr.contains("is not a usable PostgreSQL URL")
            && exit
                .stderr
                .contains("expected postgres://user@host:port/dbname"),
        "{}",
        exit.stderr
    );
}

/// The password in an unparseable URL stays out of what ingest prints, as it does for every
/// other message that names the database.
#[test]
fn the_password_of_an_unparseable_url_is_not_shown() {
    let exit = run_until_exit(
        &[
            "--db",
            "postgres://ingest:hunter2@127.0.0.1:notaport/tracker",
        ],
        PROMPTLY,
    );
    assert_eq!(exit.code, Some(2), "{}", exit.stderr);
    assert!(!exit.stderr.contains("hunter2"), "{}", exit.stderr);
}

/// A password given as a URL parameter (`?password=`), which the PostgreSQL client takes as
/// well as `user:password@`, is hidden like one in the user part.
#[test]
fn a_password_given_as_a_url_parameter_is_not_shown() {
    let url = "postgres://ingest@127.0.0.1:1/tracker?password=hunter2";
    let output = accounts(std::path::Path::new(url), &["list"]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("hunter2"), "{stderr}");
}

/// A wrong password stops ingest at once with exit code 1 and the server's reason, without
/// showing the password given; the right one is let in (so the role is set up right).
#[test]
fn a_wrong_password_is_refused_at_once_and_not_shown() {
    if skip_without_postgres() {
        return;
    }
    let pg = Postgres::start();
    pg.add_password_role("ingest", "right-horse");
    let exit = run_until_exit(&["--db", &pg.url_as("ingest", "wrong-horse")], PROMPTLY);
    assert_refused(&exit, "password authentication failed for user \"ingest\"");
    assert!(!exit.stderr.contains("-horse"), "{}", exit.stderr);

    let ingest = Ingest::start(&["--db", &pg.url_as("ingest", "right-horse")]);
    let log = ingest.proc.stderr_log();
    assert!(log.contains("accounts loaded from"), "{log}");
    assert!(!log.contains("-horse"), "{log}");
}

/// A database that does not exist stops ingest at once with exit code 1, naming it.
#[test]
fn a_missing_database_is_refused_at_once() {
    if skip_without_postgres() {
        return;
    }
    let pg = Postgres::start();
    let url = format!(
        "postgres://postgres:hunter2@127.0.0.1:{}/nosuchdb",
        pg.port()
    );
    let exit = run_until_exit(&["--db", &url], PROMPTLY);
    assert_refused(&exit, "database \"nosuchdb\" does not exist");
    assert!(!exit.stderr.contains("hunter2"), "{}", exit.stderr);
}

/// Nothing listening at the address at start: ingest does not wait for PostgreSQL (it would
/// have no accounts to answer with) but stops at once with exit code 1, naming the address.
#[test]
fn an_unreachable_server_at_start_is_refused_at_once() {
    let port = testkit::free_port();
    let exit = run_until_exit(
        &[
            "--db",
            &format!("postgres://ingest:hunter2@127.0.0.1:{port}/tracker"),
        ],
        PROMPTLY,
    );
    assert_refused(&exit, "Connection refused");
    assert!(
        exit.stderr.contains(&format!(
            "cannot open the accounts database postgres://ingest@127.0.0.1:{port}/tracker"
        )),
        "{}",
        exit.stderr
    );
    assert!(!exit.stderr.contains("hunter2"), "{}", exit.stderr);
}

/// `ingest accounts` on PostgreSQL: seed creates the table with exactly the accounts asked
/// for, the other commands change and list it, and an unreachable server is a clear error
/// with the password left out.
#[test]
fn the_accounts_commands_work_on_postgres() {
    if skip_without_postgres() {
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
    assert_eq!(run(&["delete", "100"]), "deleted account 100\n");
    assert_eq!(pg.psql("SELECT count(*) FROM accounts"), "7");
    let json = run(&["list", "--format", "json"]);
    let last: serde_json::Value = serde_json::from_str(json.lines().last().unwrap()).unwrap();
    assert_eq!(
        last,
        serde_json::json!({"account_id": 7, "name": "account-7", "active": true, "key": false}),
        "{json}"
    );

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

/// The load test has the machine's two cores to itself; the tests that time how soon a
/// change is answered take turns with it (not with each other), so it cannot slow them.
static MACHINE: RwLock<()> = RwLock::const_new(());

async fn quiet() -> RwLockReadGuard<'static, ()> {
    MACHINE.read().await
}

async fn alone() -> RwLockWriteGuard<'static, ()> {
    MACHINE.write().await
}

/// An ingest on `pg`'s database that has loaded the accounts and follows their changes.
fn following(pg: &Postgres) -> Ingest {
    let ingest = Ingest::start(&["--db", &pg.url()]);
    ingest
        .proc
        .wait_stderr("following account changes in PostgreSQL", WAIT);
    ingest
}

/// Asks `target` until it answers `status` and returns how long after `since` (a commit, by
/// the machine's clock) that was; fails after [`WAIT`].
async fn seen(http: SocketAddr, target: &str, status: u16, since: SystemTime) -> Duration {
    loop {
        if get(http, target).await.status == status {
            return SystemTime::now().duration_since(since).unwrap_or_default();
        }
        let waited = SystemTime::now().duration_since(since).unwrap_or_default();
        assert!(waited < WAIT, "{target} never answered {status}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn within_promise<const N: usize>(what: &str, took: [Duration; N]) {
    eprintln!("{what} was answered after {took:?}");
    assert!(
        took.iter().all(|took| *took < PROMISE),
        "{what} took {took:?}, not under {PROMISE:?}"
    );
}

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

async fn assert_statuses<const N: usize>(http: SocketAddr, expected: [(&str, u16); N]) {
    for (account, status) in expected {
        let reply = get(http, &format!("{account}?data=x")).await;
        assert_eq!(reply.status, status, "{account}: {}", reply.body);
    }
}

/// `tracker_ingest_accounts_file_ok` from /metrics: for PostgreSQL, 1 while ingest follows
/// the database and 0 while it answers from memory only.
async fn store_up(http: SocketAddr) -> i64 {
    let metrics = get(http, "/metrics").await.body;
    metrics
        .lines()
        .find_map(|line| line.strip_prefix("tracker_ingest_accounts_file_ok "))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or_else(|| panic!("no tracker_ingest_accounts_file_ok in\n{metrics}"))
}

/// Ingest stopped (within [`PROMPTLY`], or [`run_until_exit`] failed) with exit code 1,
/// saying `reason`.
fn assert_refused(exit: &Exit, reason: &str) {
    eprintln!("refused after {:?}", exit.took);
    assert_eq!(exit.code, Some(1), "{}", exit.stderr);
    assert!(exit.stderr.contains(reason), "{}", exit.stderr);
}
