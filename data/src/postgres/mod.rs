//! The accounts in PostgreSQL, for ingest on many machines: every ingest keeps the same
//! in-memory [`Accounts`] index as with SQLite, loaded from and kept in step with one shared
//! database.
//!
//! The table mirrors the SQLite one (`accounts(account_id, account_name, is_active, version)`
//! and `account_deletions(account_id, version)`), and so does the idea: every change gets a
//! higher `version`, stamped by triggers so a change from any tool (psql included) counts, and
//! a sync reads only what is newer than the last version it applied. What differs:
//!
//! * Versions come from a sequence, and every statement that writes the table first takes a
//!   transaction-level advisory lock ([`WRITE_LOCK`]). Without it two transactions could
//!   commit their versions out of order (5 after 6), and a sync that had already applied 6
//!   would never read 5. Account changes are rare, so serialising them costs nothing.
//! * Instead of polling, each write sends `NOTIFY tracker_accounts` (payload: the newest
//!   version handed out, a hint only) and each ingest `LISTEN`s, so a change is applied as
//!   soon as it commits. On every (re)connection the sync first `LISTEN`s and then reads
//!   every change newer than the last it applied, so a change made while it was away (or
//!   between the two) is never missed; a poll every [`POLL_EVERY`] covers the rest.
//! * When PostgreSQL is down the index stays as it is and keeps answering; the sync says so
//!   in the log, reconnects with [`plumbing::backoff::Backoff`] and catches up.

use std::collections::HashSet;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use plumbing::backoff::Backoff;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_postgres::{AsyncMessage, IsolationLevel, NoTls};
use tokio_util::sync::CancellationToken;

pub use tokio_postgres::{Client, Config};

pub mod admin;

use crate::schema::SEED_ACCOUNTS;
use crate::{Account, Accounts, DataError, Result};

/// The channel each write to the accounts table notifies and each sync listens on.
pub const CHANNEL: &str = "tracker_accounts";

/// The advisory lock (a transaction-level one) that serialises writes to the accounts table
/// and schema creation, so versions commit in the order they are handed out. Any constant
/// works; this one spells "trackacc" in ASCII, unlikely to collide with another program's.
pub const WRITE_LOCK: i64 = 0x7472_6163_6b61_6363;

/// How often the sync reads changes even without a notification: a safety net, and a probe
/// that finds a dead connection the operating system has not reported.
pub const POLL_EVERY: Duration = Duration::from_secs(5);

/// The longest wait between reconnection attempts: a change made while PostgreSQL was away
/// is applied at most this long after it is back. One attempt every two seconds from each
/// ingest is nothing for a database.
pub const RECONNECT_AT_MOST_EVERY: Duration = Duration::from_secs(2);

/// How long one statement (a catch-up, the schema check) may take before the connection is
/// taken for dead. Generous: a full reload of a million accounts takes a few seconds.
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a connection attempt may take, unless the URL sets `connect_timeout`.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Whether a `--db` value names a PostgreSQL database (`postgres://` or `postgresql://`)
/// rather than an SQLite file.
pub fn is_url(db: &str) -> bool {
    db.starts_with("postgres://") || db.starts_with("postgresql://")
}

/// Parses a PostgreSQL URL, with [`CONNECT_TIMEOUT`] unless it sets its own.
pub fn config(url: &str) -> Result<Config> {
    let mut config = Config::from_str(url)
        .map_err(|err| DataError::PostgresUrl(redact(url), err.to_string()))?;
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(CONNECT_TIMEOUT);
    }
    Ok(config)
}

/// The URL without its password, for logs and messages: both where it may be, in the user
/// part (`user:password@`) and as a `password=` parameter.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    // The last `@`: an unescaped one in a password must not leave the rest of it showing.
    let redacted = match rest.rsplit_once('@') {
        Some((userinfo, host)) if userinfo.contains(':') => {
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{scheme}://{user}:***@{host}")
        }
        _ => url.to_owned(),
    };
    redact_password_parameter(&redacted)
}

