use super::*;
use crate::chaos::ident::{identify, long_data};

fn accepted(id: u64, account: u32, answered: f64) -> Request {
    request(Key::id(id), account, answered, Outcome::Accepted)
}

fn request(key: Key, account: u32, answered: f64, outcome: Outcome) -> Request {
    Request {
        account,
        key,
        len: key.short_data().map_or(20, |data| data.len() as u16),
        sent: At::secs(answered - 0.001),
        answered: At::secs(answered),
        outcome,
    }
}

fn short(data: &str) -> Key {
    Key::short(data).expect("short data")
}

fn delivery(account: u32, data: &str) -> Delivery {
    Delivery::new(
        account.into(),
        identify(data).expect("data this test sends"),
    )
}

fn of(r: &Request) -> Delivery {
    match (r.key.as_id(), r.key.short_data()) {
        (Some(id), _) => delivery(r.account, &long_data(id, r.len as usize)),
        (None, data) => delivery(r.account, &data.expect("short data")),
    }
}

fn watcher(deliveries: Vec<Delivery>) -> Incarnation {
    Incarnation {
        name: "w".into(),
        accounts: Accounts::All,
        expect: Expect::Everything,
        deliveries,
        gaps: Vec::new(),
        nothing_missed: Vec::new(),
        bad_lines: Vec::new(),
    }
}

#[test]
fn everything_once_passes() {
    let requests = vec![
        accepted(1, 5, 1.0),
        accepted(2, 6, 1.5),
        request(short("ab"), 5, 2.0, Outcome::Accepted),
    ];
    let ledger = Ledger::new(&requests, Vec::new());
    let v = ledger.check(&watcher(requests.iter().map(of).collect()));
    assert!(v.passed(), "{v:?}");
    assert_eq!((v.delivered, v.expected), (3, 3));
}

#[test]
fn a_second_copy_is_a_duplicate_even_with_a_gap() {
    let requests = vec![accepted(1, 5, 1.0)];
    let ledger = Ledger::new(&requests, Vec::new());
    let mut w = watcher(vec![of(&requests[0]), of(&requests[0])]);
    w.gaps.push(At::secs(1.5));
    let v = ledger.check(&w);
    assert_eq!(v.duplicates, 1);
    assert!(!v.passed());
    assert!(v.problems[0].contains("more than once"), "{:?}", v.problems);
}

#[test]
fn a_missing_event_needs_a_gap_after_it_was_sent_and_within_the_horizon() {
    let requests = vec![accepted(1, 5, 10.0)];
    let ledger = Ledger::new(&requests, Vec::new());
    let horizon = HORIZON.as_secs_f64();
    for (gap, covered) in [
        (None, false),
        (Some(9.0), false),
        (Some(9.9995), true),
        (Some(10.0), true),
        (Some(10.0 + horizon - 0.1), true),
        (Some(10.0 + horizon + 0.1), false),
    ] {
        let mut w = watcher(Vec::new());
        w.gaps.extend(gap.map(At::secs));
        let v = ledger.check(&w);
        assert_eq!(v.covered_missing, usize::from(covered), "gap at {gap:?}");
        assert_eq!(v.uncovered.len(), usize::from(!covered), "gap at {gap:?}");
        assert_eq!(v.passed(), covered);
    }
}

#[test]
fn nothing_missed_followed_by_a_loss_is_a_lie() {
    let requests = vec![accepted(1, 5, 10.0), accepted(2, 5, 11.0)];
    let ledger = Ledger::new(&requests, Vec::new());
    let mut w = watcher(vec![of(&requests[1])]);
    w.nothing_missed.push(At::secs(10.5));
    let v = ledger.check(&w);
    assert_eq!((v.uncovered.len(), v.reached_busd, v.lies.len()), (1, 1, 1));
    assert_eq!(v.lies[0].key, Key::id(1));
}

