//! `--aggregate`: per window, events per account with rates, the top accounts, and the
//! end-to-end lag (now minus the event's timestamp) at p50 and p99.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::Duration;

use hdrhistogram::Histogram;
use protocol::Event;
use serde::Serialize;

/// Lags are recorded up to an hour; anything older counts as an hour.
const MAX_LAG_US: u64 = 3_600_000_000;

/// Counts and lags of the current window, for `watch --aggregate`: a summary instead of
/// every event, so a busy bus stays readable.
pub struct Aggregator {
    window: Duration,
    top: usize,
    counts: HashMap<u64, u64>,
    lag: Histogram<u64>,
    gaps: u64,
}

/// One account's line in a window's top list.
#[derive(Debug, Serialize)]
pub struct AccountRow {
    /// The account.
    pub account_id: u64,
    /// Its events in the window.
    pub count: u64,
    /// Its events per second over the window.
    pub rate: f64,
}

/// One window's summary; printed as a table on a terminal or a JSON line otherwise.
#[derive(Debug, Serialize)]
pub struct Window {
    /// When the window closed, RFC 3339.
    pub window_end: String,
    /// How long it lasted.
    pub window_secs: f64,
    /// Events in it.
    pub events: u64,
    /// Events per second.
    pub rate: f64,
    /// Accounts that had at least one event.
    pub accounts_seen: usize,
    /// The busiest accounts, most events first.
    pub top: Vec<AccountRow>,
    /// Median end-to-end lag (arrival minus the event's timestamp), if any event came.
    pub lag_p50_us: Option<u64>,
    /// 99th percentile lag.
    pub lag_p99_us: Option<u64>,
    /// Gaps reported in the window.
    pub gaps: u64,
}

impl Aggregator {
    /// Windows of `window`, listing the `top` busiest accounts.
    pub fn new(window: Duration, top: usize) -> Self {
        Aggregator {
            window,
            top,
            counts: HashMap::new(),
            lag: Histogram::new_with_bounds(1, MAX_LAG_US, 3)
                .expect("constant histogram bounds are valid"),
            gaps: 0,
        }
    }

    /// How long a window lasts.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// Counts `event`, which arrived at `now_us`.
    pub fn record(&mut self, event: &Event, now_us: u64) {
        *self.counts.entry(event.account_id).or_default() += 1;
        let lag = now_us
            .saturating_sub(event.timestamp_us)
            .clamp(1, MAX_LAG_US);
        self.lag.saturating_record(lag);
    }

    /// Counts a reported gap.
    pub fn gap(&mut self) {
        self.gaps += 1;
    }

    /// Closes the current window, `secs` long (the last one may be short), and starts the next.
    pub fn finish(&mut self, window_end: String, secs: f64) -> Window {
        let secs = secs.max(1e-3);
        let events: u64 = self.counts.values().sum();
        let mut rows: Vec<AccountRow> = self
            .counts
            .iter()
            .map(|(&account_id, &count)| AccountRow {
                account_id,
                count,
                rate: count as f64 / secs,
            })
            .collect();
        rows.sort_by(|a, b| b.count.cmp(&a.count).then(a.account_id.cmp(&b.account_id)));
        let accounts_seen = rows.len();
        rows.truncate(self.top);
        let (p50, p99) = if self.lag.is_empty() {
            (None, None)
        } else {
            (
                Some(self.lag.value_at_quantile(0.5)),
                Some(self.lag.value_at_quantile(0.99)),
            )
        };
        let window = Window {
            window_end,
            window_secs: secs,
            events,
            rate: events as f64 / secs,
            accounts_seen,
            top: rows,
            lag_p50_us: p50,
            lag_p99_us: p99,
            gaps: self.gaps,
        };
        self.counts.clear();
        self.lag.reset();
        self.gaps = 0;
        window
    }
}

impl Window {
    /// The window as one JSON line.
    pub fn json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// A screenful: the caller clears the terminal before printing it.
    pub fn table(&self) -> String {
        let lag =
            |v: Option<u64>| v.map_or("-".to_owned(), |us| format!("{:.1} ms", us as f64 / 1000.0));
        let mut out = format!(
            "window ending {}  ({:.0}s)\nevents {}  rate {:.1}/s  accounts {}  gaps {}\nlag p50 {}  p99 {}\n\n{:>20}  {:>10}  {:>12}\n",
            self.window_end,
            self.window_secs,
            self.events,
            self.rate,
            self.accounts_seen,
            self.gaps,
            lag(self.lag_p50_us),
            lag(self.lag_p99_us),
            "account",
            "count",
            "rate/s",
        );
        for row in &self.top {
            let _ = writeln!(
                out,
                "{:>20}  {:>10}  {:>12.1}",
                row.account_id, row.count, row.rate
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(account_id: u64, timestamp_us: u64) -> Event {
        Event {
            account_id,
            timestamp_us,
            data: String::new(),
            origin: String::new(),
            id: 0,
        }
    }

    #[test]
    fn counts_ranks_and_measures_lag() {
        let mut agg = Aggregator::new(Duration::from_secs(2), 2);
        for _ in 0..3 {
            agg.record(&event(7, 1_000), 2_000);
        }
        agg.record(&event(1, 1_000), 11_000);
        agg.record(&event(9, 1_000), 1_500);
        agg.gap();
        let w = agg.finish("t".into(), 2.0);
        assert_eq!(w.events, 5);
        assert_eq!(w.rate, 2.5);
        assert_eq!(w.accounts_seen, 3);
        assert_eq!(w.top.len(), 2);
        assert_eq!(
            (w.top[0].account_id, w.top[0].count, w.top[0].rate),
            (7, 3, 1.5)
        );
        assert_eq!(w.top[1].account_id, 1, "ties rank by account id");
        let p50 = w.lag_p50_us.unwrap();
        assert!((999..=1001).contains(&p50), "{p50}");
        assert!(w.lag_p99_us.unwrap() >= 9_990);
        assert_eq!(w.gaps, 1);
        let next = agg.finish("t2".into(), 2.0);
        assert_eq!((next.events, next.gaps, next.lag_p50_us), (0, 0, None));
        assert!(w.table().contains("events 5"));
        assert!(w.json().contains(r#""events":5"#));
    }

    #[test]
    fn events_from_the_future_count_as_no_lag() {
        let mut agg = Aggregator::new(Duration::from_secs(1), 10);
        agg.record(&event(1, u64::MAX), 5);
        assert_eq!(agg.finish("t".into(), 1.0).lag_p50_us, Some(1));
    }
}