/// Replaces the value of every `password=` parameter (after `?` or `&`) with `***`.
fn redact_password_parameter(url: &str) -> String {
    let Some((base, query)) = url.split_once('?') else {
        return url.to_owned();
    };
    let params: Vec<String> = query
        .split('&')
        .map(|param| match param.split_once('=') {
            Some((name, _)) if name.eq_ignore_ascii_case("password") => format!("{name}=***"),
            _ => param.to_owned(),
        })
        .collect();
    format!("{base}?{}", params.join("&"))
}

/// `user@host:port/dbname` of a configuration, for logs: which database, never a password.
pub fn describe(config: &Config) -> String {
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .zip(config.get_ports().iter().chain(std::iter::repeat(&5432)))
        .map(|(host, port)| match host {
            tokio_postgres::config::Host::Tcp(name) => format!("{name}:{port}"),
            tokio_postgres::config::Host::Unix(path) => format!("{}:{port}", path.display()),
        })
        .collect();
    format!(
        "postgres://{}@{}/{}",
        config.get_user().unwrap_or_default(),
        hosts.join(","),
        config.get_dbname().unwrap_or_default()
    )
}

/// Connects, driving the connection on its own task; the receiver gets the notifications
/// and closes when the connection ends, which is how the sync learns it lost the server.
pub async fn connect(
    config: &Config,
) -> Result<(
    Client,
    mpsc::UnboundedReceiver<tokio_postgres::Notification>,
)> {
    let (client, mut connection) = config.connect(NoTls).await?;
    let (sender, receiver) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(note)) => {
                    let _ = sender.send(note);
                }
                Ok(AsyncMessage::Notice(notice)) => {
                    tracing::debug!(notice = %notice.message(), "PostgreSQL notice")
                }
                Ok(_) => {}
                Err(err) => {
                    tracing::debug!(%err, "the connection to PostgreSQL ended");
                    break;
                }
            }
        }
    });
    Ok((client, receiver))
}

/// What [`open`] found and did, so ingest can say so.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Opened {
    /// The accounts table did not exist, and was created.
    pub created: bool,
    /// The table was seeded with this many accounts: it was created, or it was empty and
    /// had never held an account (made by hand before the first start). A table emptied
    /// later is not seeded again: its deletions are recorded, and may be on purpose.
    pub seeded: Option<u64>,
    /// The table existed without a `version` column, which was added.
    pub version_added: bool,
    /// The table existed without a `key_hash` column (made before write keys), which was
    /// added.
    pub key_hash_added: bool,
}

/// The columns ingest needs: name, type as `format_type` spells it, and whether it may be
/// NULL. Absent `version` and `key_hash` columns are added; any other difference refuses.
const COLUMNS: [(&str, &str, bool); 5] = [
    ("account_id", "bigint", false),
    ("account_name", "text", false),
    ("is_active", "boolean", false),
    ("version", "bigint", false),
    ("key_hash", "bytea", true),
];

/// The columns [`open`] adds to a table that lacks them, and how.
const ADDABLE: [(&str, &str); 2] = [
    (
        "version",
        "ALTER TABLE accounts ADD COLUMN version BIGINT NOT NULL DEFAULT 0",
    ),
    ("key_hash", "ALTER TABLE accounts ADD COLUMN key_hash BYTEA"),
];