#[test]
fn a_loss_that_may_never_have_left_ingest_is_no_lie() {
    let requests = vec![accepted(1, 5, 10.0), accepted(2, 5, 11.0)];
    let mut w = watcher(Vec::new());
    w.nothing_missed.push(At::secs(10.5));
    let v = Ledger::new(&requests, Vec::new()).check(&w);
    assert_eq!((v.uncovered.len(), v.reached_busd, v.lies.len()), (2, 0, 0));
    assert!(!v.passed(), "still missing");

    // A later event from another ingest process proves nothing about the first one's.
    let restarted = Ledger::new(&requests, vec![(At::secs(10.2), At::secs(10.4))]);
    let mut w = watcher(vec![of(&requests[1])]);
    w.nothing_missed.push(At::secs(10.5));
    let v = restarted.check(&w);
    assert_eq!((v.uncovered.len(), v.reached_busd, v.lies.len()), (1, 0, 0));
}

#[test]
fn refused_and_unknown_requests_are_not_owed() {
    let requests = vec![
        request(Key::id(1), 5, 1.0, Outcome::Refused),
        request(Key::id(2), 5, 1.0, Outcome::Unknown),
        request(Key::id(3), 5, 1.0, Outcome::Unknown),
    ];
    let ledger = Ledger::new(&requests, Vec::new());
    let v = ledger.check(&watcher(vec![of(&requests[1])]));
    assert!(v.passed(), "{v:?}");
    assert_eq!(v.expected, 0);
    let twice = ledger.check(&watcher(vec![of(&requests[1]), of(&requests[1])]));
    assert_eq!(
        twice.duplicates, 1,
        "an unknown outcome must not arrive twice"
    );
    let refused = ledger.check(&watcher(vec![of(&requests[0])]));
    assert!(!refused.passed());
    assert!(refused.problems[0].contains("refused"), "{refused:?}");
}

#[test]
fn strays_and_damage_are_failures() {
    let requests = vec![accepted(1, 5, 1.0)];
    let ledger = Ledger::new(&requests, Vec::new());
    let mut damaged = of(&requests[0]);
    damaged.intact = false;
    let mut other_account = of(&requests[0]);
    other_account.account = 6;
    let truncated = Delivery {
        len: 15,
        ..of(&requests[0])
    };
    for (d, kind) in [
        (damaged, "differs"),
        (other_account, "another account"),
        (truncated, "differs"),
        (delivery(5, &long_data(99, 30)), "no request sent"),
    ] {
        let v = ledger.check(&watcher(vec![d]));
        assert!(
            v.problems.iter().any(|p| p.contains(kind)),
            "{kind}: {:?}",
            v.problems
        );
    }
    let mut w = watcher(vec![of(&requests[0])]);
    w.accounts = Accounts::Only([6].into());
    let v = ledger.check(&w);
    assert!(v.problems[0].contains("did not ask for"), "{v:?}");
    assert_eq!(v.expected, 0);
    w.bad_lines.push("garbage".into());
    assert!(
        ledger
            .check(&w)
            .problems
            .iter()
            .any(|p| p.contains("garbage"))
    );
}

#[test]
fn short_data_is_a_multiset() {
    let key = short("xy");
    let requests = vec![
        request(key, 5, 1.0, Outcome::Accepted),
        request(key, 5, 2.0, Outcome::Accepted),
        request(key, 5, 3.0, Outcome::Unknown),
        request(key, 5, 4.0, Outcome::Refused),
        request(key, 6, 4.0, Outcome::Accepted),
    ];
    let ledger = Ledger::new(&requests, Vec::new());
    let d5 = delivery(5, "xy");
    let d6 = delivery(6, "xy");
    let ok = ledger.check(&watcher(vec![d5, d5, d5, d6]));
    assert!(ok.passed(), "the unknown one may arrive too: {ok:?}");
    let too_many = ledger.check(&watcher(vec![d5, d5, d5, d5, d6]));
    assert_eq!(too_many.duplicates, 1);
    let one_short = ledger.check(&watcher(vec![d5, d6]));
    assert_eq!(one_short.uncovered.len(), 1);
    let mut covered = watcher(vec![d5, d6]);
    covered.gaps.push(At::secs(2.5));
    let v = ledger.check(&covered);
    assert!(v.passed(), "{v:?}");
    assert_eq!(v.covered_missing, 1);
}

