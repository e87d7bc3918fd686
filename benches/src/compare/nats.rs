//! A minimal NATS client over its text protocol: `PUB` in batches with `PING`/`PONG` as flow
//! control, and subscribers counting `MSG`s. Raw, like the busd bench client.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::mpsc;

use crate::bus_load::{BATCH, WINDOW};

const CONNECT: &[u8] = b"CONNECT {\"verbose\":false,\"pedantic\":false,\"echo\":false}\r\n";

/// Reads protocol lines and payloads: counts `MSG`s and reports `PONG`s. The server's own
/// keep-alive `PING`s come every two minutes, longer than any run here, so they go unanswered.
async fn read_loop(
    mut rd: tokio::net::tcp::OwnedReadHalf,
    messages: Arc<AtomicU64>,
    pongs: mpsc::UnboundedSender<()>,
) {
    let mut buf: Vec<u8> = Vec::with_capacity(1 << 20);
    let mut chunk = vec![0u8; 256 * 1024];
    let mut pos = 0;
    while let Ok(n @ 1..) = rd.read(&mut chunk).await {
        buf.extend_from_slice(&chunk[..n]);
        let mut count = 0;
        while let Some(end) = buf[pos..]
            .windows(2)
            .position(|w| w == b"\r\n")
            .map(|e| e + pos)
        {
            let line = &buf[pos..end];
            if line.starts_with(b"MSG ") {
                let size: usize = line
                    .rsplit(|&b| b == b' ')
                    .next()
                    .and_then(|s| std::str::from_utf8(s).ok()?.parse().ok())
                    .unwrap_or(0);
                if buf.len() < end + 2 + size + 2 {
                    break;
                }
                count += 1;
                pos = end + 2 + size + 2;
            } else {
                if line == b"PONG" {
                    let _ = pongs.send(());
                }
                pos = end + 2;
            }
        }
        messages.fetch_add(count, Relaxed);
        buf.drain(..pos);
        pos = 0;
    }
}

/// Connects; returns the write half and a receiver of PONGs, and spawns the reader.
async fn connect(
    addr: &str,
    messages: Arc<AtomicU64>,
) -> std::io::Result<(OwnedWriteHalf, mpsc::UnboundedReceiver<()>)> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (rd, mut wr) = stream.into_split();
    let (pong_tx, pongs) = mpsc::unbounded_channel();
    tokio::spawn(read_loop(rd, messages, pong_tx));
    wr.write_all(CONNECT).await?;
    Ok((wr, pongs))
}

/// Subscribes to `subjects`; returns once the server has them, then counts in the background.
pub async fn subscribe(
    addr: &str,
    subjects: Vec<String>,
    delivered: Arc<AtomicU64>,
) -> std::io::Result<()> {
    let (mut wr, mut pongs) = connect(addr, delivered).await?;
    let mut out = Vec::new();
    for (sid, subject) in subjects.iter().enumerate() {
        out.extend_from_slice(format!("SUB {subject} {}\r\n", sid + 1).as_bytes());
    }
    out.extend_from_slice(b"PING\r\n");
    wr.write_all(&out).await?;
    pongs
        .recv()
        .await
        .ok_or_else(|| std::io::Error::other("no PONG"))?;
    tokio::spawn(async move {
        let _keep_open = wr;
        std::future::pending::<()>().await
    });
    Ok(())
}

/// Publishes 64-byte payloads to `names[i % names.len()]`, a `PING` after each batch, with at most
/// [`WINDOW`] unanswered, until `stop`; `published` counts batches the server has processed.
pub async fn publish(
    addr: &str,
    names: Vec<String>,
    published: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<()> {
    let (mut wr, mut pongs) = connect(addr, Arc::new(AtomicU64::new(0))).await?;
    let payload = [b'd'; 64];
    let mut i = 0u64;
    let mut in_flight = 0;
    let mut out = Vec::with_capacity(BATCH * 128);
    while !stop.load(Relaxed) {
        while in_flight >= WINDOW {
            pongs
                .recv()
                .await
                .ok_or_else(|| std::io::Error::other("connection lost"))?;
            in_flight -= 1;
            published.fetch_add(BATCH as u64, Relaxed);
        }
        out.clear();
        for _ in 0..BATCH {
            let name = &names[(i % names.len() as u64) as usize];
            out.extend_from_slice(b"PUB ");
            out.extend_from_slice(name.as_bytes());
            out.extend_from_slice(b" 64\r\n");
            out.extend_from_slice(&payload);
            out.extend_from_slice(b"\r\n");
            i += 1;
        }
        out.extend_from_slice(b"PING\r\n");
        wr.write_all(&out).await?;
        in_flight += 1;
    }
    Ok(())
}
