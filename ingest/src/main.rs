//! `ingest`: Tracker's HTTP endpoint. It checks each `GET /<account_id>?data=<data>` against
//! the accounts store and forwards accepted events to busd, which it runs in-process unless
//! given `--bus`. `ingest accounts ...` manages the accounts table.
//!
//! Exit codes: 0 after a clean shutdown or a successful command, 1 on failure, 2 for bad
//! arguments. Logs go to stderr; `ingest accounts list` prints to stdout.

use anyhow::Context as _;
use clap::Parser;

use ingest::cli::{self, AccountsArgs, AccountsCommand, Cli, Command};
use ingest::serve;

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    busd::logging::init();
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
    let (conn, created) =
        data::open(&args.db).with_context(|| format!("cannot open {}", args.db.display()))?;
    if created {
        tracing::info!(
            "created {} and seeded it with {} accounts",
            args.db.display(),
            data::schema::SEED_ACCOUNTS
        );
    }
    match args.command {
        AccountsCommand::Seed { count } => {
            let added = data::admin::seed(&conn, count)?;
            tracing::info!("added {added} accounts");
        }
        AccountsCommand::Add { id, name, inactive } => {
            data::admin::add(&conn, id, &name, !inactive)?
        }
        AccountsCommand::SetActive { id, active } => data::admin::set_active(&conn, id, active)?,
        AccountsCommand::List => {
            data::admin::list(&conn, &mut std::io::stdout().lock())?;
        }
    }
    Ok(())
}
