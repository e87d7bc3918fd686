//! `busctl`: the command-line client of Tracker's bus. Data goes to stdout, status lines to
//! stderr; `busctl --help` lists the exit codes.

use client::cli::{Cli, Command, exit};
use client::{dashboard, doctor, publish, stats, status, watch};

fn main() {
    // --help and --version print to stdout and exit 0; a bad argument exits 2 (USAGE).
    let (cli, warnings) = plumbing::env::parse::<Cli>();
    if let Command::Watch(args) = &cli.command
        && let Err(message) = args.check()
    {
        use clap::CommandFactory as _;
        let mut command = Cli::command();
        command
            .error(clap::error::ErrorKind::ArgumentConflict, message)
            .exit();
    }
    for warning in warnings {
        status!("warning: {warning}");
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            status!("cannot start: {err}");
            std::process::exit(exit::ERROR);
        }
    };
    let code = runtime.block_on(async {
        match cli.command {
            Command::Watch(args) => watch::run(args).await,
            Command::Publish(args) => publish::run(args).await,
            Command::Stats(args) => stats::run(args).await,
            Command::Doctor(args) => doctor::run(args).await,
            Command::Dashboard(args) => dashboard::run(args).await,
        }
    });
    // Leave the blocking stdout writer behind rather than wait for it.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    std::process::exit(code);
}
