use std::time::Duration;

use tokio::io::{AsyncWriteExt, DuplexStream, duplex};

use super::*;

const MAX_FRAME: usize = 64 * 1024;

fn limits(budget: &ReadBudget, frame_timeout: Duration) -> Limits {
    Limits {
        max_frame: MAX_FRAME,
        frame_timeout,
        budget: budget.clone(),
    }
}

/// A greeted reader on one end of an in-memory pipe, and the other end to write to.
fn pair(budget: &ReadBudget, frame_timeout: Duration) -> (FrameReader<DuplexStream>, DuplexStream) {
    let (ours, theirs) = duplex(1 << 20);
    let mut reader = FrameReader::new(ours, limits(budget, frame_timeout));
    reader.hello_accepted();
    (reader, theirs)
}

fn frame(body: &[u8]) -> Vec<u8> {
    let mut bytes = (body.len() as u32).to_be_bytes().to_vec();
    bytes.extend_from_slice(body);
    bytes
}

async fn next_ok(reader: &mut FrameReader<DuplexStream>) -> Bytes {
    tokio::time::timeout(Duration::from_secs(5), reader.next())
        .await
        .expect("a frame in time")
        .expect("not closed")
        .expect("a valid frame")
}

/// Whether `next` is still waiting after `wait`.
async fn still_waiting(reader: &mut FrameReader<DuplexStream>, wait: Duration) -> bool {
    tokio::time::timeout(wait, reader.next()).await.is_err()
}

#[tokio::test]
async fn pipelined_small_frames_take_no_budget() {
    let budget = ReadBudget::new(MAX_FRAME);
    let (mut reader, mut peer) = pair(&budget, Duration::from_secs(5));
    let mut stream = Vec::new();
    for i in 0..1000u32 {
        stream.extend(frame(&i.to_be_bytes().repeat(1 + i as usize % 50)));
    }
    peer.write_all(&stream).await.unwrap();
    for i in 0..1000u32 {
        let body = next_ok(&mut reader).await;
        assert_eq!(&body[..4], &i.to_be_bytes());
        assert_eq!(body.len(), 4 * (1 + i as usize % 50));
        assert_eq!(budget.available(), MAX_FRAME, "no budget for frame {i}");
        assert!(reader.buf.capacity() <= SMALL);
    }
}

#[tokio::test]
async fn a_large_frame_holds_budget_until_it_is_handed_on_then_the_buffer_shrinks() {
    let budget = ReadBudget::new(MAX_FRAME);
    let (mut reader, mut peer) = pair(&budget, Duration::from_secs(5));
    let body = vec![7u8; 40_000];
    let bytes = frame(&body);
    peer.write_all(&bytes[..10_000]).await.unwrap();
    assert!(still_waiting(&mut reader, Duration::from_millis(50)).await);
    assert_eq!(budget.available(), MAX_FRAME - body.len());
    assert_eq!(
        reader.buf.capacity(),
        bytes.len(),
        "grown to the frame, not beyond"
    );
    peer.write_all(&bytes[10_000..]).await.unwrap();
    peer.write_all(&frame(b"after")).await.unwrap();
    assert_eq!(next_ok(&mut reader).await, body);
    assert_eq!(budget.available(), MAX_FRAME);
    assert!(reader.buf.capacity() <= SMALL, "back to a small buffer");
    assert_eq!(&next_ok(&mut reader).await[..], b"after");
}

#[tokio::test]
async fn a_spent_budget_stops_reading_until_it_frees() {
    let budget = ReadBudget::new(50_000);
    let (mut first, mut first_peer) = pair(&budget, Duration::from_secs(5));
    let (mut second, mut second_peer) = pair(&budget, Duration::from_secs(5));
    let a = frame(&[1u8; 40_000]);
    let b = frame(&[2u8; 40_000]);
    first_peer.write_all(&a[..SMALL]).await.unwrap();
    assert!(still_waiting(&mut first, Duration::from_millis(20)).await);
    second_peer.write_all(&b).await.unwrap();
    assert!(still_waiting(&mut second, Duration::from_millis(100)).await);
    assert!(
        second.buf.capacity() <= SMALL,
        "nothing grown without budget"
    );
    first_peer.write_all(&a[SMALL..]).await.unwrap();
    assert_eq!(next_ok(&mut first).await.len(), 40_000);
    assert_eq!(next_ok(&mut second).await.len(), 40_000);
    assert_eq!(budget.available(), 50_000);
}

#[tokio::test]
async fn a_started_frame_must_finish_in_time_but_an_idle_connection_may_wait() {
    let budget = ReadBudget::new(MAX_FRAME);
    let (mut reader, mut peer) = pair(&budget, Duration::from_millis(200));
    assert!(still_waiting(&mut reader, Duration::from_millis(400)).await);
    peer.write_all(&frame(b"whole")).await.unwrap();
    assert_eq!(&next_ok(&mut reader).await[..], b"whole");
    peer.write_all(&frame(b"half")[..5]).await.unwrap();
    let started = Instant::now();
    let err = reader.next().await.unwrap().unwrap_err();
    assert!(matches!(err, ReadError::FrameTimeout(_)), "{err}");
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(150) && took < Duration::from_secs(2));
}

