//! The accounts store in a real PostgreSQL (a throwaway cluster from testkit): the schema is
//! created and seeded on first use, changes from psql reach the index through LISTEN/NOTIFY,
//! deletions too, a change made while the sync was away is caught up after a server restart,
//! and a table of another shape is refused. Skipped when PostgreSQL is not installed, except
//! in CI, where that fails them.

use std::sync::Arc;
use std::time::{Duration, Instant};

use data::postgres::{self, Fetch, Opened, PgSync};
use data::{Accounts, DataError, Status};
use testkit::postgres::{Postgres, skip_without_postgres};

async fn wait_until(what: &str, within: Duration, done: impl Fn() -> bool) -> Duration {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < within, "{what} (waited {within:?})");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    started.elapsed()
}

/// Opens (creating and seeding) the database at `url`, loads it and starts the sync.
async fn following(url: &str) -> (Arc<Accounts>, PgSync) {
    let config = postgres::config(url).unwrap();
    let (mut client, _) = postgres::open(&config).await.unwrap();
    let accounts = Arc::new(Accounts::default());
    postgres::load(&mut client, &accounts).await.unwrap();
    let sync = PgSync::start(config, accounts.clone());
    wait_until("the sync never connected", Duration::from_secs(10), || {
        sync.connected()
    })
    .await;
    (accounts, sync)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn created_and_seeded_on_first_use_only() {
    if skip_without_postgres() {
        return;
    }
    let pg = Postgres::start();
    let config = postgres::config(&pg.url()).unwrap();
    let (mut client, opened) = postgres::open(&config).await.unwrap();
    assert_eq!(
        opened,
        Opened {
            created: true,
            seeded: Some(1000),
            ..Opened::default()
        }
    );
    assert_eq!(
        pg.psql("SELECT count(*), count(*) FILTER (WHERE is_active) FROM accounts"),
        "1000|900"
    );
    assert_eq!(
        pg.psql("SELECT account_name FROM accounts WHERE account_id = 7"),
        "account-7"
    );
    let accounts = Accounts::default();
    assert_eq!(postgres::load(&mut client, &accounts).await.unwrap(), 1000);
    assert!(accounts.is_loaded());
    assert_eq!(accounts.status(1), Status::Active);
    assert_eq!(accounts.status(10), Status::Inactive);
    assert_eq!(accounts.status(1001), Status::Unknown);
    assert!(accounts.version() >= 1000);

    let (_, again) = postgres::open(&config).await.unwrap();
    assert_eq!(again, Opened::default(), "nothing created the second time");
    pg.psql("DELETE FROM accounts");
    let (_, emptied) = postgres::open(&config).await.unwrap();
    assert_eq!(
        emptied,
        Opened::default(),
        "an emptied table is not seeded again"
    );
    assert_eq!(pg.psql("SELECT count(*) FROM accounts"), "0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_by_psql_is_applied_within_a_second() {
    if skip_without_postgres() {
        return;
    }
    let pg = Postgres::start();
    let (accounts, sync) = following(&pg.url()).await;
    assert_eq!(accounts.status(7), Status::Active);
    pg.psql("UPDATE accounts SET is_active = false WHERE account_id = 7");
    let took = wait_until(
        "the deactivation was never applied",
        Duration::from_secs(1),
        || accounts.status(7) == Status::Inactive,
    )
    .await;
    eprintln!("update applied {took:?} after psql returned");
    pg.psql("INSERT INTO accounts(account_id, account_name, is_active) VALUES (5000, 'new', true)");
    wait_until(
        "the new account was never applied",
        Duration::from_secs(1),
        || accounts.status(5000) == Status::Active,
    )
    .await;
    sync.stop().await;
}

/// Write keys made with the admin functions (and revoked) reach a following index like any
/// other change; a hash written by hand with the wrong length locks the account.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_keys_are_followed() {
    if skip_without_postgres() {
        return;
    }
    let pg = Postgres::start();
    let (accounts, sync) = following(&pg.url()).await;
    let admin = postgres::admin::open_existing(&postgres::config(&pg.url()).unwrap())
        .await
        .unwrap();
    let (key, hash) = data::key::generate().unwrap();
    postgres::admin::set_key(&admin, 7, Some(&hash))
        .await
        .unwrap();
    wait_until("the key was never applied", Duration::from_secs(1), || {
        accounts.status(7) == Status::KeyMissing
    })
    .await;
    assert_eq!(accounts.check(7, Some(b"trk_0")), Status::KeyWrong);
    assert_eq!(accounts.check(7, Some(key.as_bytes())), Status::Active);
    let mut reader = postgres::admin::open_existing(&postgres::config(&pg.url()).unwrap())
        .await
        .unwrap();
    let reloaded = Accounts::default();
    postgres::load(&mut reader, &reloaded).await.unwrap();
    assert_eq!(
        reloaded.check(7, Some(key.as_bytes())),
        Status::Active,
        "a full load reads keys"
    );
    assert_eq!(reloaded.status(7), Status::KeyMissing);
    let stored = pg.psql("SELECT encode(key_hash, 'hex') FROM accounts WHERE account_id = 7");
    assert_eq!(stored.len(), 64, "only the hash is stored: {stored}");
    assert!(!stored.contains(&key[4..]));

    postgres::admin::set_key(&admin, 7, None).await.unwrap();
    wait_until(
        "the revocation was never applied",
        Duration::from_secs(1),
        || accounts.status(7) == Status::Active,
    )
    .await;
    pg.psql("UPDATE accounts SET key_hash = 'short' WHERE account_id = 8");
    wait_until(
        "a malformed hash never locked",
        Duration::from_secs(1),
        || accounts.status(8) == Status::KeyMissing,
    )
    .await;
    assert_eq!(accounts.check(8, Some(b"short")), Status::KeyWrong);
    assert!(matches!(
        postgres::admin::set_key(&admin, 99_999, None).await,
        Err(DataError::NotFound(99_999))
    ));
    sync.stop().await;
}

/// The admin functions work on the table ingest made, and refuse a database without one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_functions_need_the_table_and_keep_to_it() {
    if skip_without_postgres() {
        return;
    }
    let pg = Postgres::start();
    let config = postgres::config(&pg.url()).unwrap();
    let err = postgres::admin::open_existing(&config).await.err().unwrap();
    assert!(matches!(err, DataError::NoTable(_)), "{err}");
    assert_eq!(
        pg.psql("SELECT to_regclass('accounts') IS NULL"),
        "t",
        "nothing created"
    );

    postgres::open_seeded(&config, 3).await.unwrap();
    let admin = postgres::admin::open_existing(&config).await.unwrap();
    postgres::admin::add(&admin, 9, "nine", false)
        .await
        .unwrap();
    assert!(matches!(
        postgres::admin::add(&admin, 9, "again", true).await,
        Err(DataError::Exists(9))
    ));
    postgres::admin::set_active(&admin, 9, true).await.unwrap();
    assert_eq!(postgres::admin::seed(&admin, 5).await.unwrap(), 2);
    let mut out = Vec::new();
    let line = data::admin::Listed::line;
    assert_eq!(
        postgres::admin::list(&admin, &mut out, line).await.unwrap(),
        6
    );
    let out = String::from_utf8(out).unwrap();
    assert!(out.starts_with("1\taccount-1\tactive\tno-key\n"), "{out}");
    assert!(
        out.ends_with("5\taccount-5\tactive\tno-key\n9\tnine\tactive\tno-key\n"),
        "{out}"
    );
    postgres::admin::delete(&admin, 9).await.unwrap();
    assert!(matches!(
        postgres::admin::delete(&admin, 9).await,
        Err(DataError::NotFound(9))
    ));
    let mut out = Vec::new();
    assert_eq!(
        postgres::admin::list(&admin, &mut out, line).await.unwrap(),
        5
    );
}

