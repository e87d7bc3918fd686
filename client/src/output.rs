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
use crate::render;
use crate::subscriber::GapReport;
use crate::template::Template;

/// What the watch loop hands to stdout.
pub enum Output {
    /// Events of one busd epoch, in seq order.
    Events {
        /// The busd run their seqs belong to.
        epoch: u64,
        /// `(seq, event)` pairs to print.
        events: Vec<(u64, Event)>,
    },
    /// A loss to report.
    Gap(GapReport),
    /// Answered once everything sent before it is out of this process (written and
    /// flushed, or counted into a window): a consumer group member acknowledges events
    /// only then, so a crash cannot lose events the group thinks were handled.
    Synced(tokio::sync::oneshot::Sender<()>),
}

/// Writes until the sender is dropped; an error means stdout failed (a closed pipe, say).
/// `format` is what `--format` said, if anything: events default to text (or `template`,
/// when there is one), aggregate windows to a table on a terminal and JSON lines when piped.
pub async fn run(
    rx: mpsc::Receiver<Output>,
    format: Option<Format>,
    template: Option<Template>,
    aggregate: Option<Aggregator>,
) -> std::io::Result<()> {
    let mut out = BufWriter::new(tokio::io::stdout());
    match aggregate {
        None => {
            let style = match (format, template) {
                (None, Some(template)) => Style::Template(template),
                (format, _) => Style::Plain(format.unwrap_or(Format::Text)),
            };
            lines(rx, &style, &mut out).await?
        }
        Some(aggregator) => windows(rx, aggregator, View::for_stdout(format), &mut out).await?,
    }
    out.flush().await
}

/// How a view that refreshes (aggregate windows, `stats --watch`) is shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    /// The table, redrawn in place on a terminal.
    Redrawn,
    /// The table, one after the other (text piped somewhere).
    Table,
    /// One JSON object a refresh.
    Json,
}

/// Clears the terminal and homes the cursor, before a table is redrawn.
pub const CLEAR: &[u8] = b"\x1b[2J\x1b[H";

impl View {
    /// The view `--format` asks for: text is a table (redrawn on a terminal), JSON is JSON
    /// lines, and without `--format` a redrawn table on a terminal and JSON lines otherwise.
    pub fn for_stdout(format: Option<Format>) -> View {
        let terminal = std::io::stdout().is_terminal();
        match format {
            Some(Format::Json) => View::Json,
            Some(Format::Text) | None if terminal => View::Redrawn,
            Some(Format::Text) => View::Table,
            None => View::Json,
        }
    }
}

/// How event lines are written.
enum Style {
    /// `--format text` or `json`.
    Plain(Format),
    /// `--template`; gaps as in text.
    Template(Template),
}

async fn lines(
    mut rx: mpsc::Receiver<Output>,
    style: &Style,
    out: &mut BufWriter<Stdout>,
) -> std::io::Result<()> {
    while let Some(item) = rx.recv().await {
        match item {
            Output::Events { epoch, events } => {
                for (seq, event) in &events {
                    let line = match style {
                        Style::Plain(format) => render::event_line(*format, epoch, *seq, event),
                        Style::Template(template) => template.render(epoch, *seq, event),
                    };
                    write_line(out, &line).await?;
                }
            }
            Output::Gap(gap) => {
                let format = match style {
                    Style::Plain(format) => *format,
                    Style::Template(_) => Format::Text,
                };
                write_line(out, &render::gap_line(format, &gap)).await?
            }
            Output::Synced(done) => {
                out.flush().await?;
                let _ = done.send(());
            }
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
    view: View,
    out: &mut BufWriter<Stdout>,
) -> std::io::Result<()> {
    let period = aggregator.window();
    let mut started = Instant::now();
    let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    let mut pending = false;
    loop {
        tokio::select! {
            item = rx.recv() => match item {
                Some(Output::Events { events, .. }) => {
                    let now = plumbing::clock::now_us();
                    for (_, event) in &events {
                        aggregator.record(event, now);
                    }
                    pending = true;
                }
                Some(Output::Gap(_)) => {
                    aggregator.gap();
                    pending = true;
                }
                Some(Output::Synced(done)) => {
                    let _ = done.send(());
                }
                None => break,
            },
            _ = ticks.tick() => {
                let window = close_window(&mut aggregator, &mut started);
                show(out, &window, view).await?;
                pending = false;
            }
        }
    }
    if pending {
        let window = close_window(&mut aggregator, &mut started);
        show(out, &window, view).await?;
    }
    Ok(())
}

fn close_window(aggregator: &mut Aggregator, started: &mut Instant) -> Window {
    let secs = started.elapsed().as_secs_f64();
    *started = Instant::now();
    let end = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
    aggregator.finish(end, secs)
}

async fn show(out: &mut BufWriter<Stdout>, window: &Window, view: View) -> std::io::Result<()> {
    match view {
        View::Redrawn => {
            out.write_all(CLEAR).await?;
            out.write_all(window.table().as_bytes()).await?;
        }
        View::Table => {
            out.write_all(window.table().as_bytes()).await?;
            out.write_all(b"\n").await?;
        }
        View::Json => write_line(out, &window.json()).await?,
    }
    out.flush().await
}

async fn write_line(out: &mut BufWriter<Stdout>, line: &str) -> std::io::Result<()> {
    out.write_all(line.as_bytes()).await?;
    out.write_all(b"\n").await
}