/// Everything but the accounts table itself, all idempotent. `$$` bodies are plain SQL
/// strings here, not format arguments: the lock key is spliced in by [`schema_sql`].
const SCHEMA: &str = r#"
CREATE INDEX IF NOT EXISTS accounts_by_version ON accounts(version);
-- Deletions leave a row here, so a sync that reads by version sees them too.
CREATE TABLE IF NOT EXISTS account_deletions(
    account_id BIGINT NOT NULL,
    version BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS account_deletions_by_version ON account_deletions(version);
CREATE SEQUENCE IF NOT EXISTS account_versions;
-- One writer at a time, until it commits: versions then commit in the order handed out.
CREATE OR REPLACE FUNCTION tracker_accounts_serialise() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(@LOCK@);
    RETURN NULL;
END $$;
-- Every change takes the next version, whoever writes it.
CREATE OR REPLACE FUNCTION tracker_accounts_stamp() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.version := nextval('account_versions');
    RETURN NEW;
END $$;
CREATE OR REPLACE FUNCTION tracker_accounts_deleted() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO account_deletions VALUES (OLD.account_id, nextval('account_versions'));
    RETURN NULL;
END $$;
-- TRUNCATE fires no row triggers: record every account it is about to remove.
CREATE OR REPLACE FUNCTION tracker_accounts_truncated() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO account_deletions SELECT account_id, nextval('account_versions') FROM accounts;
    RETURN NULL;
END $$;
CREATE OR REPLACE FUNCTION tracker_accounts_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('tracker_accounts', (SELECT last_value FROM account_versions)::text);
    RETURN NULL;
END $$;
CREATE OR REPLACE TRIGGER accounts_serialise BEFORE INSERT OR UPDATE OR DELETE OR TRUNCATE
    ON accounts FOR EACH STATEMENT EXECUTE FUNCTION tracker_accounts_serialise();
CREATE OR REPLACE TRIGGER accounts_stamp BEFORE INSERT OR UPDATE
    ON accounts FOR EACH ROW EXECUTE FUNCTION tracker_accounts_stamp();
CREATE OR REPLACE TRIGGER accounts_deleted AFTER DELETE
    ON accounts FOR EACH ROW EXECUTE FUNCTION tracker_accounts_deleted();
CREATE OR REPLACE TRIGGER accounts_truncated BEFORE TRUNCATE
    ON accounts FOR EACH STATEMENT EXECUTE FUNCTION tracker_accounts_truncated();
CREATE OR REPLACE TRIGGER accounts_notify AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE
    ON accounts FOR EACH STATEMENT EXECUTE FUNCTION tracker_accounts_notify();
"#;

fn schema_sql() -> String {
    SCHEMA.replace("@LOCK@", &WRITE_LOCK.to_string())
}

/// Opens the database for ingest: creates the accounts table, its version column, the
/// deletions table, the sequence and the triggers when absent, seeding a table it creates
/// with [`SEED_ACCOUNTS`] accounts (every tenth inactive) like the SQLite default. Refuses
/// (with [`DataError::Shape`], naming the differences) a table it cannot use.
pub async fn open(config: &Config) -> Result<(Client, Opened)> {
    open_seeded(config, SEED_ACCOUNTS).await
}

/// Like [`open`], but a table it creates gets accounts `1..=count`: for tests and for
/// measuring large loads.
///
/// All of it is one transaction under [`WRITE_LOCK`], so ingests starting together on many
/// machines agree on which of them creates the table, and none loads a half-seeded one.
/// An empty table is seeded only if it never held an account (see [`Opened::seeded`]).
pub async fn open_seeded(config: &Config, count: u64) -> Result<(Client, Opened)> {
    let (mut client, _notes) = connect(config).await?;
    let opened = within(initialise(&mut client, config, count)).await?;
    Ok((client, opened))
}

async fn initialise(client: &mut Client, config: &Config, count: u64) -> Result<Opened> {
    let count = i64::try_from(count).map_err(|_| DataError::IdOutOfRange(count))?;
    let tx = client.transaction().await?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&WRITE_LOCK])
        .await?;
    let exists = is_there(&tx, "accounts").await?;
    let sequence_existed = is_there(&tx, "account_versions").await?;
    let mut opened = Opened {
        created: !exists,
        ..Opened::default()
    };
    if exists {
        let missing = check_shape(&tx, config).await?;
        for (column, add) in ADDABLE {
            if missing.contains(&column) {
                tx.batch_execute(add).await?;
            }
        }
        opened.version_added = missing.contains(&"version");
        opened.key_hash_added = missing.contains(&"key_hash");
    } else {
        tx.batch_execute(
            "CREATE TABLE accounts(
                account_id BIGINT PRIMARY KEY,
                account_name TEXT NOT NULL,
                is_active BOOLEAN NOT NULL,
                version BIGINT NOT NULL DEFAULT 0,
                key_hash BYTEA
            )",
        )
        .await?;
    }
    let never_used = !exists || !sequence_existed && is_unused(&tx).await?;
    tx.batch_execute(&schema_sql()).await?;
    if !sequence_existed {
        // A table that outlived its sequence keeps its versions: hand out higher ones.
        tx.execute(
            "SELECT setval('account_versions', GREATEST(1,
                (SELECT COALESCE(max(version), 0) FROM accounts),
                (SELECT COALESCE(max(version), 0) FROM account_deletions)))",
            &[],
        )
        .await?;
    }
    if never_used {
        let seeded = tx
            .execute(
                "INSERT INTO accounts(account_id, account_name, is_active)
                 SELECT g, 'account-' || g, g % 10 <> 0 FROM generate_series(1::bigint, $1) g",
                &[&count],
            )
            .await?;
        opened.seeded = Some(seeded);
    }
    tx.commit().await?;
    Ok(opened)
}

