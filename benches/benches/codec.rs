//! Micro-benchmarks of the wire hot paths: frame encode and decode, the zero-copy Publish
//! split busd does per batch, and the Events frame it assembles per subscriber write.

use bytes::{Bytes, BytesMut};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use protocol::fanout::{EventsFrame, encode_entry};
use protocol::{ClientFrame, Event, FrameCodec, ServerFrame, publish};
use std::hint::black_box;
use tokio_util::codec::Decoder;

fn events(n: u64) -> Vec<Event> {
    (0..n)
        .map(|i| Event {
            account_id: i % 1000,
            timestamp_us: 1_795_255_200_000_000 + i,
            data: "d".repeat(64),
            origin: "bench".into(),
            id: i,
        })
        .collect()
}

fn codec(c: &mut Criterion) {
    let batch = ClientFrame::Publish {
        batch_id: 1,
        events: events(512),
    };
    let mut group = c.benchmark_group("publish_512x64B");
    group.throughput(Throughput::Elements(512));
    group.bench_function("encode", |b| {
        let mut buf = BytesMut::with_capacity(1 << 16);
        b.iter(|| {
            buf.clear();
            protocol::encode_frame(black_box(&batch), &mut buf, usize::MAX).unwrap();
        })
    });
    let mut encoded = BytesMut::new();
    protocol::encode_frame(&batch, &mut encoded, usize::MAX).unwrap();
    group.bench_function("decode_postcard", |b| {
        let mut codec = FrameCodec::<ClientFrame, ClientFrame>::default();
        b.iter(|| {
            let mut buf = encoded.clone();
            black_box(codec.decode(&mut buf).unwrap());
        })
    });
    let body = Bytes::copy_from_slice(&encoded[4..]);
    group.bench_function("split_zero_copy", |b| {
        b.iter(|| black_box(publish::parse(black_box(&body)).unwrap()))
    });
    let raw = publish::parse(&body).unwrap();
    group.bench_function("events_frame_from_entries", |b| {
        let mut entries = BytesMut::new();
        let entries: Vec<Bytes> = raw
            .events
            .iter()
            .enumerate()
            .map(|(seq, e)| {
                encode_entry(&mut entries, seq as u64, raw.bytes(e));
                entries.split().freeze()
            })
            .collect();
        let mut out = BytesMut::with_capacity(1 << 16);
        b.iter(|| {
            out.clear();
            let mut frame = EventsFrame::begin(&mut out, entries.len() as u64);
            for entry in &entries {
                frame.push(&mut out, entry);
            }
            frame.finish(&mut out);
        })
    });
    let values = ServerFrame::Events(
        events(512)
            .into_iter()
            .enumerate()
            .map(|(i, e)| (i as u64, e))
            .collect(),
    );
    group.bench_function("events_frame_postcard", |b| {
        let mut out = BytesMut::with_capacity(1 << 16);
        b.iter(|| {
            out.clear();
            protocol::encode_frame(black_box(&values), &mut out, usize::MAX).unwrap();
        })
    });
    group.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