#[tokio::test]
async fn the_deadline_of_a_frame_that_waited_for_budget_starts_when_granted() {
    let budget = ReadBudget::new(50_000);
    let timeout = Duration::from_millis(300);
    let (mut holder, mut holder_peer) = pair(&budget, timeout);
    let (mut waiter, mut waiter_peer) = pair(&budget, timeout);
    holder_peer
        .write_all(&frame(&[1u8; 40_000])[..SMALL])
        .await
        .unwrap();
    assert!(still_waiting(&mut holder, Duration::from_millis(20)).await);
    let b = frame(&[2u8; 40_000]);
    waiter_peer.write_all(&b[..SMALL]).await.unwrap();
    // Waits for budget well past its own timeout without timing out...
    assert!(still_waiting(&mut waiter, Duration::from_millis(100)).await);
    let err = holder.next().await.unwrap().unwrap_err();
    assert!(matches!(err, ReadError::FrameTimeout(_)));
    drop(holder);
    // ...and gets the whole timeout once the holder's budget is back.
    assert!(still_waiting(&mut waiter, Duration::from_millis(150)).await);
    waiter_peer.write_all(&b[SMALL..]).await.unwrap();
    assert_eq!(next_ok(&mut waiter).await.len(), 40_000);
}

#[tokio::test]
async fn the_first_frame_is_small_until_hello_is_accepted() {
    let budget = ReadBudget::new(MAX_FRAME);
    let (ours, mut peer) = duplex(1 << 20);
    let mut reader = FrameReader::new(ours, limits(&budget, Duration::from_secs(5)));
    peer.write_all(&(100_000u32).to_be_bytes()).await.unwrap();
    let err = reader.next().await.unwrap().unwrap_err();
    assert!(
        matches!(err, ReadError::FirstFrameTooLarge { len: 100_000 }),
        "{err}"
    );
    assert!(err.to_string().contains("Hello under 4 KiB"), "{err}");
    assert_eq!(budget.available(), MAX_FRAME);

    let (ours, mut peer) = duplex(1 << 20);
    let mut reader = FrameReader::new(ours, limits(&budget, Duration::from_secs(5)));
    let hello = vec![0u8; FIRST_FRAME_MAX];
    peer.write_all(&frame(&hello)).await.unwrap();
    peer.write_all(&frame(&[3u8; 20_000])).await.unwrap();
    assert_eq!(next_ok(&mut reader).await.len(), FIRST_FRAME_MAX);
    reader.hello_accepted();
    assert_eq!(next_ok(&mut reader).await.len(), 20_000);
}

#[tokio::test]
async fn a_frame_over_the_limit_is_refused_from_its_prefix() {
    let budget = ReadBudget::new(MAX_FRAME);
    let (mut reader, mut peer) = pair(&budget, Duration::from_secs(5));
    peer.write_all(&((MAX_FRAME + 1) as u32).to_be_bytes())
        .await
        .unwrap();
    let err = reader.next().await.unwrap().unwrap_err();
    assert!(matches!(
        err,
        ReadError::Codec(CodecError::FrameTooLarge { .. })
    ));
    assert_eq!(budget.available(), MAX_FRAME);
}

#[tokio::test]
async fn a_close_between_frames_ends_quietly_and_mid_frame_is_truncated() {
    let budget = ReadBudget::new(MAX_FRAME);
    let (mut reader, mut peer) = pair(&budget, Duration::from_secs(5));
    peer.write_all(&frame(b"last")).await.unwrap();
    drop(peer);
    assert_eq!(&next_ok(&mut reader).await[..], b"last");
    assert!(reader.next().await.is_none());

    let (mut reader, mut peer) = pair(&budget, Duration::from_secs(5));
    peer.write_all(&frame(&[9u8; 30_000])[..20_000])
        .await
        .unwrap();
    drop(peer);
    let err = reader.next().await.unwrap().unwrap_err();
    assert!(matches!(err, ReadError::Codec(CodecError::Truncated(_))));
    drop(reader);
    assert_eq!(budget.available(), MAX_FRAME);
}

#[tokio::test]
async fn has_frame_sees_a_buffered_whole_frame() {
    let budget = ReadBudget::new(MAX_FRAME);
    let (mut reader, mut peer) = pair(&budget, Duration::from_secs(5));
    let mut two = frame(b"one");
    two.extend(frame(b"two"));
    peer.write_all(&two).await.unwrap();
    assert_eq!(&next_ok(&mut reader).await[..], b"one");
    assert!(reader.has_frame());
    assert_eq!(&next_ok(&mut reader).await[..], b"two");
    assert!(!reader.has_frame());
}

impl Readable for DuplexStream {
    /// An in-memory pipe has no readiness to wait on: it reads with a buffer in hand.
    async fn read_idle(&mut self, buf: &mut BytesMut, room: usize) -> std::io::Result<usize> {
        buf.reserve(room);
        tokio::io::AsyncReadExt::read_buf(self, buf).await
    }
}

#[tokio::test]
async fn an_idle_connection_holds_no_read_buffer() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mut peer = tokio::net::TcpStream::connect(listener.local_addr().unwrap())
        .await
        .unwrap();
    let (socket, _) = listener.accept().await.unwrap();
    let (rd, _wr) = socket.into_split();
    let budget = ReadBudget::new(1 << 20);
    let mut reader = FrameReader::new(rd, limits(&budget, Duration::from_secs(5)));
    reader.hello_accepted();
    peer.write_all(&frame(b"ping")).await.unwrap();
    let body = reader.next().await.unwrap().unwrap();
    assert_eq!(&body[..], b"ping");
    let idle = tokio::time::timeout(Duration::from_millis(50), reader.next()).await;
    assert!(idle.is_err(), "nothing more to read");
    assert_eq!(reader.buf.capacity(), 0, "no buffer while waiting");
    peer.write_all(&frame(b"again")).await.unwrap();
    let body = reader.next().await.unwrap().unwrap();
    assert_eq!(&body[..], b"again", "a buffer comes back with the bytes");
}
