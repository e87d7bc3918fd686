use std::collections::HashSet;

use bytes::Bytes;
use protocol::publish::{self, RawPublish};
use protocol::{ClientFrame, Event, Filter, Position, ServerFrame, Start};

use super::*;

fn batch(batch_id: u64, accounts: &[u64]) -> RawPublish {
    let events = accounts
        .iter()
        .map(|&account_id| Event {
            account_id,
            timestamp_us: 1,
            data: format!("a{account_id}"),
            origin: "t".into(),
            id: account_id,
        })
        .collect();
    let body =
        Bytes::from(postcard::to_allocvec(&ClientFrame::Publish { batch_id, events }).unwrap());
    publish::parse(&body).unwrap()
}

fn drain(sub: &Subscriber) -> (Option<Gap>, Vec<(u64, u64)>) {
    let mut out = Vec::new();
    let drained = sub.queue.drain_into(usize::MAX, &mut out);
    let events = out
        .iter()
        .flat_map(|e| {
            let mut bytes = BytesMut::new();
            let mut frame = fanout::EventsFrame::begin(&mut bytes, e.count);
            frame.push_run(&mut bytes, &e.bytes, e.count);
            frame.finish(&mut bytes);
            let Ok(ServerFrame::Events(events)) = protocol::codec::decode_body(&bytes[4..]) else {
                panic!("entry does not decode");
            };
            assert_eq!(events[0].0, e.seq);
            assert_eq!(
                events.len() as u64,
                e.count,
                "a run holds its count of events"
            );
            let seqs: Vec<u64> = events.iter().map(|(seq, _)| *seq).collect();
            let expected: Vec<u64> = (e.seq..e.seq + e.count).collect();
            assert_eq!(seqs, expected, "a run's seqs follow one another");
            events
                .into_iter()
                .map(|(seq, event)| (seq, event.account_id))
                .collect::<Vec<_>>()
        })
        .collect();
    (drained.gap, events)
}

fn bus() -> Bus {
    Bus::new(7, usize::MAX, 1000, WhenFull::DropOldest)
}

fn accounts(ids: &[u64]) -> Filter {
    Filter::Accounts(ids.iter().copied().collect())
}

#[test]
fn events_reach_exactly_the_matching_subscribers() {
    let bus = bus();
    let (a, sub_a) = bus.register("a".into());
    let (b, sub_b) = bus.register("b".into());
    bus.subscribe(a, accounts(&[1]), None);
    bus.subscribe(b, Filter::All, None);
    let published = bus.publish("p", 0, batch(1, &[1, 2, 1])).unwrap();
    assert_eq!(published, Published::Accepted { first: 1, last: 3 });
    assert_eq!(drain(&sub_a).1, vec![(1, 1), (3, 1)]);
    assert_eq!(drain(&sub_b).1, vec![(1, 1), (2, 2), (3, 1)]);
}

#[test]
fn a_resent_batch_is_dropped_per_publisher() {
    let bus = bus();
    let (a, sub) = bus.register("a".into());
    bus.subscribe(a, Filter::All, None);
    bus.publish("p", 0, batch(5, &[1])).unwrap();
    assert_eq!(
        bus.publish("p", 0, batch(5, &[1])).unwrap(),
        Published::Duplicate
    );
    assert_eq!(
        bus.publish("p", 0, batch(4, &[1])).unwrap(),
        Published::Duplicate
    );
    bus.publish("q", 0, batch(5, &[1])).unwrap();
    bus.publish("", 0, batch(1, &[1])).unwrap();
    bus.publish("", 0, batch(1, &[1])).unwrap();
    assert_eq!(drain(&sub).1.len(), 4);
    assert_eq!(bus.stats().duplicate_batches, 2);
}

#[test]
fn batch_ids_are_compared_within_one_publisher_instance_only() {
    let bus = bus();
    let (a, sub) = bus.register("a".into());
    bus.subscribe(a, Filter::All, None);
    // Two processes under one name, taking turns: neither's batches pass for the other's.
    bus.publish("p", 1, batch(100, &[1])).unwrap();
    bus.publish("p", 2, batch(50, &[1])).unwrap();
    bus.publish("p", 1, batch(101, &[1])).unwrap();
    assert_eq!(
        bus.publish("p", 2, batch(50, &[1])).unwrap(),
        Published::Duplicate
    );
    bus.publish("p", 2, batch(51, &[1])).unwrap();
    assert_eq!(drain(&sub).1.len(), 4);
}

