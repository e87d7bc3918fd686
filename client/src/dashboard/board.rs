//! The dashboard's state, aggregated where the events arrive so that a page gets a summary a
//! few times a second instead of every event: a ring of per-second counts (the charts), each
//! account's total since start (the top table), the lag percentiles, a bounded tail of recent
//! events, and the connection's state and gaps.
//!
//! Recording an event costs a few hash-map and histogram updates whatever the history holds;
//! the heavier work (ranking accounts, merging histograms, formatting the tail) happens once
//! per [`Board::snapshot`]. Every collection here is bounded, so neither a busy bus nor a bus
//! sending absurd account ids can grow it without limit.

use std::collections::{HashMap, VecDeque};

use hdrhistogram::Histogram;
use protocol::Event;
use serde::Serialize;

use crate::aggregate::{Aggregator, Window};
use crate::render::{describe_gap, timestamp};
use crate::subscriber::{Delivery, GapReport, Notice};

/// Seconds of history the charts show: five minutes.
pub const HISTORY_SECS: usize = 300;
/// The busiest accounts of each second that the per-account chart can draw from.
const ACCOUNTS_PER_SECOND: usize = 32;
/// Accounts whose totals since start are kept; events of accounts beyond these are counted
/// together as `untracked`, so a bus sending every possible id cannot exhaust memory.
pub const MAX_ACCOUNTS: usize = 100_000;
/// Recent events kept for the tail, which each page filters by account.
pub const TAIL_KEPT: usize = 1000;
/// Events of the tail a page is sent.
pub const TAIL_SHOWN: usize = 50;
/// Longest `data` shown in the tail, in bytes; longer data is cut at a character boundary.
const TAIL_DATA_BYTES: usize = 200;
/// Gaps listed on the page, newest first.
const GAPS_SHOWN: usize = 20;
/// Lag percentiles cover the last two spans of this many seconds.
const LAG_SPAN_SECS: u64 = 5;
/// Accounts drawn in the per-account chart: the busiest since start.
const CHARTED: usize = 6;
/// Seconds the current rate is averaged over.
const RATE_SECS: usize = 5;
/// Lags are recorded up to an hour; anything older counts as an hour.
const MAX_LAG_US: u64 = 3_600_000_000;

/// What the bus connection is doing, as the page shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkState {
    /// The first attempt is under way.
    Connecting,
    /// Subscribed; events flow (or the bus says it has none).
    Live,
    /// Subscribed, but the bus has been silent and is being pinged.
    Quiet,
    /// The connection is lost and the subscriber is retrying.
    Down,
}

/// The connection as the page shows it: its state, since when, and the last word on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Link {
    /// The state.
    pub state: LinkState,
    /// When it began, in microseconds since the Unix epoch: for `down`, when the bus was lost.
    pub since_us: u64,
    /// The subscriber's last notice, in words.
    pub detail: String,
    /// Times the bus came back after being lost.
    pub reconnects: u64,
}

/// One account's events since the dashboard started.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Total {
    /// The account.
    pub account_id: u64,
    /// Its events.
    pub count: u64,
}

/// Counts per second over the last [`HISTORY_SECS`], oldest first, for the charts.
#[derive(Debug, Clone, Serialize)]
pub struct Series {
    /// The first second's start, in seconds since the Unix epoch.
    pub start_sec: u64,
    /// Events in each second.
    pub total: Vec<u64>,
    /// Each second's 99th percentile lag, if it had events.
    pub lag_p99_us: Vec<Option<u64>>,
    /// The busiest accounts' events in each second.
    pub accounts: Vec<AccountSeries>,
}

/// One account's events in each second of [`Series`].
#[derive(Debug, Clone, Serialize)]
pub struct AccountSeries {
    /// The account.
    pub account_id: u64,
    /// Its events per second (a second where it was not among the busiest 32 counts as 0).
    pub counts: Vec<u64>,
}

