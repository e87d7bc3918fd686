//! `--max-connections` against the real binary: idle connections (silent sockets, keep-alive
//! connections between requests) give up their slots to newcomers, the one idle longest
//! first; connections partway through a request head keep theirs, and only then are
//! newcomers refused.

mod support;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use support::*;

const ACCEPTED: (u16, &str) = (202, r#"{"status":"accepted"}"#);

fn connect(at: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(at).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    stream
}

/// One request and its reply; `None` if the server closed the connection instead.
fn get(stream: &mut TcpStream, target: &str) -> Option<(u16, String)> {
    let request = format!("GET {target} HTTP/1.1\r\nHost: test\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    read_reply(stream)
}

fn read_reply(stream: &mut TcpStream) -> Option<(u16, String)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16384];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut chunk).ok().filter(|&n| n > 0)?;
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let status = head.split(' ').nth(1)?.parse().ok()?;
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0);
    while buf.len() < head_end + length {
        let n = stream.read(&mut chunk).ok().filter(|&n| n > 0)?;
        buf.extend_from_slice(&chunk[..n]);
    }
    let body = String::from_utf8_lossy(&buf[head_end..head_end + length]).into_owned();
    Some((status, body))
}

/// Whether the server closed the connection (within the read timeout).
fn closed(stream: &mut TcpStream) -> bool {
    let mut byte = [0u8; 1];
    match stream.read(&mut byte) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
    }
}

/// Nothing outside shows when ingest has read what a client sent, or marked a connection
/// idle after answering it; a moment is plenty unless the machine is badly overloaded.
fn settle() {
    std::thread::sleep(Duration::from_millis(100));
}

fn reply(status: u16, body: &str) -> Option<(u16, String)> {
    Some((status, body.to_owned()))
}

#[test]
fn idle_connections_make_room_and_busy_ones_do_not() {
    let ingest = Ingest::start(&["--max-connections", "20", "--header-timeout", "30s"]);
    let at = ingest.http;
    let accepted = reply(ACCEPTED.0, ACCEPTED.1);

    // Sockets that never send anything do not lock real requests out.
    let mut silent: Vec<TcpStream> = (0..20).map(|_| connect(at)).collect();
    let mut first = connect(at);
    assert_eq!(get(&mut first, "/5?data=x"), accepted);
    assert!(closed(&mut silent[0]), "the oldest silent socket made room");
    settle();

    // Keep-alive connections between requests are idle too; the one idle longest goes.
    let mut keep_alive: Vec<TcpStream> = (0..20)
        .map(|i| {
            let mut stream = connect(at);
            assert_eq!(get(&mut stream, "/5?data=x"), accepted, "keep-alive {i}");
            stream
        })
        .collect();
    assert!(
        silent[1..].iter_mut().all(closed) && closed(&mut first),
        "the silent sockets and the first client, idle longer, made room for them"
    );
    settle();
    let mut newcomer = connect(at);
    assert_eq!(get(&mut newcomer, "/5?data=x"), accepted);
    assert!(
        closed(&mut keep_alive[0]),
        "the one idle longest was closed"
    );
    assert_eq!(
        get(&mut keep_alive[1], "/5?data=x"),
        accepted,
        "the others stay open"
    );

    // Connections partway through a request head are not idle: newcomers are refused.
    let partial: Vec<TcpStream> = (0..20)
        .map(|_| {
            let mut stream = connect(at);
            stream
                .write_all(b"GET /5?data=x HTTP/1.1\r\nHost: a\r\n")
                .unwrap();
            stream
        })
        .collect();
    // Until ingest has read the last partial head, that connection still counts as idle.
    settle();
    let mut refused = connect(at);
    assert_eq!(
        get(&mut refused, "/5?data=x"),
        reply(503, r#"{"error":"too_many_connections"}"#)
    );
    assert!(closed(&mut refused));

    // Once they are gone, service resumes.
    drop(partial);
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut after = loop {
        let mut stream = connect(at);
        match get(&mut stream, "/5?data=after") {
            Some((202, _)) => break stream,
            other => assert!(Instant::now() < deadline, "still refused: {other:?}"),
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let (status, metrics) = get(&mut after, "/metrics").unwrap();
    assert_eq!(status, 200);
    // silent[0]; silent[1..] and first; keep_alive[0]; keep_alive[1..] and the newcomer,
    // for the partial heads.
    assert!(
        metrics.contains("tracker_ingest_connections_reclaimed_total 42\n"),
        "{metrics}"
    );
}