/// A table made by hand before ingest first ran, and left empty, is seeded like a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_made_empty_table_is_seeded() {
    if skip_without_postgres() {
        return;
    }
    let pg = Postgres::start();
    pg.psql(
        "CREATE TABLE accounts(account_id BIGINT PRIMARY KEY, account_name TEXT NOT NULL,
         is_active BOOLEAN NOT NULL, version BIGINT NOT NULL DEFAULT 0, key_hash BYTEA)",
    );
    let config = postgres::config(&pg.url()).unwrap();
    let (_, opened) = postgres::open(&config).await.unwrap();
    let expected = Opened {
        seeded: Some(1000),
        ..Opened::default()
    };
    assert_eq!(opened, expected);
    assert_eq!(pg.psql("SELECT count(*) FROM accounts"), "1000");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletions_are_applied_and_a_readded_account_stays() {
    if skip_without_postgres() {
        return;
    }
    let pg = Postgres::start();
    let (accounts, sync) = following(&pg.url()).await;
    pg.psql("DELETE FROM accounts WHERE account_id = 2");
    wait_until(
        "the deletion was never applied",
        Duration::from_secs(1),
        || accounts.status(2) == Status::Unknown,
    )
    .await;
    assert_eq!(accounts.len(), 999);
    // Deleted and re-added in one transaction: the sync reads both and must keep it.
    pg.psql(
        "BEGIN; DELETE FROM accounts WHERE account_id = 3;
         INSERT INTO accounts(account_id, account_name, is_active) VALUES (3, 'back', false);
         COMMIT",
    );
    wait_until(
        "the re-add was never applied",
        Duration::from_secs(1),
        || accounts.status(3) == Status::Inactive,
    )
    .await;
    pg.psql("TRUNCATE accounts");
    wait_until(
        "the truncation was never applied",
        Duration::from_secs(1),
        || accounts.is_empty(),
    )
    .await;
    sync.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_made_while_disconnected_is_caught_up_after_a_restart() {
    if skip_without_postgres() {
        return;
    }
    let mut pg = Postgres::start();
    // The sync logs in as its own role, so the test can keep it out while it writes.
    pg.psql("CREATE ROLE ingest LOGIN SUPERUSER");
    let url = pg.url().replace("postgres@", "ingest@");
    let (accounts, sync) = following(&url).await;

    pg.psql("ALTER ROLE ingest NOLOGIN");
    pg.restart();
    wait_until(
        "the sync never noticed the restart",
        Duration::from_secs(5),
        || !sync.connected(),
    )
    .await;
    pg.psql("UPDATE accounts SET is_active = false WHERE account_id = 11");
    pg.psql("DELETE FROM accounts WHERE account_id = 12");
    // Long enough for a few failed reconnections.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!sync.connected(), "the sync cannot log in yet");
    assert_eq!(
        accounts.status(11),
        Status::Active,
        "kept from memory meanwhile"
    );
    assert_eq!(accounts.len(), 1000);

    pg.psql("ALTER ROLE ingest LOGIN");
    wait_until("the sync never came back", Duration::from_secs(15), || {
        sync.connected()
    })
    .await;
    assert_eq!(accounts.status(11), Status::Inactive);
    assert_eq!(accounts.status(12), Status::Unknown);
    pg.psql("UPDATE accounts SET is_active = false WHERE account_id = 13");
    wait_until(
        "changes after the reconnection are applied",
        Duration::from_secs(1),
        || accounts.status(13) == Status::Inactive,
    )
    .await;
    sync.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sync_waits_out_a_server_that_is_down() {
    if skip_without_postgres() {
        return;
    }
    let mut pg = Postgres::start();
    let (accounts, sync) = following(&pg.url()).await;
    pg.stop();
    wait_until("the sync never noticed", Duration::from_secs(5), || {
        !sync.connected()
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(accounts.len(), 1000, "the index is kept");
    pg.restart();
    wait_until("the sync never came back", Duration::from_secs(15), || {
        sync.connected()
    })
    .await;
    pg.psql("UPDATE accounts SET is_active = false WHERE account_id = 21");
    wait_until("changes are followed again", Duration::from_secs(1), || {
        accounts.status(21) == Status::Inactive
    })
    .await;
    sync.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_of_another_shape_is_refused() {
    if skip_without_postgres() {
        return;
    }
    let pg = Postgres::start();
    pg.psql("CREATE TABLE accounts(account_id INTEGER PRIMARY KEY, name TEXT, is_active BOOLEAN)");
    let config = postgres::config(&pg.url()).unwrap();
    let err = postgres::open(&config)
        .await
        .map(|_| ())
        .expect_err("refused");
    let message = err.to_string();
    assert!(matches!(err, DataError::Shape { .. }), "{message}");
    for difference in [
        "column account_id is integer, not bigint",
        "it has no column account_name",
        "column is_active allows NULL",
    ] {
        assert!(message.contains(difference), "{difference:?} in {message}");
    }
    assert!(message.contains(&format!("127.0.0.1:{}/tracker", pg.port())));
    assert_eq!(
        pg.psql("SELECT to_regclass('account_deletions') IS NULL"),
        "t",
        "nothing was created"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_table_without_the_version_column_gets_one() {
    if skip_without_postgres() {
        return;
    }
    let pg = Postgres::start();
    pg.psql(
        "CREATE TABLE accounts(account_id BIGINT PRIMARY KEY, account_name TEXT NOT NULL, is_active BOOLEAN NOT NULL);
         INSERT INTO accounts VALUES (1, 'one', true), (2, 'two', false)",
    );
    let config = postgres::config(&pg.url()).unwrap();
    let (mut client, opened) = postgres::open(&config).await.unwrap();
    assert_eq!(
        opened,
        Opened {
            version_added: true,
            key_hash_added: true,
            ..Opened::default()
        }
    );
    let accounts = Accounts::default();
    assert_eq!(postgres::load(&mut client, &accounts).await.unwrap(), 2);
    assert_eq!(accounts.status(2), Status::Inactive);
    pg.psql("UPDATE accounts SET is_active = true WHERE account_id = 2");
    assert_eq!(postgres::catch_up(&mut client, &accounts).await.unwrap(), 1);
    assert_eq!(accounts.status(2), Status::Active);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_way_of_reading_loads_and_reloads_the_same_index() {
    if skip_without_postgres() {
        return;
    }
    let pg = Postgres::start();
    let config = postgres::config(&pg.url()).unwrap();
    let (mut client, _) = postgres::open(&config).await.unwrap();
    pg.psql("DELETE FROM accounts WHERE account_id = 500");
    let highest = || -> u64 {
        pg.psql(
            "SELECT GREATEST((SELECT max(version) FROM accounts),
                             (SELECT max(version) FROM account_deletions))",
        )
        .parse()
        .unwrap()
    };
    // 999 rows: a cursor of 100 a fetch ends on a short batch, one of 333 on a full one.
    for fetch in [
        Fetch::Query,
        Fetch::Copy,
        Fetch::Cursor(100),
        Fetch::Cursor(333),
    ] {
        let read = postgres::read_by(&mut client, fetch).await.unwrap();
        assert_eq!(read, 999, "{fetch:?}");
        let accounts = Accounts::default();
        let loaded = postgres::load_by(&mut client, &accounts, fetch)
            .await
            .unwrap();
        assert_eq!((loaded, accounts.len()), (999, 999), "{fetch:?}");
        assert_eq!(accounts.status(1), Status::Active, "{fetch:?}");
        assert_eq!(accounts.status(10), Status::Inactive, "{fetch:?}");
        assert_eq!(accounts.status(500), Status::Unknown, "{fetch:?}");
        assert!(accounts.is_loaded(), "{fetch:?}");
        assert_eq!(accounts.version(), highest(), "{fetch:?}");

        // Again on the loaded index: what the table no longer has goes.
        pg.psql("BEGIN; DELETE FROM accounts WHERE account_id = 7; UPDATE accounts SET is_active = false WHERE account_id = 8; COMMIT");
        let reloaded = postgres::load_by(&mut client, &accounts, fetch)
            .await
            .unwrap();
        assert_eq!((reloaded, accounts.len()), (998, 998), "{fetch:?}");
        assert_eq!(accounts.status(7), Status::Unknown, "{fetch:?}");
        assert_eq!(accounts.status(8), Status::Inactive, "{fetch:?}");
        assert_eq!(accounts.version(), highest(), "{fetch:?}");
        // As it was, for the next way.
        pg.psql("INSERT INTO accounts(account_id, account_name, is_active) VALUES (7, 'account-7', true); UPDATE accounts SET is_active = true WHERE account_id = 8");
    }
}

/// A measurement more than a test: `cargo test -p data --release --test postgres --
/// --ignored --nocapture a_million`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement: seeds and loads a million accounts"]
async fn a_million_accounts_load() {
    if skip_without_postgres() {
        return;
    }
    let pg = Postgres::start();
    let config = postgres::config(&pg.url()).unwrap();
    let started = Instant::now();
    let (mut client, opened) = postgres::open_seeded(&config, 1_000_000).await.unwrap();
    assert_eq!(opened.seeded, Some(1_000_000));
    eprintln!("seeded 1,000,000 accounts in {:?}", started.elapsed());
    let accounts = Accounts::default();
    let started = Instant::now();
    assert_eq!(
        postgres::load(&mut client, &accounts).await.unwrap(),
        1_000_000
    );
    eprintln!("loaded 1,000,000 accounts in {:?}", started.elapsed());
    assert_eq!(accounts.status(999_990), Status::Inactive);
}
