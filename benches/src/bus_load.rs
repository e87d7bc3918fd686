//! Load for busd: one pipelining publisher and N counting subscribers, in the shapes the
//! project's targets name. Subscribers count events from each `Events` frame's header rather
//! than decoding them, so the measurement is of busd, not of the bench's own decoding.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use bytes::{BufMut, BytesMut};
use futures::StreamExt;
use protocol::{ClientFrame, Event, Filter, PROTOCOL_VERSION, RawCodec, Role, ServerFrame, varint};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;
use tokio_util::codec::FramedRead;

/// Events per Publish frame.
pub const BATCH: usize = 512;
/// Unacknowledged batches a publisher keeps in flight.
pub const WINDOW: usize = 8;
/// Bytes of `data` per event.
pub const DATA_BYTES: usize = 64;

/// Who subscribes to what, and which accounts the publisher cycles through.
#[derive(Debug, Clone)]
pub struct Shape {
    pub name: &'static str,
    pub filters: Vec<Filter>,
    pub accounts: u64,
    /// The subscribers join this consumer group, decode each frame and acknowledge it.
    pub group: Option<&'static str>,
    /// The subscribers decode each frame, as a group member must to acknowledge, so a
    /// shape compared with a group's pays the same client cost.
    pub decode: bool,
    /// The accounts of a batch come in a scattered order rather than one after another,
    /// so consecutive events rarely go to the same filtered subscriber (as with real
    /// traffic) and busd cannot hand a subscriber a batch's events as a few runs.
    pub interleaved: bool,
}

impl Shape {
    pub fn one_to_one() -> Shape {
        Shape {
            name: "1 -> 1 (all)",
            filters: vec![Filter::All],
            accounts: 1000,
            group: None,
            decode: false,
            interleaved: false,
        }
    }

    pub fn one_to_ten() -> Shape {
        Shape {
            name: "1 -> 10 (all)",
            filters: vec![Filter::All; 10],
            accounts: 1000,
            group: None,
            decode: false,
            interleaved: false,
        }
    }

    /// 1000 accounts, 10 subscribers of 100 accounts each: every event goes to one of them.
    pub fn filtered() -> Shape {
        let filters = (0..10u64)
            .map(|i| Filter::Accounts((i * 100..(i + 1) * 100).collect()))
            .collect();
        Shape {
            name: "1000 accounts, 10 x 100 filtered",
            filters,
            accounts: 1000,
            group: None,
            decode: false,
            interleaved: false,
        }
    }

    /// [`Shape::filtered`] with each batch's accounts scattered: what the filtered shape
    /// costs busd when no subscriber's events sit next to each other in a batch.
    pub fn filtered_interleaved() -> Shape {
        Shape {
            name: "1000 accounts, 10 x 100 filtered, accounts interleaved",
            interleaved: true,
            ..Shape::filtered()
        }
    }

    /// 1000 accounts, a consumer group of 4 members taking everything: each event to one.
    pub fn group_of_four() -> Shape {
        Shape {
            name: "1000 accounts, group of 4",
            filters: vec![Filter::All; 4],
            accounts: 1000,
            group: Some("bench"),
            decode: true,
            interleaved: false,
        }
    }

    /// The same work split by hand: 4 plain subscribers of 250 disjoint accounts each.
    pub fn four_disjoint() -> Shape {
        let filters = (0..4u64)
            .map(|i| Filter::Accounts((i * 250..(i + 1) * 250).collect()))
            .collect();
        Shape {
            name: "1000 accounts, 4 x 250 filtered",
            filters,
            accounts: 1000,
            group: None,
            decode: true,
            interleaved: false,
        }
    }
}

/// What one run measured.
#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    pub seconds: f64,
    pub published_per_sec: f64,
    pub delivered_per_sec: f64,
    /// Events subscribers were told they missed (Gap frames) during the run.
    pub missed: u64,
}

/// What a load run counts: events acknowledged by the bus, received by subscribers, and
/// reported missing by the bus.
#[derive(Default)]
pub struct Counters {
    pub published: AtomicU64,
    pub delivered: AtomicU64,
    pub missed: AtomicU64,
}

