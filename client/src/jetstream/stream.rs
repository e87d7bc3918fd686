//! The stream itself: created by the publisher when absent, found by readers, and compared
//! with the layout asked for, since a stream that exists is used as it is.

use std::time::Duration;

use async_nats::jetstream::context::{CreateStreamErrorKind, GetStreamErrorKind};
use async_nats::jetstream::stream::{ClusterInfo, Config, Info, StorageType, Stream};
use async_nats::jetstream::{Context, ErrorCode};

use super::{JetstreamError, Layout};

/// The stream info as the stream leader has it. A replica that knows no leader (one just
/// back from a pause or a restart, before it hears from the leader) answers stream info
/// too, with its own copy, which may be missing the newest messages or all of them; its
/// answer names no leader, and the request is made again, up to [`LEADER_TRIES`] times.
pub(crate) async fn leader_info(stream: &Stream) -> Result<Info, JetstreamError> {
    for _ in 0..LEADER_TRIES {
        let info = stream_info(stream).await?;
        if counted(info.cluster.as_ref()) != Counted::Leaderless {
            return Ok(info);
        }
        tokio::time::sleep(LEADER_PAUSE).await;
    }
    Err(JetstreamError::Unavailable(format!(
        "stream {}: no replica names a leader",
        stream.cached_info().config.name
    )))
}

/// How many stream-info requests [`leader_info`] makes, [`LEADER_PAUSE`] apart, before it
/// takes the stream for leaderless: a replica back from a pause usually hears from the
/// leader within its heartbeat (a second), but one that campaigns on its return can depose
/// the leader, and the election that follows takes several seconds.
const LEADER_TRIES: usize = 60;
const LEADER_PAUSE: Duration = Duration::from_millis(200);

async fn stream_info(stream: &Stream) -> Result<Info, JetstreamError> {
    stream.get_info().await.map_err(|err| {
        let name = &stream.cached_info().config.name;
        JetstreamError::Unavailable(format!("stream {name}: {err}"))
    })
}

/// Where an answer (stream info, a consumer's info) was counted, as its `cluster` section
/// says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Counted<'a> {
    /// On a server outside any cluster, which holds the only copy: no section (a consumer's
    /// info on a server alone; a server alone names itself in a stream's).
    Alone,
    /// On this server: the stream's leader, or the one hosting an R1 consumer.
    On(&'a str),
    /// On a replica that knows no leader, with its own copy of the stream.
    Leaderless,
}

/// What `cluster` says of where its answer was counted.
pub(crate) fn counted(cluster: Option<&ClusterInfo>) -> Counted<'_> {
    let Some(cluster) = cluster else {
        return Counted::Alone;
    };
    // A replica that knows no leader leaves it out; before 2.10.5 it has no raft group to
    // show either, so the leader alone decides.
    match cluster.leader.as_deref().filter(|name| !name.is_empty()) {
        Some(name) => Counted::On(name),
        None => Counted::Leaderless,
    }
}

/// The stream config `layout` asks for: file storage, the oldest messages dropped past the
/// byte budget, copies dropped within the duplicate window.
pub fn config(layout: &Layout) -> Config {
    Config {
        name: layout.stream.clone(),
        subjects: vec![layout.all_subjects()],
        num_replicas: layout.replicas,
        storage: StorageType::File,
        max_bytes: i64::try_from(layout.retain_bytes).unwrap_or(i64::MAX),
        duplicate_window: layout.duplicate_window,
        ..Config::default()
    }
}

/// Finds the stream, creating it from `layout` when absent. Returns it with the
/// differences between what exists and what `layout` asks, for a warning.
pub async fn ensure(
    js: &Context,
    layout: &Layout,
) -> Result<(Stream, Vec<String>), JetstreamError> {
    let stream = js
        .get_or_create_stream(config(layout))
        .await
        .map_err(|err| match err.kind() {
            CreateStreamErrorKind::TimedOut | CreateStreamErrorKind::JetStreamUnavailable => {
                JetstreamError::Unavailable(format!(
                    "stream {} could not be read or created: {err} (no JetStream quorum yet?)",
                    layout.stream
                ))
            }
            CreateStreamErrorKind::JetStream(api) if is_transient(api.error_code()) => {
                JetstreamError::Unavailable(format!("stream {}: {api}", layout.stream))
            }
            _ => JetstreamError::Refused(format!(
                "cannot create stream {} ({} replicas, subjects {}): {err}",
                layout.stream,
                layout.replicas,
                layout.all_subjects()
            )),
        })?;
    let differences = differences(&stream.cached_info().config, layout);
    Ok((stream, differences))
}

/// Finds the stream without creating it: readers wait for ingest to create it.
pub async fn find(js: &Context, layout: &Layout) -> Result<Stream, JetstreamError> {
    js.get_stream(&layout.stream)
        .await
        .map_err(|err| match err.kind() {
            GetStreamErrorKind::JetStream(api)
                if api.error_code() == ErrorCode::STREAM_NOT_FOUND =>
            {
                JetstreamError::Unavailable(format!(
                    "stream {} does not exist yet (ingest creates it when it starts)",
                    layout.stream
                ))
            }
            GetStreamErrorKind::JetStream(api) if !is_transient(api.error_code()) => {
                JetstreamError::Refused(format!("stream {}: {api}", layout.stream))
            }
            _ => JetstreamError::Unavailable(format!("stream {}: {err}", layout.stream)),
        })
}

