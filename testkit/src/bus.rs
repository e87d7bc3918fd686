//! Speaking the bus protocol to a real busd, in tests.

use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use protocol::{
    ClientFrame, Event, Filter, FrameCodec, PROTOCOL_VERSION, Position, Role, ServerFrame,
};
use tokio::net::{TcpSocket, TcpStream};
use tokio_util::codec::Framed;

use crate::process::{Proc, binary};

/// How long any single expected frame may take.
pub const WAIT: Duration = Duration::from_secs(10);

/// A busd process started with `--listen <listen>` and `args`; its address parsed from its log.
pub struct Busd {
    pub proc: Proc,
    pub addr: SocketAddr,
}

impl Busd {
    pub fn start(args: &[&str]) -> Busd {
        Self::start_on("127.0.0.1:0", args)
    }

    /// Starts busd on `listen`. Unless `args` name a `--state-file`, a busd restarted on the
    /// same fixed address finds the record its previous run left (as a real deployment's
    /// would), and one on an ephemeral port keeps none.
    pub fn start_on(listen: &str, args: &[&str]) -> Busd {
        let mut command = Command::new(binary("busd", "busd"));
        command
            .args(["--listen", listen])
            .args(args)
            .env("RUST_LOG", "busd=debug,info");
        if !args.contains(&"--state-file") {
            command.arg("--state-file").arg(state_file(listen));
        }
        let proc = Proc::spawn("busd", &mut command);
        let addr = proc.listening_addr();
        Busd { proc, addr }
    }

    pub fn signal(&self, signal: &str) {
        self.proc.signal(signal);
    }

    /// Sends SIGTERM and waits for a clean exit.
    pub fn terminate(mut self) {
        self.proc.signal("TERM");
        let status = self.proc.wait_exit(Duration::from_secs(15));
        assert!(status.success(), "busd exited with {status}");
    }

    /// SIGKILL: a crash, with no Goodbye.
    pub fn kill(mut self) {
        self.proc.signal("KILL");
        self.proc.wait_exit(Duration::from_secs(15));
    }
}

/// The state file for a busd on `listen`: none on an ephemeral port, where no later busd
/// can come back on the same address; else one private to this test process and port, so a
/// restart on it finds its predecessor's record.
fn state_file(listen: &str) -> std::path::PathBuf {
    if listen.ends_with(":0") {
        return std::path::PathBuf::new();
    }
    let port = listen.rsplit(':').next().unwrap_or("x");
    std::env::temp_dir().join(format!("tracker-busd-{}-{port}.state", std::process::id()))
}

pub type Conn = Framed<TcpStream, FrameCodec<ServerFrame, ClientFrame>>;

pub fn hello(role: Role, name: &str, token: Option<&str>) -> ClientFrame {
    ClientFrame::Hello {
        version: PROTOCOL_VERSION,
        role,
        name: name.into(),
        token: token.map(Into::into),
        instance: 1,
    }
}

pub async fn connect(addr: SocketAddr) -> Conn {
    let stream = TcpStream::connect(addr).await.expect("connect to busd");
    Framed::new(stream, FrameCodec::default())
}

/// Connects and says Hello; returns the connection and the Welcome's (epoch, head_seq).
/// Connects with busctl's handshake (`client::session`, the one every program uses);
/// returns the connection and the Welcome's (epoch, head_seq).
pub async fn join(addr: SocketAddr, role: Role, name: &str) -> (Conn, u64, u64) {
    let (conn, welcome) = client::session::open_within(&addr.to_string(), role, name, None, WAIT)
        .await
        .unwrap_or_else(|err| panic!("joining busd at {addr}: {err}"));
    (conn, welcome.epoch, welcome.head_seq)
}

pub async fn subscriber(
    addr: SocketAddr,
    filter: Filter,
    resume_after: Option<Position>,
) -> (Conn, u64) {
    let (mut conn, epoch, _) = join(addr, Role::Subscriber, "test-sub").await;
    let resuming = resume_after.is_some();
    conn.send(ClientFrame::Subscribe {
        filter,
        resume_after,
    })
    .await
    .expect("subscribe");
    if !resuming {
        // A replay may arrive before the Pong; only a fresh subscription can settle.
        settle(&mut conn).await;
    }
    (conn, epoch)
}

/// Round-trips a Ping so that frames sent before it have been acted on.
pub async fn settle(conn: &mut Conn) {
    conn.send(ClientFrame::Ping).await.expect("ping");
    loop {
        match next(conn).await {
            ServerFrame::Pong => return,
            ServerFrame::Heartbeat { .. } => {}
            other => panic!("expected Pong, got {other:?}"),
        }
    }
}