/// A reported gap, for the page's list.
#[derive(Debug, Clone, Serialize)]
pub struct GapRow {
    /// When it was reported, in microseconds since the Unix epoch.
    pub at_us: u64,
    /// What the subscriber reported.
    #[serde(flatten)]
    pub gap: GapReport,
    /// The gap in words.
    pub text: String,
}

/// One recent event, as the tail shows it.
#[derive(Debug, Clone, Serialize)]
pub struct TailRow {
    /// Its position in its epoch.
    pub seq: u64,
    /// The bus run (or stream) `seq` belongs to.
    pub epoch: u64,
    /// The account.
    pub account_id: u64,
    /// The event's timestamp, RFC 3339.
    pub timestamp: Option<String>,
    /// Its data, cut to 200 bytes.
    pub data: String,
    /// Who accepted it.
    pub origin: String,
    /// Arrival here minus its timestamp.
    pub lag_us: u64,
}

/// Everything a page shows at one moment. Built a few times a second and shared by every
/// page; [`Snapshot::json`] adds what differs per page (the tail's filter).
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    /// When it was taken, in microseconds since the Unix epoch.
    pub now_us: u64,
    /// When the dashboard started.
    pub started_us: u64,
    /// The bus address.
    pub bus: String,
    /// The accounts watched, in words.
    pub filter: String,
    /// The connection.
    pub link: Link,
    /// Events since start.
    pub events: u64,
    /// Events per second over the last five complete seconds.
    pub rate: f64,
    /// Accounts with at least one event since start (up to [`MAX_ACCOUNTS`]).
    pub accounts_seen: usize,
    /// Events of accounts past [`MAX_ACCOUNTS`], counted together.
    pub untracked: u64,
    /// The busiest accounts since start, most events first.
    pub top: Vec<Total>,
    /// Median end-to-end lag over the last ten seconds.
    pub lag_p50_us: Option<u64>,
    /// 99th percentile lag over the last ten seconds.
    pub lag_p99_us: Option<u64>,
    /// The charts' data.
    pub series: Series,
    /// Gaps reported since start.
    pub gaps: u64,
    /// The latest gaps, newest first.
    pub recent_gaps: Vec<GapRow>,
    /// Recent events, oldest first; pages get the newest [`TAIL_SHOWN`] that match.
    #[serde(skip)]
    pub tail: Vec<TailRow>,
}

/// A page's view of a snapshot: the shared part, the tail filtered for it, and how many
/// pages are connected.
#[derive(Serialize)]
struct View<'a> {
    #[serde(flatten)]
    snapshot: &'a Snapshot,
    clients: usize,
    tail_account: Option<u64>,
    tail: Vec<&'a TailRow>,
}

impl Snapshot {
    /// The snapshot as one JSON object for a page whose tail shows `account` (or every
    /// account), with `clients` pages connected.
    pub fn json(&self, account: Option<u64>, clients: usize) -> String {
        let mut tail: Vec<&TailRow> = self
            .tail
            .iter()
            .rev()
            .filter(|row| account.is_none_or(|id| row.account_id == id))
            .take(TAIL_SHOWN)
            .collect();
        tail.reverse();
        let view = View {
            snapshot: self,
            clients,
            tail_account: account,
            tail,
        };
        // Plain structs of numbers and strings always serialize.
        serde_json::to_string(&view).unwrap_or_default()
    }
}

/// One event of the tail, kept as it came until a snapshot formats it.
struct TailEntry {
    seq: u64,
    epoch: u64,
    arrived_us: u64,
    event: Event,
}

/// The lag over the last two spans: the one being filled and the one before.
struct Lag {
    current: Histogram<u64>,
    previous: Histogram<u64>,
}

impl Lag {
    fn new() -> Self {
        // Two significant figures: percentiles within 1%, in a few kilobytes.
        let histogram = || {
            Histogram::new_with_bounds(1, MAX_LAG_US, 2)
                .expect("constant histogram bounds are valid")
        };
        Lag {
            current: histogram(),
            previous: histogram(),
        }
    }

    fn record(&mut self, lag_us: u64) {
        self.current.saturating_record(lag_us.clamp(1, MAX_LAG_US));
    }

