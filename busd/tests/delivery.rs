//! Delivery through the real busd: filters, order, filter changes, resume, dedup, shutdown.

use std::time::Duration;

use futures::SinkExt;
use protocol::{ClientFrame, Filter, Position, Role, ServerFrame, Start};
use testkit::bus::*;

#[tokio::test]
async fn subscribers_get_exactly_their_events_in_order() {
    let busd = Busd::start(&[]);
    let (mut all, _) = subscriber(busd.addr, Filter::All, None).await;
    let (mut one_five, _) = subscriber(busd.addr, accounts(&[1, 5]), None).await;
    let (mut seven, _) = subscriber(busd.addr, accounts(&[7]), None).await;
    let (mut publisher, _, _) = join(busd.addr, Role::Publisher, "p").await;
    let mut sent = Vec::new();
    for batch in 0..20u64 {
        let events: Vec<_> = (0..50u64)
            .map(|i| event((batch * 50 + i) % 6, &format!("e{}", batch * 50 + i)))
            .collect();
        sent.extend(events.clone());
        publish(&mut publisher, batch + 1, events).await;
    }
    let (got, gaps) = collect(&mut all, sent.len()).await;
    assert!(gaps.is_empty());
    assert_eq!(got.iter().map(|(_, e)| e.clone()).collect::<Vec<_>>(), sent);
    assert!(
        got.windows(2).all(|w| w[1].0 == w[0].0 + 1),
        "seqs are consecutive"
    );

    let wanted: Vec<_> = got
        .iter()
        .filter(|(_, e)| [1, 5].contains(&e.account_id))
        .cloned()
        .collect();
    let (filtered, _) = collect(&mut one_five, wanted.len()).await;
    assert_eq!(filtered, wanted, "same seqs and events, in order");
    assert_quiet(&mut one_five, Duration::from_millis(300)).await;

    settle(&mut seven).await;
    assert_quiet(&mut seven, Duration::from_millis(300)).await;
}

#[tokio::test]
async fn a_changed_filter_takes_effect_without_reconnecting() {
    let busd = Busd::start(&[]);
    let (mut sub, _) = subscriber(busd.addr, accounts(&[1]), None).await;
    let (mut publisher, _, _) = join(busd.addr, Role::Publisher, "p").await;
    publish(&mut publisher, 1, vec![event(1, "a"), event(2, "b")]).await;
    let (got, _) = collect(&mut sub, 1).await;
    assert_eq!(got[0].1.data, "a");

    sub.send(ClientFrame::Subscribe {
        filter: accounts(&[2]),
        resume_after: None,
    })
    .await
    .unwrap();
    settle(&mut sub).await;
    publish(&mut publisher, 2, vec![event(1, "c"), event(2, "d")]).await;
    let (got, _) = collect(&mut sub, 1).await;
    assert_eq!(got[0].1.data, "d");
    assert_quiet(&mut sub, Duration::from_millis(300)).await;
}

#[tokio::test]
async fn resume_replays_exactly_the_missed_events() {
    let busd = Busd::start(&[]);
    let (mut publisher, _, _) = join(busd.addr, Role::Publisher, "p").await;
    let (mut sub, epoch) = subscriber(busd.addr, accounts(&[3]), None).await;
    publish(
        &mut publisher,
        1,
        (0..10).map(|i| event(i % 4, &format!("{i}"))).collect(),
    )
    .await;
    let (seen, _) = collect(&mut sub, 2).await;
    let last_seen = seen.last().unwrap().0;
    drop(sub);

    publish(
        &mut publisher,
        2,
        (10..20).map(|i| event(i % 4, &format!("{i}"))).collect(),
    )
    .await;
    let resume = Position {
        epoch,
        seq: last_seen,
    };
    let (mut sub, _) = subscriber(busd.addr, accounts(&[3]), Some(resume)).await;
    let (replayed, gaps) = collect(&mut sub, 3).await;
    assert!(gaps.is_empty());
    let data: Vec<_> = replayed.iter().map(|(_, e)| e.data.as_str()).collect();
    assert_eq!(data, ["11", "15", "19"]);
    assert_quiet(&mut sub, Duration::from_millis(300)).await;

    publish(&mut publisher, 3, vec![event(3, "live")]).await;
    let (live, _) = collect(&mut sub, 1).await;
    assert_eq!(
        live[0].1.data, "live",
        "the replay hands over to live events"
    );
}