#[test]
fn resume_replays_only_what_matches_and_was_missed() {
    let bus = bus();
    bus.publish("p", 0, batch(1, &[1, 2, 1, 2, 1])).unwrap();
    let (key, sub) = bus.register("late".into());
    bus.subscribe(key, accounts(&[1]), Some(Position { epoch: 7, seq: 1 }));
    assert_eq!(drain(&sub), (None, vec![(3, 1), (5, 1)]));
}

#[test]
fn resume_from_another_epoch_starts_at_this_epochs_first_event() {
    let bus = bus();
    bus.publish("p", 0, batch(1, &[1, 1])).unwrap();
    let (key, sub) = bus.register("s".into());
    bus.subscribe(key, Filter::All, Some(Position { epoch: 3, seq: 900 }));
    assert_eq!(drain(&sub), (None, vec![(1, 1), (2, 1)]));
}

#[test]
fn resume_past_the_ring_reports_a_gap_first() {
    let bus = Bus::new(7, 300, 1000, WhenFull::DropOldest);
    for id in 1..=20 {
        bus.publish("p", 0, batch(id, &[1])).unwrap();
    }
    let (key, sub) = bus.register("s".into());
    bus.subscribe(key, Filter::All, Some(Position { epoch: 7, seq: 0 }));
    let (gap, events) = drain(&sub);
    let gap = gap.expect("a gap");
    assert_eq!(gap.from_seq, 1);
    assert_eq!(gap.to_seq + 1, events[0].0);
    assert_eq!(events.last().unwrap().0, 20);
}

#[test]
fn a_changed_filter_applies_to_the_next_publish() {
    let bus = bus();
    let (key, sub) = bus.register("s".into());
    bus.subscribe(key, accounts(&[1]), None);
    bus.publish("p", 0, batch(1, &[1, 2])).unwrap();
    bus.subscribe(key, accounts(&[2]), None);
    bus.publish("p", 0, batch(2, &[1, 2])).unwrap();
    assert_eq!(drain(&sub).1, vec![(1, 1), (4, 2)]);
}

#[test]
fn an_unregistered_slot_is_reused_without_inheriting_its_filter() {
    let bus = bus();
    let (key, _) = bus.register("a".into());
    bus.subscribe(key, Filter::All, None);
    bus.unregister(key);
    let (again, sub) = bus.register("b".into());
    assert_eq!(again, key);
    bus.publish("p", 0, batch(1, &[1])).unwrap();
    assert!(drain(&sub).1.is_empty());
}

#[test]
fn a_closed_bus_refuses_publishes() {
    let bus = bus();
    bus.publish("p", 0, batch(1, &[1])).unwrap();
    assert_eq!(bus.close(), 1);
    assert_eq!(bus.publish("p", 0, batch(2, &[1])), Err(Closed));
}

/// A batch of events for account 1 with these `(timestamp_us, origin)`.
fn stamped(batch_id: u64, events: &[(u64, &str)]) -> RawPublish {
    let events = events
        .iter()
        .map(|&(timestamp_us, origin)| Event {
            account_id: 1,
            timestamp_us,
            data: String::new(),
            origin: origin.into(),
            id: timestamp_us,
        })
        .collect();
    let body =
        Bytes::from(postcard::to_allocvec(&ClientFrame::Publish { batch_id, events }).unwrap());
    publish::parse(&body).unwrap()
}

fn origins(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|n| n.to_string()).collect()
}

#[test]
fn last_n_takes_the_newest_matching_events() {
    let bus = bus();
    bus.publish("p", 0, batch(1, &[1, 2, 1, 2, 1, 2])).unwrap();
    let (key, sub) = bus.register("s".into());
    bus.subscribe_with(key, accounts(&[1]), &BTreeSet::new(), Start::Last(2));
    assert_eq!(drain(&sub), (None, vec![(3, 1), (5, 1)]));
    bus.subscribe_with(key, accounts(&[2]), &BTreeSet::new(), Start::Last(10));
    assert_eq!(
        drain(&sub),
        (None, vec![(2, 2), (4, 2), (6, 2)]),
        "fewer than asked, but the whole epoch is held: no gap"
    );
}