#[test]
fn a_restarted_watcher_owes_only_what_came_while_it_was_live() {
    let h = HORIZON.as_secs_f64();
    let requests = vec![
        accepted(1, 5, 1.0),
        accepted(2, 5, 5.0),
        accepted(3, 5, 100.0 - h - 1.0),
        accepted(4, 5, 100.0 - h + 1.0),
        accepted(5, 5, 200.0),
    ];
    let ledger = Ledger::new(&requests, Vec::new());
    let mut w = watcher(Vec::new());
    w.expect = Expect::Between {
        live: At::secs(2.0),
        stopped: Some(At::secs(100.0)),
    };
    let v = ledger.check(&w);
    assert_eq!((v.expected, v.uncovered.len()), (2, 2));
    let keys: Vec<Key> = v.uncovered.iter().map(|m| m.key).collect();
    assert_eq!(keys, [Key::id(2), Key::id(3)]);
    w.expect = Expect::Between {
        live: At::secs(2.0),
        stopped: None,
    };
    assert_eq!(ledger.check(&w).expected, 4);
    w.expect = Expect::Nothing;
    assert_eq!(ledger.check(&w).expected, 0);
}

#[test]
fn a_short_loss_is_a_lie_only_when_no_other_instance_can_be_the_missing_one() {
    let key = short("q");
    let requests = vec![
        request(key, 5, 1.0, Outcome::Accepted),
        accepted(3, 5, 1.6),
        request(key, 5, 50.0, Outcome::Accepted),
    ];
    let ledger = Ledger::new(&requests, Vec::new());
    let mut w = watcher(vec![delivery(5, "q"), of(&requests[1])]);
    w.nothing_missed.push(At::secs(2.0));
    let v = ledger.check(&w);
    assert_eq!(
        (v.uncovered.len(), v.lies.len()),
        (1, 0),
        "the late one may be the lost one"
    );
    assert_eq!(v.uncovered[0].answered, At::secs(50.0));
    let mut both = watcher(vec![of(&requests[1])]);
    both.nothing_missed.push(At::secs(2.0));
    let v = ledger.check(&both);
    assert_eq!((v.uncovered.len(), v.lies.len()), (2, 1));
    assert_eq!(v.lies[0].answered, At::secs(1.0));
}

#[test]
fn an_event_answered_before_another_was_sent_is_delivered_first() {
    // 1 answered at 1.0, 2 sent at 1.999 (after), 3 sent at 0.999 (before 1's answer).
    let requests = [
        accepted(1, 5, 1.0),
        accepted(2, 5, 2.0),
        accepted(3, 5, 1.0),
    ];
    let ledger = Ledger::new(&requests, Vec::new());
    let in_order = [of(&requests[0]), of(&requests[1])];
    assert_eq!(out_of_order(&ledger, &in_order), (2, vec![]));
    // 3 overtaking 1 is fine: neither was answered before the other was sent.
    let concurrent = [of(&requests[2]), of(&requests[0]), of(&requests[1])];
    assert_eq!(out_of_order(&ledger, &concurrent).1, vec![]);
    let swapped = [of(&requests[1]), of(&requests[0])];
    assert_eq!(
        out_of_order(&ledger, &swapped),
        (2, vec![(5, Key::id(1), Key::id(2))])
    );
}

#[test]
fn order_is_per_account_and_only_a_202_orders() {
    let requests = [
        accepted(1, 5, 1.0),
        accepted(2, 6, 2.0),
        request(Key::id(3), 5, 1.0, Outcome::Unknown),
        accepted(4, 5, 3.0),
    ];
    let ledger = Ledger::new(&requests, Vec::new());
    // 2 is another account's; 3 was never answered, so 4 (sent later) may come before it.
    let delivered = [
        of(&requests[1]),
        of(&requests[0]),
        of(&requests[3]),
        of(&requests[2]),
    ];
    assert_eq!(out_of_order(&ledger, &delivered), (3, vec![]));
}
