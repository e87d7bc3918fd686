//! The JetStream half of [`crate::subscriber`]: an ordered consumer kept by hand.
//!
//! An ephemeral pull consumer without acknowledgements, filtered on the watched accounts'
//! subjects, starts right after the last stream sequence handed out. It is dropped and made
//! again from there whenever anything looks wrong: a consumer sequence that skips, a missed
//! heartbeat (two to three seconds of silence, so a dead server is noticed in seconds rather
//! than the minute async-nats' own ordered consumer waits; not when the watcher itself
//! stopped reading meanwhile, see [`super::messages`]), a deleted consumer, a lost
//! connection.
//!
//! A consumer can also be stuck with nothing looking wrong: placed on a replica that is
//! behind the stream leader, it heartbeats and hands out nothing. When it has handed out
//! nothing for a while, [`watchdog`] asks the leader whether it holds anything for it, and
//! the consumer is made again when it does.
//!
//! A stream sequence that jumps is normal when filtering; it is a loss only when the stream
//! no longer holds what was skipped. So on a jump the stream's first sequence is read once
//! for the whole batch, and any skipped range below it is reported as a gap: it may hold
//! events of other accounts only, but never silently any of ours.

use std::time::Duration;

use async_nats::jetstream::consumer::pull::Config;
use async_nats::jetstream::consumer::{self, AckPolicy, DeliverPolicy};
use async_nats::jetstream::stream::{Info, Stream};
use protocol::{Event, Filter};

use super::messages::{Delivered, HEARTBEAT, Messages};
use super::stream::{Counted, counted, leader_info};
use super::watchdog::{self, Verdict, Watchdog};
use super::{Connection, JetstreamError, Layout, body, filters_many_subjects};

/// Most messages asked for in one pull request, and handed out in one batch.
const BATCH: usize = 1000;
/// How long a pull request waits on the server before the client renews it.
const EXPIRES: Duration = Duration::from_secs(10);
/// How long the server keeps a consumer nobody pulls from (one left by a crashed watcher).
const INACTIVE: Duration = Duration::from_secs(10);

/// A consumer being read: the stream, for first-sequence checks, and its messages.
pub(crate) struct Pull {
    stream: Stream,
    messages: Messages,
    layout: Layout,
    /// Applied here when the filter has more accounts than the server is asked to filter.
    filter: Option<Filter>,
    consumer_seq: u64,
    /// The consumer's filter subjects, to ask the stream leader about when it is idle.
    subjects: Vec<String>,
    /// The last stream sequence the consumer handed out, or (before any) the one it
    /// started after; `None` for a start by time, whose sequence is not known.
    last_read: Option<u64>,
    /// Whether an idle consumer is stuck behind the stream.
    watchdog: Watchdog,
    /// Messages taken from the consumer and not yet handed out: kept here across the
    /// first-sequence check, so a caller that gives up waiting loses none of them.
    held: Vec<(u64, async_nats::Message)>,
}

/// What one read hands out, in stream order.
#[derive(Debug, PartialEq)]
pub(crate) enum Item {
    /// An event at its stream sequence.
    Event(u64, Event),
    /// Sequences the stream no longer holds, skipped by the consumer.
    Evicted {
        /// First sequence lost.
        from: u64,
        /// Last sequence lost.
        to: u64,
    },
}

/// Connects, finds the stream and checks the server can filter the way `filter` needs.
pub(crate) async fn open(
    servers: &[String],
    name: &str,
    token: Option<&str>,
    layout: &Layout,
    filter: &Filter,
) -> Result<(Connection, Stream, Info), JetstreamError> {
    let conn = super::connect(servers, name, token, Duration::from_secs(5)).await?;
    let version = conn.client.server_info().version;
    if subjects(layout, filter).len() > 1 && !filters_many_subjects(&version) {
        return Err(JetstreamError::Refused(format!(
            "nats-server {version} cannot filter a consumer on several subjects (it needs \
             2.10 or newer and would silently send every account): upgrade the servers, \
             watch one account at a time, or filter in busctl with --max-filter-subjects 1"
        )));
    }
    let stream = super::stream::find(&conn.js, layout).await?;
    let info = leader_info(&stream).await?;
    Ok((conn, stream, info))
}

/// Whether a probe counted as `probe` says counted on the stream's copy the stream info
/// `stream` came from, the leader's: the same server, or no cluster at all.
fn counted_by_leader(stream: Counted, probe: Counted) -> bool {
    match (stream, probe) {
        (Counted::Leaderless, _) | (_, Counted::Leaderless) => false,
        (Counted::On(leader), Counted::On(host)) => leader == host,
        (Counted::Alone, _) | (_, Counted::Alone) => true,
    }
}