#[tokio::test]
async fn resume_past_the_ring_gets_a_gap_then_what_is_left() {
    let busd = Busd::start(&["--replay-bytes", "20KiB"]);
    let (mut publisher, _, _) = join(busd.addr, Role::Publisher, "p").await;
    for batch in 0..10u64 {
        let events = (0..100).map(|_| event(1, &"x".repeat(64))).collect();
        publish(&mut publisher, batch + 1, events).await;
    }
    let (_, epoch, head) = join(busd.addr, Role::Subscriber, "peek").await;
    assert_eq!(head, 1000);
    let (mut sub, _) = subscriber(busd.addr, Filter::All, Some(Position { epoch, seq: 10 })).await;
    let Some(ServerFrame::Gap {
        from_seq,
        to_seq,
        missed,
    }) = next_or_closed(&mut sub).await
    else {
        panic!("expected a Gap first");
    };
    assert_eq!(from_seq, 11);
    assert_eq!(missed, to_seq - from_seq + 1);
    let (rest, _) = collect(&mut sub, (1000 - to_seq) as usize).await;
    assert_eq!(rest.first().unwrap().0, to_seq + 1);
    assert_eq!(rest.last().unwrap().0, 1000);
}

#[tokio::test]
async fn resume_from_an_older_epoch_starts_at_the_new_epochs_first_event() {
    let first = Busd::start(&[]);
    let (_, old_epoch, _) = join(first.addr, Role::Subscriber, "s").await;
    first.terminate();

    let busd = Busd::start(&[]);
    let (mut publisher, new_epoch, _) = join(busd.addr, Role::Publisher, "p").await;
    assert!(new_epoch > old_epoch, "epochs grow across restarts");
    publish(&mut publisher, 1, vec![event(1, "a"), event(1, "b")]).await;
    let resume = Position {
        epoch: old_epoch,
        seq: 500,
    };
    let (mut sub, _) = subscriber(busd.addr, Filter::All, Some(resume)).await;
    let (got, gaps) = collect(&mut sub, 2).await;
    assert!(gaps.is_empty());
    assert_eq!(got.iter().map(|(seq, _)| *seq).collect::<Vec<_>>(), [1, 2]);
}

#[tokio::test]
async fn a_resent_batch_is_not_delivered_twice() {
    let busd = Busd::start(&[]);
    let (mut sub, _) = subscriber(busd.addr, Filter::All, None).await;
    let (mut publisher, _, _) = join(busd.addr, Role::Publisher, "ingest-1").await;
    publish(&mut publisher, 1, vec![event(1, "one")]).await;
    // The ack was "lost": the publisher reconnects and resends batch 1 before batch 2.
    publisher
        .send(ClientFrame::Publish {
            batch_id: 2,
            events: vec![event(1, "two")],
        })
        .await
        .unwrap();
    drop(publisher);
    let (mut publisher, _, _) = join(busd.addr, Role::Publisher, "ingest-1").await;
    publish(&mut publisher, 1, vec![event(1, "one")]).await;
    publish(&mut publisher, 2, vec![event(1, "two")]).await;
    publish(&mut publisher, 3, vec![event(1, "three")]).await;
    let (got, _) = collect(&mut sub, 3).await;
    let data: Vec<_> = got.iter().map(|(_, e)| e.data.as_str()).collect();
    assert_eq!(data, ["one", "two", "three"]);
    assert_quiet(&mut sub, Duration::from_millis(300)).await;
    assert!(stats(&mut sub).await.duplicate_batches >= 1);
}

