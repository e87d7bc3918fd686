//! The command line: subcommands, flags (each also read from `TRACKER_<FLAG>`), exit codes.

use std::collections::BTreeSet;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::template::Template;

/// Exit codes scripts can branch on.
pub mod exit {
    /// Done: `--count` reached, Ctrl-C, or the command finished.
    pub const OK: i32 = 0;
    /// The bus refused us for good (wrong token, wrong version, a NATS server without
    /// JetStream or too old to filter), stdout failed, or the dashboard cannot listen.
    pub const ERROR: i32 = 1;
    // 2: bad arguments, clap's own code when it refuses the command line.
    /// A gap was reported and `--exit-on-gap` was given.
    pub const GAP: i32 = 3;
    /// The bus stayed unreachable past `--max-outage`.
    pub const OUTAGE: i32 = 4;
}

const EXIT_CODES: &str = "\
Exit codes:
  0  done (--count reached, Ctrl-C, command finished)
  1  refused by the bus (token, version, no JetStream, server too old) or output failed,
     or the dashboard's --listen address cannot be taken
  2  bad arguments
  3  gap reported, with --exit-on-gap
  4  bus unreachable for longer than --max-outage

Every flag also reads TRACKER_BUSCTL_<FLAG>, e.g. TRACKER_BUSCTL_ACCOUNTS; --bus and
--token read TRACKER_BUS and TRACKER_BUS_TOKEN, --stream and --subject-prefix read
TRACKER_STREAM and TRACKER_SUBJECT_PREFIX, which every program shares.";

/// busctl: watch Tracker's events live, publish test events, read the bus's counters.
#[derive(Parser, Debug)]
#[command(name = "busctl", version, after_help = EXIT_CODES)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// busctl's subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Show events as they arrive; reconnects and resumes by itself.
    #[command(after_help = EXIT_CODES)]
    Watch(WatchArgs),
    /// Publish events by hand.
    Publish(PublishArgs),
    /// Show the bus's state: busd's counters (subscribers, queues, drops, rates) or the
    /// JetStream stream's (messages, sequences, leader, replica lag).
    Stats(StatsArgs),
    /// Send a canary event through ingest and confirm it arrives over the bus.
    Doctor(DoctorArgs),
    /// Serve a live web page of the bus: rates per account, top accounts, lag, a tail of
    /// recent events, the connection and its gaps.
    #[command(after_help = EXIT_CODES)]
    Dashboard(DashboardArgs),
}

/// Where the bus is and how to get in: every subcommand has these.
#[derive(Args, Debug, Clone)]
pub struct BusArgs {
    /// The bus: busd's host:port (or busd://host:port), or NATS JetStream as
    /// nats://h1:4222,nats://h2:4222,...
    #[arg(long, env = "TRACKER_BUS", default_value = "127.0.0.1:7070", value_parser = crate::bus::parse_arg)]
    pub bus: String,
    /// Shared secret: busd's token, or the NATS servers' token.
    #[arg(long, env = "TRACKER_BUS_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// JetStream only: the stream holding the events.
    #[arg(long, env = plumbing::env::STREAM, default_value = crate::jetstream::DEFAULT_STREAM)]
    pub stream: String,
    /// JetStream only: events of account N are on subject PREFIX.N.
    #[arg(long, env = plumbing::env::SUBJECT_PREFIX, default_value = crate::jetstream::DEFAULT_PREFIX)]
    pub subject_prefix: String,
    /// JetStream only: a watch of more accounts than this reads every account's subject
    /// and filters in busctl instead of on the server.
    #[arg(
        long,
        env = "TRACKER_BUSCTL_MAX_FILTER_SUBJECTS",
        default_value_t = 100
    )]
    pub max_filter_subjects: usize,
}

