//! `ingest serve`: load accounts, start busd (or reach the bus), serve HTTP, and on SIGTERM
//! stop accepting, drain the outbox to the bus and exit.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use anyhow::Context as _;
use data::Accounts;
use protocol::publish::{FRAME_OVERHEAD, max_event_len};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use crate::cli::{Db, ServeArgs};
use crate::connection::Timeouts;
use client::outbox::{self, Outbox};
use client::publisher::{self, OnReport, Publisher, Report, Settings};

use crate::metrics::Metrics;
use crate::request::Limits;
use crate::route::App;
use crate::server;

/// `ingest serve`: start, serve HTTP until SIGTERM or SIGINT, shut down.
pub async fn run(mut args: ServeArgs) -> anyhow::Result<()> {
    // An empty value (an unset variable in a compose file, say) means no token.
    args.bus_token = args.bus_token.filter(|t| !t.is_empty());
    let ingest = start(&args).await?;
    let stop = CancellationToken::new();
    let on_signal = stop.clone();
    tokio::spawn(async move {
        plumbing::signal::interrupted().await;
        info!("signal received: no longer accepting requests");
        on_signal.cancel();
    });
    let Running {
        listener,
        app,
        parts,
    } = ingest;
    server::run(listener, app, http_settings(&args), stop).await;
    parts.shut_down(args.drain_timeout).await
}

/// A started ingest: the HTTP listener and the app it serves, and what runs beside them.
struct Running {
    listener: TcpListener,
    app: Arc<App>,
    parts: Parts,
}

/// What runs beside the HTTP side, stopped in order by [`Parts::shut_down`].
struct Parts {
    publisher: Publisher,
    embedded_bus: Option<Background>,
    sync: AccountsSync,
}

/// What keeps the index in step with the accounts database, by kind of database.
enum AccountsSync {
    Sqlite(data::sync::SyncThread),
    Postgres(data::postgres::PgSync),
}

impl AccountsSync {
    async fn stop(self) {
        match self {
            AccountsSync::Sqlite(sync) => sync.stop(),
            AccountsSync::Postgres(sync) => sync.stop().await,
        }
    }
}

/// A task and the token that stops it.
struct Background {
    task: JoinHandle<()>,
    stop: CancellationToken,
}

impl Background {
    async fn stop(self) {
        self.stop.cancel();
        let _ = self.task.await;
    }
}

/// Loads the accounts, reaches (or starts) busd and binds HTTP; refuses to start when
/// busd refuses this ingest or a flag cannot work.
async fn start(args: &ServeArgs) -> anyhow::Result<Running> {
    let (accounts, sync) = match &args.db {
        Db::Sqlite(path) => {
            let accounts = load_accounts(path)?;
            let sync =
                data::sync::SyncThread::start(path.clone(), accounts.clone(), args.sync_interval)
                    .context("cannot start the accounts sync")?;
            (accounts, AccountsSync::Sqlite(sync))
        }
        Db::Postgres(url) => {
            let (accounts, sync) = load_postgres(url).await?;
            (accounts, AccountsSync::Postgres(sync))
        }
    };
    let (bus, embedded_bus) = start_bus(args).await?;
    let listener = TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let local = listener.local_addr()?;
    let origin = args
        .origin
        .clone()
        .unwrap_or_else(|| format!("{}:{}", hostname(), local.port()));
    let limits = outbox_limits(args, &origin)?;
    // Batch and event ids grow with the clock (in nanoseconds, faster than any event rate),
    // so they stay above those of an earlier run of this origin that a long-lived busd or
    // a watcher still remembers.
    let outbox = Arc::new(Outbox::new(limits, plumbing::clock::now_ns()));
    let settings = publisher_settings(args, bus, &origin);
    preflight(&settings, limits.batch_bytes).await?;
    let publisher = Publisher::start(settings, outbox.clone(), Arc::new(log_report) as OnReport);
    let app = Arc::new(App {
        accounts,
        outbox,
        link: publisher.link().clone(),
        metrics: Arc::new(Metrics::default()),
        origin: origin.clone(),
        max_data: args.max_data,
        cors_origins: args.cors_origin.clone(),
        ack_timeout: args.durable.then_some(args.ack_timeout),
    });
    if args.durable {
        info!(
            ack_timeout = ?args.ack_timeout,
            "durable: every 202 waits for the bus to acknowledge its event"
        );
    }
    info!(%origin, "listening on {local}");
    Ok(Running {
        listener,
        app,
        parts: Parts {
            publisher,
            embedded_bus,
            sync,
        },
    })
}

