//! One pub/sub shape against a busd that is already running, for profiling busd alone:
//! `cargo run --release -p benches --example bus_shape -- 127.0.0.1:7000 filtered 10`
//! while `perf record -g -p $(pgrep busd)` watches it. Shapes: `one`, `ten`, `filtered`,
//! `interleaved`, `group`, `disjoint`; or `count`: one subscriber to everything, counting until stopped, as
//! the compare harness's HTTP rows have beside ingest.

use std::time::Duration;

use anyhow::{Context, bail};
use benches::bus_load::{self, Shape};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr = args
        .next()
        .context("usage: bus_shape ADDR SHAPE [SECONDS]")?
        .parse()
        .context("ADDR must be host:port")?;
    let name = args.next();
    if name.as_deref() == Some("count") {
        return count(addr).await;
    }
    let shape = match name.as_deref() {
        Some("one") => Shape::one_to_one(),
        Some("ten") => Shape::one_to_ten(),
        Some("filtered") | None => Shape::filtered(),
        Some("interleaved") => Shape::filtered_interleaved(),
        Some("group") => Shape::group_of_four(),
        Some("disjoint") => Shape::four_disjoint(),
        Some(other) => {
            bail!("unknown shape {other}: one, ten, filtered, interleaved, group or disjoint")
        }
    };
    let seconds = match args.next() {
        Some(s) => s.parse().context("SECONDS must be a whole number")?,
        None => 10,
    };
    let outcome = bus_load::run(
        addr,
        &shape,
        Duration::from_secs(1),
        Duration::from_secs(seconds),
    )
    .await?;
    println!(
        "{}: published {:.0}/s, delivered {:.0}/s, missed {}",
        shape.name, outcome.published_per_sec, outcome.delivered_per_sec, outcome.missed
    );
    Ok(())
}

/// Counts every event busd at `addr` delivers, printing the rate each second.
async fn count(addr: std::net::SocketAddr) -> anyhow::Result<()> {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
    let stream = bus_load::connect(
        addr,
        protocol::Role::Subscriber,
        Some(protocol::Filter::All),
    )
    .await?;
    let delivered = Arc::new(AtomicU64::new(0));
    let counter = delivered.clone();
    tokio::spawn(async move {
        let (missed, stop) = (AtomicU64::new(0), AtomicBool::new(false));
        bus_load::count_delivered(stream, &counter, &missed, &stop).await;
    });
    let mut last = 0;
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = delivered.load(Relaxed);
        eprintln!("{}/s", now - last);
        last = now;
    }
}