impl BusArgs {
    /// The JetStream layout these flags name (unused on busd).
    pub fn layout(&self) -> crate::jetstream::Layout {
        crate::jetstream::Layout {
            stream: self.stream.clone(),
            prefix: self.subject_prefix.clone(),
            max_filter_subjects: self.max_filter_subjects,
            ..crate::jetstream::Layout::default()
        }
    }
}

/// How data is printed on stdout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Lines for people (a table for `stats`).
    #[value(alias = "table")]
    Text,
    /// One JSON object a line, for jq and scripts.
    Json,
}

/// `busctl watch`'s flags.
#[derive(Args, Debug, Clone)]
pub struct WatchArgs {
    /// Where the bus is and the token for it.
    #[command(flatten)]
    pub bus: BusArgs,
    /// Accounts to watch: ids and ranges, e.g. 1,5,10-20.
    #[arg(long, env = "TRACKER_BUSCTL_ACCOUNTS", value_parser = parse_accounts, conflicts_with = "all")]
    pub accounts: Option<AccountList>,
    /// Watch every account (the default).
    #[arg(long, env = "TRACKER_BUSCTL_ALL")]
    pub all: bool,
    /// Output format [default: text; with --aggregate: a table on a terminal, JSON lines
    /// when piped; with --template: template].
    #[arg(long, env = "TRACKER_BUSCTL_FORMAT", value_enum)]
    pub format: Option<WatchFormat>,
    /// Each event as this line, e.g. '{timestamp} {account_id} {data}'. Fields: {seq}
    /// {epoch} {account_id} {timestamp} {timestamp_us} {data} {origin} {id}; {{ and }} are
    /// literal braces. {data} and {origin} are printed unquoted, with control characters
    /// escaped (\n, \t) so an event stays one line. Gaps print as with --format text.
    /// Implies --format template.
    #[arg(long, env = "TRACKER_BUSCTL_TEMPLATE", value_parser = parse_template, conflicts_with = "aggregate")]
    pub template: Option<Template>,
    /// Print per-window counts, rates, top accounts and lag instead of events (e.g. 5s).
    #[arg(long, env = "TRACKER_BUSCTL_AGGREGATE", value_parser = parse_positive_duration)]
    pub aggregate: Option<Duration>,
    /// Accounts listed per window with --aggregate.
    #[arg(long, env = "TRACKER_BUSCTL_TOP", default_value_t = 10)]
    pub top: usize,
    /// Exit 0 after this many events (at least 1).
    #[arg(long, env = "TRACKER_BUSCTL_COUNT", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,
    /// Only events from these origins (publisher names, as ingest's --origin), comma
    /// separated or repeated. busd filters them before they cross the network (history
    /// included); on JetStream busctl filters them.
    #[arg(long = "origin", env = "TRACKER_BUSCTL_ORIGIN", value_name = "NAME", value_delimiter = ',', value_parser = parse_origin)]
    pub origins: Vec<String>,
    /// Only events whose data matches this regular expression (Rust regex syntax, e.g.
    /// '^order-\d+' or '(?i)error'), with --accounts and --origin. Applied in busctl, on
    /// every bus: busd would have to decode every event's data on its hot path. --count
    /// and --aggregate count only matching events; --last N counts before it.
    #[arg(long = "match", env = "TRACKER_BUSCTL_MATCH", value_name = "REGEX", value_parser = parse_regex, allow_hyphen_values = true)]
    pub matches: Option<regex::Regex>,
    /// Start with the last N events of the watched accounts (and origins, on busd) the bus
    /// holds (busd's replay ring, or the JetStream stream), then go live. Counted on the
    /// bus, so --match may print fewer.
    #[arg(long, env = "TRACKER_BUSCTL_LAST", value_parser = clap::value_parser!(u64).range(1..), group = "history")]
    pub last: Option<u64>,
    /// Start with the events accepted since then, then go live: a duration back from now
    /// (10m, 1h30m) or an RFC 3339 time (2026-11-22T10:00:00Z, 2026-11-22T11:00:00+01:00).
    #[arg(long, env = "TRACKER_BUSCTL_SINCE", value_parser = parse_since, group = "history")]
    pub since: Option<Since>,
    /// Start with every matching event the bus holds, then go live.
    #[arg(long, env = "TRACKER_BUSCTL_FROM_BEGINNING", group = "history")]
    pub from_beginning: bool,
    /// Exit 3 when events are reported missing.
    #[arg(long, env = "TRACKER_BUSCTL_EXIT_ON_GAP")]
    pub exit_on_gap: bool,
    /// Exit 4 when the bus stays unreachable this long (default: retry forever).
    #[arg(long, env = "TRACKER_BUSCTL_MAX_OUTAGE", value_parser = parse_positive_duration)]
    pub max_outage: Option<Duration>,
    /// Share the events with the other members of consumer group NAME: each event goes to
    /// one member, all of an account's to the same member while the members stay the same;
    /// members joining or leaving move accounts between them. On busd a member that leaves
    /// hands its queued events to the others, and what it was sent but had not printed is
    /// reported to them as a gap. On JetStream the group is a durable consumer: an event
    /// not acknowledged within 10 s goes to another member (at least once; order per
    /// account is not kept there). Names: 1 to 64 of A-Z a-z 0-9 _ -. A member starts live
    /// (the group keeps the position), so --last, --since, --from-beginning and --origin do
    /// not combine with it.
    #[arg(long, env = "TRACKER_BUSCTL_GROUP", value_parser = parse_group, conflicts_with_all = ["history", "origins"])]
    pub group: Option<String>,
}