#[test]
fn history_older_than_the_ring_is_a_gap_first() {
    let bus = Bus::new(7, 300, 1000, WhenFull::DropOldest);
    for id in 1..=20 {
        bus.publish("p", 0, batch(id, &[1])).unwrap();
    }
    let (key, sub) = bus.register("s".into());
    bus.subscribe_with(key, Filter::All, &BTreeSet::new(), Start::Last(100));
    let (gap, events) = drain(&sub);
    let gap = gap.expect("a gap: the ring holds fewer than 100");
    assert_eq!((gap.from_seq, gap.to_seq + 1), (1, events[0].0));
    bus.subscribe_with(key, Filter::All, &BTreeSet::new(), Start::Last(2));
    assert_eq!(drain(&sub), (None, vec![(19, 1), (20, 1)]), "held: no gap");
    bus.subscribe_with(key, Filter::All, &BTreeSet::new(), Start::Beginning);
    let (gap, events) = drain(&sub);
    assert_eq!(gap.map(|g| g.from_seq), Some(1));
    assert_eq!(events.last().map(|e| e.0), Some(20));
    bus.subscribe_with(key, Filter::All, &BTreeSet::new(), Start::Since(0));
    assert!(drain(&sub).0.is_some(), "since the dawn of time: a gap");
}

#[test]
fn since_starts_at_the_first_event_stamped_then() {
    let bus = bus();
    bus.publish(
        "p",
        0,
        stamped(1, &[(10, "a"), (20, "b"), (30, "a"), (40, "b")]),
    )
    .unwrap();
    let (key, sub) = bus.register("s".into());
    bus.subscribe_with(key, Filter::All, &BTreeSet::new(), Start::Since(20));
    assert_eq!(drain(&sub), (None, vec![(2, 1), (3, 1), (4, 1)]));
    bus.subscribe_with(key, Filter::All, &BTreeSet::new(), Start::Since(41));
    assert_eq!(drain(&sub), (None, vec![]));
    bus.subscribe_with(key, Filter::All, &origins(&["a"]), Start::Since(0));
    assert_eq!(
        drain(&sub),
        (None, vec![(1, 1), (3, 1)]),
        "the whole epoch is held"
    );
}

#[test]
fn origins_filter_the_history() {
    let bus = bus();
    bus.publish("p", 0, stamped(1, &[(10, "a"), (20, "b"), (30, "a")]))
        .unwrap();
    let (key, sub) = bus.register("s".into());
    bus.subscribe_with(key, Filter::All, &origins(&["b"]), Start::Beginning);
    assert_eq!(drain(&sub), (None, vec![(2, 1)]));
    bus.subscribe_with(key, Filter::All, &origins(&["a", "b"]), Start::Last(2));
    assert_eq!(drain(&sub), (None, vec![(2, 1), (3, 1)]));
    bus.subscribe_with(key, Filter::All, &origins(&["c"]), Start::Head);
    assert_eq!(drain(&sub), (None, vec![]));
}

#[test]
fn publishers_are_counted_with_their_duplicates() {
    let bus = bus();
    bus.publish("a", 1, batch(1, &[1, 2])).unwrap();
    bus.publish("a", 1, batch(1, &[1, 2])).unwrap();
    bus.publish("a", 1, batch(2, &[1])).unwrap();
    bus.publish("b", 1, batch(1, &[3])).unwrap();
    bus.publish("", 1, batch(1, &[3])).unwrap();
    let stats = bus.publisher_stats(|name| name == "b");
    let seen: Vec<_> = stats
        .iter()
        .map(|p| {
            (
                p.name.as_str(),
                p.connected,
                p.batches,
                p.events,
                p.duplicate_batches,
            )
        })
        .collect();
    assert_eq!(seen, [("a", false, 2, 3, 1), ("b", true, 1, 1, 0)]);
}

