//! Status lines on stderr, so stdout carries nothing but data. Each starts with the time it
//! was written (RFC 3339, UTC, milliseconds), so a reconnect or a gap can be matched with
//! other programs' logs.

use std::time::SystemTime;

/// Prints one status line, stamped with the time and prefixed so it stands out among other
/// programs' logs.
pub fn say(message: std::fmt::Arguments<'_>) {
    eprintln!("{}", line(SystemTime::now(), message));
}

/// A status line as [`say`] prints it: `2026-11-22T10:00:00.123Z busctl: live (epoch ...)`.
pub fn line(at: SystemTime, message: std::fmt::Arguments<'_>) -> String {
    format!("{} busctl: {message}", humantime::format_rfc3339_millis(at))
}

/// `status!("reconnecting (attempt {n})")`.
#[macro_export]
macro_rules! status {
    ($($arg:tt)*) => { $crate::status::say(format_args!($($arg)*)) };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    #[test]
    fn a_line_starts_with_its_time() {
        let at = UNIX_EPOCH + Duration::from_micros(1_795_341_600_123_456);
        assert_eq!(
            line(at, format_args!("live")),
            "2026-11-22T10:00:00.123Z busctl: live"
        );
    }
}