/// Whether a table, sequence or other relation of that name exists.
async fn is_there(tx: &tokio_postgres::Transaction<'_>, name: &str) -> Result<bool> {
    Ok(tx
        .query_one("SELECT to_regclass($1) IS NOT NULL", &[&name])
        .await?
        .get(0))
}

/// Whether an accounts table that existed before ingest's first start (no sequence yet)
/// is empty and has no recorded deletions: made by hand, waiting to be seeded.
async fn is_unused(tx: &tokio_postgres::Transaction<'_>) -> Result<bool> {
    let empty: bool = tx
        .query_one("SELECT NOT EXISTS (SELECT 1 FROM accounts)", &[])
        .await?
        .get(0);
    Ok(empty && !is_there(tx, "account_deletions").await?)
}

/// Compares an existing accounts table with [`COLUMNS`]; returns the columns it lacks that
/// [`open`] can add ([`ADDABLE`]), or every difference as an error.
async fn check_shape(
    tx: &tokio_postgres::Transaction<'_>,
    config: &Config,
) -> Result<Vec<&'static str>> {
    let rows = tx
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, NULL), a.attnotnull
             FROM pg_attribute a
             WHERE a.attrelid = 'accounts'::regclass AND a.attnum > 0 AND NOT a.attisdropped",
            &[],
        )
        .await?;
    let primary: Vec<String> = tx
        .query(
            "SELECT a.attname::text FROM pg_index i
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = ANY(i.indkey)
             WHERE i.indrelid = 'accounts'::regclass AND i.indisprimary",
            &[],
        )
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    let mut differences = Vec::new();
    let mut missing = Vec::new();
    for (name, wanted, nullable) in COLUMNS {
        match rows.iter().find(|row| row.get::<_, String>(0) == name) {
            None if ADDABLE.iter().any(|(column, _)| *column == name) => missing.push(name),
            None => differences.push(format!("it has no column {name}")),
            Some(row) => {
                let actual: String = row.get(1);
                if actual != wanted {
                    differences.push(format!("column {name} is {actual}, not {wanted}"));
                }
                if !row.get::<_, bool>(2) && !nullable && name != "account_id" {
                    differences.push(format!("column {name} allows NULL"));
                }
            }
        }
    }
    if primary != ["account_id"] {
        differences.push(if primary.is_empty() {
            "it has no primary key (account_id must be)".to_owned()
        } else {
            format!(
                "its primary key is ({}), not (account_id)",
                primary.join(", ")
            )
        });
    }
    if differences.is_empty() {
        Ok(missing)
    } else {
        Err(DataError::Shape {
            db: describe(config),
            differences: differences.join("; "),
        })
    }
}