/// `--rate`: events a second, above zero.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rate(pub f64);

impl Rate {
    /// The time between two events.
    pub fn interval(self) -> Duration {
        Duration::from_secs_f64(1.0 / self.0)
    }
}

/// Reads `--rate`: `N/s` or `N`, N above zero and at most a million.
pub fn parse_rate(value: &str) -> Result<Rate, String> {
    let number = value.strip_suffix("/s").unwrap_or(value);
    match number.trim().parse::<f64>() {
        Ok(n) if n > 0.0 && n <= 1e6 => Ok(Rate(n)),
        _ => Err(format!(
            "{value:?} is not a rate: expected events a second above 0 and at most 1000000, e.g. 100/s"
        )),
    }
}

/// Reads `--match`, refusing a pattern that does not compile (with the regex crate's
/// explanation) or that would take more than 10 MiB compiled.
pub fn parse_regex(pattern: &str) -> Result<regex::Regex, String> {
    regex::RegexBuilder::new(pattern)
        .size_limit(10 << 20)
        .build()
        .map_err(|e| format!("not a usable regular expression:\n{e}"))
}

/// Reads one `--origin` name; an empty name matches nothing ingest publishes.
pub fn parse_origin(name: &str) -> Result<String, String> {
    let name = name.trim();
    if name.is_empty() {
        return Err("an origin name cannot be empty".into());
    }
    Ok(name.to_owned())
}

/// `--since`: a point in time, in µs since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Since(pub u64);

/// Reads `--since`: a duration back from now (`10m`) or an RFC 3339 time with any offset.
pub fn parse_since(value: &str) -> Result<Since, String> {
    since_at(value, std::time::SystemTime::now())
}

/// [`parse_since`] with `now` given, for tests.
fn since_at(value: &str, now: std::time::SystemTime) -> Result<Since, String> {
    if let Ok(back) = humantime::parse_duration(value) {
        let at = now.checked_sub(back).unwrap_or(std::time::UNIX_EPOCH);
        return Ok(Since(plumbing::clock::us_at(at)));
    }
    let rfc3339 = time::format_description::well_known::Rfc3339;
    match time::OffsetDateTime::parse(value, &rfc3339) {
        Ok(at) => Ok(Since(
            u64::try_from(at.unix_timestamp_nanos() / 1000).unwrap_or(0),
        )),
        Err(_) => Err(format!(
            "{value:?} is neither a duration (10m, 1h30m) nor an RFC 3339 time \
             (2026-11-22T10:00:00Z)"
        )),
    }
}

