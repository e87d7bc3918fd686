//! Consumer groups through the real binaries: `busctl watch --group` members on busd and on
//! JetStream share 10,000 events over 100 accounts, each event once across the group (at
//! least once on JetStream after a member is killed, duplicates counted), an account's
//! events with one member and in order on busd, and the others taking over from a member
//! killed under load.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use serde_json::Value;
use testkit::Proc;
use testkit::bus::{Busd, publish_to};
use testkit::nats::Cluster;

#[macro_use]
mod support;
use support::{WAIT, assert_a_frozen_server_is_noticed, busctl_command, json, watch};

const EVENTS: usize = 10_000;
const ACCOUNTS: u64 = 100;
const MEMBERS: usize = 3;

/// Event `i`: account `i % 100`, data [`data`]`(i)`.
fn events(range: std::ops::Range<usize>) -> Vec<(u64, String)> {
    range.map(|i| (i as u64 % ACCOUNTS, data(i))).collect()
}

/// Events with data `g<i>` only: many of them fit in socket buffers, so a stopped member
/// reaches its unacknowledged limit and its queue overflows within a second, before its
/// own silence check (5 s) would replace the connection first.
fn short_events(range: std::ops::Range<usize>) -> Vec<(u64, String)> {
    range
        .map(|i| (i as u64 % ACCOUNTS, format!("g{i}")))
        .collect()
}

/// Event `i`'s data: `g<i>`, padded with dots to a length that walks from a few bytes up to
/// ingest's 4 KiB limit, so the groups see realistic sizes.
fn data(i: usize) -> String {
    let mut data = format!("g{i}");
    let len = 1 + (i * 131) % 4096;
    if len > data.len() {
        data.extend(std::iter::repeat_n('.', len - data.len()));
    }
    data
}

/// What one watcher printed: events as (seq, account, index) in order, and gap lines.
#[derive(Default)]
struct Printed {
    events: Vec<(u64, u64, usize)>,
    gaps: Vec<(u64, u64)>,
}

impl Printed {
    fn take(&mut self, line: &str) {
        let v: Value = json(line);
        if let Some(gap) = v.get("gap") {
            let field = |k: &str| gap[k].as_u64().unwrap_or(u64::MAX);
            self.gaps.push((field("from_seq"), field("to_seq")));
            return;
        }
        let data = v["data"].as_str().unwrap_or_default();
        let digits = data.strip_prefix('g').map(|d| d.trim_end_matches('.'));
        let index = digits.and_then(|i| i.parse().ok());
        let index = index.unwrap_or_else(|| panic!("not an event of this test: {line}"));
        let seq = v["seq"]
            .as_u64()
            .unwrap_or_else(|| panic!("no seq: {line}"));
        let account = v["account_id"].as_u64().unwrap_or(u64::MAX);
        self.events.push((seq, account, index));
    }
}

/// Reads every member's stdout until `want` events arrived in all, or nothing came for
/// `quiet`.
fn collect(members: &[&Proc], printed: &mut [Printed], want: usize, quiet: Duration) {
    let mut last = Instant::now();
    while printed.iter().map(|p| p.events.len()).sum::<usize>() < want {
        let mut any = false;
        for (proc, out) in members.iter().zip(printed.iter_mut()) {
            while let Ok(line) = proc.stdout.recv_timeout(Duration::from_millis(5)) {
                out.take(&line);
                any = true;
            }
        }
        if any {
            last = Instant::now();
        } else if last.elapsed() > quiet {
            return;
        }
    }
}

/// How many times each event index was printed across `printed`.
fn tally(printed: &[Printed]) -> HashMap<usize, usize> {
    let mut times = HashMap::new();
    for p in printed {
        for &(_, _, index) in &p.events {
            *times.entry(index).or_default() += 1;
        }
    }
    times
}

