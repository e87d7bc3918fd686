//! Value parsers for flags that several programs have, so a bad value is refused the same
//! way everywhere: by clap, before anything starts, with exit code 2.

use std::net::ToSocketAddrs;
use std::time::Duration;

/// A `host:port` to listen on or connect to; refused unless it resolves to an address.
/// Binding can still fail later (the port is taken): that is a failure to serve (exit 1),
/// not a bad argument.
pub fn socket_addr(value: &str) -> Result<String, String> {
    match value.to_socket_addrs().map(|mut addrs| addrs.next()) {
        Ok(Some(_)) => Ok(value.to_owned()),
        Ok(None) => Err(format!("{value:?} resolves to no address")),
        Err(err) => Err(format!("{value:?} is not a host:port address ({err})")),
    }
}

/// A duration of at least 10 ms (`100ms`, `5s`, `2m`): for intervals a loop sleeps, where
/// zero would spin a core.
pub fn interval(value: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(value)
        .map_err(|e| format!("{e} (expected e.g. 100ms, 5s, 2m)"))?;
    if duration < Duration::from_millis(10) {
        return Err(format!("{value} is too short: at least 10ms"));
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_must_resolve() {
        assert!(socket_addr("127.0.0.1:8080").is_ok());
        assert!(socket_addr("[::1]:0").is_ok());
        assert!(socket_addr("localhost:7070").is_ok());
        for bad in [
            "8080",
            "127.0.0.1",
            "127.0.0.1:port",
            "",
            "a b:1",
            "127.0.0.1:70000",
        ] {
            assert!(socket_addr(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn intervals_are_never_zero() {
        assert_eq!(interval("100ms"), Ok(Duration::from_millis(100)));
        assert!(interval("0s").unwrap_err().contains("at least 10ms"));
        assert!(interval("1ms").is_err());
        assert!(interval("soon").is_err());
    }
}