impl WatchArgs {
    /// Where the watch starts: the history asked for, or new events only.
    pub fn start(&self) -> protocol::Start {
        match (self.last, self.since, self.from_beginning) {
            (Some(n), _, _) => protocol::Start::Last(n),
            (_, Some(Since(us)), _) => protocol::Start::Since(us),
            (_, _, true) => protocol::Start::Beginning,
            _ => protocol::Start::Head,
        }
    }
}

/// `watch --format`: the formats of [`Format`], and a template of the user's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum WatchFormat {
    /// Lines for people.
    #[value(alias = "table")]
    Text,
    /// One JSON object a line, for jq and scripts.
    Json,
    /// Each event as --template says.
    Template,
}

impl WatchArgs {
    /// Refuses what clap cannot express: `--format template` without `--template`, or a
    /// `--template` with another format.
    pub fn check(&self) -> Result<(), String> {
        match (self.format, &self.template) {
            (Some(WatchFormat::Template), None) => {
                Err("--format template needs --template '...'".into())
            }
            (Some(WatchFormat::Text | WatchFormat::Json), Some(_)) => {
                Err("--template needs --format template (or no --format)".into())
            }
            _ => Ok(()),
        }
    }

    /// The plain format asked for, if any (`None` for a template or no `--format`).
    pub fn plain_format(&self) -> Option<Format> {
        match self.format? {
            WatchFormat::Text => Some(Format::Text),
            WatchFormat::Json => Some(Format::Json),
            WatchFormat::Template => None,
        }
    }
}

/// `busctl publish`'s flags.
#[derive(Args, Debug, Clone)]
pub struct PublishArgs {
    /// Where the bus is and the token for it.
    #[command(flatten)]
    pub bus: BusArgs,
    /// The account the event is for (with --data).
    #[arg(long, env = "TRACKER_BUSCTL_ACCOUNT", requires = "data")]
    pub account: Option<u64>,
    /// The event's data. Without --account and --data, events are read from stdin, one a
    /// line: `account<TAB>data`, or a JSON object {"account_id":5,"data":"..."} (other
    /// fields, as `watch --format json` prints them, are ignored). A malformed line is
    /// reported on stderr with its line number and skipped; the rest are published.
    #[arg(long, env = "TRACKER_BUSCTL_DATA", requires = "account")]
    pub data: Option<String>,
    /// Publish the event this many times (held a window of batches at a time).
    #[arg(long, env = "TRACKER_BUSCTL_REPEAT", default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..), requires = "data")]
    pub repeat: u64,
    /// At most this many events a second, e.g. 100/s (or 100; 0.5/s for one every two
    /// seconds). Default: as fast as the bus acknowledges.
    #[arg(long, env = "TRACKER_BUSCTL_RATE", value_parser = parse_rate)]
    pub rate: Option<Rate>,
    /// Give up (exit 4) when the bus stays unreachable this long.
    #[arg(long, env = "TRACKER_BUSCTL_MAX_OUTAGE", default_value = "10s", value_parser = parse_positive_duration)]
    pub max_outage: Duration,
}

/// `busctl stats`' flags.
#[derive(Args, Debug, Clone)]
pub struct StatsArgs {
    /// Where the bus is and the token for it.
    #[command(flatten)]
    pub bus: BusArgs,
    /// Output format: a table for people, or one JSON object for scripts [default: text;
    /// with --watch: a table redrawn on a terminal, JSON lines when piped].
    #[arg(long, env = "TRACKER_BUSCTL_FORMAT", value_enum)]
    pub format: Option<Format>,
    /// Time between the two samples that rates are computed from; 0s for no rates.
    #[arg(long, env = "TRACKER_BUSCTL_SAMPLE", default_value = "1s", value_parser = humantime::parse_duration)]
    pub sample: Duration,
    /// Refresh every INTERVAL (2s when none is given) until Ctrl-C: a table redrawn in place
    /// on a terminal, one JSON object a line when piped; rates are over each interval. A
    /// lost bus is reported on stderr and retried every interval.
    #[arg(long, env = "TRACKER_BUSCTL_WATCH", value_name = "INTERVAL", num_args = 0..=1, default_missing_value = "2s", value_parser = parse_positive_duration)]
    pub watch: Option<Duration>,
}

