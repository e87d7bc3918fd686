//! A minimal HTTP/1.1 client over a raw socket, so tests see exactly what the server sent.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One parsed response.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A keep-alive connection.
pub struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Client {
    pub async fn connect(addr: SocketAddr) -> Client {
        let stream = TcpStream::connect(addr).await.expect("connect to ingest");
        Client {
            stream,
            buf: Vec::new(),
        }
    }

    pub async fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("send request");
    }

    pub async fn get(&mut self, target: &str) -> Reply {
        self.request("GET", target).await
    }

    pub async fn request(&mut self, method: &str, target: &str) -> Reply {
        self.send_raw(format!("{method} {target} HTTP/1.1\r\nHost: test\r\n\r\n").as_bytes())
            .await;
        self.read_reply(method == "HEAD").await.expect("a response")
    }

    /// Reads one response; `None` if the server closed the connection first.
    pub async fn read_reply(&mut self, head_only: bool) -> Option<Reply> {
        let head_end = loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                break end + 4;
            }
            if !self.fill().await {
                return None;
            }
        };
        let head = String::from_utf8_lossy(&self.buf[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
            .collect();
        let length = if head_only {
            0
        } else {
            headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| v.parse().ok())
                .unwrap_or(0)
        };
        while self.buf.len() < head_end + length {
            if !self.fill().await {
                return None;
            }
        }
        let body = String::from_utf8_lossy(&self.buf[head_end..head_end + length]).into_owned();
        self.buf.drain(..head_end + length);
        Some(Reply {
            status,
            headers,
            body,
        })
    }

    /// Whether the server has closed the connection (after anything still buffered).
    pub async fn closed(&mut self) -> bool {
        let mut byte = [0u8; 1];
        matches!(
            tokio::time::timeout(Duration::from_secs(5), self.stream.read(&mut byte)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }

    async fn fill(&mut self) -> bool {
        let mut chunk = [0u8; 16384];
        match tokio::time::timeout(Duration::from_secs(10), self.stream.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => {
                self.buf.extend_from_slice(&chunk[..n]);
                true
            }
            _ => false,
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// One request on a fresh connection.
pub async fn get(addr: SocketAddr, target: &str) -> Reply {
    Client::connect(addr).await.get(target).await
}

/// GET `target` from `addr` without a runtime: the status and body, or why not. HTTP/1.0, so
/// the server closes the connection after a body it sends whole (no chunking) and reading to
/// the end is reading the response. Short timeouts: a paused server accepts the connection
/// (the kernel does) but never answers. For polling monitoring and readiness endpoints from
/// plain threads (a nats-server's, ingest's through nginx, inside a network namespace).
pub fn get_blocking(addr: SocketAddr, target: &str) -> Result<(u16, String), String> {
    use std::io::{Read as _, Write as _};
    let fail = |e: std::io::Error| format!("GET {target} on {addr}: {e}");
    let mut stream =
        std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(500)).map_err(fail)?;
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .map_err(fail)?;
    stream
        .set_write_timeout(Some(Duration::from_secs(2)))
        .map_err(fail)?;
    stream
        .write_all(format!("GET {target} HTTP/1.0\r\nHost: tracker\r\n\r\n").as_bytes())
        .map_err(fail)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).map_err(fail)?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("GET {target} on {addr}: no complete response"))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("GET {target} on {addr}: bad status line"))?;
    Ok((status, body.to_owned()))
}