    fn rotate(&mut self) {
        std::mem::swap(&mut self.current, &mut self.previous);
        self.current.reset();
    }

    fn percentiles(&self) -> (Option<u64>, Option<u64>) {
        let mut both = self.previous.clone();
        // Same bounds and precision, so adding cannot fail.
        let _ = both.add(&self.current);
        if both.is_empty() {
            return (None, None);
        }
        (
            Some(both.value_at_quantile(0.5)),
            Some(both.value_at_quantile(0.99)),
        )
    }
}

/// The dashboard's aggregated state: fed every delivery, asked for snapshots.
pub struct Board {
    bus: String,
    filter: String,
    top: usize,
    started_us: u64,
    events: u64,
    totals: HashMap<u64, u64>,
    untracked: u64,
    /// The second being counted, in seconds since the Unix epoch.
    second: u64,
    current: Aggregator,
    /// Completed seconds, oldest first, at most [`HISTORY_SECS`].
    history: VecDeque<(u64, Window)>,
    lag: Lag,
    tail: VecDeque<TailEntry>,
    link: Link,
    gaps: u64,
    recent_gaps: VecDeque<GapRow>,
}

impl Board {
    /// An empty board started at `now_us`, for `bus` and the accounts `filter` (in words),
    /// listing the `top` busiest accounts.
    pub fn new(bus: String, filter: String, top: usize, now_us: u64) -> Self {
        Board {
            bus,
            filter,
            top,
            started_us: now_us,
            events: 0,
            totals: HashMap::new(),
            untracked: 0,
            second: now_us / 1_000_000,
            current: Aggregator::new(std::time::Duration::from_secs(1), ACCOUNTS_PER_SECOND),
            history: VecDeque::with_capacity(HISTORY_SECS),
            lag: Lag::new(),
            tail: VecDeque::with_capacity(TAIL_KEPT),
            link: Link {
                state: LinkState::Connecting,
                since_us: now_us,
                detail: String::new(),
                reconnects: 0,
            },
            gaps: 0,
            recent_gaps: VecDeque::new(),
        }
    }

    /// Takes in what the subscriber handed out at `now_us`.
    pub fn on_delivery(&mut self, delivery: Delivery, now_us: u64) {
        match delivery {
            Delivery::Events { epoch, events } => self.on_events(epoch, events, now_us),
            Delivery::Gap(gap) => self.on_gap(gap, now_us),
            Delivery::Notice(notice) => self.on_notice(&notice, now_us),
        }
    }

    /// Counts `events` of `epoch`, arrived at `now_us`.
    pub fn on_events(&mut self, epoch: u64, events: Vec<(u64, Event)>, now_us: u64) {
        self.advance(now_us);
        for (_, event) in &events {
            self.count(event, now_us);
        }
        let skip = events.len().saturating_sub(TAIL_KEPT);
        for (seq, event) in events.into_iter().skip(skip) {
            if self.tail.len() == TAIL_KEPT {
                self.tail.pop_front();
            }
            self.tail.push_back(TailEntry {
                seq,
                epoch,
                arrived_us: now_us,
                event,
            });
        }
    }

    fn count(&mut self, event: &Event, now_us: u64) {
        self.events += 1;
        self.current.record(event, now_us);
        self.lag.record(now_us.saturating_sub(event.timestamp_us));
        let room = self.totals.len() < MAX_ACCOUNTS;
        match self.totals.get_mut(&event.account_id) {
            Some(count) => *count += 1,
            None if room => {
                self.totals.insert(event.account_id, 1);
            }
            None => self.untracked += 1,
        }
    }

    fn on_gap(&mut self, gap: GapReport, now_us: u64) {
        self.gaps += 1;
        self.current.gap();
        if self.recent_gaps.len() == GAPS_SHOWN {
            self.recent_gaps.pop_back();
        }
        self.recent_gaps.push_front(GapRow {
            at_us: now_us,
            gap,
            text: describe_gap(&gap),
        });
    }

