//! `busctl doctor`: one canary event through the whole pipeline (HTTP into ingest, over the
//! bus, out to a subscriber), naming the hop that fails.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use protocol::Filter;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::cli::{DoctorArgs, exit};
use crate::subscriber::{Delivery, Notice, Options, Subscriber};

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
    let mut subscriber = subscribe(args)
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

    match wait_for(&mut subscriber, &canary, args.timeout).await {
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
                "ingest accepted the canary but it did not arrive on {bus} within {}; is ingest forwarding to this bus, and is it ready (/readyz)?",
                humantime::format_duration(args.timeout)
            );
            report("delivery", false, &detail);
            Err(())
        }
    }
}

/// Subscribes to the account with the same subscriber `watch` uses (either bus), and
/// waits until it is live: from then on, everything published reaches it.
async fn subscribe(args: &DoctorArgs) -> Result<Subscriber, String> {
    let mut subscriber = Subscriber::new(Options {
        bus: args.bus.bus.clone(),
        layout: args.bus.layout(),
        token: args.bus.token.clone(),
        name: format!("busctl-doctor-{}", std::process::id()),
        filter: Filter::Accounts(BTreeSet::from([args.account])),
        max_outage: Some(Duration::from_secs(5)),
        resume: None,
        group: None,
        start: protocol::Start::Head,
        origins: Default::default(),
    });
    let live = async {
        loop {
            match subscriber.next().await {
                Ok(Delivery::Notice(Notice::Live { .. })) => return Ok(()),
                Ok(Delivery::Notice(Notice::Reconnecting(retry))) => return Err(retry.to_string()),
                Ok(_) => {}
                Err(err) => return Err(err.to_string()),
            }
        }
    };
    match tokio::time::timeout(Duration::from_secs(10), live).await {
        Ok(Ok(())) => Ok(subscriber),
        Ok(Err(err)) => Err(err),
        Err(_) => Err("not subscribed within 10s".into()),
    }
}

async fn wait_for(subscriber: &mut Subscriber, canary: &str, timeout: Duration) -> Option<u64> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        match tokio::time::timeout_at(deadline, subscriber.next()).await {
            Ok(Ok(Delivery::Events { events, .. })) => {
                if let Some((seq, _)) = events.iter().find(|(_, e)| e.data == canary) {
                    return Some(*seq);
                }
            }
            Ok(Ok(_)) => {}
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
