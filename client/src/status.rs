//! Status lines on stderr, so stdout carries nothing but data.

/// Prints one status line, prefixed so it stands out among other programs' logs.
pub fn say(message: std::fmt::Arguments<'_>) {
    eprintln!("busctl: {message}");
}

/// `status!("reconnecting (attempt {n})")`.
#[macro_export]
macro_rules! status {
    ($($arg:tt)*) => { $crate::status::say(format_args!($($arg)*)) };
}
