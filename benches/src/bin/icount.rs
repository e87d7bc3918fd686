//! Runs one workload of `benches::icount` for `benches/icount/check` to count under
//! callgrind: `icount request [N]` handles N requests, `icount fanout [N]` publishes N
//! batches and fans them out. Prints `<workload> ops <count>` (requests handled, or events
//! delivered), the divisor for callgrind's instruction total.
//!
//! Run without valgrind it does the same work, which is how the workloads are checked.

use std::process::ExitCode;

use benches::icount::{self, Fanout, RequestWork};

const USAGE: &str = "usage: icount request|fanout [N]";

/// Requests counted by default: about 2.5 s under callgrind on the development machine, on
/// top of some 15 s seeding and loading the accounts (not counted).
const REQUESTS: u64 = 100_000;
/// Batches counted by default (of `icount::BATCH` events, each delivered twice): about 6 s
/// under callgrind.
const BATCHES: u64 = 1000;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (workload, n) = match args.as_slice() {
        [workload] => (workload.as_str(), None),
        [workload, n] => match n.parse::<u64>() {
            Ok(n) if n > 0 => (workload.as_str(), Some(n)),
            _ => {
                eprintln!("icount: N must be a positive whole number, not {n:?}\n{USAGE}");
                return ExitCode::from(2);
            }
        },
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    let outcome = match workload {
        "request" => run_requests(n.unwrap_or(REQUESTS)),
        "fanout" => run_fanout(n.unwrap_or(BATCHES)),
        other => {
            eprintln!("icount: unknown workload {other:?}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    match outcome {
        Ok(ops) => {
            println!("{workload} ops {ops}");
            ExitCode::SUCCESS
        }
        Err(err) => {
            eprintln!("icount {workload}: {err}");
            ExitCode::FAILURE
        }
    }
}

fn run_requests(n: u64) -> Result<u64, icount::Error> {
    let mut work = RequestWork::new()?;
    let accepted = icount::counted_requests(&mut work, n)?;
    if accepted != n {
        return Err(icount::Error::from(format!(
            "{accepted} of {n} requests accepted; the count would not be of the accepting path"
        )));
    }
    Ok(n)
}

fn run_fanout(batches: u64) -> Result<u64, icount::Error> {
    let mut work = Fanout::new()?;
    icount::counted_fanout(&mut work, batches)
}