/// Runs `shape` against busd at `addr`: `warmup`, then measures for `measure`.
pub async fn run(
    addr: SocketAddr,
    shape: &Shape,
    warmup: Duration,
    measure: Duration,
) -> std::io::Result<Outcome> {
    let counters = Arc::new(Counters::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for filter in &shape.filters {
        if shape.decode {
            let stream = connect_member(addr, filter.clone(), shape.group).await?;
            tasks.push(tokio::spawn(count_decoded(
                stream,
                counters.clone(),
                shape.group.is_some(),
            )));
            continue;
        }
        let stream = connect(addr, Role::Subscriber, Some(filter.clone())).await?;
        tasks.push(tokio::spawn(count_events(
            stream,
            counters.clone(),
            stop.clone(),
        )));
    }
    let publisher = connect(addr, Role::Publisher, None).await?;
    tasks.push(tokio::spawn(publish_until_stopped(
        publisher,
        shape.accounts,
        shape.interleaved,
        counters.clone(),
        stop.clone(),
    )));

    tokio::time::sleep(warmup).await;
    let start = (
        Instant::now(),
        counters.published.load(Relaxed),
        counters.delivered.load(Relaxed),
        counters.missed.load(Relaxed),
    );
    tokio::time::sleep(measure).await;
    let seconds = start.0.elapsed().as_secs_f64();
    let published = counters.published.load(Relaxed) - start.1;
    let delivered = counters.delivered.load(Relaxed) - start.2;
    let missed = counters.missed.load(Relaxed) - start.3;
    stop.store(true, Relaxed);
    for task in tasks {
        task.abort();
    }
    Ok(Outcome {
        seconds,
        published_per_sec: published as f64 / seconds,
        delivered_per_sec: delivered as f64 / seconds,
        missed,
    })
}

/// Connects, says Hello and, for a subscriber, subscribes with `filter`.
pub async fn connect(
    addr: SocketAddr,
    role: Role,
    filter: Option<Filter>,
) -> std::io::Result<TcpStream> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let mut out = BytesMut::new();
    let hello = ClientFrame::Hello {
        version: PROTOCOL_VERSION,
        role,
        name: String::new(),
        token: None,
        instance: 0,
    };
    protocol::encode_frame(&hello, &mut out, usize::MAX).map_err(std::io::Error::other)?;
    if let Some(filter) = filter {
        let subscribe = ClientFrame::Subscribe {
            filter,
            resume_after: None,
        };
        protocol::encode_frame(&subscribe, &mut out, usize::MAX).map_err(std::io::Error::other)?;
    }
    stream.write_all(&out).await?;
    Ok(stream)
}

/// Connects a subscriber that joins `group` with `filter`, or subscribes with it.
async fn connect_member(
    addr: SocketAddr,
    filter: Filter,
    group: Option<&str>,
) -> std::io::Result<TcpStream> {
    let Some(group) = group else {
        return connect(addr, Role::Subscriber, Some(filter)).await;
    };
    let mut stream = connect(addr, Role::Subscriber, None).await?;
    let mut out = BytesMut::new();
    let join = ClientFrame::Join {
        group: group.into(),
        filter,
    };
    protocol::encode_frame(&join, &mut out, usize::MAX).map_err(std::io::Error::other)?;
    stream.write_all(&out).await?;
    Ok(stream)
}

/// Decodes every `Events` frame and counts its events; a group member acknowledges each
/// frame's last event, as busctl does once it has handled them.
async fn count_decoded(stream: TcpStream, counters: Arc<Counters>, ack: bool) {
    let (rd, mut wr) = stream.into_split();
    let mut frames = FramedRead::with_capacity(rd, RawCodec::default(), 1 << 20);
    let mut out = BytesMut::new();
    while let Some(Ok(body)) = frames.next().await {
        match protocol::codec::decode_body(&body) {
            Ok(ServerFrame::Events(events)) => {
                counters.delivered.fetch_add(events.len() as u64, Relaxed);
                let Some(&(seq, _)) = events.last().filter(|_| ack) else {
                    continue;
                };
                out.clear();
                let frame = ClientFrame::Ack { seq };
                if protocol::encode_frame(&frame, &mut out, usize::MAX).is_err()
                    || wr.write_all(&out).await.is_err()
                {
                    return;
                }
            }
            Ok(ServerFrame::Gap { missed, .. }) => {
                counters.missed.fetch_add(missed, Relaxed);
            }
            _ => {}
        }
    }
}