/// `busctl doctor`'s flags.
#[derive(Args, Debug, Clone)]
pub struct DoctorArgs {
    /// Where the bus is and the token for it.
    #[command(flatten)]
    pub bus: BusArgs,
    /// ingest's base URL.
    #[arg(
        long,
        env = "TRACKER_BUSCTL_INGEST",
        default_value = "http://127.0.0.1:8080"
    )]
    pub ingest: String,
    /// An active account to send the canary for.
    #[arg(long, env = "TRACKER_BUSCTL_ACCOUNT", default_value_t = 1)]
    pub account: u64,
    /// How long to wait for the canary on the bus.
    #[arg(long, env = "TRACKER_BUSCTL_TIMEOUT", default_value = "5s", value_parser = parse_positive_duration)]
    pub timeout: Duration,
}

/// `busctl dashboard`'s flags.
#[derive(Args, Debug, Clone)]
pub struct DashboardArgs {
    /// Where the bus is and the token for it.
    #[command(flatten)]
    pub bus: BusArgs,
    /// Where the web page is served; taken or unusable, busctl exits 1.
    #[arg(long, env = "TRACKER_BUSCTL_LISTEN", default_value = "127.0.0.1:8081")]
    pub listen: String,
    /// Accounts to show: ids and ranges, e.g. 1,5,10-20 [default: every account].
    #[arg(long, env = "TRACKER_BUSCTL_ACCOUNTS", value_parser = parse_accounts)]
    pub accounts: Option<AccountList>,
    /// Accounts listed in the page's top table.
    #[arg(long, env = "TRACKER_BUSCTL_TOP", default_value_t = 10, value_parser = clap::value_parser!(u16).range(1..=1000))]
    pub top: u16,
}

/// The set of account ids a `--accounts` list names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccountList(pub BTreeSet<u64>);

/// Most ids one list may expand to; busd's own filter limit is 100,000 by default.
const MAX_LISTED: u64 = 1_000_000;

/// Reads `1,5,10-20` into a set of account ids, refusing empty items, reversed ranges and
/// lists too large for busd's filter.
pub fn parse_accounts(list: &str) -> Result<AccountList, String> {
    let mut ids = BTreeSet::new();
    for item in list.split(',').map(str::trim) {
        let id = |s: &str| {
            s.trim()
                .parse::<u64>()
                .map_err(|_| format!("{s:?} is not an account id"))
        };
        match item.split_once('-') {
            None if item.is_empty() => return Err("empty item in the account list".into()),
            None => {
                ids.insert(id(item)?);
            }
            Some((from, to)) => {
                let (from, to) = (id(from)?, id(to)?);
                if from > to {
                    return Err(format!("range {item}: {from} is after {to}"));
                }
                if to - from >= MAX_LISTED {
                    return Err(format!(
                        "range {item} names more than {MAX_LISTED} accounts"
                    ));
                }
                ids.extend(from..=to);
            }
        }
        if ids.len() as u64 > MAX_LISTED {
            return Err(format!("the list names more than {MAX_LISTED} accounts"));
        }
    }
    Ok(AccountList(ids))
}

/// Parses `--template`, naming the mistake (an unknown field, a brace left open).
pub fn parse_template(template: &str) -> Result<Template, String> {
    Template::parse(template).map_err(|e| e.to_string())
}

