//! `busctl doctor`: one canary event through the whole pipeline (HTTP into ingest, over the
//! bus, out to a subscriber), naming the hop that fails.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use futures::{SinkExt, StreamExt};
use protocol::{ClientFrame, Filter, Position, Role, ServerFrame};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::cli::{DoctorArgs, exit};
use crate::session::{self, Conn};

/// Runs `busctl doctor`; returns the exit code.
pub async fn run(args: DoctorArgs) -> i32 {
    match check(&args).await {
        Ok(()) => exit::OK,
        Err(()) => exit::ERROR,
    }
}

fn report(hop: &str, ok: bool, detail: &str) {
    println!("{hop:<9}{:<6}{detail}", if ok { "ok" } else { "FAIL" });
}

async fn check(args: &DoctorArgs) -> Result<(), ()> {
    let bus = &args.bus.bus;
    let mut conn = subscribe(args)
        .await
        .map_err(|err| report("bus", false, &format!("{bus}: {err}")))?;
    report(
        "bus",
        true,
        &format!("subscribed to account {} on {bus}", args.account),
    );

    let canary = format!("doctor-{}-{:08x}", std::process::id(), fastrand::u32(..));
    let target = format!("/{}?data={canary}", args.account);
    let sent = Instant::now();
    match http_get(&args.ingest, &target).await {
        Ok((202, _)) => report("ingest", true, &format!("GET {target} answered 202")),
        Ok((status, body)) => {
            report(
                "ingest",
                false,
                &format!("GET {target} answered {status} {body}"),
            );
            return Err(());
        }
        Err(err) => {
            report("ingest", false, &format!("{}: {err}", args.ingest));
            return Err(());
        }
    }

    match wait_for(&mut conn, &canary, args.timeout).await {
        Some(seq) => {
            let ms = sent.elapsed().as_secs_f64() * 1000.0;
            report(
                "delivery",
                true,
                &format!("the canary arrived over the bus in {ms:.1} ms (seq {seq})"),
            );
            Ok(())
        }
        None => {
            let detail = format!(
                "ingest accepted the canary but it did not arrive on {bus} within {}; is ingest forwarding to this busd, and is it ready (/readyz)?",
                humantime::format_duration(args.timeout)
            );
            report("delivery", false, &detail);
            Err(())
        }
    }
}

/// Subscribes to the account and waits for the subscription to be in place.
async fn subscribe(args: &DoctorArgs) -> Result<Conn, String> {
    let name = format!("busctl-doctor-{}", std::process::id());
    let (mut conn, welcome) = session::open(
        &args.bus.bus,
        Role::Subscriber,
        &name,
        args.bus.token.as_deref(),
    )
    .await
    .map_err(|e| e.to_string())?;
    let filter = Filter::Accounts(BTreeSet::from([args.account]));
    let resume_after = Some(Position {
        epoch: welcome.epoch,
        seq: welcome.head_seq,
    });
    conn.send(ClientFrame::Subscribe {
        filter,
        resume_after,
    })
    .await
    .map_err(|e| e.to_string())?;
    conn.send(ClientFrame::Ping)
        .await
        .map_err(|e| e.to_string())?;
    loop {
        match tokio::time::timeout(Duration::from_secs(5), conn.next()).await {
            Ok(Some(Ok(ServerFrame::Pong))) => return Ok(conn),
            Ok(Some(Ok(ServerFrame::Error { message, .. }))) => return Err(message),
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(e))) => return Err(e.to_string()),
            Ok(None) => return Err("busd closed the connection".into()),
            Err(_) => return Err("no answer from busd".into()),
        }
    }
}

async fn wait_for(conn: &mut Conn, canary: &str, timeout: Duration) -> Option<u64> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, conn.next()).await {
            Ok(Some(Ok(ServerFrame::Events(events)))) => {
                if let Some((seq, _)) = events.iter().find(|(_, e)| e.data == canary) {
                    return Some(*seq);
                }
            }
            Ok(Some(Ok(_))) => {}
            _ => return None,
        }
    }
}

/// A single HTTP/1.1 GET to `base` (`http://host:port`); returns the status and body.
async fn http_get(base: &str, target: &str) -> Result<(u16, String), String> {
    let authority = base
        .strip_prefix("http://")
        .ok_or("only http:// URLs are supported")?;
    let authority = authority.split('/').next().unwrap_or(authority);
    let address = if authority.contains(':') {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    };
    let mut stream = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(&address))
        .await
        .map_err(|_| "connect timed out".to_owned())?
        .map_err(|e| format!("cannot connect: {e}"))?;
    let request =
        format!("GET {target} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n");
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response))
        .await
        .map_err(|_| "no response in time".to_owned())?
        .map_err(|e| e.to_string())?;
    let text = String::from_utf8_lossy(&response);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or("not an HTTP response")?;
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    Ok((status, body))
}
