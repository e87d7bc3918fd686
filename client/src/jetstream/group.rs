//! A consumer group on JetStream: one durable pull consumer per group, shared by its members.
//!
//! The consumer (`group-<NAME>`) lives in the stream, so the group's position outlives its
//! members: a member that joins later carries on where the group stopped. Every member
//! pulls from it; the server hands each message to one pull request, and a message not
//! acknowledged within [`ACK_WAIT`] (its member died, say) is sent again to whichever member
//! pulls next. Delivery is therefore at least once, and neither account affinity nor order
//! per account is kept: consecutive events of one account may go to different members, and
//! a message sent again arrives after later ones. A member acknowledges each event once it
//! has handed it out, that is when it is asked for the next ones.

use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::time::Duration;

use async_nats::jetstream::consumer::pull::Config;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy};
use async_nats::jetstream::message::Acker;
use async_nats::jetstream::stream::Stream;
use protocol::{Event, Filter};

use super::messages::Messages;
use super::{JetstreamError, Layout, subscriber};

/// How long a member may hold a message unacknowledged before it goes to another member.
pub const ACK_WAIT: Duration = Duration::from_secs(10);
/// Most messages the whole group holds unacknowledged at once.
const MAX_ACK_PENDING: i64 = 20_000;
/// Most messages asked for in one pull request: few enough that a member printing to a
/// slow pipe hands them all out well within [`ACK_WAIT`].
const BATCH: usize = 100;

/// The durable consumer's name for group `group`.
pub fn consumer_name(group: &str) -> String {
    format!("group-{group}")
}

/// One member's pull from its group's consumer.
pub(crate) struct GroupPull {
    messages: Messages,
    layout: Layout,
    /// Applied here when the filter has more accounts than the server is asked to filter.
    filter: Option<Filter>,
    /// Handed out, acknowledged at the next read.
    handed: Vec<Acker>,
}

/// What one read hands out.
pub(crate) struct Read {
    /// `(stream sequence, event)` in the order received.
    pub events: Vec<(u64, Event)>,
    /// Of those, how many the server had sent before (to a member that did not ack).
    pub redelivered: u64,
}

/// Joins group `group`: makes its durable consumer (starting at new messages) or finds it,
/// refusing one made with another filter.
pub(crate) async fn join(
    stream: Stream,
    layout: &Layout,
    filter: &Filter,
    group: &str,
) -> Result<GroupPull, JetstreamError> {
    let subjects = subscriber::subjects(layout, filter);
    let (filter_subject, filter_subjects) = subscriber::config_subjects(layout, filter);
    let name = consumer_name(group);
    let config = Config {
        durable_name: Some(name.clone()),
        description: Some(description(filter)),
        filter_subject,
        filter_subjects,
        deliver_policy: DeliverPolicy::New,
        ack_policy: AckPolicy::Explicit,
        ack_wait: ACK_WAIT,
        max_ack_pending: MAX_ACK_PENDING,
        ..Config::default()
    };
    let unavailable = |err: String| JetstreamError::Unavailable(err);
    let mut consumer = stream
        .get_or_create_consumer(&name, config)
        .await
        .map_err(|err| unavailable(format!("cannot make or find consumer {name}: {err}")))?;
    let info = consumer
        .info()
        .await
        .map_err(|err| unavailable(format!("consumer {name}: {err}")))?;
    let mut have = info.config.filter_subjects.clone();
    if !info.config.filter_subject.is_empty() {
        have.push(info.config.filter_subject.clone());
    }
    // The subjects alone do not tell two long account lists apart (both read every
    // account's subject and filter here), so the description names the accounts too.
    let ours = description(filter);
    let same = same_subjects(have, subjects) && info.config.description.as_deref() == Some(&ours);
    if !same {
        return Err(JetstreamError::Refused(format!(
            "group {group} exists on stream {} with another filter ({}); its members must \
             watch the same accounts (this one: {ours})",
            layout.stream,
            info.config
                .description
                .as_deref()
                .unwrap_or("no description"),
        )));
    }
    let messages = subscriber::pull(&consumer, BATCH)
        .await
        .map_err(|err| unavailable(format!("cannot pull from {name}: {err}")))?;
    Ok(GroupPull {
        messages,
        layout: layout.clone(),
        filter: subscriber::local_filter(layout, filter),
        handed: Vec::new(),
    })
}

/// The consumer's description: which accounts the group takes, as a count and a
/// fingerprint of the list (SipHash with fixed keys, the same in every busctl).
fn description(filter: &Filter) -> String {
    match filter {
        Filter::All => "tracker consumer group: every account".into(),
        Filter::Accounts(ids) => {
            let hash = BuildHasherDefault::<DefaultHasher>::default().hash_one(ids);
            format!(
                "tracker consumer group: {} accounts, list {hash:016x}",
                ids.len()
            )
        }
    }
}

fn same_subjects(mut a: Vec<String>, mut b: Vec<String>) -> bool {
    a.sort();
    b.sort();
    a == b
}

impl GroupPull {
    /// Acknowledges what was handed out last, then waits for messages and takes every one
    /// already there. `Err` means the member must join again.
    pub(crate) async fn next(&mut self) -> Result<Read, String> {
        for acker in self.handed.drain(..) {
            acker.ack().await.map_err(|err| format!("ack: {err}"))?;
        }
        let first = self.messages.next().await;
        let batch = self.messages.batch(first, BATCH);
        let mut read = Read {
            events: Vec::with_capacity(batch.len()),
            redelivered: 0,
        };
        for item in batch {
            let message = match item {
                None => return Err("the group's consumer ended".into()),
                Some(Err(err)) => return Err(format!("group consumer: {err}")),
                Some(Ok(message)) => message,
            };
            let info = message.info().map_err(|err| format!("consumer: {err}"))?;
            let (seq, again) = (info.stream_sequence, info.delivered > 1);
            let (message, acker) = message.split();
            // Anything not for us is acknowledged too, or it would come back for ever.
            self.handed.push(acker);
            if let Some(event) = subscriber::wanted(&self.layout, self.filter.as_ref(), &message) {
                read.redelivered += u64::from(again);
                read.events.push((seq, event));
            }
        }
        Ok(read)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_compare_as_sets() {
        let s = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert!(same_subjects(s(&["a.1", "a.2"]), s(&["a.2", "a.1"])));
        assert!(!same_subjects(s(&["a.1"]), s(&["a.1", "a.2"])));
        assert_eq!(consumer_name("billing"), "group-billing");
        let (a, b) = (
            Filter::Accounts([1, 2].into()),
            Filter::Accounts([1, 3].into()),
        );
        assert_ne!(description(&a), description(&b));
        assert_eq!(
            description(&a),
            description(&Filter::Accounts([2, 1].into()))
        );
    }
}
