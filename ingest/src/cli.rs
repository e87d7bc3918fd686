//! The command line: `ingest [serve]` and `ingest accounts ...`, every flag also read from
//! `TRACKER_<FLAG>`.

use std::path::PathBuf;
use std::time::Duration;

use bytesize::ByteSize;
use clap::{Args, Parser, Subcommand, ValueEnum};

/// The whole command line; `--help` shows the `about` text.
#[derive(Parser, Debug)]
#[command(
    name = "ingest",
    version,
    about = "Tracker's HTTP endpoint: GET /<account_id>?data=<data> checks the account and forwards the event to the bus (busd or NATS JetStream).\nWith no --bus it runs busd inside this process.",
    args_conflicts_with_subcommands = true,
    after_help = "Every flag also reads TRACKER_INGEST_<FLAG>, e.g. TRACKER_INGEST_LISTEN; --bus, --bus-token, --db, --stream and --subject-prefix read TRACKER_BUS, TRACKER_BUS_TOKEN, TRACKER_DB, TRACKER_STREAM and TRACKER_SUBJECT_PREFIX, which every program shares; --durable also reads TRACKER_DURABLE.\nExit codes: 0 clean shutdown, 1 cannot serve (or the accounts command failed), 2 bad arguments."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub serve: ServeArgs,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Serve HTTP (the default).
    Serve(Box<ServeArgs>),
    /// Manage the accounts table.
    Accounts(AccountsArgs),
}