/// Steps through a batch's positions in a scattered order: odd, so `i * STRIDE % BATCH`
/// visits every position once, and large, so neighbours are far apart.
const STRIDE: u64 = 263;

/// The postcard bytes of a batch's `Vec<Event>`, which stay the same from batch to batch;
/// only the batch id in front changes. Accounts `offset..offset + BATCH` (mod `accounts`),
/// in order or `interleaved`.
fn batch_events(accounts: u64, offset: u64, interleaved: bool) -> Vec<u8> {
    let position = |i: u64| match interleaved {
        true => i * STRIDE % BATCH as u64,
        false => i,
    };
    let events: Vec<Event> = (0..BATCH as u64)
        .map(|i| Event {
            account_id: (offset + position(i)) % accounts,
            timestamp_us: 1_795_255_200_000_000 + i,
            data: "d".repeat(DATA_BYTES),
            origin: "bench".into(),
            id: offset + i,
        })
        .collect();
    postcard::to_allocvec(&events).unwrap_or_default()
}

/// Publishes pipelined batches of [`BATCH`] events cycling through `accounts` (in order or
/// `interleaved` within each batch) until `stop`.
pub async fn publish_until_stopped(
    stream: TcpStream,
    accounts: u64,
    interleaved: bool,
    counters: Arc<Counters>,
    stop: Arc<AtomicBool>,
) {
    let (rd, mut wr) = stream.into_split();
    let window = Arc::new(Semaphore::new(WINDOW));
    let acks = {
        let window = window.clone();
        let counters = counters.clone();
        tokio::spawn(async move {
            let mut frames = FramedRead::new(rd, RawCodec::default());
            while let Some(Ok(body)) = frames.next().await {
                if let Ok(ServerFrame::PubAck { .. }) = protocol::codec::decode_body(&body) {
                    counters.published.fetch_add(BATCH as u64, Relaxed);
                    window.add_permits(1);
                }
            }
        })
    };
    // Batches alternate between two account offsets so filtered subscribers all get traffic.
    let templates = [
        batch_events(accounts, 0, interleaved),
        batch_events(accounts, BATCH as u64, interleaved),
    ];
    let mut frame = BytesMut::new();
    let mut batch_id = 0u64;
    while !stop.load(Relaxed) {
        let Ok(permit) = window.acquire().await else {
            break;
        };
        permit.forget();
        batch_id += 1;
        let events = &templates[(batch_id % 2) as usize];
        let len = 1 + varint::len(batch_id) + events.len();
        frame.clear();
        frame.put_u32(len as u32);
        frame.put_u8(ClientFrame::PUBLISH_TAG);
        varint::put(&mut frame, batch_id);
        frame.extend_from_slice(events);
        if wr.write_all(&frame).await.is_err() {
            break;
        }
    }
    acks.abort();
}

async fn count_events(stream: TcpStream, counters: Arc<Counters>, stop: Arc<AtomicBool>) {
    count_delivered(stream, &counters.delivered, &counters.missed, &stop).await;
}

/// Counts the events (and the gaps' missed events) a subscriber connection receives, from
/// each frame's header, until `stop` or the connection ends.
pub async fn count_delivered(
    stream: TcpStream,
    delivered: &AtomicU64,
    missed: &AtomicU64,
    stop: &AtomicBool,
) {
    let mut frames = FramedRead::with_capacity(stream, RawCodec::default(), 1 << 20);
    while let Some(Ok(body)) = frames.next().await {
        if stop.load(Relaxed) {
            break;
        }
        if body.first() == Some(&ServerFrame::EVENTS_TAG) {
            let mut pos = 1;
            let count = varint::take(&body, &mut pos).unwrap_or(0);
            delivered.fetch_add(count, Relaxed);
        } else if let Ok(ServerFrame::Gap { missed: n, .. }) = protocol::codec::decode_body(&body) {
            missed.fetch_add(n, Relaxed);
        }
    }
}
