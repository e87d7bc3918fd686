//! Which bus an address names: the same `--bus` / `TRACKER_BUS` in every program picks busd
//! or NATS JetStream by its form, so a deployment switches buses by changing one value.

/// A parsed `--bus` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Address {
    /// busd at `host:port` (written as is, or as `busd://host:port`).
    Busd(String),
    /// NATS JetStream: the servers of one cluster, each a `nats://host:port` URL.
    Jetstream(Vec<String>),
}

/// A `--bus` value that names no bus.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// Empty, or an empty entry in a list.
    #[error("empty bus address")]
    Empty,
    /// A list mixing `nats://` with something else.
    #[error(
        "{0:?}: a list of servers is for NATS and takes nats:// URLs only, e.g. nats://h1:4222,nats://h2:4222"
    )]
    Mixed(String),
    /// A scheme neither bus speaks.
    #[error(
        "{0:?}: unknown scheme; use host:port or busd://host:port for busd, nats://host:port for JetStream"
    )]
    Scheme(String),
}

const BUSD_SCHEME: &str = "busd://";
const NATS_SCHEME: &str = "nats://";

impl Address {
    /// Reads a `--bus` value: `host:port` or `busd://host:port` is busd; one or more
    /// comma-separated `nats://host:port` URLs are JetStream.
    pub fn parse(value: &str) -> Result<Address, AddressError> {
        let value = value.trim();
        if value.is_empty() {
            return Err(AddressError::Empty);
        }
        if value.starts_with(NATS_SCHEME) {
            let servers: Vec<String> = value.split(',').map(|s| s.trim().to_owned()).collect();
            if servers.iter().any(String::is_empty) {
                return Err(AddressError::Empty);
            }
            if let Some(other) = servers.iter().find(|s| !s.starts_with(NATS_SCHEME)) {
                return Err(AddressError::Mixed(other.clone()));
            }
            return Ok(Address::Jetstream(servers));
        }
        if value.contains(',') {
            return Err(AddressError::Mixed(value.to_owned()));
        }
        let addr = value.strip_prefix(BUSD_SCHEME).unwrap_or(value);
        if addr.contains("://") {
            return Err(AddressError::Scheme(value.to_owned()));
        }
        Ok(Address::Busd(addr.to_owned()))
    }

    /// Whether this is JetStream.
    pub fn is_jetstream(&self) -> bool {
        matches!(self, Address::Jetstream(_))
    }
}

/// The `host:port` to dial for a busd address, its `busd://` dropped; any other value is
/// returned as it is (and fails to connect with its own words).
pub fn busd_addr(value: &str) -> &str {
    value.strip_prefix(BUSD_SCHEME).unwrap_or(value)
}

/// A clap value parser: refuses a `--bus` that names no bus before anything starts.
pub fn parse_arg(value: &str) -> Result<String, AddressError> {
    Address::parse(value).map(|_| value.trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_and_busd_scheme_are_busd() {
        assert_eq!(
            Address::parse("127.0.0.1:7070"),
            Ok(Address::Busd("127.0.0.1:7070".into()))
        );
        assert_eq!(
            Address::parse("busd://bus.internal:7070"),
            Ok(Address::Busd("bus.internal:7070".into()))
        );
        assert_eq!(busd_addr("busd://h:1"), "h:1");
    }

    #[test]
    fn nats_lists_are_jetstream() {
        assert_eq!(
            Address::parse("nats://h1:4222, nats://h2:4222"),
            Ok(Address::Jetstream(vec![
                "nats://h1:4222".into(),
                "nats://h2:4222".into()
            ]))
        );
    }

    #[test]
    fn nonsense_is_refused_with_a_reason() {
        assert_eq!(Address::parse(" "), Err(AddressError::Empty));
        assert_eq!(Address::parse("nats://h1:1,"), Err(AddressError::Empty));
        assert!(matches!(
            Address::parse("nats://h1:1,h2:2"),
            Err(AddressError::Mixed(_))
        ));
        assert!(matches!(
            Address::parse("h1:1,h2:2"),
            Err(AddressError::Mixed(_))
        ));
        assert!(matches!(
            Address::parse("redis://h:6379"),
            Err(AddressError::Scheme(_))
        ));
    }
}