#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// HTTP address to listen on.
    #[arg(long, env = "TRACKER_INGEST_LISTEN", default_value = "127.0.0.1:8080", value_parser = plumbing::args::socket_addr)]
    pub listen: String,
    /// Accounts database: an SQLite file, or PostgreSQL as postgres://user@host:port/dbname.
    /// Created and seeded when missing (for PostgreSQL: the accounts table and its triggers).
    #[arg(long, env = "TRACKER_DB", default_value = "accounts.db", value_parser = DbParser)]
    pub db: Db,
    /// The bus to forward to: busd's host:port (or busd://host:port), or NATS JetStream as
    /// nats://h1:4222,nats://h2:4222,... Without it busd runs inside this process.
    #[arg(long, env = "TRACKER_BUS", value_parser = client::bus::parse_arg)]
    pub bus: Option<String>,
    /// JetStream only: the stream to publish to, created when absent.
    #[arg(long, env = plumbing::env::STREAM, default_value = client::jetstream::DEFAULT_STREAM)]
    pub stream: String,
    /// JetStream only: events of account N go to subject PREFIX.N.
    #[arg(long, env = plumbing::env::SUBJECT_PREFIX, default_value = client::jetstream::DEFAULT_PREFIX)]
    pub subject_prefix: String,
    /// JetStream only: copies of the stream on separate servers, when ingest creates it.
    #[arg(long, env = "TRACKER_INGEST_REPLICAS", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=5))]
    pub replicas: u8,
    /// JetStream only: bytes the stream keeps before dropping its oldest events (the
    /// counterpart of busd's replay ring), when ingest creates it.
    #[arg(long, env = "TRACKER_INGEST_RETAIN_BYTES", default_value = "1GiB")]
    pub retain_bytes: ByteSize,
    /// JetStream only: how long the stream remembers a message id to drop an event sent
    /// again after a reconnect, when ingest creates it.
    #[arg(long, env = "TRACKER_INGEST_DUPLICATE_WINDOW", default_value = "2m", value_parser = humantime::parse_duration)]
    pub duplicate_window: Duration,
    /// Where the embedded busd listens when --bus is not given.
    #[arg(
        long,
        env = "TRACKER_INGEST_EMBEDDED_BUS_LISTEN",
        default_value = "127.0.0.1:7070",
        value_parser = plumbing::args::socket_addr
    )]
    pub embedded_bus_listen: String,
    /// The embedded busd's state file, which lets watchers prove nothing was missed across
    /// a graceful restart (default: busd.state beside --db).
    #[arg(long, env = "TRACKER_INGEST_EMBEDDED_BUS_STATE")]
    pub embedded_bus_state: Option<PathBuf>,
    /// Token for busd (and for the embedded busd's clients).
    #[arg(long, env = "TRACKER_BUS_TOKEN", hide_env_values = true)]
    pub bus_token: Option<String>,
    /// Name carried in every event and used as the publisher name (default: host:port).
    /// Must be unique among the ingest instances sharing a bus.
    #[arg(long, env = "TRACKER_INGEST_ORIGIN")]
    pub origin: Option<String>,
    /// Largest `data` after percent-decoding, in bytes.
    #[arg(long, env = "TRACKER_INGEST_MAX_DATA", default_value_t = 4096)]
    pub max_data: usize,
    /// Largest request head (request line and headers).
    #[arg(long, env = "TRACKER_INGEST_MAX_HEAD", default_value = "8KiB")]
    pub max_head: ByteSize,
    /// Most headers in one request.
    #[arg(long, env = "TRACKER_INGEST_MAX_HEADERS", default_value_t = 32)]
    pub max_headers: usize,
    /// Time allowed to send a whole request head once it has started.
    #[arg(long, env = "TRACKER_INGEST_HEADER_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub header_timeout: Duration,
    /// Time an idle keep-alive connection is kept.
    #[arg(long, env = "TRACKER_INGEST_IDLE_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,
    /// Most simultaneous HTTP connections. At the limit the connection idle longest is
    /// closed to admit a new one; only when none is idle do newcomers get 503.
    #[arg(long, env = "TRACKER_INGEST_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,
    /// Accepted events held until the bus acknowledges them; when full, requests get 503.
    #[arg(
        long,
        env = "TRACKER_INGEST_BUFFER_EVENTS",
        default_value_t = 1_000_000
    )]
    pub buffer_events: usize,
    /// Encoded bytes of accepted events held until the bus acknowledges them; when full,
    /// requests get 503.
    #[arg(long, env = "TRACKER_INGEST_BUFFER_BYTES", default_value = "256MiB")]
    pub buffer_bytes: ByteSize,
    /// Most events in one batch to the bus.
    #[arg(long, env = "TRACKER_INGEST_BATCH_EVENTS", default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..))]
    pub batch_events: u32,
    /// Most encoded bytes in one batch to the bus; must fit busd's frame limit (1MiB by
    /// default) and hold one event of --max-data.
    #[arg(long, env = "TRACKER_INGEST_BATCH_BYTES", default_value = "512KiB")]
    pub batch_bytes: ByteSize,
    /// How long the bus may leave a batch or a ping unanswered before ingest takes it for
    /// dead: /readyz turns 503 and ingest reconnects and resends.
    #[arg(long, env = "TRACKER_INGEST_BUS_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub bus_timeout: Duration,
    /// How long a batch waits for more events before it is sent (0: send what is there).
    #[arg(long, env = "TRACKER_INGEST_LINGER", default_value = "0ms", value_parser = humantime::parse_duration)]
    pub linger: Duration,
    /// Batches sent to the bus and not yet acknowledged before more wait; events accumulate
    /// meanwhile, so this batches by the round trip to the bus.
    #[arg(long, env = "TRACKER_INGEST_MAX_IN_FLIGHT", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..))]
    pub max_in_flight: u16,
    /// Answer an event request only once the bus has acknowledged its event (busd's PubAck,
    /// or JetStream's once the stream's replicas stored it), so a 202 survives an ingest
    /// crash; each request then waits a round trip to the bus. Also read from
    /// TRACKER_DURABLE.
    #[arg(long, env = "TRACKER_INGEST_DURABLE", value_parser = clap::builder::BoolishValueParser::new())]
    pub durable: bool,
    /// With --durable: how long a request waits for the bus's acknowledgement before it is
    /// answered 503 (its event may still be delivered).
    #[arg(long, env = "TRACKER_INGEST_ACK_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub ack_timeout: Duration,
    /// How long shutdown waits for the bus to acknowledge buffered events.
    #[arg(long, env = "TRACKER_INGEST_DRAIN_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,
    /// Origins whose web pages may send events (CORS), comma-separated, or * for any;
    /// preflight OPTIONS requests are answered for them. Default: none.
    #[arg(long, env = "TRACKER_INGEST_CORS_ORIGIN", value_delimiter = ',')]
    pub cors_origin: Vec<String>,
    /// How often the SQLite accounts table is checked for changes (PostgreSQL notifies
    /// ingest of each change instead).
    #[arg(long, env = "TRACKER_INGEST_SYNC_INTERVAL", default_value = "100ms", value_parser = plumbing::args::interval)]
    pub sync_interval: Duration,
}