/// Loads every account into `accounts` (which should be empty) and marks it loaded;
/// returns how many there are.
pub async fn load(client: &mut Client, accounts: &Accounts) -> Result<usize> {
    within(reload(client, accounts)).await
}

/// Applies every change newer than the last applied version, or reloads everything when
/// the index was never loaded or the database's versions are behind the index's (a database
/// restored from a backup or recreated: its versions say nothing about what the index has).
/// Returns how many changes were applied.
pub async fn catch_up(client: &mut Client, accounts: &Accounts) -> Result<usize> {
    within(catch_up_inner(client, accounts)).await
}

async fn catch_up_inner(client: &mut Client, accounts: &Accounts) -> Result<usize> {
    let since = i64::try_from(accounts.version()).unwrap_or(i64::MAX);
    let tx = read_snapshot(client).await?;
    let high = highest_version(&tx).await?;
    if !accounts.is_loaded() || high < since {
        drop(tx);
        return reload(client, accounts).await;
    }
    if high == since {
        return Ok(0);
    }
    // Deletions and changes in version order, so a deleted and re-added account ends up
    // present, and a re-added and deleted one absent.
    let rows = tx
        .query(
            "SELECT account_id, is_active, key_hash, version FROM accounts WHERE version > $1
             UNION ALL
             SELECT account_id, NULL, NULL, version FROM account_deletions WHERE version > $1
             ORDER BY version",
            &[&since],
        )
        .await?;
    tx.commit().await?;
    for row in &rows {
        let id: i64 = row.get(0);
        let account = row
            .get::<_, Option<bool>>(1)
            .map(|active| Account::stored(active, row.get(2)));
        accounts.set(id as u64, account);
    }
    accounts.applied_up_to(high as u64);
    Ok(rows.len())
}

/// A read-only transaction on one snapshot: rows and versions read in it agree.
async fn read_snapshot(client: &mut Client) -> Result<tokio_postgres::Transaction<'_>> {
    Ok(client
        .build_transaction()
        .isolation_level(IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await?)
}

async fn highest_version(tx: &tokio_postgres::Transaction<'_>) -> Result<i64> {
    Ok(tx
        .query_one(
            "SELECT GREATEST(
                (SELECT COALESCE(max(version), 0) FROM accounts),
                (SELECT COALESCE(max(version), 0) FROM account_deletions))::bigint",
            &[],
        )
        .await?
        .get(0))
}

/// Makes the index exactly what the database holds, streaming the rows rather than holding
/// them all; returns how many accounts there are.
///
/// By binary `COPY`, of the [`Fetch`] ways the fastest at reading: a million rows read and
/// decoded in about 150 ms, against 175 ms for the streamed query and 260 ms or more for a
/// cursor, on two cores (`cargo bench -p benches --bench accounts` compares them). Inserting
/// into the index takes as long again whichever way the rows come, so whole loads differ by
/// less than their run-to-run noise.
async fn reload(client: &mut Client, accounts: &Accounts) -> Result<usize> {
    reload_by(client, accounts, Fetch::Copy).await
}

/// How a full reload reads the accounts table. Every way reads the same [`row::COLUMNS`]
/// in the same repeatable-read snapshot as the highest version.
#[doc(hidden)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fetch {
    /// `SELECT` streamed with `query_raw`: one statement, rows as they come.
    Query,
    /// `COPY accounts(...) TO STDOUT (FORMAT binary)`: no per-row protocol framing beyond
    /// the copy data, no statement to describe.
    Copy,
    /// A server-side cursor (a portal of the `SELECT`) fetched this many rows at a time, one
    /// round trip each.
    Cursor(i32),
}

