//! NATS JetStream as the bus past one machine: the same publisher and subscriber, with an
//! existing replicated engine underneath instead of busd.
//!
//! The layout is one stream (`TRACKER` by default) over the subjects
//! `<prefix>.<account_id>` (`tracker.events.5`), so a consumer's filter subjects are the
//! server-side account filter, the stream sequence is the resume position and `Nats-Msg-Id`
//! (`<origin>:<batch>:<index>`) lets the stream drop a batch sent again after a reconnect.
//! Message bodies are JSON ([`body`]), readable by `nats sub` and any language.
//!
//! `publisher` and `subscriber` are the JetStream halves of
//! [`crate::publisher::Publisher`] and [`crate::subscriber::Subscriber`]; callers pick the
//! bus with the address alone ([`crate::bus::Address`]).

pub mod body;
pub(crate) mod group;
pub(crate) mod messages;
pub(crate) mod publisher;
pub mod stream;
pub(crate) mod subscriber;
pub(crate) mod watchdog;

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, Context};
use async_nats::{Client, ConnectErrorKind, ConnectOptions, Event};
use tokio::sync::watch;

/// The stream and subjects Tracker's events live in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// The stream's name.
    pub stream: String,
    /// Subjects are `<prefix>.<account_id>`.
    pub prefix: String,
    /// Copies of every message kept on separate servers, when ingest creates the stream.
    pub replicas: usize,
    /// Bytes the stream keeps before dropping its oldest messages: busd's replay ring.
    pub retain_bytes: u64,
    /// How long the stream remembers a `Nats-Msg-Id` to drop a copy sent again.
    pub duplicate_window: Duration,
    /// Most accounts a watcher's consumer filters on the server; a longer list reads every
    /// account's subject and filters in the watcher.
    pub max_filter_subjects: usize,
}

/// The stream's name unless `--stream` says otherwise.
pub const DEFAULT_STREAM: &str = "TRACKER";
/// The subject prefix unless `--subject-prefix` says otherwise.
pub const DEFAULT_PREFIX: &str = "tracker.events";

impl Default for Layout {
    fn default() -> Self {
        Layout {
            stream: DEFAULT_STREAM.into(),
            prefix: DEFAULT_PREFIX.into(),
            replicas: 1,
            retain_bytes: 1 << 30,
            duplicate_window: Duration::from_secs(120),
            max_filter_subjects: 100,
        }
    }
}

impl Layout {
    /// The subject of `account_id`'s events.
    pub fn subject(&self, account_id: u64) -> String {
        format!("{}.{account_id}", self.prefix)
    }

    /// The subject every account's events match.
    pub fn all_subjects(&self) -> String {
        format!("{}.*", self.prefix)
    }

    /// The account a subject of this layout names.
    pub fn account_of(&self, subject: &str) -> Option<u64> {
        subject
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix('.')?
            .parse()
            .ok()
    }
}

/// What can go wrong reaching JetStream.
#[derive(Debug, Clone, thiserror::Error)]
pub enum JetstreamError {
    /// No server answered; retrying may help.
    #[error("cannot reach NATS at {servers}: {reason}")]
    Unreachable {
        /// The servers tried.
        servers: String,
        /// Why.
        reason: String,
    },
    /// A server answered but JetStream did not, or not yet (no quorum, a leader election,
    /// the stream missing); retrying may help.
    #[error("JetStream is not available: {0}")]
    Unavailable(String),
    /// Retrying cannot help until someone changes a setting: a server without JetStream,
    /// a wrong token, a stream the cluster cannot hold, a server too old.
    #[error("{0}")]
    Refused(String),
}

impl JetstreamError {
    /// Whether retrying cannot help without someone changing a setting.
    pub fn is_refusal(&self) -> bool {
        matches!(self, JetstreamError::Refused(_))
    }
}

/// A client connected to one of the servers, its JetStream context, and whether the
/// client is connected right now (it reconnects by itself, for ever).
#[derive(Clone)]
pub struct Connection {
    /// The core NATS client.
    pub client: Client,
    /// Its JetStream API, with `timeout` for acknowledgements.
    pub js: Context,
    /// `true` while connected to some server.
    pub connected: watch::Receiver<bool>,
}

/// Connects to the first of `servers` that answers and checks it runs JetStream. Once
/// connected, the client finds another server by itself whenever it loses this one;
/// `timeout` bounds each attempt, every JetStream request and every acknowledgement.
pub async fn connect(
    servers: &[String],
    name: &str,
    token: Option<&str>,
    timeout: Duration,
) -> Result<Connection, JetstreamError> {
    let (tx, connected) = watch::channel(true);
    let tx = Arc::new(tx);
    let mut options = ConnectOptions::new()
        .name(name)
        .connection_timeout(timeout)
        .request_timeout(Some(timeout))
        .ping_interval(Duration::from_secs(2))
        .max_reconnects(None)
        .reconnect_delay_callback(|attempt| Duration::from_millis((50 * attempt as u64).min(1000)))
        .event_callback(move |event| {
            let tx = tx.clone();
            async move {
                match event {
                    Event::Connected => tx.send_replace(true),
                    Event::Disconnected => tx.send_replace(false),
                    _ => false,
                };
            }
        });
    if let Some(token) = token.filter(|t| !t.is_empty()) {
        options = options.token(token.to_owned());
    }
    let client = options
        .connect(servers)
        .await
        .map_err(|err| match err.kind() {
            ConnectErrorKind::Authentication | ConnectErrorKind::AuthorizationViolation => {
                JetstreamError::Refused(format!("NATS at {} refused us: {err}", servers.join(",")))
            }
            _ => JetstreamError::Unreachable {
                servers: servers.join(","),
                reason: err.to_string(),
            },
        })?;
    let info = client.server_info();
    if !info.jetstream {
        return Err(JetstreamError::Refused(format!(
            "the NATS server {} at {} runs without JetStream: start it with -js (or a \
             jetstream block in its config)",
            info.server_name,
            servers.join(",")
        )));
    }
    let js = jetstream::ContextBuilder::new()
        .timeout(timeout)
        .max_ack_inflight(64 * 1024)
        .build(client.clone());
    Ok(Connection {
        client,
        js,
        connected,
    })
}

/// Whether a server of `version` (`2.10.22`, `2.11.0-RC.1`) filters a consumer on several
/// subjects. Older servers silently ignore the list and deliver every subject.
pub fn filters_many_subjects(version: &str) -> bool {
    let mut parts = version
        .split(['.', '-'])
        .map(|p| p.parse::<u64>().unwrap_or(0));
    let major = parts.next().unwrap_or(0);
    let minor = parts.next().unwrap_or(0);
    (major, minor) >= (2, 10)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subjects_name_accounts() {
        let layout = Layout::default();
        assert_eq!(layout.subject(5), "tracker.events.5");
        assert_eq!(layout.account_of("tracker.events.5"), Some(5));
        assert_eq!(layout.account_of("tracker.events5"), None);
        assert_eq!(layout.account_of("tracker.other.5"), None);
        assert_eq!(layout.all_subjects(), "tracker.events.*");
    }

    #[test]
    fn multi_subject_filters_need_2_10() {
        assert!(filters_many_subjects("2.10.0"));
        assert!(filters_many_subjects("2.15.1"));
        assert!(filters_many_subjects("3.0.0-RC.1"));
        assert!(!filters_many_subjects("2.9.10"));
        assert!(!filters_many_subjects(""));
    }
}