/// Where the accounts live: `--db` names an SQLite file or a PostgreSQL URL.
#[derive(Clone, PartialEq, Eq)]
pub enum Db {
    /// An SQLite file, created and seeded when missing.
    Sqlite(PathBuf),
    /// A PostgreSQL URL (`postgres://` or `postgresql://`), checked when parsed so a typo
    /// fails at once with exit code 2 (and a message without the password, which clap's own
    /// "invalid value" would repeat); kept as given, password included, to connect with.
    Postgres(String),
}

impl Db {
    /// The SQLite file, if that is what `--db` names.
    pub fn sqlite(&self) -> Option<&std::path::Path> {
        match self {
            Db::Sqlite(path) => Some(path),
            Db::Postgres(_) => None,
        }
    }
}

impl std::fmt::Display for Db {
    /// For messages: the path, or the URL without its password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Db::Sqlite(path) => write!(f, "{}", path.display()),
            Db::Postgres(url) => f.write_str(&data::postgres::redact(url)),
        }
    }
}

/// As [`Display`](std::fmt::Display): a password never reaches a log through `{:?}`.
impl std::fmt::Debug for Db {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self}")
    }
}

/// A PostgreSQL URL by its scheme, anything else a path. A parser of its own rather than a
/// function, because clap quotes the rejected value in a function's error, and that value may
/// hold a password.
#[derive(Clone)]
struct DbParser;

impl clap::builder::TypedValueParser for DbParser {
    type Value = Db;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        _arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<Db, clap::Error> {
        let invalid = |message: String| {
            clap::Error::raw(clap::error::ErrorKind::ValueValidation, message + "\n").with_cmd(cmd)
        };
        let value = value
            .to_str()
            .ok_or_else(|| invalid("--db is not valid UTF-8".to_owned()))?;
        if !data::postgres::is_url(value) {
            return Ok(Db::Sqlite(PathBuf::from(value)));
        }
        data::postgres::config(value).map_err(|err| invalid(format!("--db: {err}")))?;
        Ok(Db::Postgres(value.to_owned()))
    }
}

#[derive(Args, Debug)]
pub struct AccountsArgs {
    /// Accounts database: an SQLite file or postgres://user@host:port/dbname. It must exist
    /// (for PostgreSQL: its accounts table), except for `seed`, which creates it.
    #[arg(long, env = "TRACKER_DB", default_value = "accounts.db", global = true, value_parser = DbParser)]
    pub db: Db,
    #[command(subcommand)]
    pub command: AccountsCommand,
}

#[derive(Subcommand, Debug)]
pub enum AccountsCommand {
    /// Add the deterministic accounts 1..=N (existing ids are kept); creates the database,
    /// with exactly these accounts, when it does not exist.
    Seed {
        /// How many accounts: ids 1..=N, named account-ID, every tenth inactive.
        #[arg(long, default_value_t = 1000)]
        count: u64,
    },
    /// Add one account; ingest applies it within a second.
    Add {
        /// The account id: a decimal number up to 9223372036854775807.
        #[arg(long)]
        id: u64,
        /// A name for people; events do not carry it.
        #[arg(long)]
        name: String,
        /// Add it inactive: its events get 403 until `set-active ID true`.
        #[arg(long)]
        inactive: bool,
    },
    /// Activate or deactivate an account; ingest applies it within a second.
    SetActive {
        /// The account id.
        id: u64,
        /// true to accept its events, false to answer them 403.
        #[arg(action = clap::ArgAction::Set)]
        active: bool,
    },
    /// Make a new random write key for an account and print it, once: from then on its
    /// events need `Authorization: Bearer <key>` (401 without). Only the key's hash is stored.
    Key {
        /// The account id.
        id: u64,
        /// Remove the account's key instead: its events need no key again.
        #[arg(long)]
        revoke: bool,
    },
    /// Delete an account; ingest answers its events 404 within a second.
    Delete {
        /// The account id.
        id: u64,
    },
    /// Print every account: id, name, active|inactive, key|no-key (tab-separated), or with
    /// --format json one object a line:
    /// {"account_id":5,"active":true,"key":false,"name":"account-5"}.
    List {
        /// text: tab-separated lines; json: one JSON object a line, for jq and scripts.
        #[arg(long, value_enum, default_value_t = ListFormat::Text)]
        format: ListFormat,
    },
}