/// The filter subjects for `filter`: one per account up to the layout's limit, else every
/// account's (and the filter is applied here).
pub(crate) fn subjects(layout: &Layout, filter: &Filter) -> Vec<String> {
    match filter {
        Filter::Accounts(ids) if ids.len() <= layout.max_filter_subjects => {
            ids.iter().map(|id| layout.subject(*id)).collect()
        }
        _ => vec![layout.all_subjects()],
    }
}

/// A consumer config's `filter_subject` and `filter_subjects` for `filter`: one subject goes
/// in the first, which servers before 2.10 also read.
pub(crate) fn config_subjects(layout: &Layout, filter: &Filter) -> (String, Vec<String>) {
    let mut subjects = subjects(layout, filter);
    if subjects.len() == 1 {
        (subjects.remove(0), Vec::new())
    } else {
        (String::new(), subjects)
    }
}

/// The filter to apply in busctl: when it names more accounts than the server is asked to
/// filter on.
pub(crate) fn local_filter(layout: &Layout, filter: &Filter) -> Option<Filter> {
    match filter {
        Filter::Accounts(ids) if ids.len() > layout.max_filter_subjects => Some(filter.clone()),
        _ => None,
    }
}

/// The event in a message, if it is one of ours and passes `filter`; anything else on the
/// stream's subjects (another program's message) is passed over.
pub(crate) fn wanted(
    layout: &Layout,
    filter: Option<&Filter>,
    message: &async_nats::Message,
) -> Option<Event> {
    let event = body::decode(&message.payload).ok()?;
    if layout.account_of(message.subject.as_str()) != Some(event.account_id) {
        return None;
    }
    match filter {
        Some(filter) if !filter.matches(event.account_id) => None,
        _ => Some(event),
    }
}

/// Where a consumer starts: a stream sequence, or the first message stored at or after a
/// time (µs since the Unix epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum From {
    /// This stream sequence.
    Seq(u64),
    /// The first message stored at or after this time.
    Time(u64),
}

/// A consumer's configuration: filtered on `filter`'s subjects, starting at `from`.
fn config(layout: &Layout, filter: &Filter, from: From) -> Config {
    let (filter_subject, filter_subjects) = config_subjects(layout, filter);
    let deliver_policy = match from {
        From::Seq(seq) => DeliverPolicy::ByStartSequence {
            start_sequence: seq.max(1),
        },
        From::Time(us) => DeliverPolicy::ByStartTime {
            start_time: time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1000)
                .unwrap_or(time::OffsetDateTime::UNIX_EPOCH),
        },
    };
    Config {
        filter_subject,
        filter_subjects,
        deliver_policy,
        ack_policy: AckPolicy::None,
        inactive_threshold: INACTIVE,
        memory_storage: true,
        num_replicas: 1,
        ..Config::default()
    }
}