/// [`load`] the way `fetch` says: for the benchmark that compares them.
#[doc(hidden)]
pub async fn load_by(client: &mut Client, accounts: &Accounts, fetch: Fetch) -> Result<usize> {
    within(reload_by(client, accounts, fetch)).await
}

/// The rows of a full reload, whichever [`Fetch`] way they were read: the columns read and
/// how one row becomes an [`Account`](row::Account). One more column is one more entry in
/// [`COLUMNS`](row::COLUMNS) and one more field read in [`Account::read`](row::Account::read).
mod row {
    use tokio_postgres::binary_copy::BinaryCopyOutRow;
    use tokio_postgres::types::{FromSql, Type};

    use crate::Result;

    /// The columns a full reload reads, in order, with their types for binary `COPY`.
    pub(super) const COLUMNS: [(&str, Type); 3] = [
        ("account_id", Type::INT8),
        ("is_active", Type::BOOL),
        ("key_hash", Type::BYTEA),
    ];

    /// One row of a full reload.
    pub(super) struct Account {
        pub(super) id: u64,
        pub(super) active: bool,
        /// The stored hash of the account's write key; NULL (no key) for most accounts,
        /// which then allocate nothing.
        pub(super) key_hash: Option<Vec<u8>>,
    }

    impl Account {
        pub(super) fn read(row: &impl Columns) -> Result<Account> {
            Ok(Account {
                id: row.column::<i64>(0)? as u64,
                active: row.column(1)?,
                key_hash: row.column(2)?,
            })
        }
    }

    /// A row of a query or of a binary `COPY`: both decode their columns the same way.
    pub(super) trait Columns {
        fn column<'a, T: FromSql<'a>>(&'a self, index: usize) -> Result<T>;
    }

    impl Columns for tokio_postgres::Row {
        fn column<'a, T: FromSql<'a>>(&'a self, index: usize) -> Result<T> {
            Ok(self.try_get(index)?)
        }
    }

