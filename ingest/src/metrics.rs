//! `/metrics` in the Prometheus text format: requests by outcome, buffer depth, accounts and
//! whether their file is in place, bus reconnects, reclaimed connections and a latency
//! histogram.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Why a request ended as it did; one counter each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Accepted,
    Probe,
    BadAccountId,
    BadData,
    UnknownAccount,
    InactiveAccount,
    /// 401: the account has a write key and the request did not present it.
    Unauthorized,
    MethodNotAllowed,
    BusUnavailable,
    /// `--durable`: a 202 turned 503 because the bus did not acknowledge its event in time.
    AckTimeout,
    BadRequest,
    TooLarge,
    Timeout,
    Health,
    /// A CORS preflight answered for an allowed origin.
    Preflight,
}

impl Outcome {
    const ALL: [Outcome; 15] = [
        Outcome::Accepted,
        Outcome::Probe,
        Outcome::BadAccountId,
        Outcome::BadData,
        Outcome::UnknownAccount,
        Outcome::InactiveAccount,
        Outcome::Unauthorized,
        Outcome::MethodNotAllowed,
        Outcome::BusUnavailable,
        Outcome::AckTimeout,
        Outcome::BadRequest,
        Outcome::TooLarge,
        Outcome::Timeout,
        Outcome::Health,
        Outcome::Preflight,
    ];

    fn label(self) -> &'static str {
        match self {
            Outcome::Accepted => "accepted",
            Outcome::Probe => "probe",
            Outcome::BadAccountId => "bad_account_id",
            Outcome::BadData => "bad_data",
            Outcome::UnknownAccount => "unknown_account",
            Outcome::InactiveAccount => "inactive_account",
            Outcome::Unauthorized => "unauthorized",
            Outcome::MethodNotAllowed => "method_not_allowed",
            Outcome::BusUnavailable => "bus_unavailable",
            Outcome::AckTimeout => "ack_timeout",
            Outcome::BadRequest => "bad_request",
            Outcome::TooLarge => "too_large",
            Outcome::Timeout => "timeout",
            Outcome::Health => "health",
            Outcome::Preflight => "preflight",
        }
    }
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabel {
    outcome: &'static str,
}

pub struct Metrics {
    registry: Registry,
    /// Counters fetched once, so counting a request takes no lock.
    outcomes: Vec<Counter>,
    pub buffer_depth: Gauge,
    pub buffer_bytes: Gauge,
    pub bus_up: Gauge,
    pub accounts: Gauge,
    /// 1 while the accounts database file is the one being followed, 0 while it is deleted
    /// or replaced and ingest serves the accounts it has in memory.
    pub accounts_file_ok: Gauge,
    /// 1 while the index follows its store (the SQLite file is in place, or PostgreSQL is
    /// connected), 0 while ingest serves from memory alone: one name for both stores.
    pub accounts_store_up: Gauge,
    pub bus_reconnects: Counter,
    /// Idle connections closed to admit a new one at `--max-connections`: many mean the
    /// limit is too low for the clients' keep-alive habits, or someone is hoarding sockets.
    pub connections_reclaimed: Counter,
    /// Time to answer the requests one read brought: one request unless the client pipelines.
    pub answer_time: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("tracker_ingest");
        let requests = Family::<OutcomeLabel, Counter>::default();
        let outcomes = Outcome::ALL
            .iter()
            .map(|o| {
                requests
                    .get_or_create(&OutcomeLabel { outcome: o.label() })
                    .clone()
            })
            .collect();
        registry.register("requests", "HTTP requests by outcome", requests);
        let buffer_depth = Gauge::default();
        registry.register(
            "buffer_events",
            "Accepted events busd has not acknowledged yet",
            buffer_depth.clone(),
        );
        let buffer_bytes = Gauge::default();
        registry.register(
            "buffer_bytes",
            "Encoded bytes of the accepted events busd has not acknowledged yet",
            buffer_bytes.clone(),
        );
        let bus_up = Gauge::default();
        registry.register(
            "bus_up",
            "1 while connected to the bus and it answers in time, else 0",
            bus_up.clone(),
        );
        let accounts = Gauge::default();
        registry.register(
            "accounts",
            "Accounts in the in-memory index",
            accounts.clone(),
        );
        let accounts_file_ok = Gauge::default();
        registry.register(
            "accounts_file_ok",
            "1 while the accounts database file is in place, 0 while it is deleted or replaced (serving from memory); with PostgreSQL, the same as accounts_store_up",
            accounts_file_ok.clone(),
        );
        let accounts_store_up = Gauge::default();
        registry.register(
            "accounts_store_up",
            "1 while changes to the accounts reach the index (SQLite file in place, PostgreSQL connected), 0 while serving from memory alone",
            accounts_store_up.clone(),
        );
        let bus_reconnects = Counter::default();
        registry.register(
            "bus_reconnects",
            "Reconnections to busd",
            bus_reconnects.clone(),
        );
        let connections_reclaimed = Counter::default();
        registry.register(
            "connections_reclaimed",
            "Idle HTTP connections closed to admit a new one at --max-connections",
            connections_reclaimed.clone(),
        );
        // 10 µs to about 160 ms.
        let answer_time = Histogram::new(exponential_buckets(0.000_01, 2.0, 15));
        registry.register(
            "answer_duration_seconds",
            "Time to answer the requests one read brought (one request unless the client pipelines)",
            answer_time.clone(),
        );
        Metrics {
            registry,
            outcomes,
            buffer_depth,
            buffer_bytes,
            bus_up,
            accounts,
            accounts_file_ok,
            accounts_store_up,
            bus_reconnects,
            connections_reclaimed,
            answer_time,
        }
    }
}

impl Metrics {
    pub fn count(&self, outcome: Outcome) {
        if let Some(counter) = Outcome::ALL
            .iter()
            .position(|o| *o == outcome)
            .and_then(|i| self.outcomes.get(i))
        {
            counter.inc();
        }
    }

    pub fn render(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_prometheus_text() {
        let metrics = Metrics::default();
        metrics.count(Outcome::Accepted);
        metrics.count(Outcome::Accepted);
        metrics.count(Outcome::BadData);
        metrics.buffer_depth.set(7);
        metrics.answer_time.observe(0.0002);
        metrics.connections_reclaimed.inc();
        let text = metrics.render();
        assert!(
            text.contains(r#"tracker_ingest_requests_total{outcome="accepted"} 2"#),
            "{text}"
        );
        assert!(text.contains(r#"tracker_ingest_requests_total{outcome="bad_data"} 1"#));
        assert!(text.contains("tracker_ingest_buffer_events 7"));
        assert!(text.contains("tracker_ingest_answer_duration_seconds_count 1"));
        assert!(text.contains("tracker_ingest_connections_reclaimed_total 1"));
        assert!(text.ends_with("# EOF\n"));
    }
}