#[tokio::test]
async fn sigterm_flushes_subscribers_and_says_goodbye_with_the_last_seq() {
    let busd = Busd::start(&[]);
    let (mut sub, epoch) = subscriber(busd.addr, Filter::All, None).await;
    let (mut publisher, _, _) = join(busd.addr, Role::Publisher, "p").await;
    for batch in 0..50u64 {
        publish(
            &mut publisher,
            batch + 1,
            (0..100).map(|i| event(i, "x")).collect(),
        )
        .await;
    }
    busd.signal("TERM");
    let mut seen = 0;
    let goodbye = loop {
        match next_or_closed(&mut sub).await {
            Some(ServerFrame::Events(events)) => seen += events.len() as u64,
            Some(ServerFrame::Goodbye { epoch: e, last_seq }) => break (e, last_seq),
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(goodbye, (epoch, 5000));
    assert_eq!(seen, 5000);
    match next_or_closed(&mut publisher).await {
        Some(ServerFrame::Goodbye { last_seq, .. }) => assert_eq!(last_seq, 5000),
        other => panic!("publisher expected Goodbye, got {other:?}"),
    }
    busd.terminate();
}

#[tokio::test]
async fn an_idle_subscriber_gets_heartbeats() {
    let busd = Busd::start(&["--heartbeat", "200ms"]);
    let (mut sub, _) = subscriber(busd.addr, Filter::All, None).await;
    let start = tokio::time::Instant::now();
    match next(&mut sub).await {
        ServerFrame::Heartbeat { head_seq } => assert_eq!(head_seq, 0),
        other => panic!("expected a heartbeat, got {other:?}"),
    }
    assert!(start.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn stats_name_subscribers_and_counts() {
    let busd = Busd::start(&[]);
    let (mut sub, _) = subscriber(busd.addr, accounts(&[1, 2, 3]), None).await;
    let (mut publisher, _, _) = join(busd.addr, Role::Publisher, "p").await;
    publish(&mut publisher, 1, vec![event(1, "a"), event(9, "b")]).await;
    collect(&mut sub, 1).await;
    let stats = stats(&mut publisher).await;
    assert_eq!(stats.published, 2);
    assert_eq!(stats.head_seq, 2);
    assert_eq!(stats.connections, 2);
    assert_eq!(stats.publishers, 1);
    assert_eq!(stats.subscribers.len(), 1);
    assert_eq!(stats.subscribers[0].accounts, Some(3));
    assert_eq!(stats.subscribers[0].delivered, 1);
}

#[tokio::test]
async fn welcome_is_sent_at_once_so_a_client_can_subscribe() {
    // With no heartbeat to flush it, Welcome must still go out as soon as Hello is read.
    let busd = Busd::start(&["--heartbeat", "1h"]);
    let (mut sub, _) = subscriber(busd.addr, accounts(&[5]), None).await;
    let (mut publisher, _, _) = join(busd.addr, Role::Publisher, "p").await;
    publish(&mut publisher, 1, vec![event(5, "first")]).await;
    let (got, _) = collect(&mut sub, 1).await;
    assert_eq!(got[0].1.data, "first");
}

/// Protocol 3 added `SubscribeWith` and changed nothing else: a client that says version 2
/// is served exactly as before, and one that says 3 can ask for history and origins.
#[tokio::test]
async fn version_2_clients_are_served_and_version_3_asks_for_history() {
    let busd = Busd::start(&[]);
    let (mut publisher, _, _) = join(busd.addr, Role::Publisher, "p").await;
    let mut events: Vec<_> = (0..6).map(|i| event(1, &format!("e{i}"))).collect();
    for (i, e) in events.iter_mut().enumerate() {
        e.origin = if i % 2 == 0 { "even" } else { "odd" }.into();
    }
    publish(&mut publisher, 1, events.clone()).await;

    let mut old = connect(busd.addr).await;
    let mut hello = hello(Role::Subscriber, "old", None);
    if let ClientFrame::Hello { version, .. } = &mut hello {
        *version = 2;
    }
    old.send(hello).await.unwrap();
    let ServerFrame::Welcome { epoch, .. } = next(&mut old).await else {
        panic!("a version 2 client is welcomed");
    };
    let resume_after = Some(Position { epoch, seq: 4 });
    old.send(ClientFrame::Subscribe {
        filter: Filter::All,
        resume_after,
    })
    .await
    .unwrap();
    let (got, _) = collect(&mut old, 2).await;
    assert_eq!(got.iter().map(|(s, _)| *s).collect::<Vec<_>>(), [5, 6]);

    let mut new = connect(busd.addr).await;
    new.send(testkit::bus::hello(Role::Subscriber, "new", None))
        .await
        .unwrap();
    assert!(matches!(next(&mut new).await, ServerFrame::Welcome { .. }));
    new.send(ClientFrame::SubscribeWith {
        filter: Filter::All,
        origins: ["odd".to_owned()].into(),
        start: Start::Last(2),
    })
    .await
    .unwrap();
    let (got, gaps) = collect(&mut new, 2).await;
    assert!(gaps.is_empty());
    let data: Vec<&str> = got.iter().map(|(_, e)| e.data.as_str()).collect();
    assert_eq!(data, ["e3", "e5"], "the last two of origin odd");
    publish(&mut publisher, 2, events).await;
    let (live, _) = collect(&mut new, 3).await;
    let data: Vec<&str> = live.iter().map(|(_, e)| e.data.as_str()).collect();
    assert_eq!(data, ["e1", "e3", "e5"], "live events of origin odd only");
    assert_quiet(&mut new, Duration::from_millis(300)).await;
}
