//! The task that owns stdout: event lines, gap lines, or aggregate windows.
//!
//! It is fed through a bounded channel, so a slow stdout (a pipe into a slow program) slows
//! the reading of the socket, and busd's bounded queue turns any real backlog into a
//! reported gap instead of unbounded memory here.

use std::io::IsTerminal;
use std::time::{Instant, SystemTime};

use protocol::Event;
use tokio::io::{AsyncWriteExt, BufWriter, Stdout};
use tokio::sync::mpsc;

use crate::aggregate::{Aggregator, Window};
use crate::cli::Format;
use crate::render::{self, GapReport};

pub enum Output {
    Events(Vec<(u64, Event)>),
    Gap(GapReport),
}

/// Writes until the sender is dropped; an error means stdout failed (a closed pipe, say).
pub async fn run(
    rx: mpsc::Receiver<Output>,
    format: Format,
    aggregate: Option<Aggregator>,
) -> std::io::Result<()> {
    let mut out = BufWriter::new(tokio::io::stdout());
    match aggregate {
        None => lines(rx, format, &mut out).await?,
        Some(aggregator) => windows(rx, aggregator, &mut out).await?,
    }
    out.flush().await
}

async fn lines(
    mut rx: mpsc::Receiver<Output>,
    format: Format,
    out: &mut BufWriter<Stdout>,
) -> std::io::Result<()> {
    while let Some(item) = rx.recv().await {
        match item {
            Output::Events(events) => {
                for (seq, event) in &events {
                    write_line(out, &render::event_line(format, *seq, event)).await?;
                }
            }
            Output::Gap(gap) => write_line(out, &render::gap_line(format, &gap)).await?,
        }
        if rx.is_empty() {
            out.flush().await?;
        }
    }
    Ok(())
}

async fn windows(
    mut rx: mpsc::Receiver<Output>,
    mut aggregator: Aggregator,
    out: &mut BufWriter<Stdout>,
) -> std::io::Result<()> {
    let terminal = std::io::stdout().is_terminal();
    let period = aggregator.window();
    let mut started = Instant::now();
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    let mut pending = false;
    loop {
        tokio::select! {
            item = rx.recv() => match item {
                Some(Output::Events(events)) => {
                    let now = render::now_us();
                    for (_, event) in &events {
                        aggregator.record(event, now);
                    }
                    pending = true;
                }
                Some(Output::Gap(_)) => {
                    aggregator.gap();
                    pending = true;
                }
                None => break,
            },
            _ = ticks.tick() => {
                let window = close_window(&mut aggregator, &mut started);
                show(out, &window, terminal).await?;
                pending = false;
            }
        }
    }
    if pending {
        let window = close_window(&mut aggregator, &mut started);
        show(out, &window, terminal).await?;
    }
    Ok(())
}

fn close_window(aggregator: &mut Aggregator, started: &mut Instant) -> Window {
    let secs = started.elapsed().as_secs_f64();
    *started = Instant::now();
    let end = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    aggregator.finish(end, secs)
}

async fn show(out: &mut BufWriter<Stdout>, window: &Window, terminal: bool) -> std::io::Result<()> {
    if terminal {
        // Clear the screen and home the cursor, then redraw the table.
        out.write_all(b"\x1b[2J\x1b[H").await?;
        out.write_all(window.table().as_bytes()).await?;
    } else {
        write_line(out, &window.json()).await?;
    }
    out.flush().await
}

async fn write_line(out: &mut BufWriter<Stdout>, line: &str) -> std::io::Result<()> {
    out.write_all(line.as_bytes()).await?;
    out.write_all(b"\n").await
}