/// How the publisher reaches `bus` as `origin`: for ever, a refusal included (new events
/// get 503 until someone fixes busd's settings and it accepts this ingest).
fn publisher_settings(args: &ServeArgs, bus: String, origin: &str) -> Settings {
    Settings {
        bus,
        layout: client::jetstream::Layout {
            stream: args.stream.clone(),
            prefix: args.subject_prefix.clone(),
            replicas: usize::from(args.replicas),
            retain_bytes: args.retain_bytes.as_u64(),
            duplicate_window: args.duplicate_window,
            ..client::jetstream::Layout::default()
        },
        token: args.bus_token.clone(),
        name: origin.to_owned(),
        linger: args.linger,
        max_in_flight: usize::from(args.max_in_flight),
        timeout: args.bus_timeout,
        max_outage: None,
        refusal_is_final: false,
    }
}

/// The publisher's story in ingest's log.
fn log_report(report: Report) {
    match report {
        Report::Connected => info!("connected to the bus"),
        Report::Lost {
            reason,
            unacknowledged,
        } => warn!(%reason, unacknowledged, "lost the bus; reconnecting"),
        Report::Refused(err) => {
            error!(%err, "new events get 503 until the bus accepts this ingest");
        }
        Report::Warning(warning) => warn!("{warning}; using the stream as it is"),
        Report::Retrying(retry) => debug!(%retry),
    }
}

/// The bus address to publish to: `--bus`, or a busd started in this process.
async fn start_bus(args: &ServeArgs) -> anyhow::Result<(String, Option<Background>)> {
    if let Some(bus) = &args.bus {
        // Said out loud: a TRACKER_BUS exported for busctl also lands here.
        info!("publishing to the bus at {bus} (--bus or TRACKER_BUS); no embedded busd");
        return Ok((bus.clone(), None));
    }
    let listener = TcpListener::bind(&args.embedded_bus_listen)
        .await
        .with_context(|| {
            format!(
                "cannot listen for the embedded busd on {}",
                args.embedded_bus_listen
            )
        })?;
    let addr = listener.local_addr()?;
    info!("embedded busd listening on {addr}");
    let state_file = args
        .embedded_bus_state
        .clone()
        .unwrap_or_else(|| match args.db.sqlite() {
            Some(path) => path.with_file_name("busd.state"),
            None => PathBuf::from("busd.state"),
        });
    let config = busd::Config {
        token: args.bus_token.clone(),
        state_file: Some(state_file),
        ..busd::Config::default()
    };
    let stop = CancellationToken::new();
    let served = busd::serve(listener, config, stop.clone());
    let task = tokio::spawn(async move {
        if let Err(err) = served.await {
            error!(%err, "the embedded busd failed");
        }
    });
    Ok((addr.to_string(), Some(Background { task, stop })))
}

/// The HTTP side's limits and timeouts from the flags.
fn http_settings(args: &ServeArgs) -> server::Settings {
    server::Settings {
        limits: Limits {
            max_head: usize::try_from(args.max_head.as_u64()).unwrap_or(usize::MAX),
            max_headers: args.max_headers,
        },
        timeouts: Timeouts {
            header: args.header_timeout,
            idle: args.idle_timeout,
        },
        max_connections: args.max_connections,
    }
}

impl Parts {
    /// After HTTP stopped: waits for busd to acknowledge what was accepted, then stops the
    /// publisher, the embedded busd (which says `Goodbye` to its subscribers) and the sync.
    async fn shut_down(self, drain_timeout: std::time::Duration) -> anyhow::Result<()> {
        let drained = drain(&self.publisher, drain_timeout).await;
        self.publisher.stop().await;
        if let Some(bus) = self.embedded_bus {
            bus.stop().await;
        }
        self.sync.stop().await;
        drained?;
        info!("stopped");
        Ok(())
    }
}

/// The outbox's bounds from the flags, refusing a `--max-data` no batch could carry.
fn outbox_limits(args: &ServeArgs, origin: &str) -> anyhow::Result<outbox::Limits> {
    let limits = outbox::Limits {
        events: args.buffer_events,
        bytes: usize::try_from(args.buffer_bytes.as_u64()).unwrap_or(usize::MAX),
        batch_events: args.batch_events as usize,
        batch_bytes: usize::try_from(args.batch_bytes.as_u64()).unwrap_or(usize::MAX),
    };
    let largest = max_event_len(args.max_data, origin.len());
    if largest > limits.batch_bytes {
        anyhow::bail!(
            "--max-data {} makes events of up to {largest} bytes, more than --batch-bytes {} \
             can carry; raise --batch-bytes (busd must accept frames that large)",
            args.max_data,
            args.batch_bytes
        );
    }
    if limits.batch_bytes + FRAME_OVERHEAD > protocol::DEFAULT_MAX_FRAME && args.bus.is_none() {
        anyhow::bail!(
            "--batch-bytes {} is over the embedded busd's frame limit of {} bytes",
            args.batch_bytes,
            protocol::DEFAULT_MAX_FRAME
        );
    }
    Ok(limits)
}

