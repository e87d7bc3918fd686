//! ingest end to end: wrk (one thread, `BENCH_CONNECTIONS` connections, default 64) against
//! the release ingest with its embedded busd and one subscriber counting every event.
//! `cargo bench -p benches --bench ingest`; `BENCH_SECONDS` (default 15).
//!
//! Every request is `GET /1?data=<64 bytes>` for an active account, so each one is parsed,
//! checked, encoded, batched, sent to busd, sequenced and delivered. After the run the
//! accepted count (from /metrics) is compared with what the subscriber received.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use benches::bus_load;
use benches::process::{start_ingest, wrk};
use protocol::{Filter, Role};

fn env(name: &str, default: u32) -> u32 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> std::io::Result<()> {
    let seconds = env("BENCH_SECONDS", 15);
    let connections = env("BENCH_CONNECTIONS", 64);
    let dir = std::env::temp_dir().join(format!("tracker-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let (_ingest, http, bus) = start_ingest(&dir, &[])?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let delivered = Arc::new(AtomicU64::new(0));
    let missed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let stream = runtime.block_on(bus_load::connect(bus, Role::Subscriber, Some(Filter::All)))?;
    let counter = {
        let (delivered, missed, stop) = (delivered.clone(), missed.clone(), stop.clone());
        std::thread::spawn(move || {
            runtime.block_on(bus_load::count_delivered(
                stream, &delivered, &missed, &stop,
            ))
        })
    };
    let data = "d".repeat(64);
    let Some(report) = wrk(
        &format!("http://{http}/1?data={data}"),
        &[],
        connections,
        seconds,
        None,
    ) else {
        println!("wrk is not installed: skipped (apt-get install wrk)");
        return Ok(());
    };
    let accepted = accepted(http)?;
    // Let the last batches arrive.
    let mut settled = 0;
    while settled < 20 && delivered.load(Relaxed) < accepted {
        std::thread::sleep(Duration::from_millis(100));
        settled += 1;
    }
    stop.store(true, Relaxed);
    drop(counter);
    println!("ingest, wrk -t1 -c{connections} -d{seconds}s, embedded busd, 1 subscriber");
    println!("  requests/s  {:>12.0}", report.requests_per_sec);
    println!("  latency     p50 {}  p99 {}", report.p50, report.p99);
    println!(
        "  errors      socket {}  non-2xx {}",
        report.errors, report.non_2xx
    );
    println!("  accepted    {accepted}");
    println!(
        "  delivered   {}  (missed in gaps: {})",
        delivered.load(Relaxed),
        missed.load(Relaxed)
    );
    let _ = std::fs::remove_dir_all(&dir);
    Ok(())
}

/// The accepted-requests counter from /metrics.
fn accepted(http: std::net::SocketAddr) -> std::io::Result<u64> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(http)?;
    stream.write_all(b"GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n")?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    Ok(text
        .lines()
        .find(|l| l.starts_with(r#"tracker_ingest_requests_total{outcome="accepted"}"#))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0))
}