/// The stream sequence from which the last `n` messages on `filter`'s subjects follow,
/// within `first..=last` (what the stream holds): the sequences themselves when every
/// account is watched, else found by asking the server how many messages a consumer
/// starting at a sequence would have pending (a binary search of a few dozen probes, each
/// counted on the stream leader: see [`pending`]).
/// Returns the start and whether the stream holds fewer than `n`.
pub(crate) async fn last_start(
    stream: &Stream,
    layout: &Layout,
    filter: &Filter,
    n: u64,
    (first, last): (u64, u64),
) -> Result<(u64, bool), JetstreamError> {
    // Sequences start at 1; a stream that never held a message says first 0, last 0.
    let first = first.max(1);
    let held = (last + 1).saturating_sub(first);
    if subjects(layout, filter) == [layout.all_subjects()] || held == 0 {
        return Ok(((last + 1).saturating_sub(n).max(first), held < n));
    }
    let total = pending(stream, layout, filter, first).await?;
    if total <= n {
        return Ok((first, total < n));
    }
    // pending(lo) > n >= pending(hi): the start is the highest sequence with pending >= n.
    let (mut lo, mut hi) = (first, last + 1);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if pending(stream, layout, filter, mid).await? >= n {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Ok((lo, false))
}

/// How many messages on `filter`'s subjects the stream leader holds from `seq` on.
///
/// A probe consumer counts on whichever replica the server placed it (any one of the
/// stream's, at random), and a replica that is behind, catching up after a pause or a
/// restart, counts short: the search would start too early and print more than N. So a
/// probe's count is taken only when the server hosting it is the one the stream info,
/// read just before, names leader; the others are deleted and another made, up to
/// [`PROBES`] in all. A replica the stream info reports `current` with no lag is not
/// enough: that says it has persisted the leader's log, not that its store holds the
/// messages, which it may not until a catch-up ends.
async fn pending(
    stream: &Stream,
    layout: &Layout,
    filter: &Filter,
    seq: u64,
) -> Result<u64, JetstreamError> {
    let mut hosts = Vec::new();
    for _ in 0..PROBES {
        let info = leader_info(stream).await?;
        let probe = probe(stream, layout, filter, seq).await?;
        let on = counted(probe.cluster.as_ref());
        if counted_by_leader(counted(info.cluster.as_ref()), on) {
            return Ok(probe.num_pending);
        }
        hosts.push(match on {
            Counted::On(host) => host.to_owned(),
            _ => "?".to_owned(),
        });
    }
    Err(JetstreamError::Unavailable(format!(
        "cannot count the last events on the stream leader: none of {PROBES} probe \
         consumers was placed on it (placed on {}); a count from another replica may be short",
        hosts.join(", ")
    )))
}

/// Most probe consumers [`pending`] makes for one count. Each lands on the stream leader
/// with a chance of one in the stream's replicas: with three, all of them miss it about
/// twice in a million counts, and the watcher then says so and tries again.
const PROBES: usize = 32;

/// Makes a throw-away consumer starting at `seq`, deletes it, and returns its info: how
/// many messages it had pending, and where it was placed.
async fn probe(
    stream: &Stream,
    layout: &Layout,
    filter: &Filter,
    seq: u64,
) -> Result<consumer::Info, JetstreamError> {
    let consumer = stream
        .create_consumer(config(layout, filter, From::Seq(seq)))
        .await
        .map_err(|err| JetstreamError::Unavailable(format!("cannot create a consumer: {err}")))?;
    let info = consumer.cached_info().clone();
    let _ = stream.delete_consumer(&info.name).await;
    Ok(info)
}

/// The messages of `consumer`, `batch` at a time, with [`HEARTBEAT`]s while idle and
/// requests renewed every [`EXPIRES`].
pub(crate) async fn pull(
    consumer: &async_nats::jetstream::consumer::Consumer<Config>,
    batch: usize,
) -> Result<Messages, async_nats::jetstream::consumer::StreamError> {
    consumer
        .stream()
        .max_messages_per_batch(batch)
        .heartbeat(HEARTBEAT)
        .expires(EXPIRES)
        .messages()
        .await
        .map(Messages::new)
}

/// Starts a consumer at `from`.
pub(crate) async fn consume(
    stream: Stream,
    layout: &Layout,
    filter: &Filter,
    from: From,
) -> Result<Pull, JetstreamError> {
    let unavailable = |err: String| JetstreamError::Unavailable(err);
    let consumer = stream
        .create_consumer(config(layout, filter, from))
        .await
        .map_err(|err| unavailable(format!("cannot create a consumer: {err}")))?;
    let messages = pull(&consumer, BATCH)
        .await
        .map_err(|err| unavailable(format!("cannot pull from the consumer: {err}")))?;
    Ok(Pull {
        stream,
        messages,
        layout: layout.clone(),
        filter: local_filter(layout, filter),
        consumer_seq: 0,
        subjects: subjects(layout, filter),
        last_read: match from {
            From::Seq(seq) => Some(seq.saturating_sub(1)),
            From::Time(_) => None,
        },
        watchdog: Watchdog::default(),
        held: Vec::new(),
    })
}

impl Pull {
    /// Waits for the next messages after stream sequence `after` and hands out what they
    /// hold. Cancel-safe: messages taken are held until handed out. `Err` means the
    /// consumer must be made again.
    pub(crate) async fn next(&mut self, after: u64) -> Result<Vec<Item>, String> {
        if self.held.is_empty() {
            self.read(after).await?;
        }
        let first_held = if jumps(after, self.held.iter().map(|(seq, _)| *seq)) {
            Some(self.first_sequence().await?)
        } else {
            None
        };
        let read = std::mem::take(&mut self.held);
        let mut out = Vec::with_capacity(read.len());
        let mut prev = after;
        for (seq, message) in read {
            if seq <= prev {
                continue;
            }
            if let Some(first) = first_held.filter(|first| seq > prev + 1 && *first > prev + 1) {
                out.push(Item::Evicted {
                    from: prev + 1,
                    to: (first - 1).min(seq - 1),
                });
            }
            prev = seq;
            if let Some(event) = wanted(&self.layout, self.filter.as_ref(), &message) {
                out.push(Item::Event(seq, event));
            }
        }
        Ok(out)
    }

    /// Waits for a message, then takes every one already there, into `held`. While none
    /// comes, checks every [`watchdog::IDLE`] that the consumer is not stuck.
    async fn read(&mut self, after: u64) -> Result<(), String> {
        let first = self.wait(after).await?;
        self.watchdog.handed_out();
        for item in self.messages.batch(first, BATCH) {
            let message = match item {
                None => return Err("the consumer ended".into()),
                Some(Err(err)) => return Err(format!("consumer: {err}")),
                Some(Ok(message)) => message,
            };
            let info = message.info().map_err(|err| format!("consumer: {err}"))?;
            if info.consumer_sequence != self.consumer_seq + 1 {
                return Err(format!(
                    "the consumer skipped from {} to {}",
                    self.consumer_seq, info.consumer_sequence
                ));
            }
            self.consumer_seq = info.consumer_sequence;
            let seq = info.stream_sequence;
            self.last_read = Some(self.last_read.map_or(seq, |last| last.max(seq)));
            self.held.push((seq, message.split().0));
        }
        Ok(())
    }

    /// Waits for the consumer's next message. Every [`watchdog::IDLE`] without one, asks
    /// the stream leader whether it holds anything for this consumer, reading on meanwhile
    /// (a message that comes ends the check, and the heartbeats keep being counted): `Err`
    /// when the leader has held a message for it that long and it has not come. A leader
    /// that cannot be asked proves nothing: the heartbeats say whether the consumer lives.
    async fn wait(&mut self, after: u64) -> Result<Option<Delivered>, String> {
        loop {
            if let Some(item) = self.messages.next_within(watchdog::IDLE).await {
                return Ok(item);
            }
            let Some(floor) = self.last_read.map(|last| last.max(after)) else {
                continue;
            };
            let found = {
                let probe = watchdog::first_after(&self.stream, &self.subjects, floor);
                tokio::select! {
                    item = self.messages.next() => return Ok(item),
                    found = probe => found,
                }
            };
            if let Ok(Verdict::Stuck(seq)) = found.map(|found| self.watchdog.judge(found)) {
                return Err(format!(
                    "the consumer handed out nothing after seq {floor} for {}s while the \
                     stream leader holds seq {seq} for it (a replica behind the leader?): \
                     making it again",
                    2 * watchdog::IDLE.as_secs()
                ));
            }
        }
    }

    /// The stream leader's first sequence: a replica's own copy could start elsewhere and
    /// hide an eviction.
    async fn first_sequence(&self) -> Result<u64, String> {
        let info = leader_info(&self.stream)
            .await
            .map_err(|err| err.to_string())?;
        Ok(info.state.first_sequence)
    }
}

/// Whether `seqs`, read after `after`, skip any sequence.
fn jumps(after: u64, seqs: impl Iterator<Item = u64>) -> bool {
    let mut prev = after;
    for seq in seqs {
        if seq > prev + 1 {
            return true;
        }
        prev = prev.max(seq);
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consecutive_sequences_do_not_jump() {
        assert!(!jumps(4, [5, 6, 7].into_iter()));
        assert!(!jumps(4, std::iter::empty()));
        assert!(jumps(4, [6].into_iter()));
        assert!(jumps(4, [5, 7].into_iter()));
    }

    #[test]
    fn few_accounts_are_filtered_by_the_server() {
        let layout = Layout::default();
        let filter = Filter::Accounts([1, 5].into());
        assert_eq!(
            subjects(&layout, &filter),
            ["tracker.events.1", "tracker.events.5"]
        );
        let many = Filter::Accounts((0..=layout.max_filter_subjects as u64).collect());
        assert_eq!(subjects(&layout, &many), ["tracker.events.*"]);
        assert_eq!(subjects(&layout, &Filter::All), ["tracker.events.*"]);
    }

    #[test]
    fn only_a_probe_on_the_stream_leader_counts() {
        use Counted::*;
        assert!(counted_by_leader(On("n2"), On("n2")));
        assert!(!counted_by_leader(On("n2"), On("n1")), "another replica");
        assert!(
            !counted_by_leader(Leaderless, On("n1")),
            "a stream info from a replica"
        );
        assert!(!counted_by_leader(On("n1"), Leaderless));
        assert!(
            counted_by_leader(On("n1"), Alone),
            "a single server's consumer"
        );
        assert!(
            counted_by_leader(Alone, Alone),
            "answers without a cluster section"
        );
    }
}
