//! An event as a JetStream message body: one JSON object with the fields `busctl watch
//! --format json` prints (apart from `seq` and `epoch`, which the stream assigns), so
//! `nats sub tracker.events.5` and services in any language read it without Tracker's code.

use protocol::Event;
use serde::Deserialize;

use crate::render::EventFields;

#[derive(Deserialize)]
struct Incoming {
    account_id: u64,
    timestamp_us: u64,
    data: String,
    origin: String,
    id: u64,
}

/// The body of `event`'s message.
pub fn encode(event: &Event) -> Vec<u8> {
    // Serializing a plain struct of strings and numbers to a Vec cannot fail.
    serde_json::to_vec(&EventFields::of(event)).unwrap_or_default()
}

/// The event in a message body; an error names what is wrong with a body some other
/// publisher put on the stream.
pub fn decode(body: &[u8]) -> Result<Event, serde_json::Error> {
    let Incoming {
        account_id,
        timestamp_us,
        data,
        origin,
        id,
    } = serde_json::from_slice(body)?;
    Ok(Event {
        account_id,
        timestamp_us,
        data,
        origin,
        id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn the_body_is_plain_json_with_the_watch_fields() {
        let event = Event {
            account_id: 5,
            timestamp_us: 1_795_341_600_123_456,
            data: "a \"quoted\" é".into(),
            origin: "ingest-1".into(),
            id: 7,
        };
        let text = String::from_utf8(encode(&event)).expect("JSON is UTF-8");
        assert_eq!(
            text,
            r#"{"account_id":5,"timestamp":"2026-11-22T10:00:00.123456Z","timestamp_us":1795341600123456,"data":"a \"quoted\" é","origin":"ingest-1","id":7}"#
        );
    }

    #[test]
    fn foreign_bodies_are_errors() {
        assert!(decode(b"hello").is_err());
        assert!(decode(br#"{"account_id":5}"#).is_err());
    }

    proptest! {
        #[test]
        fn decode_reads_what_encode_writes(
            account_id in any::<u64>(), timestamp_us in any::<u64>(),
            data in ".{0,64}", origin in ".{0,16}", id in any::<u64>(),
        ) {
            let event = Event { account_id, timestamp_us, data, origin, id };
            prop_assert_eq!(decode(&encode(&event)).expect("own body"), event);
        }
    }
}