fn join(bus: &Bus, name: &str, group: &str) -> (SubKey, Arc<Subscriber>) {
    let (key, sub) = bus.register(name.into());
    bus.join(key, group.into(), Filter::All).unwrap();
    (key, sub)
}

/// What a member's writer would do: take the queue and note it as sent.
fn write(sub: &Subscriber) -> (Option<Gap>, Vec<(u64, u64)>) {
    let drained = drain(sub);
    if let Some(member) = sub.member.get() {
        member.record(drained.1.iter().copied());
    }
    drained
}

#[test]
fn a_group_shares_events_by_account_and_others_get_everything() {
    let bus = bus();
    let (_, m1) = join(&bus, "m1", "g");
    let (_, m2) = join(&bus, "m2", "g");
    let (_, other) = join(&bus, "o", "h");
    let (plain, watcher) = bus.register("w".into());
    bus.subscribe(plain, Filter::All, None);
    let accounts: Vec<u64> = (0..100).chain(0..100).collect();
    bus.publish("p", 0, batch(1, &accounts)).unwrap();
    let (got1, got2) = (drain(&m1).1, drain(&m2).1);
    assert_eq!(got1.len() + got2.len(), 200, "each event to one member");
    assert!(!got1.is_empty() && !got2.is_empty(), "both members work");
    let of = |got: &[(u64, u64)]| got.iter().map(|e| e.1).collect::<HashSet<u64>>();
    assert!(
        of(&got1).is_disjoint(&of(&got2)),
        "an account stays with one member"
    );
    assert_eq!(drain(&other).1.len(), 200, "another group gets everything");
    assert_eq!(
        drain(&watcher).1.len(),
        200,
        "a plain subscriber gets everything"
    );
}

#[test]
fn a_leaving_member_hands_over_its_queue_and_reports_what_it_did_not_ack() {
    let bus = bus();
    let (k1, m1) = join(&bus, "m1", "g");
    let (_, m2) = join(&bus, "m2", "g");
    let accounts: Vec<u64> = (0..50).collect();
    bus.publish("p", 0, batch(1, &accounts)).unwrap();
    let sent = write(&m1).1;
    let kept = write(&m2).1.len();
    assert!(!sent.is_empty());
    // m1 acknowledges its first event only, then gets more queued, then leaves.
    bus.ack(&m1, sent[0].0);
    bus.publish("p", 0, batch(2, &accounts)).unwrap();
    let m2_own = write(&m2).1.len();
    assert_eq!(m2_own, kept);
    bus.unregister(k1);
    let (gap, handed) = drain(&m2);
    let gap = gap.expect("what m1 was sent and did not ack is a gap");
    assert_eq!(gap.missed, sent.len() as u64 - 1);
    assert_eq!(
        (gap.from_seq, gap.to_seq),
        (sent[1].0, sent[sent.len() - 1].0)
    );
    assert_eq!(handed.len(), sent.len(), "m1's queued events went to m2");
    // From now on m2 owns every account.
    bus.publish("p", 0, batch(3, &accounts)).unwrap();
    assert_eq!(drain(&m2).1.len(), 50);
}

#[test]
fn the_next_member_of_an_emptied_group_gets_what_nobody_received() {
    let bus = bus();
    let (k1, m1) = join(&bus, "m1", "g");
    bus.publish("p", 0, batch(1, &[1, 2])).unwrap();
    let sent = write(&m1).1;
    bus.ack(&m1, sent[1].0);
    // Seq 3 is queued for m1 when it leaves: nobody will have it, which is said.
    bus.publish("p", 0, batch(2, &[3])).unwrap();
    bus.unregister(k1);
    bus.publish("p", 0, batch(3, &[4])).unwrap();
    let (_, m2) = join(&bus, "m2", "g");
    let (gap, events) = drain(&m2);
    assert_eq!(gap, Some(Gap::one(3)), "m1's queued event, never written");
    assert_eq!(events, vec![(4, 4)], "published while the group was empty");
}