    impl Columns for BinaryCopyOutRow {
        fn column<'a, T: FromSql<'a>>(&'a self, index: usize) -> Result<T> {
            Ok(self.try_get(index)?)
        }
    }
}

/// Reads and decodes every row the way `fetch` says, in one snapshot, keeping none: what a
/// load costs before the index, for the benchmark.
#[doc(hidden)]
pub async fn read_by(client: &mut Client, fetch: Fetch) -> Result<usize> {
    within(async {
        let tx = read_snapshot(client).await?;
        let mut count = 0;
        read_rows(&tx, fetch, |_| count += 1).await?;
        tx.commit().await?;
        Ok(count)
    })
    .await
}

async fn reload_by(client: &mut Client, accounts: &Accounts, fetch: Fetch) -> Result<usize> {
    let tx = read_snapshot(client).await?;
    let high = highest_version(&tx).await?;
    // On a reload of a loaded index, the ids read, to forget every other one after.
    let mut present =
        (!accounts.is_empty()).then(|| HashSet::with_hasher(rustc_hash::FxBuildHasher));
    let mut count = 0;
    read_rows(&tx, fetch, |account| {
        accounts.set(
            account.id,
            Some(Account::stored(account.active, account.key_hash.as_deref())),
        );
        if let Some(present) = present.as_mut() {
            present.insert(account.id);
        }
        count += 1;
    })
    .await?;
    tx.commit().await?;
    if let Some(present) = present {
        accounts.retain(|id| present.contains(&id));
    }
    accounts.applied_up_to(high as u64);
    Ok(count)
}

/// Reads every account in `tx` the way `fetch` says, handing each to `each` as it comes.
async fn read_rows(
    tx: &tokio_postgres::Transaction<'_>,
    fetch: Fetch,
    mut each: impl FnMut(row::Account),
) -> Result<()> {
    let columns = row::COLUMNS.map(|(name, _)| name).join(", ");
    match fetch {
        Fetch::Query => {
            let params: [i64; 0] = [];
            let rows = tx
                .query_raw(&format!("SELECT {columns} FROM accounts"), params)
                .await?;
            futures::pin_mut!(rows);
            while let Some(row) = rows.try_next().await? {
                each(row::Account::read(&row)?);
            }
        }
        Fetch::Copy => {
            let types = row::COLUMNS.map(|(_, kind)| kind);
            let copy = tx
                .copy_out(&format!(
                    "COPY accounts({columns}) TO STDOUT (FORMAT binary)"
                ))
                .await?;
            let rows = tokio_postgres::binary_copy::BinaryCopyOutStream::new(copy, &types);
            futures::pin_mut!(rows);
            while let Some(row) = rows.try_next().await? {
                each(row::Account::read(&row)?);
            }
        }
        Fetch::Cursor(batch) => {
            let batch = batch.max(1);
            let params: [i64; 0] = [];
            let cursor = tx
                .bind_raw(&format!("SELECT {columns} FROM accounts"), params)
                .await?;
            loop {
                let rows = tx.query_portal(&cursor, batch).await?;
                for row in &rows {
                    each(row::Account::read(row)?);
                }
                if rows.len() < batch as usize {
                    break;
                }
            }
        }
    }
    Ok(())
}

/// Runs one database step with [`STATEMENT_TIMEOUT`].
async fn within<T>(step: impl Future<Output = Result<T>>) -> Result<T> {
    tokio::time::timeout(STATEMENT_TIMEOUT, step)
        .await
        .map_err(|_| DataError::Timeout(STATEMENT_TIMEOUT))?
}

/// The running sync task: applies every change to the accounts table to the index, as it
/// is notified and on every (re)connection. Stopped by [`PgSync::stop`] or when dropped.
pub struct PgSync {
    stop: CancellationToken,
    task: Option<JoinHandle<()>>,
    accounts: Arc<Accounts>,
}

impl PgSync {
    /// Starts the sync on the current tokio runtime. It connects on its own, so it starts
    /// even while PostgreSQL is down, and catches up as soon as it is reachable. `accounts`
    /// should have been [`load`]ed; if not, the first connection loads it.
    ///
    /// While it is not connected, [`Accounts::file_ok`] is false: for PostgreSQL that flag
    /// says "the index follows the database".
    pub fn start(config: Config, accounts: Arc<Accounts>) -> PgSync {
        let stop = CancellationToken::new();
        let task = tokio::spawn(follow(config, accounts.clone(), stop.clone()));
        PgSync {
            stop,
            task: Some(task),
            accounts,
        }
    }

    /// Whether the sync is connected and following changes.
    pub fn connected(&self) -> bool {
        self.accounts.file_ok()
    }

