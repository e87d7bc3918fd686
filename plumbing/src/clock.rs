//! The wall clock, read one way: event timestamps, epochs and id bases all count from the
//! Unix epoch, and a clock set before 1970 reads as the epoch itself rather than failing.

use std::time::{SystemTime, UNIX_EPOCH};

/// Microseconds since the Unix epoch, now.
pub fn now_us() -> u64 {
    since_epoch(SystemTime::now()).as_micros() as u64
}

/// Nanoseconds since the Unix epoch, now: a base for ids that must outgrow any event rate.
pub fn now_ns() -> u64 {
    since_epoch(SystemTime::now()).as_nanos() as u64
}

/// Microseconds since the Unix epoch at `time`.
pub fn us_at(time: SystemTime) -> u64 {
    since_epoch(time).as_micros() as u64
}

fn since_epoch(time: SystemTime) -> std::time::Duration {
    time.duration_since(UNIX_EPOCH).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_from_the_unix_epoch() {
        assert_eq!(us_at(UNIX_EPOCH), 0);
        assert_eq!(
            us_at(UNIX_EPOCH + std::time::Duration::from_millis(1)),
            1000
        );
        assert!(now_ns() / 1000 >= now_us() - 1_000_000);
        assert_eq!(us_at(UNIX_EPOCH - std::time::Duration::from_secs(1)), 0);
    }
}