/// A subscriber named "slow" with a 4 KiB receive buffer, so its socket cannot hide a
/// backlog: a test that stops reading it fills its queue at busd at once.
pub async fn tiny_window_subscriber(addr: SocketAddr, filter: Filter) -> Conn {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(addr).await.unwrap();
    let mut conn = Framed::new(stream, FrameCodec::default());
    conn.send(hello(Role::Subscriber, "slow", None))
        .await
        .unwrap();
    assert!(matches!(next(&mut conn).await, ServerFrame::Welcome { .. }));
    conn.send(ClientFrame::Subscribe {
        filter,
        resume_after: None,
    })
    .await
    .unwrap();
    settle(&mut conn).await;
    conn
}

pub fn accounts(ids: &[u64]) -> Filter {
    Filter::Accounts(ids.iter().copied().collect())
}

/// The next frame, within [`WAIT`].
pub async fn next(conn: &mut Conn) -> ServerFrame {
    tokio::time::timeout(WAIT, conn.next())
        .await
        .expect("a frame in time")
        .expect("connection open")
        .expect("a valid frame")
}

/// The next frame that is not a Heartbeat, or `None` if the connection closed.
pub async fn next_or_closed(conn: &mut Conn) -> Option<ServerFrame> {
    loop {
        match tokio::time::timeout(WAIT, conn.next())
            .await
            .expect("a frame in time")
        {
            Some(Ok(ServerFrame::Heartbeat { .. })) => {}
            Some(Ok(frame)) => return Some(frame),
            Some(Err(_)) | None => return None,
        }
    }
}

/// A repeatable source of numbers below `n` from `seed` (xorshift64): event sizes and
/// accounts that look random but are the same on every run. Seed 0, xorshift's one fixed
/// point, is taken as 1 rather than giving zeros forever.
pub fn random_below(seed: u64) -> impl FnMut(u64) -> u64 {
    let mut state = seed.max(1);
    move |n| {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state % n
    }
}

/// An event of origin `test` whose id grows with every call, as a real publisher's do.
pub fn event(account_id: u64, data: &str) -> Event {
    static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    Event {
        account_id,
        timestamp_us: 1_795_255_200_123_456,
        data: data.into(),
        origin: "test".into(),
        id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
    }
}

/// Publishes one batch and waits for its PubAck.
pub async fn publish(conn: &mut Conn, batch_id: u64, events: Vec<Event>) {
    conn.send(ClientFrame::Publish { batch_id, events })
        .await
        .expect("publish");
    loop {
        match next(conn).await {
            ServerFrame::PubAck { batch_id: acked } => {
                assert_eq!(acked, batch_id);
                return;
            }
            ServerFrame::Heartbeat { .. } => {}
            other => panic!("expected PubAck, got {other:?}"),
        }
    }
}

/// Collects `n` events (and any gaps) from a subscriber.
pub async fn collect(conn: &mut Conn, n: usize) -> (Vec<(u64, Event)>, Vec<(u64, u64, u64)>) {
    let mut events = Vec::new();
    let mut gaps = Vec::new();
    while events.len() < n {
        match next(conn).await {
            ServerFrame::Events(batch) => events.extend(batch),
            ServerFrame::Gap {
                from_seq,
                to_seq,
                missed,
            } => gaps.push((from_seq, to_seq, missed)),
            ServerFrame::Heartbeat { .. } => {}
            other => panic!("expected events, got {other:?}"),
        }
    }
    (events, gaps)
}

/// Asserts that nothing but heartbeats arrives for `quiet`.
pub async fn assert_quiet(conn: &mut Conn, quiet: Duration) {
    let deadline = tokio::time::Instant::now() + quiet;
    loop {
        match tokio::time::timeout_at(deadline, conn.next()).await {
            Err(_) => return,
            Ok(Some(Ok(ServerFrame::Heartbeat { .. }))) => {}
            Ok(other) => panic!("expected silence, got {other:?}"),
        }
    }
}

pub async fn stats(conn: &mut Conn) -> protocol::Stats {
    conn.send(ClientFrame::StatsRequest)
        .await
        .expect("stats request");
    loop {
        match next(conn).await {
            ServerFrame::Stats(stats) => return stats,
            ServerFrame::Heartbeat { .. } => {}
            other => panic!("expected Stats, got {other:?}"),
        }
    }
}

/// Expects an Error frame with `code` and then the connection to close.
pub async fn expect_error(conn: &mut Conn, code: protocol::ErrorCode) -> String {
    let message = match next_or_closed(conn).await {
        Some(ServerFrame::Error { code: got, message }) => {
            assert_eq!(got, code, "{message}");
            message
        }
        other => panic!("expected Error {code:?}, got {other:?}"),
    };
    assert!(
        next_or_closed(conn).await.is_none(),
        "connection closed after the error"
    );
    message
}