/// How `ingest accounts list` writes each account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ListFormat {
    /// `id<TAB>name<TAB>active|inactive<TAB>key|no-key`.
    Text,
    /// One JSON object a line.
    Json,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn serve_is_the_default() {
        let cli = Cli::try_parse_from(["ingest", "--listen", "127.0.0.1:1"]).unwrap();
        assert!(cli.command.is_none());
        assert_eq!(cli.serve.listen, "127.0.0.1:1");
        let cli = Cli::try_parse_from(["ingest", "accounts", "set-active", "5", "false"]).unwrap();
        assert!(matches!(
            cli.command,
            Some(Command::Accounts(AccountsArgs {
                command: AccountsCommand::SetActive {
                    id: 5,
                    active: false
                },
                ..
            }))
        ));
    }

    #[test]
    fn durable_reads_the_contract_name_and_the_program_name() {
        let env_of = |set: &[&str]| {
            let is_set = |name: &str| set.contains(&name);
            let (command, warnings) = plumbing::env::with_old_names(Cli::command(), &is_set);
            let arg = command.get_arguments().find(|a| a.get_id() == "durable");
            let env = arg.and_then(|a| a.get_env()).and_then(|e| e.to_str());
            (env.unwrap_or_default().to_owned(), warnings)
        };
        assert_eq!(env_of(&[]).0, "TRACKER_INGEST_DURABLE");
        let (env, warnings) = env_of(&["TRACKER_DURABLE"]);
        assert_eq!(env, "TRACKER_DURABLE");
        assert!(
            warnings.is_empty(),
            "the contract's name is no deprecation: {warnings:?}"
        );
        let both = env_of(&["TRACKER_DURABLE", "TRACKER_INGEST_DURABLE"]).0;
        assert_eq!(both, "TRACKER_INGEST_DURABLE");
        let cli = Cli::try_parse_from(["ingest", "--durable", "--ack-timeout", "250ms"]).unwrap();
        assert!(cli.serve.durable);
        assert_eq!(cli.serve.ack_timeout, Duration::from_millis(250));
        assert!(!Cli::try_parse_from(["ingest"]).unwrap().serve.durable);
    }

    #[test]
    fn db_is_a_path_or_a_postgres_url() {
        let db = |value: &str| Cli::try_parse_from(["ingest", "--db", value]).map(|c| c.serve.db);
        assert_eq!(db("a.db").unwrap(), Db::Sqlite("a.db".into()));
        for url in [
            "postgres://ingest@db:5432/tracker",
            "postgresql://ingest@db/tracker",
        ] {
            assert_eq!(db(url).unwrap(), Db::Postgres(url.into()));
        }
        let err = db("postgres://ingest:secret@db:notaport/tracker").unwrap_err();
        assert_eq!(err.exit_code(), 2);
        let message = err.to_string();
        assert!(
            message.contains("is not a usable PostgreSQL URL"),
            "{message}"
        );
        assert!(!message.contains("secret"), "{message}");
        let secret = Db::Postgres("postgres://ingest:secret@db/tracker".into());
        assert_eq!(secret.to_string(), "postgres://ingest:***@db/tracker");
    }
}