/// Across the members' output, no event printed twice, and every event `plain` saw (all
/// `total`) either printed or inside a gap line of `reporters`. Returns the print counts and
/// the gaps.
fn assert_once_or_reported(
    plain: &Proc,
    printed: &[Printed],
    reporters: &[Printed],
    total: usize,
) -> (HashMap<usize, usize>, Vec<(u64, u64)>) {
    let mut all = [Printed::default()];
    collect(&[plain], &mut all, total, WAIT);
    let seq_of: HashMap<usize, u64> = all[0].events.iter().map(|&(s, _, i)| (i, s)).collect();
    assert_eq!(seq_of.len(), total, "the plain watcher saw everything");
    let times = tally(printed);
    let twice: Vec<_> = times.iter().filter(|(_, n)| **n > 1).take(10).collect();
    assert!(twice.is_empty(), "events printed twice: {twice:?}");
    let gaps: Vec<(u64, u64)> = reporters.iter().flat_map(|p| p.gaps.clone()).collect();
    let unsaid: Vec<usize> = (0..total)
        .filter(|i| !times.contains_key(i))
        .filter(|i| {
            !gaps
                .iter()
                .any(|&(from, to)| (from..=to).contains(&seq_of[i]))
        })
        .collect();
    assert!(
        unsaid.is_empty(),
        "{} events neither printed nor in a gap line, e.g. {:?}",
        unsaid.len(),
        &unsaid[..unsaid.len().min(10)]
    );
    (times, gaps)
}

fn member(bus: &str, group: &str) -> Proc {
    watch(bus, &["--group", group, "--all"])
}