/// Publishes one batch on a fresh connection and waits for its ack; any failure is an `Err`.
pub async fn try_publish(
    addr: SocketAddr,
    name: &str,
    batch_id: u64,
    events: Vec<Event>,
) -> Result<(), String> {
    let stream = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let mut conn = Framed::new(stream, FrameCodec::<ServerFrame, ClientFrame>::default());
    conn.send(hello(Role::Publisher, name, None))
        .await
        .map_err(|e| e.to_string())?;
    conn.send(ClientFrame::Publish { batch_id, events })
        .await
        .map_err(|e| e.to_string())?;
    loop {
        match tokio::time::timeout(WAIT, conn.next()).await {
            Ok(Some(Ok(ServerFrame::PubAck { batch_id: acked }))) if acked == batch_id => {
                return Ok(());
            }
            Ok(Some(Ok(ServerFrame::Welcome { .. } | ServerFrame::Heartbeat { .. }))) => {}
            Ok(other) => return Err(format!("{other:?}")),
            Err(_) => return Err("no ack in time".into()),
        }
    }
}

/// Publishes `(account, data)` events through the client library's [`Publisher`] as
/// `name`, as ingest does, and waits until busd has acknowledged them all.
///
/// [`Publisher`]: client::publisher::Publisher
pub async fn publish_events(addr: SocketAddr, name: &str, events: &[(u64, String)]) {
    publish_to(&addr.to_string(), name, events).await;
}

/// Publishes `events` (account, data) to `bus` (busd's address or `nats://` URLs, the stream
/// already made) with the client library's publisher and waits until every one is
/// acknowledged.
pub async fn publish_to(bus: &str, name: &str, events: &[(u64, String)]) {
    use client::outbox::{Limits, Outbox};
    use client::publisher::{Publisher, Settings};
    let limits = Limits {
        events: usize::MAX,
        bytes: usize::MAX,
        batch_events: 1000,
        batch_bytes: 512 * 1024,
    };
    let outbox = std::sync::Arc::new(Outbox::new(limits, next_id()));
    for (account, data) in events {
        outbox
            .push(*account, 1_795_255_200_123_456, data, name)
            .expect("an unbounded outbox");
    }
    let settings = Settings {
        bus: bus.to_owned(),
        layout: Default::default(),
        token: None,
        name: name.into(),
        linger: Duration::ZERO,
        max_in_flight: 8,
        timeout: WAIT,
        max_outage: Some(Duration::from_secs(60)),
        refusal_is_final: true,
    };
    let publisher = Publisher::start(settings, outbox, std::sync::Arc::new(|_| {}));
    let drained = publisher.outbox().drain(Duration::from_secs(60)).await;
    publisher.stop().await;
    if let Err(left) = drained {
        panic!("the bus at {bus} did not acknowledge {left} events");
    }
}

/// Ids that grow across every publisher of this test process, as a publisher's must
/// across its runs.
fn next_id() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1 << 40);
    NEXT.fetch_add(1 << 20, std::sync::atomic::Ordering::Relaxed)
}

/// A [`Subscriber`](client::subscriber::Subscriber) of the client library on `addr`, as
/// busctl's: reconnects for at most a minute.
pub fn subscribe(addr: &str, filter: Filter) -> client::subscriber::Subscriber {
    client::subscriber::Subscriber::new(client::subscriber::Options {
        bus: addr.into(),
        layout: Default::default(),
        token: None,
        name: "test-subscriber".into(),
        filter,
        max_outage: Some(Duration::from_secs(60)),
        resume: None,
        group: None,
        start: protocol::Start::Head,
        origins: Default::default(),
    })
}

/// Publishes a batch the way a real publisher must: until it is acknowledged, reconnecting
/// and resending under the same name and batch id (so busd drops a copy it already has).
pub async fn publish_until_acked(addr: SocketAddr, name: &str, batch_id: u64, events: Vec<Event>) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while let Err(err) = try_publish(addr, name, batch_id, events.clone()).await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "batch {batch_id} never acknowledged: {err}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_seed_gives_numbers_that_vary() {
        for seed in [0, 1, 0x9e37_79b9_7f4a_7c15] {
            let mut random = random_below(seed);
            let drawn: std::collections::HashSet<u64> = (0..64).map(|_| random(1000)).collect();
            assert!(drawn.len() > 32, "seed {seed}: {drawn:?}");
        }
    }
}