/// One handshake before serving: a busd that refuses this ingest (token, version, another
/// ingest with the same origin, a frame limit too small) stops it at once, with the reason,
/// instead of accepting events nobody will take. An unreachable busd is only a warning:
/// events are buffered until it comes.
async fn preflight(settings: &Settings, batch_bytes: usize) -> anyhow::Result<()> {
    match publisher::connect(settings, batch_bytes).await {
        Ok(_) => Ok(()),
        Err(err) if err.is_refusal() => Err(err).context("cannot publish to the bus"),
        Err(err) => {
            warn!(%err, "the bus is not reachable yet; buffering events until it is");
            Ok(())
        }
    }
}

/// Opens (creating or initialising as needed) and loads the accounts, saying on stderr when
/// the database was new and when it has no accounts: either way every request would get 404,
/// which must not go unexplained.
fn load_accounts(path: &Path) -> anyhow::Result<Arc<Accounts>> {
    let existed = path.exists();
    let (conn, created) = data::open(path)
        .with_context(|| format!("cannot open the accounts database {}", path.display()))?;
    if created {
        report_created(path, existed);
    }
    let accounts = Arc::new(Accounts::default());
    let started = Instant::now();
    let loaded = accounts.load(&conn).context("cannot load accounts")?;
    info!(accounts = loaded, elapsed = ?started.elapsed(), "accounts loaded");
    if accounts.is_empty() {
        warn!(
            "the accounts table in {} is empty: every event request will get 404 until accounts are added",
            path.display()
        );
    }
    Ok(accounts)
}

/// The PostgreSQL counterpart of [`load_accounts`]: creates what is missing (saying so),
/// loads every account, then starts the sync that follows the table's notifications.
async fn load_postgres(url: &str) -> anyhow::Result<(Arc<Accounts>, data::postgres::PgSync)> {
    use data::postgres;
    let config = postgres::config(url)?;
    let db = postgres::describe(&config);
    let (mut client, opened) = postgres::open(&config)
        .await
        .with_context(|| format!("cannot open the accounts database {db}"))?;
    match opened.seeded {
        Some(seeded) if opened.created => {
            info!("created the accounts table in {db} and seeded it with {seeded} accounts")
        }
        Some(seeded) => info!(
            "the accounts table in {db} was empty and had never held an account: seeded it with {seeded} accounts"
        ),
        None => {}
    }
    if opened.key_hash_added {
        info!("the accounts table in {db} had no key_hash column (write keys): added it");
    }
    if opened.version_added {
        warn!(
            "the accounts table in {db} had no version column: added it, with the triggers that keep it"
        );
    }
    let accounts = Arc::new(Accounts::default());
    let started = Instant::now();
    let loaded = postgres::load(&mut client, &accounts)
        .await
        .context("cannot load accounts")?;
    info!(accounts = loaded, elapsed = ?started.elapsed(), "accounts loaded from {db}");
    if accounts.is_empty() {
        warn!(
            "the accounts table in {db} is empty: every event request will get 404 until accounts are added"
        );
    }
    let sync = postgres::PgSync::start(config, accounts.clone());
    Ok((accounts, sync))
}

fn report_created(path: &Path, existed: bool) {
    let seeded = data::schema::SEED_ACCOUNTS;
    if existed {
        warn!(
            "{} had no accounts table (an empty file or another database): created it and seeded it with {seeded} accounts",
            path.display()
        );
    } else {
        info!(
            "created {} and seeded it with {seeded} accounts",
            path.display()
        );
    }
}

/// Waits until busd has acknowledged every accepted event, or the timeout; an error (and
/// so a failing exit status) names how many accepted events are lost.
async fn drain(publisher: &Publisher, timeout: std::time::Duration) -> anyhow::Result<()> {
    match publisher.outbox().drain(timeout).await {
        Ok(()) => {
            info!("every accepted event was acknowledged by the bus");
            Ok(())
        }
        Err(left) => {
            error!(
                left,
                "the bus did not acknowledge these accepted events before the drain timeout"
            );
            anyhow::bail!(
                "{left} accepted events were lost: the bus did not acknowledge them in time"
            )
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "ingest".into())
}