/// Every account's events went to one member, in the order they were published.
fn assert_accounts_stay_together(printed: &[Printed]) {
    let mut owner: HashMap<u64, usize> = HashMap::new();
    for (m, p) in printed.iter().enumerate() {
        let mut last: BTreeMap<u64, usize> = BTreeMap::new();
        for &(_, account, index) in &p.events {
            let first = *owner.entry(account).or_insert(m);
            assert_eq!(
                first, m,
                "account {account} went to members {first} and {m}"
            );
            if let Some(prev) = last.insert(account, index) {
                assert!(prev < index, "account {account}: g{prev} before g{index}");
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busd_members_share_each_event_once_and_keep_accounts_together() {
    let busd = Busd::start(&[]);
    let bus = busd.addr.to_string();
    let members: Vec<Proc> = (0..MEMBERS).map(|_| member(&bus, "g")).collect();
    let other = member(&bus, "h");
    let plain = watch(&bus, &["--all"]);
    publish_to(&bus, "groups", &events(0..EVENTS)).await;

    let refs: Vec<&Proc> = members.iter().collect();
    let mut printed: Vec<Printed> = (0..MEMBERS).map(|_| Printed::default()).collect();
    collect(&refs, &mut printed, EVENTS, WAIT);
    let times = tally(&printed);
    assert_eq!(times.len(), EVENTS, "every event reached the group");
    assert!(times.values().all(|&n| n == 1), "each event once");
    for (m, p) in printed.iter().enumerate() {
        assert!(p.gaps.is_empty(), "member {m} reported gaps: {:?}", p.gaps);
        assert!(
            p.events.len() > EVENTS / 10,
            "member {m} did {} of {EVENTS}: the work is shared",
            p.events.len()
        );
    }
    assert_accounts_stay_together(&printed);

    for (name, proc) in [
        ("another group's member", &other),
        ("a plain watcher", &plain),
    ] {
        let mut all = [Printed::default()];
        collect(&[proc], &mut all, EVENTS, WAIT);
        assert_eq!(tally(&all).len(), EVENTS, "{name} gets every event");
    }
    let stats = busctl_command(&["stats", "--bus", &bus, "--format", "json"])
        .output()
        .expect("busctl stats runs");
    let stats = json(String::from_utf8_lossy(&stats.stdout).trim());
    let names: Vec<&str> = stats["subscribers"]
        .as_array()
        .map(|subs| subs.iter().filter_map(|s| s["name"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(names.len(), MEMBERS + 2, "{stats}");
    let in_g = names.iter().filter(|n| n.ends_with("@g")).count();
    assert_eq!(
        in_g, MEMBERS,
        "members are named after their group: {names:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busd_members_take_over_from_one_killed_under_load_losing_nothing_unsaid() {
    let busd = Busd::start(&[]);
    let bus = busd.addr.to_string();
    let members: Vec<Proc> = (0..MEMBERS).map(|_| member(&bus, "g")).collect();
    let plain = watch(&bus, &["--all"]);
    let refs: Vec<&Proc> = members.iter().collect();
    let mut printed: Vec<Printed> = (0..MEMBERS).map(|_| Printed::default()).collect();
    // A third of the events, printed; then a member is killed while the rest are published.
    publish_to(&bus, "groups-1", &events(0..EVENTS / 3)).await;
    collect(&refs, &mut printed, EVENTS / 3, WAIT);
    let rest = tokio::spawn({
        let bus = bus.clone();
        async move { publish_to(&bus, "groups-2", &events(EVENTS / 3..EVENTS)).await }
    });
    tokio::time::sleep(Duration::from_millis(30)).await;
    members[0].signal("KILL");
    rest.await.expect("the publisher finishes");
    collect(&refs, &mut printed, EVENTS, Duration::from_secs(3));

    // Only the survivors can have reported what the killed member held.
    let (times, gaps) = assert_once_or_reported(&plain, &printed, &printed[1..], EVENTS);
    let missing = EVENTS - times.len();
    eprintln!(
        "killed member printed {}, survivors {} and {}; {missing} unprinted, covered by {} gap \
         lines",
        printed[0].events.len(),
        printed[1].events.len(),
        printed[2].events.len(),
        gaps.len()
    );
    assert!(
        !printed[0].events.is_empty(),
        "the killed member had done some"
    );
    assert!(
        printed[1].events.len() + printed[2].events.len() > EVENTS / 2,
        "the survivors took over"
    );
    assert_accounts_stay_together(&printed[1..]);
}

#[test]
fn a_bad_group_name_or_a_start_in_the_past_exits_2() {
    let out = busctl_command(&["watch", "--group", "a.b"])
        .output()
        .expect("busctl runs");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("group name"), "{stderr}");
    for extra in [["--last", "5"], ["--origin", "ingest-1"]] {
        let mut args = vec!["watch", "--group", "g"];
        args.extend(extra);
        let out = busctl_command(&args).output().expect("busctl runs");
        assert_eq!(out.status.code(), Some(2), "{args:?}");
    }
}

/// Makes the stream as ingest would.
async fn make_stream(bus: &str) {
    let servers: Vec<String> = bus.split(',').map(str::to_owned).collect();
    let conn = client::jetstream::connect(&servers, "test", None, WAIT)
        .await
        .expect("nats is up");
    client::jetstream::stream::ensure(&conn.js, &Default::default())
        .await
        .expect("the stream is made");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_members_share_the_work_and_redeliver_a_killed_members_events() {
    nats_or_skip!();
    let cluster = Cluster::start(1);
    let bus = cluster.urls();
    make_stream(&bus).await;
    let members: Vec<Proc> = (0..MEMBERS).map(|_| member(&bus, "g")).collect();
    publish_to(&bus, "groups-1", &events(0..EVENTS / 2)).await;
    let refs: Vec<&Proc> = members.iter().collect();
    let mut printed: Vec<Printed> = (0..MEMBERS).map(|_| Printed::default()).collect();
    collect(&refs, &mut printed, EVENTS / 2, WAIT);
    let times = tally(&printed);
    assert_eq!(times.len(), EVENTS / 2, "every event reached the group");
    assert!(
        times.values().all(|&n| n == 1),
        "each event once while all are up"
    );
    assert!(
        printed.iter().all(|p| !p.events.is_empty()),
        "the work is shared"
    );

    // Stopped first, so it holds messages it will never acknowledge; then killed.
    members[0].signal("STOP");
    publish_to(&bus, "groups-2", &events(EVENTS / 2..EVENTS)).await;
    members[0].signal("KILL");
    // What the killed member held comes back after the ack wait (10 s).
    collect(&refs, &mut printed, EVENTS + 1, Duration::from_secs(15));
    let times = tally(&printed);
    let missing: Vec<usize> = (0..EVENTS).filter(|i| !times.contains_key(i)).collect();
    assert!(
        missing.is_empty(),
        "{} events never printed, e.g. {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    let duplicates: usize = times.values().map(|n| n - 1).sum();
    let told: Vec<String> = members[1..]
        .iter()
        .flat_map(|m| {
            m.stderr_log()
                .lines()
                .map(str::to_owned)
                .collect::<Vec<_>>()
        })
        .filter(|l| l.contains("sent again"))
        .collect();
    eprintln!(
        "after the kill: {duplicates} duplicates (printed by the killed member and again); \
         survivors said: {told:?}"
    );
    assert!(!told.is_empty() || duplicates == 0, "redeliveries are said");
    let kinds: HashSet<usize> = printed[1..]
        .iter()
        .map(|p| p.events.iter().filter(|e| e.2 >= EVENTS / 2).count())
        .collect();
    assert!(
        !kinds.contains(&0),
        "both survivors took part after the kill"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_refuses_a_member_with_another_filter() {
    nats_or_skip!();
    let cluster = Cluster::start(1);
    let bus = cluster.urls();
    make_stream(&bus).await;
    let _first = member(&bus, "g");
    let mut other = support::busctl(&["watch", "--bus", &bus, "--group", "g", "--accounts", "1,2"]);
    let status = other.wait_exit(WAIT);
    assert_eq!(status.code(), Some(1));
    let log = other.stderr_log();
    assert!(log.contains("another filter"), "{log}");
    // Lists longer than --max-filter-subjects read the same subjects; still refused.
    let _big = watch(&bus, &["--group", "big", "--accounts", "1-200"]);
    let args = [
        "watch",
        "--bus",
        &bus,
        "--group",
        "big",
        "--accounts",
        "201-400",
    ];
    let mut other = support::busctl(&args);
    assert_eq!(other.wait_exit(WAIT).code(), Some(1));
    let log = other.stderr_log();
    assert!(log.contains("another filter"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busd_goodbye_writes_a_members_whole_queue_first() {
    let listen = format!("127.0.0.1:{}", testkit::free_port());
    let busd = Busd::start_on(&listen, &[]);
    let member = member(&listen, "g");
    // Stopped, the member acknowledges nothing: busd writes it MAX_UNACKED events and
    // queues the rest.
    member.signal("STOP");
    let total = protocol::MAX_UNACKED + 5_000;
    publish_to(&listen, "goodbye", &events(0..total)).await;
    busd.signal("TERM");
    tokio::time::sleep(Duration::from_millis(300)).await;
    member.signal("CONT");
    let mut busd = busd;
    assert!(busd.proc.wait_exit(WAIT).success(), "busd exits cleanly");
    let _restarted = Busd::start_on(&listen, &[]);
    let mut printed = [Printed::default()];
    collect(&[&member], &mut printed, total, WAIT);
    member.wait_stderr("nothing was missed", WAIT);
    assert!(printed[0].gaps.is_empty(), "gaps: {:?}", printed[0].gaps);
    assert_eq!(
        tally(&printed).len(),
        total,
        "every event before the Goodbye"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_disconnected_for_falling_behind_hands_everything_over() {
    let args = ["--slow-policy", "disconnect", "--queue-events", "10000"];
    let busd = Busd::start(&args);
    let bus = busd.addr.to_string();
    let members: Vec<Proc> = (0..2).map(|_| member(&bus, "g")).collect();
    let plain = watch(&bus, &["--all"]);
    // Stopped, member 0 is written MAX_UNACKED events, then its queue overflows.
    members[0].signal("STOP");
    let total = 60_000;
    for chunk in 0..6 {
        let range = chunk * total / 6..(chunk + 1) * total / 6;
        publish_to(&bus, &format!("slow-{chunk}"), &short_events(range)).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    members[0].signal("CONT");
    let refs: Vec<&Proc> = members.iter().collect();
    let mut printed: Vec<Printed> = (0..2).map(|_| Printed::default()).collect();
    collect(&refs, &mut printed, total, Duration::from_secs(3));
    members[0].wait_stderr("fell behind", WAIT);

    let (times, gaps) = assert_once_or_reported(&plain, &printed, &printed, total);
    assert!(
        !printed[1].gaps.is_empty(),
        "the member taking over heard of what the slow one was sent"
    );
    eprintln!(
        "slow member printed {}, the other {}; {} unprinted, in {} gap lines",
        printed[0].events.len(),
        printed[1].events.len(),
        total - times.len(),
        gaps.len()
    );
}

/// A JetStream group member waiting on an idle group notices a frozen server by its missed
/// heartbeats within seconds, as a watcher does, joins again once it thaws and goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jetstream_member_notices_a_frozen_server() {
    nats_or_skip!();
    let mut cluster = Cluster::start(1);
    let bus = cluster.urls();
    make_stream(&bus).await;
    let member = member(&bus, "f");
    publish_to(&bus, "frozen-1", &events(0..1)).await;
    assert_eq!(json(&member.stdout_lines(1, WAIT)[0])["data"], data(0));
    assert_a_frozen_server_is_noticed(&mut cluster, 0, &member);
    publish_to(&bus, "frozen-2", &events(1..2)).await;
    assert_eq!(json(&member.stdout_lines(1, WAIT)[0])["data"], data(1));
}
