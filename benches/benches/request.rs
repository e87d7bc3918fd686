//! Criterion: one request's work in ingest, without sockets: parse the head, validate and
//! decode, look the account up among 100,000, encode the event into the outbox; and the same
//! for an account with a write key, the request carrying it (what checking a key costs).
//!
//! The work is `benches::icount::Ingest`, which `benches/icount/check` also counts
//! instructions of, so the timing and the count are of the same path.

use std::hint::black_box;

use benches::icount::{self, Ingest};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

/// A key as `ingest accounts key` makes them: `trk_` and 64 hex digits.
const KEY: &str = "trk_00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

fn request_path(c: &mut Criterion) {
    let mut ingest = Ingest::keyed(icount::ACCOUNTS, Some((4243, KEY))).expect("accounts set up");
    let mut group = c.benchmark_group("request");
    group.throughput(Throughput::Elements(1));
    for (name, raw) in [
        ("parse_lookup_encode", icount::plain_request(4242)),
        ("percent_decoded", icount::encoded_request(4242)),
        ("bearer_plain_headers", icount::keyed_request(4242, KEY)),
        ("bearer_keyed_account", icount::keyed_request(4243, KEY)),
    ] {
        group.bench_function(name, |b| {
            b.iter(|| black_box(ingest.handle(raw.as_bytes()).expect("accepted")))
        });
    }
    group.finish();
}

criterion_group!(benches, request_path);
criterion_main!(benches);
