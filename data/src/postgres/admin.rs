//! The operations behind `ingest accounts ...` on PostgreSQL, the counterparts of
//! [`crate::admin`]. They are plain statements on the accounts table: its triggers stamp the
//! version and notify every ingest, exactly as for a change made with psql.

use std::io::Write;

use futures::TryStreamExt;

use super::{Client, Config, describe, initialise, is_there, within};
use crate::admin::{Listed, id};
use crate::key::KeyHash;
use crate::{DataError, Result};

/// Connects to a database whose accounts table exists, bringing its schema up to date
/// (columns, triggers) without seeding: a wrong URL or an unprepared database fails rather
/// than getting a table the running ingests do not read.
pub async fn open_existing(config: &Config) -> Result<Client> {
    let (mut client, _notes) = super::connect(config).await?;
    let exists = within(async {
        let tx = client.transaction().await?;
        let exists = is_there(&tx, "accounts").await?;
        tx.commit().await?;
        Ok(exists)
    })
    .await?;
    if !exists {
        return Err(DataError::NoTable(describe(config)));
    }
    within(initialise(&mut client, config, 0)).await?;
    Ok(client)
}

/// Adds the deterministic accounts `1..=count` that are missing (the table exists, else
/// [`super::open_seeded`] creates it with exactly these); returns how many were added.
pub async fn seed(client: &Client, count: u64) -> Result<u64> {
    let count = id(count)?;
    Ok(client
        .execute(
            "INSERT INTO accounts(account_id, account_name, is_active)
             SELECT g, 'account-' || g, g % 10 <> 0 FROM generate_series(1::bigint, $1) g
             ON CONFLICT (account_id) DO NOTHING",
            &[&count],
        )
        .await?)
}

/// Adds one account; an existing id is an error, as with SQLite.
pub async fn add(client: &Client, account_id: u64, name: &str, active: bool) -> Result<()> {
    let inserted = client
        .execute(
            "INSERT INTO accounts(account_id, account_name, is_active) VALUES ($1, $2, $3)
             ON CONFLICT (account_id) DO NOTHING",
            &[&id(account_id)?, &name, &active],
        )
        .await?;
    if inserted == 0 {
        return Err(DataError::Exists(account_id));
    }
    Ok(())
}

/// Activates or deactivates an account.
pub async fn set_active(client: &Client, account_id: u64, active: bool) -> Result<()> {
    let updated = client
        .execute(
            "UPDATE accounts SET is_active = $2 WHERE account_id = $1",
            &[&id(account_id)?, &active],
        )
        .await?;
    if updated == 0 {
        return Err(DataError::NotFound(account_id));
    }
    Ok(())
}

/// Gives an account a new write key (its hash) or removes its key (`None`).
pub async fn set_key(client: &Client, account_id: u64, key: Option<&KeyHash>) -> Result<()> {
    let updated = client
        .execute(
            "UPDATE accounts SET key_hash = $2 WHERE account_id = $1",
            &[&id(account_id)?, &key.map(KeyHash::as_bytes)],
        )
        .await?;
    if updated == 0 {
        return Err(DataError::NotFound(account_id));
    }
    Ok(())
}

/// Deletes an account, as [`crate::admin::delete`] does; the trigger records the deletion.
pub async fn delete(client: &Client, account_id: u64) -> Result<()> {
    let deleted = client
        .execute(
            "DELETE FROM accounts WHERE account_id = $1",
            &[&id(account_id)?],
        )
        .await?;
    if deleted == 0 {
        return Err(DataError::NotFound(account_id));
    }
    Ok(())
}

/// Writes every account as [`crate::admin::list`] does, streaming the rows.
pub async fn list(
    client: &Client,
    out: &mut impl Write,
    render: impl Fn(&Listed) -> String,
) -> Result<u64> {
    let params: [i64; 0] = [];
    let rows = client
        .query_raw(
            "SELECT account_id, account_name, is_active, key_hash IS NOT NULL
             FROM accounts ORDER BY account_id",
            params,
        )
        .await?;
    futures::pin_mut!(rows);
    let mut count = 0;
    while let Some(row) = rows.try_next().await? {
        let listed = Listed {
            id: row.try_get(0)?,
            name: row.try_get(1)?,
            active: row.try_get(2)?,
            keyed: row.try_get(3)?,
        };
        if writeln!(out, "{}", render(&listed)).is_err() {
            break;
        }
        count += 1;
    }
    Ok(count)
}
