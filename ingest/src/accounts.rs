//! `ingest accounts ...`: the same commands, and the same output, on an SQLite file and on
//! PostgreSQL. Results go to stdout, one line each (a new write key alone on its line, so
//! scripts can capture it); notes for people go to the log on stderr.

use std::io::Write;
use std::path::Path;

use anyhow::Context as _;

use data::admin::Listed;

use crate::cli::{AccountsArgs, AccountsCommand, Db, ListFormat};

/// An open accounts store. PostgreSQL's client is async: its commands run on a small
/// runtime of their own.
enum Store {
    Sqlite(data::Connection),
    Postgres(data::postgres::Client, tokio::runtime::Runtime),
}

/// Runs one `ingest accounts` command.
pub fn run(args: AccountsArgs) -> anyhow::Result<()> {
    let db = &args.db;
    let store = || open_existing(db).with_context(|| format!("cannot use {db}"));
    let mut out = std::io::stdout().lock();
    match args.command {
        AccountsCommand::Seed { count } => {
            let added = seed(db, count)?;
            writeln!(out, "added {added} accounts")?;
        }
        AccountsCommand::Add { id, name, inactive } => {
            store()?.add(id, &name, !inactive)?;
            writeln!(out, "added account {id} ({name}, {})", state(!inactive))?;
        }
        AccountsCommand::SetActive { id, active } => {
            store()?.set_active(id, active)?;
            writeln!(out, "account {id} is now {}", state(active))?;
        }
        AccountsCommand::Key { id, revoke: true } => {
            store()?.set_key(id, None)?;
            writeln!(
                out,
                "account {id} has no write key now: its requests need none"
            )?;
        }
        AccountsCommand::Key { id, revoke: false } => {
            let (key, hash) = data::key::generate().context("cannot make a random key")?;
            store()?.set_key(id, Some(&hash))?;
            tracing::info!(
                "account {id} now needs `Authorization: Bearer <key>`; its previous key, if any, no longer works. Only the key's hash is stored: this is the one time it is shown"
            );
            writeln!(out, "{key}")?;
        }
        AccountsCommand::Delete { id } => {
            store()?.delete(id)?;
            writeln!(out, "deleted account {id}")?;
        }
        AccountsCommand::List { format } => {
            let render = match format {
                ListFormat::Text => Listed::line,
                ListFormat::Json => json_line,
            };
            store()?.list(&mut out, render)?;
        }
    }
    Ok(())
}

fn open_existing(db: &Db) -> anyhow::Result<Store> {
    Ok(match db {
        Db::Sqlite(path) => Store::Sqlite(data::open_existing(path)?),
        Db::Postgres(url) => {
            let config = data::postgres::config(url)?;
            let runtime = runtime()?;
            let client = runtime.block_on(data::postgres::admin::open_existing(&config))?;
            Store::Postgres(client, runtime)
        }
    })
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")
}

impl Store {
    fn add(&self, id: u64, name: &str, active: bool) -> data::Result<()> {
        match self {
            Store::Sqlite(conn) => data::admin::add(conn, id, name, active),
            Store::Postgres(client, rt) => {
                rt.block_on(data::postgres::admin::add(client, id, name, active))
            }
        }
    }

    fn set_active(&self, id: u64, active: bool) -> data::Result<()> {
        match self {
            Store::Sqlite(conn) => data::admin::set_active(conn, id, active),
            Store::Postgres(client, rt) => {
                rt.block_on(data::postgres::admin::set_active(client, id, active))
            }
        }
    }

    fn set_key(&self, id: u64, key: Option<&data::key::KeyHash>) -> data::Result<()> {
        match self {
            Store::Sqlite(conn) => data::admin::set_key(conn, id, key),
            Store::Postgres(client, rt) => {
                rt.block_on(data::postgres::admin::set_key(client, id, key))
            }
        }
    }

    fn delete(&self, id: u64) -> data::Result<()> {
        match self {
            Store::Sqlite(conn) => data::admin::delete(conn, id),
            Store::Postgres(client, rt) => rt.block_on(data::postgres::admin::delete(client, id)),
        }
    }

    fn list(&self, out: &mut impl Write, render: fn(&Listed) -> String) -> data::Result<()> {
        match self {
            Store::Sqlite(conn) => data::admin::list(conn, out, render)?,
            Store::Postgres(client, rt) => {
                rt.block_on(data::postgres::admin::list(client, out, render))?
            }
        };
        Ok(())
    }
}

/// The one command that may create a database (or, on PostgreSQL, the accounts table), and
/// then with exactly the accounts asked for. Returns how many were added.
fn seed(db: &Db, count: u64) -> anyhow::Result<u64> {
    match db {
        Db::Sqlite(path) => seed_sqlite(path, count),
        Db::Postgres(url) => {
            let config = data::postgres::config(url)?;
            runtime()?.block_on(seed_postgres(&config, count))
        }
    }
}

fn seed_sqlite(path: &Path, count: u64) -> anyhow::Result<u64> {
    let (conn, created) = data::schema::open_seeded(path, count)
        .with_context(|| format!("cannot open {}", path.display()))?;
    if created {
        tracing::info!("created {}", path.display());
        return Ok(count);
    }
    Ok(data::admin::seed(&conn, count)?)
}

async fn seed_postgres(config: &data::postgres::Config, count: u64) -> anyhow::Result<u64> {
    let db = data::postgres::describe(config);
    let (client, opened) = data::postgres::open_seeded(config, count)
        .await
        .with_context(|| format!("cannot open {db}"))?;
    if let Some(seeded) = opened.seeded {
        if opened.created {
            tracing::info!("created the accounts table in {db}");
        }
        return Ok(seeded);
    }
    Ok(data::postgres::admin::seed(&client, count).await?)
}

/// One account as `list --format json` prints it.
fn json_line(account: &Listed) -> String {
    serde_json::json!({
        "account_id": account.id,
        "name": account.name,
        "active": account.active,
        "key": account.keyed,
    })
    .to_string()
}

fn state(active: bool) -> &'static str {
    if active { "active" } else { "inactive" }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_json_line_reads_back_with_every_field() {
        let account = Listed {
            id: 5,
            name: "a \"quoted\"\tname".into(),
            active: false,
            keyed: true,
        };
        let value: serde_json::Value = serde_json::from_str(&json_line(&account)).unwrap();
        assert_eq!(
            value,
            serde_json::json!({"account_id": 5, "name": "a \"quoted\"\tname", "active": false, "key": true})
        );
    }
}
