//! Loading accounts from SQLite into the in-memory index: time and memory for
//! `BENCH_ACCOUNTS` accounts (default 1,000,000). `cargo bench -p benches --bench accounts`.

use std::time::Instant;

use data::Accounts;

/// Resident set size of this process, in bytes (Linux).
fn rss() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| {
            s.split_whitespace()
                .nth(1)
                .and_then(|p| p.parse::<u64>().ok())
        })
        .map_or(0, |pages| pages * 4096)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let count: u64 = std::env::var("BENCH_ACCOUNTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir()?;
    let path = dir.path().join("accounts.db");
    let (conn, _) = data::open(&path)?;
    let started = Instant::now();
    data::admin::seed(&conn, count)?;
    let seeded = started.elapsed();
    drop(conn);

    let (conn, _) = data::open(&path)?;
    let before = rss();
    let accounts = Accounts::default();
    let started = Instant::now();
    let loaded = accounts.load(&conn)?;
    let took = started.elapsed();
    let grew = rss().saturating_sub(before);
    drop(conn);
    println!("accounts: seeded {count} in {seeded:.2?}");
    println!(
        "accounts: loaded {loaded} in {took:.2?}; resident memory grew {:.1} MiB",
        grew as f64 / (1 << 20) as f64
    );
    assert_eq!(accounts.len() as u64, count);
    Ok(())
}
