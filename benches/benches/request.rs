//! Criterion: one request's work in ingest, without sockets: parse the head, validate and
//! decode, look the account up among 100,000, encode the event into the outbox.

use std::hint::black_box;
use std::sync::Arc;

use client::outbox::{self, Outbox};
use client::publisher::Link;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use data::Accounts;
use ingest::metrics::Metrics;
use ingest::request::{self, Limits};
use ingest::route::{self, App};

fn app() -> App {
    let dir = tempfile::tempdir().expect("temp dir");
    let (conn, _) = data::open(&dir.path().join("accounts.db")).expect("database");
    data::admin::seed(&conn, 100_000).expect("seed");
    let accounts = Arc::new(Accounts::default());
    accounts.load(&conn).expect("load");
    App {
        accounts,
        outbox: Arc::new(Outbox::new(
            outbox::Limits {
                events: usize::MAX,
                bytes: usize::MAX,
                batch_events: 4096,
                batch_bytes: 512 * 1024,
            },
            1,
        )),
        link: Arc::new(Link::default()),
        metrics: Arc::new(Metrics::default()),
        origin: "bench:8080".into(),
        max_data: 4096,
        cors_origins: Vec::new(),
    }
}

fn request_path(c: &mut Criterion) {
    let app = app();
    let limits = Limits {
        max_head: 8192,
        max_headers: 32,
    };
    let plain = format!(
        "GET /4242?data={} HTTP/1.1\r\nHost: ingest\r\nUser-Agent: bench\r\n\r\n",
        "d".repeat(64)
    );
    let encoded =
        "GET /4242?data=caf%C3%A9+au+lait+%E2%82%AC HTTP/1.1\r\nHost: ingest\r\n\r\n".to_owned();
    let mut group = c.benchmark_group("request");
    group.throughput(Throughput::Elements(1));
    for (name, raw) in [("parse_lookup_encode", plain), ("percent_decoded", encoded)] {
        let mut taken = 0u64;
        group.bench_function(name, |b| {
            b.iter(|| {
                let (head, _) = request::parse(black_box(raw.as_bytes()), limits)
                    .expect("valid")
                    .expect("complete");
                let (response, _) = route::handle(&head, &app, 1_795_341_600_000_000);
                black_box(response.status);
                // Keep the outbox from growing: cut and acknowledge a batch now and then.
                taken += 1;
                if taken % 4096 == 0 {
                    if let Some(batch) = app.outbox.take_batch() {
                        app.outbox.ack(batch.id);
                    }
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, request_path);
criterion_main!(benches);
