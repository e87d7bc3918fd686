//! `busctl`: the command-line client of Tracker's bus. Data goes to stdout, status lines to
//! stderr; `busctl --help` lists the exit codes.

mod aggregate;
mod cli;
mod doctor;
mod output;
mod publish;
mod reconnect;
mod render;
mod session;
mod stats;
mod status;
mod watch;

use clap::Parser as _;

use cli::{Cli, Command, exit};

fn main() {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            // --help and --version print to stdout and succeed; anything else is a usage error.
            let _ = err.print();
            std::process::exit(if err.use_stderr() {
                exit::USAGE
            } else {
                exit::OK
            });
        }
    };
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
        }
    });
    // Leave the blocking stdout writer behind rather than wait for it.
    runtime.shutdown_timeout(std::time::Duration::from_millis(100));
    std::process::exit(code);
}
