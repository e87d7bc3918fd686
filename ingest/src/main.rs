//! `ingest`: Tracker's HTTP endpoint. It checks each `GET /<account_id>?data=<data>` against
//! the accounts store and forwards accepted events to busd, which it runs in-process unless
//! given `--bus`. `ingest accounts ...` manages the accounts table.
//!
//! Exit codes: 0 after a clean shutdown or a successful command, 1 on failure, 2 for bad
//! arguments. Logs go to stderr; `ingest accounts ...` prints its result to stdout.

use std::path::Path;

use anyhow::Context as _;

use ingest::cli::{self, AccountsArgs, AccountsCommand, Cli, Command};
use ingest::serve;

fn main() -> std::process::ExitCode {
    let (cli, warnings) = plumbing::env::parse::<Cli>();
    plumbing::logging::init();
    for warning in warnings {
        tracing::warn!("{warning}");
    }
    let result = match cli.command {
        None => serve(cli.serve),
        Some(Command::Serve(args)) => serve(*args),
        Some(Command::Accounts(args)) => accounts(args),
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn serve(args: cli::ServeArgs) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the runtime")?;
    runtime.block_on(serve::run(args))
}

fn accounts(args: AccountsArgs) -> anyhow::Result<()> {
    let Some(db) = args.db.sqlite() else {
        anyhow::bail!(
            "`ingest accounts` manages SQLite files only for now; for {} use psql (ingest follows every change made there)",
            args.db
        );
    };
    match args.command {
        AccountsCommand::Seed { count } => seed(db, count),
        AccountsCommand::Add { id, name, inactive } => {
            data::admin::add(&open_existing(db)?, id, &name, !inactive)?;
            println!("added account {id} ({name}, {})", state(!inactive));
            Ok(())
        }
        AccountsCommand::SetActive { id, active } => {
            data::admin::set_active(&open_existing(db)?, id, active)?;
            println!("account {id} is now {}", state(active));
            Ok(())
        }
        AccountsCommand::List => {
            data::admin::list(&open_existing(db)?, &mut std::io::stdout().lock())?;
            Ok(())
        }
    }
}

/// The admin commands never create a database: a wrong `--db` must fail, not start a second
/// database the running ingest never reads.
fn open_existing(db: &Path) -> anyhow::Result<data::Connection> {
    data::open_existing(db).with_context(|| format!("cannot use {}", db.display()))
}

/// The one command that may create a database, and then with exactly the accounts asked for.
fn seed(db: &Path, count: u64) -> anyhow::Result<()> {
    let (conn, created) = data::schema::open_seeded(db, count)
        .with_context(|| format!("cannot open {}", db.display()))?;
    let added = if created {
        tracing::info!("created {}", db.display());
        count
    } else {
        data::admin::seed(&conn, count)?
    };
    println!("added {added} accounts");
    Ok(())
}

fn state(active: bool) -> &'static str {
    if active { "active" } else { "inactive" }
}
