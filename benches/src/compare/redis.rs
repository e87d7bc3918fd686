//! A minimal Redis pub/sub client over RESP: pipelined `PUBLISH` and counting subscribers.
//! Raw, like the busd bench client, so the client costs as little as possible.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

use crate::bus_load::{BATCH, WINDOW};

fn command(out: &mut Vec<u8>, parts: &[&[u8]]) {
    out.extend_from_slice(format!("*{}\r\n", parts.len()).as_bytes());
    for part in parts {
        out.extend_from_slice(format!("${}\r\n", part.len()).as_bytes());
        out.extend_from_slice(part);
        out.extend_from_slice(b"\r\n");
    }
}

/// One RESP line starting at `pos`: its content and where the next starts.
fn line(buf: &[u8], pos: usize) -> Option<(&[u8], usize)> {
    let end = buf.get(pos..)?.windows(2).position(|w| w == b"\r\n")? + pos;
    Some((&buf[pos..end], end + 2))
}

/// One top-level RESP value at `pos`: whether it is a pub/sub `message`, a subscription
/// confirmation, and where the next value starts. `None` when it is not complete yet.
fn value(buf: &[u8], pos: usize) -> Option<(bool, bool, usize)> {
    let (head, mut next) = line(buf, pos)?;
    if head.first() != Some(&b'*') {
        return Some((false, false, next));
    }
    let count: usize = std::str::from_utf8(&head[1..]).ok()?.parse().ok()?;
    let mut first: &[u8] = b"";
    for i in 0..count {
        let (item, after) = line(buf, next)?;
        next = after;
        if item.first() == Some(&b'$') {
            let len: usize = std::str::from_utf8(&item[1..]).ok()?.parse().ok()?;
            if buf.len() < next + len + 2 {
                return None;
            }
            if i == 0 {
                first = &buf[next..next + len];
            }
            next += len + 2;
        }
    }
    Some((first == b"message", first == b"subscribe", next))
}

/// Reads once and scans every complete value: (messages, subscription confirmations).
async fn read_values(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
    chunk: &mut [u8],
) -> std::io::Result<(u64, usize)> {
    let n = stream.read(chunk).await?;
    if n == 0 {
        return Err(std::io::ErrorKind::UnexpectedEof.into());
    }
    buf.extend_from_slice(&chunk[..n]);
    let (mut messages, mut confirmations, mut pos) = (0, 0, 0);
    while let Some((message, confirmation, next)) = value(buf, pos) {
        messages += u64::from(message);
        confirmations += usize::from(confirmation);
        pos = next;
    }
    buf.drain(..pos);
    Ok((messages, confirmations))
}

/// Subscribes to `channels`; returns once every subscription is confirmed, then counts
/// messages into `delivered` in the background.
pub async fn subscribe(
    addr: &str,
    channels: Vec<String>,
    delivered: Arc<AtomicU64>,
) -> std::io::Result<()> {
    let mut stream = TcpStream::connect(addr).await?;
    let mut out = Vec::new();
    let mut parts: Vec<&[u8]> = vec![b"SUBSCRIBE"];
    parts.extend(channels.iter().map(|c| c.as_bytes()));
    command(&mut out, &parts);
    stream.write_all(&out).await?;
    let mut buf = Vec::with_capacity(1 << 20);
    let mut chunk = vec![0u8; 256 * 1024];
    let mut confirmed = 0;
    while confirmed < channels.len() {
        let (messages, confirmations) = read_values(&mut stream, &mut buf, &mut chunk).await?;
        delivered.fetch_add(messages, Relaxed);
        confirmed += confirmations;
    }
    tokio::spawn(async move {
        while let Ok((messages, _)) = read_values(&mut stream, &mut buf, &mut chunk).await {
            delivered.fetch_add(messages, Relaxed);
        }
    });
    Ok(())
}

/// Publishes 64-byte payloads, pipelined in batches with a window of outstanding replies,
/// to `names[i % names.len()]` for the i-th message, until `stop`.
pub async fn publish(
    addr: &str,
    names: Vec<String>,
    published: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<()> {
    let stream = TcpStream::connect(addr).await?;
    let (mut rd, mut wr) = stream.into_split();
    let window = Arc::new(Semaphore::new(WINDOW));
    let replies = {
        let (window, published) = (window.clone(), published.clone());
        tokio::spawn(async move {
            let mut chunk = vec![0u8; 64 * 1024];
            let mut seen = 0usize;
            while let Ok(n @ 1..) = rd.read(&mut chunk).await {
                // Every PUBLISH reply is one integer line.
                seen += chunk[..n].iter().filter(|&&b| b == b'\n').count();
                while seen >= BATCH {
                    seen -= BATCH;
                    published.fetch_add(BATCH as u64, Relaxed);
                    window.add_permits(1);
                }
            }
        })
    };
    let payload = [b'd'; 64];
    let mut i = 0u64;
    let mut out = Vec::with_capacity(BATCH * 128);
    while !stop.load(Relaxed) {
        let Ok(permit) = window.acquire().await else {
            break;
        };
        permit.forget();
        out.clear();
        for _ in 0..BATCH {
            let name = &names[(i % names.len() as u64) as usize];
            command(&mut out, &[b"PUBLISH", name.as_bytes(), &payload]);
            i += 1;
        }
        wr.write_all(&out).await?;
    }
    replies.abort();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_messages_and_confirmations() {
        let buf = b"*3\r\n$9\r\nsubscribe\r\n$1\r\na\r\n:1\r\n*3\r\n$7\r\nmessage\r\n$1\r\na\r\n$2\r\nhi\r\n*3\r\n$7\r\nmess";
        let (m, c, next) = value(buf, 0).unwrap();
        assert!(!m && c);
        let (m, c, next) = value(buf, next).unwrap();
        assert!(m && !c);
        assert!(value(buf, next).is_none(), "incomplete");
    }
}