/// Errors a leader election or a lost quorum gives for a while.
fn is_transient(code: ErrorCode) -> bool {
    code == ErrorCode::CLUSTER_NOT_AVAILABLE
}

/// How an existing stream differs from `layout`, in words; empty when it does not.
pub fn differences(have: &Config, layout: &Layout) -> Vec<String> {
    let want = config(layout);
    let mut out = Vec::new();
    if !have.subjects.contains(&layout.all_subjects()) {
        out.push(format!(
            "subjects {:?} (asked [{}])",
            have.subjects,
            layout.all_subjects()
        ));
    }
    if have.num_replicas.max(1) != want.num_replicas.max(1) {
        out.push(format!(
            "{} replicas (asked {})",
            have.num_replicas, want.num_replicas
        ));
    }
    if have.storage != want.storage {
        out.push(format!("{:?} storage (asked file)", have.storage));
    }
    if have.max_bytes != want.max_bytes {
        out.push(format!(
            "max_bytes {} (asked {})",
            have.max_bytes, want.max_bytes
        ));
    }
    if have.duplicate_window != want.duplicate_window {
        out.push(format!(
            "duplicate window {:?} (asked {:?})",
            have.duplicate_window, want.duplicate_window
        ));
    }
    out
}

/// The stream as `busctl stats` shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Summary {
    /// The stream's name.
    pub stream: String,
    /// Its creation time in Unix nanoseconds: the epoch of its sequences.
    pub epoch: u64,
    /// Messages held.
    pub messages: u64,
    /// Bytes held.
    pub bytes: u64,
    /// The oldest sequence held: a watcher behind it has a gap.
    pub first_seq: u64,
    /// The newest sequence.
    pub last_seq: u64,
    /// Consumers (watchers) reading it.
    pub consumers: usize,
    /// Copies kept.
    pub replicas: usize,
    /// The server leading it, if one does.
    pub leader: Option<String>,
    /// The other copies: how far behind each is.
    pub followers: Vec<Follower>,
}

/// One replica that is not the leader.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Follower {
    /// Its server.
    pub name: String,
    /// Whether it has everything the leader has.
    pub current: bool,
    /// Whether the leader has lost sight of it.
    pub offline: bool,
    /// Operations behind the leader, when known.
    pub lag: Option<u64>,
    /// Milliseconds since the leader last heard from it.
    pub active_ms: u64,
}

/// Reads the stream's state for `busctl stats`.
pub async fn summary(js: &Context, layout: &Layout) -> Result<Summary, JetstreamError> {
    let stream = find(js, layout).await?;
    let info = stream
        .get_info()
        .await
        .map_err(|err| JetstreamError::Unavailable(format!("stream {}: {err}", layout.stream)))?;
    let cluster = info.cluster.clone().unwrap_or_default();
    Ok(Summary {
        stream: info.config.name.clone(),
        epoch: epoch(&info),
        messages: info.state.messages,
        bytes: info.state.bytes,
        first_seq: info.state.first_sequence,
        last_seq: info.state.last_sequence,
        consumers: info.state.consumer_count,
        replicas: info.config.num_replicas.max(1),
        leader: cluster.leader,
        followers: cluster
            .replicas
            .into_iter()
            .map(|peer| Follower {
                name: peer.name,
                current: peer.current,
                offline: peer.offline,
                lag: peer.lag,
                active_ms: u64::try_from(peer.active.as_millis()).unwrap_or(u64::MAX),
            })
            .collect(),
    })
}

/// What busd calls an epoch: the stream's creation time in Unix nanoseconds, so a stream
/// deleted and created again (even within the same second) is a new run whose sequences
/// mean something else.
pub fn epoch(info: &Info) -> u64 {
    u64::try_from(info.created.unix_timestamp_nanos()).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster(leader: &str, raft_group: Option<&str>) -> ClusterInfo {
        ClusterInfo {
            leader: Some(leader.to_owned()),
            raft_group: raft_group.map(str::to_owned),
            ..ClusterInfo::default()
        }
    }

    #[test]
    fn an_answer_says_where_it_was_counted() {
        assert_eq!(
            counted(None),
            Counted::Alone,
            "a consumer's info on a server alone"
        );
        let alone = cluster("n1", None);
        assert_eq!(
            counted(Some(&alone)),
            Counted::On("n1"),
            "a server alone names itself"
        );
        let led = cluster("n2", Some("S-R3F-x"));
        assert_eq!(counted(Some(&led)), Counted::On("n2"));
        let lost = cluster("", Some("S-R3F-x"));
        assert_eq!(
            counted(Some(&lost)),
            Counted::Leaderless,
            "a replica back from a pause"
        );
        let old_replica = cluster("", None);
        assert_eq!(
            counted(Some(&old_replica)),
            Counted::Leaderless,
            "a replica before 2.10.5, which shows no raft group, back from a pause"
        );
    }

    #[test]
    fn a_stream_as_asked_has_no_differences() {
        let layout = Layout::default();
        assert!(differences(&config(&layout), &layout).is_empty());
    }

    #[test]
    fn differences_name_each_setting() {
        let layout = Layout::default();
        let mut have = config(&layout);
        have.num_replicas = 3;
        have.max_bytes = -1;
        have.storage = StorageType::Memory;
        let found = differences(&have, &layout).join("; ");
        assert!(found.contains("3 replicas (asked 1)"), "{found}");
        assert!(found.contains("max_bytes -1"), "{found}");
        assert!(found.contains("Memory storage"), "{found}");
    }
}
