//! How events and gaps look on stdout: the text line README shows, or one JSON object a line.

use std::time::{Duration, UNIX_EPOCH};

use protocol::Event;
use serde::Serialize;

use crate::cli::Format;
use crate::subscriber::GapReport;

/// Latest instant humantime can print (the end of year 9999), in microseconds.
const MAX_PRINTABLE_US: u64 = 253_402_300_800 * 1_000_000 - 1;

/// RFC 3339 in UTC with microseconds; `None` for a timestamp past year 9999.
pub fn timestamp(us: u64) -> Option<String> {
    if us > MAX_PRINTABLE_US {
        return None;
    }
    let time = UNIX_EPOCH.checked_add(Duration::from_micros(us))?;
    Some(humantime::format_rfc3339_micros(time).to_string())
}

#[derive(Serialize)]
struct EventJson<'a> {
    seq: u64,
    /// seq restarts with every busd process; (epoch, seq) is the position.
    epoch: u64,
    #[serde(flatten)]
    event: EventFields<'a>,
}

/// An event's own fields in JSON: what `watch --format json` prints after `seq` and
/// `epoch`, and the whole body of a JetStream message, so both read alike.
#[derive(Serialize)]
pub struct EventFields<'a> {
    account_id: u64,
    timestamp: Option<String>,
    timestamp_us: u64,
    data: &'a str,
    origin: &'a str,
    /// With `origin`, names the event: a consumer can drop a copy by it.
    id: u64,
}

impl<'a> EventFields<'a> {
    /// The fields of `event`.
    pub fn of(event: &'a Event) -> Self {
        EventFields {
            account_id: event.account_id,
            timestamp: timestamp(event.timestamp_us),
            timestamp_us: event.timestamp_us,
            data: &event.data,
            origin: &event.origin,
            id: event.id,
        }
    }
}

#[derive(Serialize)]
struct GapJson<'a> {
    gap: &'a GapReport,
}

/// One event as a line of `format`.
pub fn event_line(format: Format, epoch: u64, seq: u64, event: &Event) -> String {
    match format {
        Format::Text => {
            let ts = timestamp(event.timestamp_us)
                .unwrap_or_else(|| format!("timestamp_us={}", event.timestamp_us));
            format!(
                "{ts}  account={}  seq={seq}  data={:?}",
                event.account_id, event.data
            )
        }
        Format::Json => json(&EventJson {
            seq,
            epoch,
            event: EventFields::of(event),
        }),
    }
}

/// One gap as a line of `format`: on stdout too, so a pipeline sees it.
pub fn gap_line(format: Format, gap: &GapReport) -> String {
    match format {
        Format::Text => format!("GAP  {}", describe_gap(gap)),
        Format::Json => json(&GapJson { gap }),
    }
}

/// The gap in words, for text output and stderr.
pub fn describe_gap(gap: &GapReport) -> String {
    match (gap.to_seq, gap.missed) {
        (Some(to), Some(missed)) => format!(
            "missed {missed} events between seq {} and {to} (epoch {})",
            gap.from_seq, gap.epoch
        ),
        _ => format!(
            "busd restarted and nothing proves what was missed: events after seq {} of epoch {} may be lost",
            gap.from_seq.saturating_sub(1),
            gap.epoch
        ),
    }
}

fn json(value: &impl Serialize) -> String {
    // Serializing these plain structs to a String cannot fail.
    serde_json::to_string(value).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event() -> Event {
        Event {
            account_id: 5,
            timestamp_us: 1_795_341_600_123_456,
            data: "a \"quoted\" é".into(),
            origin: "ingest-1".into(),
            id: 7,
        }
    }

    #[test]
    fn text_matches_the_contract() {
        assert_eq!(
            event_line(Format::Text, 9, 123, &event()),
            r#"2026-11-22T10:00:00.123456Z  account=5  seq=123  data="a \"quoted\" é""#
        );
    }

    #[test]
    fn json_matches_the_contract() {
        assert_eq!(
            event_line(Format::Json, 9, 123, &event()),
            r#"{"seq":123,"epoch":9,"account_id":5,"timestamp":"2026-11-22T10:00:00.123456Z","timestamp_us":1795341600123456,"data":"a \"quoted\" é","origin":"ingest-1","id":7}"#
        );
    }

    #[test]
    fn gaps_print_known_and_unknown_sizes() {
        let known = GapReport {
            from_seq: 10,
            to_seq: Some(19),
            missed: Some(4),
            epoch: 7,
        };
        assert_eq!(
            gap_line(Format::Json, &known),
            r#"{"gap":{"from_seq":10,"to_seq":19,"missed":4,"epoch":7}}"#
        );
        let unknown = GapReport {
            from_seq: 10,
            to_seq: None,
            missed: None,
            epoch: 7,
        };
        assert!(gap_line(Format::Json, &unknown).contains(r#""to_seq":null,"missed":null"#));
        assert!(describe_gap(&unknown).contains("after seq 9"));
    }

    #[test]
    fn absurd_timestamps_do_not_panic() {
        let mut e = event();
        e.timestamp_us = u64::MAX;
        assert!(event_line(Format::Text, 9, 1, &e).contains("timestamp_us=18446744073709551615"));
        assert!(event_line(Format::Json, 9, 1, &e).contains(r#""timestamp":null"#));
        assert!(timestamp(MAX_PRINTABLE_US).is_some());
    }
}