    /// Follows the connection's story: a lost connection is `down` from the moment it was
    /// lost until the subscriber is live again, however many attempts that takes.
    pub fn on_notice(&mut self, notice: &Notice, now_us: u64) {
        let state = match notice {
            Notice::Connecting(_) => LinkState::Connecting,
            Notice::Quiet { .. } => LinkState::Quiet,
            Notice::Reconnecting(_) => LinkState::Down,
            Notice::ShuttingDown { .. } | Notice::Redelivered(_) => self.link.state,
            Notice::Live { .. }
            | Notice::Resumed(_)
            | Notice::Alive
            | Notice::Restarted { .. }
            | Notice::StreamRecreated { .. } => LinkState::Live,
        };
        if state != self.link.state {
            if self.link.state == LinkState::Down {
                self.link.reconnects += 1;
            }
            self.link.since_us = match notice {
                Notice::Reconnecting(retry) => now_us.saturating_sub(retry.down.as_micros() as u64),
                _ => now_us,
            };
            self.link.state = state;
        }
        self.link.detail = notice.to_string();
    }

    /// Closes every second before the one `now_us` falls in, so the charts move on while
    /// nothing arrives.
    pub fn advance(&mut self, now_us: u64) {
        let now = now_us / 1_000_000;
        let history = HISTORY_SECS as u64;
        if now.saturating_sub(self.second) > history {
            // Asleep or the clock jumped: the seconds before the history are of no use.
            let _ = self.current.finish(String::new(), 1.0);
            self.history.clear();
            self.second = now - history;
        }
        while self.second < now {
            self.close_second();
        }
    }

    fn close_second(&mut self) {
        let end = timestamp((self.second + 1) * 1_000_000).unwrap_or_default();
        let window = self.current.finish(end, 1.0);
        if self.history.len() == HISTORY_SECS {
            self.history.pop_front();
        }
        self.history.push_back((self.second, window));
        self.second += 1;
        if self.second % LAG_SPAN_SECS == 0 {
            self.lag.rotate();
        }
    }

    /// Everything a page shows, as of `now_us`.
    pub fn snapshot(&mut self, now_us: u64) -> Snapshot {
        self.advance(now_us);
        let top = self.top_accounts(self.top.max(CHARTED));
        let series = self.series(&top[..top.len().min(CHARTED)]);
        let (lag_p50_us, lag_p99_us) = self.lag.percentiles();
        Snapshot {
            now_us,
            started_us: self.started_us,
            bus: self.bus.clone(),
            filter: self.filter.clone(),
            link: self.link.clone(),
            events: self.events,
            rate: self.rate(),
            accounts_seen: self.totals.len(),
            untracked: self.untracked,
            top: top.into_iter().take(self.top).collect(),
            lag_p50_us,
            lag_p99_us,
            series,
            gaps: self.gaps,
            recent_gaps: self.recent_gaps.iter().cloned().collect(),
            tail: self.tail.iter().map(tail_row).collect(),
        }
    }

    /// The `n` accounts with the most events, most first (ties by account id).
    fn top_accounts(&self, n: usize) -> Vec<Total> {
        let mut all: Vec<Total> = self
            .totals
            .iter()
            .map(|(&account_id, &count)| Total { account_id, count })
            .collect();
        let order =
            |a: &Total, b: &Total| b.count.cmp(&a.count).then(a.account_id.cmp(&b.account_id));
        if all.len() > n && n > 0 {
            all.select_nth_unstable_by(n - 1, order);
            all.truncate(n);
        }
        all.sort_unstable_by(order);
        all
    }

    fn series(&self, charted: &[Total]) -> Series {
        let start_sec = self
            .history
            .front()
            .map_or(self.second, |(second, _)| *second);
        let accounts = charted
            .iter()
            .map(|total| AccountSeries {
                account_id: total.account_id,
                counts: self
                    .history
                    .iter()
                    .map(|(_, window)| count_in(window, total.account_id))
                    .collect(),
            })
            .collect();
        Series {
            start_sec,
            total: self.history.iter().map(|(_, w)| w.events).collect(),
            lag_p99_us: self.history.iter().map(|(_, w)| w.lag_p99_us).collect(),
            accounts,
        }
    }