/// A duration above zero (`500ms`, `5s`, `2m`): windows and deadlines of zero make no sense.
pub fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    match humantime::parse_duration(s) {
        Ok(d) if d.is_zero() => Err("must be longer than zero".into()),
        Ok(d) => Ok(d),
        Err(e) => Err(format!("{e} (expected e.g. 500ms, 5s, 2m)")),
    }
}

/// Longest consumer group name: JetStream names the group's durable consumer after it.
pub const MAX_GROUP_NAME: usize = 64;

/// A consumer group name both buses take: 1 to [`MAX_GROUP_NAME`] letters, digits, `_` and
/// `-` (JetStream consumer names allow no dots, wildcards or spaces).
pub fn parse_group(name: &str) -> Result<String, String> {
    let fine = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    if name.is_empty() || name.len() > MAX_GROUP_NAME || !name.chars().all(fine) {
        return Err(format!(
            "a group name is 1 to {MAX_GROUP_NAME} of A-Z a-z 0-9 _ -; got {name:?}"
        ));
    }
    Ok(name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_names_fit_both_buses() {
        assert_eq!(parse_group("billing-2_a").as_deref(), Ok("billing-2_a"));
        for bad in [
            "",
            "a.b",
            "a b",
            "a*",
            "x>",
            &"g".repeat(MAX_GROUP_NAME + 1),
        ] {
            assert!(parse_group(bad).is_err(), "{bad:?} accepted");
        }
    }

    fn ids(list: &str) -> Vec<u64> {
        parse_accounts(list).unwrap().0.into_iter().collect()
    }

    #[test]
    fn lists_and_ranges() {
        assert_eq!(ids("1,5,10-12"), [1, 5, 10, 11, 12]);
        assert_eq!(ids(" 7 , 3-3,7"), [3, 7]);
    }

    #[test]
    fn bad_lists_say_what_is_wrong() {
        assert!(parse_accounts("5-1").unwrap_err().contains("5 is after 1"));
        assert!(
            parse_accounts("x")
                .unwrap_err()
                .contains("\"x\" is not an account id")
        );
        assert!(parse_accounts("1,,2").is_err());
        assert!(parse_accounts("-3").is_err());
        assert!(
            parse_accounts("0-18446744073709551615")
                .unwrap_err()
                .contains("more than")
        );
    }

    #[test]
    fn durations_must_be_positive() {
        assert_eq!(parse_positive_duration("5s"), Ok(Duration::from_secs(5)));
        assert!(parse_positive_duration("0s").is_err());
        assert!(parse_positive_duration("5 parsecs").is_err());
    }

    #[test]
    fn rates_are_events_a_second() {
        assert_eq!(parse_rate("100/s"), Ok(Rate(100.0)));
        assert_eq!(
            parse_rate("0.5/s").map(Rate::interval),
            Ok(Duration::from_secs(2))
        );
        assert_eq!(parse_rate("20"), Ok(Rate(20.0)));
        for bad in ["0/s", "-1/s", "fast", "100/m", "NaN", "inf", "2000000"] {
            assert!(parse_rate(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn since_is_a_duration_back_or_a_time() {
        let now = std::time::UNIX_EPOCH + Duration::from_secs(1_000_000);
        assert_eq!(
            since_at("10m", now),
            Ok(Since((1_000_000 - 600) * 1_000_000))
        );
        assert_eq!(
            since_at("1970-01-01T00:00:01.5Z", now),
            Ok(Since(1_500_000))
        );
        assert_eq!(
            since_at("1970-01-01T01:00:02+01:00", now),
            Ok(Since(2_000_000))
        );
        assert_eq!(
            since_at("1000000h", now),
            Ok(Since(0)),
            "before 1970 is 1970"
        );
        assert!(since_at("yesterday", now).unwrap_err().contains("RFC 3339"));
        assert!(since_at("2026-11-22 10:00", now).is_err());
    }

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