#[test]
fn what_no_remaining_member_takes_is_a_gap_for_all_of_them() {
    let bus = bus();
    let (k1, m1) = join(&bus, "m1", "g");
    let (k2, m2) = bus.register("m2".into());
    bus.join(k2, "g".into(), accounts(&[1])).unwrap();
    bus.publish("p", 0, batch(1, &[7, 8])).unwrap();
    assert_eq!(
        write(&m1).1.len(),
        2,
        "m1 owns 7 and 8: m2 does not take them"
    );
    bus.unregister(k1);
    let (gap, events) = drain(&m2);
    assert!(events.is_empty());
    assert_eq!(
        gap,
        Some(Gap {
            from_seq: 1,
            to_seq: 2,
            missed: 2
        })
    );
}

#[test]
fn a_member_joining_an_emptied_group_hears_of_accounts_it_does_not_take() {
    let bus = bus();
    let (k1, _) = join(&bus, "m1", "g");
    bus.unregister(k1);
    bus.publish("p", 0, batch(1, &[1, 2])).unwrap();
    let (k2, m2) = bus.register("m2".into());
    bus.join(k2, "g".into(), accounts(&[1])).unwrap();
    let (gap, events) = drain(&m2);
    assert_eq!(events, vec![(1, 1)]);
    assert_eq!(gap, Some(Gap::one(2)), "account 2's event went to nobody");
}

#[test]
fn a_written_gap_not_acknowledged_is_handed_over_too() {
    let bus = bus();
    let (k1, m1) = join(&bus, "m1", "g");
    let (_, m2) = join(&bus, "m2", "g");
    let lost = Gap {
        from_seq: 40,
        to_seq: 41,
        missed: 2,
    };
    m1.member.get().unwrap().record_gap(lost);
    bus.unregister(k1);
    assert_eq!(drain(&m2).0, Some(lost));
}

#[test]
fn join_after_subscribe_is_refused() {
    let bus = bus();
    let (key, _) = bus.register("s".into());
    bus.subscribe(key, Filter::All, None);
    assert_eq!(
        bus.join(key, "g".into(), Filter::All),
        Err(JoinError::AlreadySubscribed)
    );
}

/// Whether `sub`'s writer has a wake-up waiting, without waiting for one.
fn is_woken(sub: &Subscriber) -> bool {
    use std::future::Future as _;
    let notified = std::pin::pin!(sub.notify.notified());
    let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
    notified.poll(&mut cx).is_ready()
}

#[test]
fn deferred_wakes_reach_each_writer_once_the_list_is_woken_or_dropped() {
    let bus = bus();
    let (a, sub_a) = bus.register("a".into());
    let (b, sub_b) = bus.register("b".into());
    bus.subscribe(a, accounts(&[1]), None);
    bus.subscribe(b, accounts(&[2]), None);
    // Whatever subscribing woke them for is taken first.
    let _ = (is_woken(&sub_a), is_woken(&sub_b));
    let mut wakes = Wakes::default();
    bus.publish_deferring("p", 0, batch(1, &[1]), &mut wakes)
        .unwrap();
    wakes.count_batch();
    bus.publish_deferring("p", 0, batch(2, &[1, 2]), &mut wakes)
        .unwrap();
    wakes.count_batch();
    assert!(
        !is_woken(&sub_a) && !is_woken(&sub_b),
        "woken before the list"
    );
    wakes.wake();
    assert!(is_woken(&sub_a) && is_woken(&sub_b));
    // Both batches are in a's queue for one drain.
    assert_eq!(drain(&sub_a).1, vec![(1, 1), (2, 1)]);
    assert_eq!(drain(&sub_b).1, vec![(3, 2)]);

    // A list dropped with wake-ups in it (its connection ended) still gives them.
    let mut wakes = Wakes::default();
    bus.publish_deferring("p", 0, batch(3, &[2]), &mut wakes)
        .unwrap();
    assert!(!is_woken(&sub_b));
    drop(wakes);
    assert!(is_woken(&sub_b));
}

#[test]
fn a_wake_list_is_full_after_its_most_batches() {
    let mut wakes = Wakes::default();
    for _ in 0..Wakes::MAX_BATCHES {
        assert!(!wakes.full());
        wakes.count_batch();
    }
    assert!(wakes.full());
    wakes.wake();
    assert!(!wakes.full(), "waking starts a new round");
}
