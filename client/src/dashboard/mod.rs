//! `busctl dashboard`: a [`Subscriber`] shown as a live web page.
//!
//! The subscriber is the one `watch` uses (reconnects, resume, restart gaps, copies
//! dropped, either bus). Its deliveries are aggregated into a [`Board`] as they arrive; a
//! [`Snapshot`] of the board is taken four times a second and handed to the web side
//! ([`server`]), so the browser gets a few small updates a second however fast events come.
//! The page itself is plain HTML, CSS and a script compiled into the binary.

pub mod board;
pub mod server;

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use protocol::Filter;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::cli::{DashboardArgs, exit};
use crate::render::describe_gap;
use crate::status;
use crate::subscriber::{Delivery, Options, SubscribeError, Subscriber};
use board::{Board, Snapshot};
use server::Shared;

/// How often a snapshot is taken and sent to the pages.
pub const SNAPSHOT_EVERY: Duration = Duration::from_millis(250);

/// Runs `busctl dashboard` until Ctrl-C or a refusal by the bus; returns the exit code.
pub async fn run(args: DashboardArgs) -> i32 {
    let listener = match TcpListener::bind(&args.listen).await {
        Ok(listener) => listener,
        Err(err) => {
            status!("cannot listen on {}: {err}", args.listen);
            return exit::ERROR;
        }
    };
    let addr = match listener.local_addr() {
        Ok(addr) => addr,
        Err(err) => {
            status!("cannot read the address of {}: {err}", args.listen);
            return exit::ERROR;
        }
    };
    let options = options(&args);
    let board = Board::new(
        args.bus.bus.clone(),
        describe_filter(&options.filter),
        args.top.into(),
        plumbing::clock::now_us(),
    );
    let board = Arc::new(Mutex::new(board));
    let (snapshots, shared) = channel(&board);
    status!("dashboard listening on {addr} (http://{addr}/)");
    let mut subscriber = Subscriber::new(options);
    tokio::select! {
        code = feed(&mut subscriber, &board) => code,
        () = publish(&board, snapshots) => exit::OK,
        code = serve(listener, addr, shared) => code,
        () = plumbing::signal::interrupted() => exit::OK,
    }
}

/// The subscription `args` ask for.
fn options(args: &DashboardArgs) -> Options {
    let filter = match &args.accounts {
        Some(list) => Filter::Accounts(list.0.clone()),
        None => Filter::All,
    };
    Options {
        bus: args.bus.bus.clone(),
        layout: args.bus.layout(),
        token: args.bus.token.clone(),
        name: format!("busctl-dashboard-{}", std::process::id()),
        filter,
        max_outage: None,
        resume: None,
        group: None,
        start: protocol::Start::Head,
        origins: Default::default(),
    }
}

/// The channel snapshots reach the web side through, holding the board's first one.
fn channel(board: &Mutex<Board>) -> (watch::Sender<Arc<Snapshot>>, Shared) {
    let first = lock(board).snapshot(plumbing::clock::now_us());
    let (tx, rx) = watch::channel(Arc::new(first));
    (tx, Shared::new(rx))
}

fn lock(board: &Mutex<Board>) -> MutexGuard<'_, Board> {
    // A panic while holding the lock leaves counts, never a broken invariant: carry on.
    board
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Hands every delivery to the board, telling stderr about the connection and gaps as
/// `watch` does; returns only when the subscription is over for good.
async fn feed(subscriber: &mut Subscriber, board: &Mutex<Board>) -> i32 {
    loop {
        let delivery = match subscriber.next().await {
            Ok(delivery) => delivery,
            Err(SubscribeError::Outage(outage)) => {
                status!("giving up: {outage}");
                return exit::OUTAGE;
            }
            Err(err) => {
                status!("{err}");
                return exit::ERROR;
            }
        };
        match &delivery {
            Delivery::Notice(notice) => status!("{notice}"),
            Delivery::Gap(gap) => status!("gap: {}", describe_gap(gap)),
            Delivery::Events { .. } => {}
        }
        lock(board).on_delivery(delivery, plumbing::clock::now_us());
    }
}

/// Takes a snapshot every [`SNAPSHOT_EVERY`] for the pages, for as long as the dashboard runs.
async fn publish(board: &Mutex<Board>, snapshots: watch::Sender<Arc<Snapshot>>) {
    let mut ticks = tokio::time::interval(SNAPSHOT_EVERY);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        ticks.tick().await;
        let snapshot = lock(board).snapshot(plumbing::clock::now_us());
        snapshots.send_replace(Arc::new(snapshot));
    }
}

/// Serves the page on `listener`; returns only if serving fails.
async fn serve(listener: TcpListener, addr: SocketAddr, shared: Shared) -> i32 {
    match axum::serve(listener, server::router(shared)).await {
        Ok(()) => exit::OK,
        Err(err) => {
            status!("the dashboard at {addr} stopped serving: {err}");
            exit::ERROR
        }
    }
}

/// The filter in words: "all accounts", or the ids with runs written as ranges.
fn describe_filter(filter: &Filter) -> String {
    match filter {
        Filter::All => "all accounts".to_owned(),
        Filter::Accounts(ids) => format!("accounts {}", ranges(ids)),
    }
}

/// `1,5,10-20`, cut with "…" past 200 characters.
fn ranges(ids: &BTreeSet<u64>) -> String {
    const LONGEST: usize = 200;
    let mut out = String::new();
    let mut ids = ids.iter().copied().peekable();
    while let Some(first) = ids.next() {
        let mut last = first;
        while ids.peek() == Some(&(last + 1)) {
            last += 1;
            ids.next();
        }
        if !out.is_empty() {
            out.push(',');
        }
        if out.len() > LONGEST {
            out.push('…');
            break;
        }
        let _ = match last - first {
            0 => write!(out, "{first}"),
            _ => write!(out, "{first}-{last}"),
        };
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_read_as_ranges() {
        assert_eq!(describe_filter(&Filter::All), "all accounts");
        let ids: BTreeSet<u64> = [1, 5, 10, 11, 12, 20].into();
        assert_eq!(
            describe_filter(&Filter::Accounts(ids)),
            "accounts 1,5,10-12,20"
        );
        let many: BTreeSet<u64> = (0..1000).map(|i| i * 2).collect();
        let text = ranges(&many);
        assert!(text.ends_with('…') && text.len() < 220, "{text}");
    }
}