    fn rate(&self) -> f64 {
        let seconds = self.history.len().min(RATE_SECS);
        if seconds == 0 {
            return 0.0;
        }
        let events: u64 = self
            .history
            .iter()
            .rev()
            .take(seconds)
            .map(|(_, w)| w.events)
            .sum();
        events as f64 / seconds as f64
    }
}

/// `account`'s events in one second, if it was among that second's busiest.
fn count_in(window: &Window, account: u64) -> u64 {
    window
        .top
        .iter()
        .find(|row| row.account_id == account)
        .map_or(0, |row| row.count)
}

fn tail_row(entry: &TailEntry) -> TailRow {
    let event = &entry.event;
    TailRow {
        seq: entry.seq,
        epoch: entry.epoch,
        account_id: event.account_id,
        timestamp: timestamp(event.timestamp_us),
        data: cut(&event.data, TAIL_DATA_BYTES).to_owned(),
        origin: event.origin.clone(),
        lag_us: entry.arrived_us.saturating_sub(event.timestamp_us),
    }
}

/// The longest start of `text` of at most `max` bytes that ends on a character boundary.
fn cut(text: &str, max: usize) -> &str {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::position::Resume;
    use crate::reconnect::Retry;

    const T0: u64 = 1_795_341_600_000_000;

    fn event(account_id: u64, timestamp_us: u64) -> Event {
        Event {
            account_id,
            timestamp_us,
            data: format!("a{account_id}"),
            origin: "o".into(),
            id: 0,
        }
    }

    fn board() -> Board {
        Board::new("127.0.0.1:7070".into(), "all".into(), 3, T0)
    }

    fn events(accounts: &[u64], at: u64) -> Vec<(u64, Event)> {
        accounts
            .iter()
            .enumerate()
            .map(|(i, &a)| (i as u64 + 1, event(a, at)))
            .collect()
    }

    #[test]
    fn totals_rank_the_top_accounts() {
        let mut board = board();
        board.on_events(1, events(&[5, 5, 5, 7, 7, 9, 1, 2], T0), T0 + 2_000);
        let snap = board.snapshot(T0 + 10_000);
        assert_eq!(snap.events, 8);
        assert_eq!(snap.accounts_seen, 5);
        let top: Vec<(u64, u64)> = snap.top.iter().map(|t| (t.account_id, t.count)).collect();
        assert_eq!(top, [(5, 3), (7, 2), (1, 1)], "ties rank by account id");
        let p50 = snap.lag_p50_us.unwrap();
        assert!((2_000..=2_020).contains(&p50), "within 1%: {p50}");
    }

    #[test]
    fn seconds_close_into_the_series_and_the_rate() {
        let mut board = board();
        board.on_events(1, events(&[1, 1, 2], T0), T0 + 100);
        board.on_events(1, events(&[1], T0), T0 + 1_000_100);
        let snap = board.snapshot(T0 + 3_500_000);
        assert_eq!(snap.series.total, [3, 1, 0]);
        assert_eq!(snap.series.start_sec, T0 / 1_000_000);
        assert_eq!(snap.series.accounts[0].account_id, 1);
        assert_eq!(snap.series.accounts[0].counts, [2, 1, 0]);
        assert!((snap.rate - 4.0 / 3.0).abs() < 1e-9, "{}", snap.rate);
    }

    #[test]
    fn history_is_bounded_and_a_clock_jump_starts_afresh() {
        let mut board = board();
        board.snapshot(T0 + 1_000 * 1_000_000);
        assert_eq!(board.history.len(), HISTORY_SECS);
        board.on_events(1, events(&[1], T0), T0 + 5_000 * 1_000_000);
        let snap = board.snapshot(T0 + 5_001 * 1_000_000);
        assert_eq!(snap.series.total.len(), HISTORY_SECS);
        assert_eq!(snap.series.total.last(), Some(&1));
    }

    #[test]
    fn the_tail_is_bounded_cut_and_filtered_per_page() {
        let mut board = board();
        let mut batch = events(&[3; TAIL_KEPT], T0);
        batch.push((5000, event(4, T0)));
        batch[TAIL_KEPT].1.data = "é".repeat(150);
        board.on_events(1, batch, T0);
        assert_eq!(board.tail.len(), TAIL_KEPT);
        let snap = board.snapshot(T0);
        let all: serde_json::Value = serde_json::from_str(&snap.json(None, 2)).unwrap();
        assert_eq!(all["tail"].as_array().unwrap().len(), TAIL_SHOWN);
        assert_eq!(all["clients"], 2);
        let last = &all["tail"][TAIL_SHOWN - 1];
        assert_eq!(last["seq"], 5000);
        assert_eq!(last["data"].as_str().unwrap().len(), 200);
        let four: serde_json::Value = serde_json::from_str(&snap.json(Some(4), 0)).unwrap();
        assert_eq!(four["tail"].as_array().unwrap().len(), 1);
        assert_eq!(four["tail_account"], 4);
        let none: serde_json::Value = serde_json::from_str(&snap.json(Some(99), 0)).unwrap();
        assert!(none["tail"].as_array().unwrap().is_empty());
    }

    #[test]
    fn accounts_past_the_limit_are_counted_together() {
        let mut board = board();
        let ids: Vec<u64> = (0..MAX_ACCOUNTS as u64 + 10).collect();
        board.on_events(1, events(&ids, T0), T0);
        let snap = board.snapshot(T0);
        assert_eq!(snap.accounts_seen, MAX_ACCOUNTS);
        assert_eq!(snap.untracked, 10);
        assert_eq!(snap.events, MAX_ACCOUNTS as u64 + 10);
    }

    #[test]
    fn down_lasts_from_the_loss_until_live_again() {
        let mut board = board();
        board.on_notice(
            &Notice::Live {
                epoch: 1,
                head_seq: 0,
            },
            T0,
        );
        assert_eq!(board.link.state, LinkState::Live);
        let retry = |attempt, down: u64| {
            Notice::Reconnecting(Retry {
                attempt,
                down: Duration::from_secs(down),
                reason: "refused".into(),
            })
        };
        board.on_notice(&retry(1, 0), T0 + 1_000_000);
        board.on_notice(&retry(2, 3), T0 + 4_000_000);
        assert_eq!(board.link.state, LinkState::Down);
        assert_eq!(
            board.link.since_us,
            T0 + 1_000_000,
            "down since the first loss"
        );
        assert!(
            board.link.detail.contains("attempt 2"),
            "{}",
            board.link.detail
        );
        let at = Resume(protocol::Position { epoch: 1, seq: 4 });
        board.on_notice(&Notice::Resumed(at), T0 + 5_000_000);
        assert_eq!(board.link.state, LinkState::Live);
        assert_eq!(board.link.since_us, T0 + 5_000_000);
        assert_eq!(board.link.reconnects, 1);
    }

    #[test]
    fn gaps_are_counted_and_the_latest_listed() {
        let mut board = board();
        for from_seq in 0..30 {
            let gap = GapReport {
                from_seq,
                to_seq: None,
                missed: None,
                epoch: 1,
            };
            board.on_delivery(Delivery::Gap(gap), T0);
        }
        let snap = board.snapshot(T0);
        assert_eq!(snap.gaps, 30);
        assert_eq!(snap.recent_gaps.len(), GAPS_SHOWN);
        assert_eq!(snap.recent_gaps[0].gap.from_seq, 29, "newest first");
    }

    #[test]
    fn lag_covers_two_spans() {
        let mut board = board();
        board.on_events(1, events(&[1], T0), T0 + 1_000);
        let later = T0 + 3 * LAG_SPAN_SECS * 1_000_000;
        assert_eq!(board.snapshot(later).lag_p50_us, None, "old lags are gone");
    }
}