    /// Stops the task and waits for it, so no change is applied after shutdown.
    pub async fn stop(mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for PgSync {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// The sync task: connect, listen, catch up, apply changes as they are notified; on losing
/// the server say so, keep the index, and reconnect with backoff.
async fn follow(config: Config, accounts: Arc<Accounts>, stop: CancellationToken) {
    let db = describe(&config);
    let mut backoff = Backoff::new(Duration::from_millis(200), RECONNECT_AT_MOST_EVERY);
    // When the connection was lost (or first failed), for the "back after" message.
    let mut down_since: Option<Instant> = None;
    accounts.set_file_ok(false);
    loop {
        let attempt = tokio::select! {
            _ = stop.cancelled() => return,
            attempt = session(&config, &accounts) => attempt,
        };
        match attempt {
            Ok((mut client, mut notes, caught_up)) => {
                backoff.reset();
                accounts.set_file_ok(true);
                match down_since.take() {
                    Some(since) => tracing::info!(
                        changes = caught_up,
                        "PostgreSQL {db} is back after {:.1?}: caught up and following account changes again",
                        since.elapsed()
                    ),
                    None => tracing::info!(
                        changes = caught_up,
                        "following account changes in PostgreSQL {db}"
                    ),
                }
                let Some(reason) = listen(&mut client, &mut notes, &accounts, &stop).await else {
                    return;
                };
                accounts.set_file_ok(false);
                down_since = Some(Instant::now());
                tracing::error!(
                    "lost PostgreSQL {db} ({reason}): ingest keeps serving the {} accounts it has in memory and reconnects",
                    accounts.len()
                );
            }
            Err(err) => {
                if down_since.is_none() {
                    down_since = Some(Instant::now());
                    tracing::error!(
                        %err,
                        "cannot reach PostgreSQL {db}: ingest keeps serving the {} accounts it has in memory and retries",
                        accounts.len()
                    );
                } else {
                    tracing::debug!(%err, attempt = backoff.attempt(), "PostgreSQL still unreachable");
                }
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
}

type Session = (
    Client,
    mpsc::UnboundedReceiver<tokio_postgres::Notification>,
    usize,
);

/// One connection: `LISTEN` first, then catch up, so a change committed in between is both
/// read and notified rather than neither.
async fn session(config: &Config, accounts: &Accounts) -> Result<Session> {
    let (mut client, notes) = connect(config).await?;
    within(async { Ok(client.batch_execute(&format!("LISTEN {CHANNEL}")).await?) }).await?;
    let caught_up = catch_up(&mut client, accounts).await?;
    Ok((client, notes, caught_up))
}

/// Applies changes on each notification and every [`POLL_EVERY`] until the connection fails
/// (returning why) or the sync is stopped (`None`).
async fn listen(
    client: &mut Client,
    notes: &mut mpsc::UnboundedReceiver<tokio_postgres::Notification>,
    accounts: &Accounts,
    stop: &CancellationToken,
) -> Option<String> {
    let mut poll = tokio::time::interval(POLL_EVERY);
    poll.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return None,
            note = notes.recv() => {
                if note.is_none() {
                    return Some("the connection closed".to_owned());
                }
                // One catch-up covers every notification already queued.
                while notes.try_recv().is_ok() {}
            }
            _ = poll.tick() => {}
        }
        match catch_up(client, accounts).await {
            Ok(0) => {}
            Ok(changes) => {
                tracing::info!(changes, version = accounts.version(), "accounts synced")
            }
            Err(err) => return Some(err.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_told_from_paths() {
        assert!(is_url("postgres://u@h:5432/db"));
        assert!(is_url("postgresql://u@h/db"));
        assert!(!is_url("accounts.db"));
        assert!(!is_url("/var/lib/postgres/accounts.db"));
    }

    #[test]
    fn passwords_stay_out_of_messages() {
        assert_eq!(
            redact("postgres://ingest:secret@db:5432/tracker"),
            "postgres://ingest:***@db:5432/tracker"
        );
        assert_eq!(
            redact("postgres://ingest@db/tracker"),
            "postgres://ingest@db/tracker"
        );
        assert_eq!(
            redact("postgres://ingest@db/tracker?password=secret&application_name=x"),
            "postgres://ingest@db/tracker?password=***&application_name=x"
        );
        assert_eq!(
            redact("postgres://ingest:se@c?r/et@db/tracker?PASSWORD=secret"),
            "postgres://ingest:***@db/tracker?PASSWORD=***"
        );
        let config = config("postgres://ingest:secret@db:6000/tracker").unwrap();
        assert_eq!(describe(&config), "postgres://ingest@db:6000/tracker");
        assert_eq!(config.get_connect_timeout(), Some(&CONNECT_TIMEOUT));
        let err = super::config("postgres://ingest:secret@db:notaport/tracker").unwrap_err();
        assert!(!err.to_string().contains("secret"), "{err}");
    }
}
