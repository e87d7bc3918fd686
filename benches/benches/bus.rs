//! busd throughput: delivered events per second for the three shapes of the targets, with
//! 64-byte data. `cargo bench -p benches --bench bus`; `BENCH_SECONDS=1` for a smoke run.
//!
//! busd runs in this process on its own runtime and threads, as it would in its own process;
//! the load generator has another runtime, and both share the machine's cores.

use std::net::SocketAddr;
use std::time::Duration;

use benches::bus_load::{self, Shape};
use tokio_util::sync::CancellationToken;

fn start_busd() -> (SocketAddr, CancellationToken) {
    let shutdown = CancellationToken::new();
    let token = shutdown.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .expect("busd runtime");
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind");
            tx.send(listener.local_addr().expect("address"))
                .expect("report address");
            busd::serve(listener, busd::Config::default(), token)
                .await
                .expect("busd serves");
        });
    });
    (rx.recv().expect("busd started"), shutdown)
}

fn main() {
    // `cargo bench` passes flags such as --bench; a bare harness takes none of them.
    let seconds: f64 = std::env::var("BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5.0);
    let measure = Duration::from_secs_f64(seconds);
    let warmup = Duration::from_secs_f64((seconds / 5.0).clamp(0.2, 1.0));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("client runtime");
    println!(
        "{:<36} {:>14} {:>16} {:>10}",
        "shape", "published/s", "delivered/s", "missed"
    );
    for shape in [Shape::one_to_one(), Shape::one_to_ten(), Shape::filtered()] {
        let (addr, shutdown) = start_busd();
        let outcome = runtime
            .block_on(bus_load::run(addr, &shape, warmup, measure))
            .expect("bench run");
        shutdown.cancel();
        println!(
            "{:<36} {:>14.0} {:>16.0} {:>10}",
            shape.name, outcome.published_per_sec, outcome.delivered_per_sec, outcome.missed
        );
    }
}
