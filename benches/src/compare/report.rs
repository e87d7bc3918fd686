//! The scoreboard: every row of a run, the goals as ratios from that same run, written as
//! `RESULTS.md` for people and `results.json` for tools.

use std::fmt::Write as _;

use serde::Serialize;

use super::{bus, durable, footprint, http, jetstream, latency};

#[derive(Debug, Serialize)]
pub struct Results {
    pub generated: String,
    pub machine: String,
    pub seconds_per_run: u32,
    /// How many rounds each HTTP and pub/sub row had; it reports the median one.
    pub rounds: u32,
    pub smoke: bool,
    pub http: Vec<http::Row>,
    pub bus: Vec<bus::Row>,
    /// A consumer group of 4 on busd against 4 plain subscribers of disjoint accounts.
    pub groups: Vec<bus::Row>,
    pub latency: Vec<latency::Row>,
    pub jetstream: Vec<jetstream::Row>,
    /// ingest's default answer against `--durable`'s, per bus.
    pub durable: Vec<http::Row>,
    pub footprint: Vec<footprint::Row>,
    pub goals: Vec<Goal>,
}

#[derive(Debug, Serialize)]
pub struct Goal {
    pub goal: String,
    pub measured: String,
    /// `None` when a row it needs is missing.
    pub met: Option<bool>,
}

fn rps(rows: &[http::Row], server: &str, mode: &str) -> Option<f64> {
    rows.iter()
        .find(|r| r.server.starts_with(server) && r.mode == mode)
        .and_then(|r| r.ok_per_sec)
}

/// The best delivered/s in `shape` among the systems whose name starts with `system`: NATS
/// has a row per server (Debian's and the pinned current one), and a goal takes the better.
fn delivered(rows: &[bus::Row], system: &str, shape: &str) -> Option<f64> {
    rows.iter()
        .filter(|r| r.system.starts_with(system) && r.shape == shape)
        .filter_map(|r| r.delivered_per_sec)
        .reduce(f64::max)
}

/// `per_sec` of the JetStream row of `client` and `load` on a stream of `replicas` copies.
fn js_per_sec(rows: &[jetstream::Row], replicas: usize, client: &str, load: &str) -> Option<f64> {
    rows.iter()
        .find(|r| r.replicas == replicas && r.client == client && r.load == load)
        .and_then(|r| r.per_sec)
}

/// Whether ingest's JetStream rows received every event they accepted, each once: `None`
/// when no such row was measured.
fn every_accepted_delivered(rows: &[jetstream::Row]) -> Goal {
    let goal = "ingest -> JetStream: every accepted event delivered (R1 and R3)";
    let measured: Vec<(&jetstream::Row, u64, u64)> = rows
        .iter()
        .filter(|r| r.client == jetstream::INGEST)
        .filter_map(|r| Some((r, r.accepted?, r.delivered?)))
        .collect();
    if measured.is_empty() {
        return Goal {
            goal: goal.into(),
            measured: "not measured".into(),
            met: None,
        };
    }
    let text = measured
        .iter()
        .map(|(r, accepted, delivered)| {
            format!("R{} {}: {delivered} / {accepted}", r.replicas, r.load)
        })
        .collect::<Vec<_>>()
        .join(", ");
    let complete = measured.len() == 4;
    Goal {
        goal: goal.into(),
        measured: if complete {
            text
        } else {
            format!("{text} (not every row measured)")
        },
        met: Some(
            complete
                && measured
                    .iter()
                    .all(|(r, a, d)| a == d && r.duplicates == Some(0)),
        ),
    }
}

fn ratio_goal(goal: &str, ours: Option<f64>, theirs: Option<f64>, at_least: f64) -> Goal {
    match (ours, theirs) {
        (Some(a), Some(b)) if b > 0.0 => Goal {
            goal: goal.into(),
            measured: format!("{}x ({a:.0} / {b:.0})", ratio_text(a / b, at_least)),
            met: Some(a / b >= at_least),
        },
        _ => Goal {
            goal: goal.into(),
            measured: "not measured".into(),
            met: None,
        },
    }
}

/// A ratio to two decimals, or to as many more (up to six) as it takes not to round it onto
/// `goal` from either side: "1.00x ... no" reads as a contradiction, "0.996x ... no" does
/// not.
fn ratio_text(ratio: f64, goal: f64) -> String {
    let text = |places: usize| format!("{ratio:.places$}");
    (2..=6)
        .find(|&places| ratio == goal || text(places) != format!("{goal:.places$}"))
        .map_or_else(|| text(6), text)
}

/// busd's memory goals: at most 4 KiB per idle subscriber, and 10,000 idle subscribers in
/// under 64 MiB (a smoke run connects fewer, so that one is not judged).
fn memory_goals(rows: &[footprint::Row]) -> [Goal; 2] {
    let per_goal = "busd <= 4 KiB per idle subscriber";
    let per = rows
        .iter()
        .find(|r| r.what == footprint::PER_IDLE_SUBSCRIBER);
    let all_goal = "busd with 10,000 idle subscribers < 64 MiB";
    let all = rows
        .iter()
        .find(|r| r.what.starts_with(footprint::WITH_IDLE_SUBSCRIBERS));
    let judged = |row: Option<&footprint::Row>, goal: &str, limit: u64, whole: &str| match row
        .and_then(|r| r.bytes.map(|b| (r, b)))
    {
        Some((r, bytes)) if r.what.contains(whole) => Goal {
            goal: goal.into(),
            measured: r.value.clone(),
            met: Some(bytes <= limit),
        },
        Some((r, _)) => Goal {
            goal: goal.into(),
            measured: format!("{} ({})", r.value, r.what),
            met: None,
        },
        None => Goal {
            goal: goal.into(),
            measured: "not measured".into(),
            met: None,
        },
    };
    [
        judged(per, per_goal, 4 * 1024, ""),
        judged(all, all_goal, 64 << 20, "10000 idle"),
    ]
}

/// The `--durable` goals: at least 0.7x the default's 2xx/s at c=64 on busd, p99 under 5 ms.
fn durable_goals(rows: &[http::Row]) -> [Goal; 2] {
    let on_busd = |mode: &str| durable::server(mode, durable::BUSD);
    let p99 = rows
        .iter()
        .find(|r| r.server == on_busd(durable::DURABLE) && r.mode == "c=64")
        .and_then(|r| r.p99.clone());
    let p99_goal = "ingest --durable p99 < 5 ms at c=64 on busd";
    [
        ratio_goal(
            "ingest --durable >= 0.7x default ingest at c=64 on busd",
            rps(rows, &on_busd(durable::DURABLE), "c=64"),
            rps(rows, &on_busd(durable::DEFAULT), "c=64"),
            0.7,
        ),
        Goal {
            goal: p99_goal.into(),
            met: p99.as_deref().and_then(durable::millis).map(|ms| ms < 5.0),
            measured: p99.unwrap_or_else(|| "not measured".into()),
        },
    ]
}

/// The goals on ingest's HTTP rows: the goal, our row and theirs as (server, mode), and the
/// least ratio that meets it (0: no goal, reported).
const HTTP_GOALS: [(&str, HttpRow, HttpRow, f64); 7] = [
    (
        "ingest >= 0.8x nginx-204 at c=64",
        ("ingest", "c=64"),
        ("nginx", "c=64"),
        0.8,
    ),
    (
        "ingest >= 1.0x hyper hello at c=64",
        ("ingest", "c=64"),
        ("hyper", "c=64"),
        1.0,
    ),
    (
        "ingest >= 1.0x hyper hello at c=256",
        ("ingest", "c=256"),
        ("hyper", "c=256"),
        1.0,
    ),
    (
        "keyed ingest (Bearer key) >= 0.9x plain ingest at c=64",
        ("keyed ingest", "c=64"),
        ("ingest", "c=64"),
        0.9,
    ),
    (
        "keyed ingest pipelined >= 0.9x plain ingest pipelined",
        ("keyed ingest", PIPELINED),
        ("ingest", PIPELINED),
        0.9,
    ),
    (
        "ingest vs may_minihttp at c=64 (no goal; reported)",
        ("ingest", "c=64"),
        ("may_minihttp", "c=64"),
        0.0,
    ),
    (
        "ingest pipelined >= 1.0x may_minihttp pipelined",
        ("ingest", PIPELINED),
        ("may_minihttp", PIPELINED),
        1.0,
    ),
];

/// An HTTP row: the start of its server's name, and its mode.
type HttpRow = (&'static str, &'static str);

const PIPELINED: &str = "pipelined 16, c=64";

/// The goals on busd's delivered events/s against another system's in the same shape: the
/// goal, the shape, the other system and the least ratio (0: no goal, reported).
const BUS_GOALS: [(&str, &str, &str, f64); 4] = [
    ("busd filtered >= 5x Redis", FILTERED, "redis", 5.0),
    ("busd filtered >= 5x NATS", FILTERED, "nats", 5.0),
    (
        "busd filtered, accounts interleaved, vs Redis (no goal; reported)",
        INTERLEAVED,
        "redis",
        0.0,
    ),
    (
        "busd filtered, accounts interleaved, vs NATS (no goal; reported)",
        INTERLEAVED,
        "nats",
        0.0,
    ),
];

const FILTERED: &str = "1000 accounts, 10 x 100 filtered";
const INTERLEAVED: &str = "1000 accounts, 10 x 100 filtered, accounts interleaved";

pub fn goals(
    http: &[http::Row],
    bus: &[bus::Row],
    latency: &[latency::Row],
    jetstream: &[jetstream::Row],
    durable: &[http::Row],
    footprint: &[footprint::Row],
) -> Vec<Goal> {
    let fan = "1 -> 10 (all)";
    let better = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, b) => a.or(b),
    };
    let p99 = latency
        .iter()
        .find(|r| r.load.starts_with("20k"))
        .and_then(|r| r.p99_us);
    let js = |replicas: usize| {
        ratio_goal(
            &format!("ingest -> JetStream R{replicas} 2xx/s >= 0.8x raw async-nats publisher"),
            js_per_sec(
                jetstream,
                replicas,
                jetstream::INGEST,
                jetstream::CLOSED_LOOP,
            ),
            js_per_sec(jetstream, replicas, jetstream::RAW, jetstream::RAW_LOAD),
            0.8,
        )
    };
    let mut goals: Vec<Goal> = HTTP_GOALS
        .iter()
        .map(
            |&(goal, (ours, our_mode), (theirs, their_mode), at_least)| {
                let ours = rps(http, ours, our_mode);
                ratio_goal(goal, ours, rps(http, theirs, their_mode), at_least)
            },
        )
        .collect();
    goals.extend(BUS_GOALS.iter().map(|&(goal, shape, theirs, at_least)| {
        let ours = delivered(bus, "busd", shape);
        ratio_goal(goal, ours, delivered(bus, theirs, shape), at_least)
    }));
    goals.extend([
        ratio_goal(
            "busd 1 -> 10 >= 5x the better of Redis and NATS",
            delivered(bus, "busd", fan),
            better(delivered(bus, "redis", fan), delivered(bus, "nats", fan)),
            5.0,
        ),
        match p99 {
            Some(us) => Goal {
                goal: "end-to-end p99 <= 1 ms at 20k req/s".into(),
                measured: format!("{:.2} ms", us as f64 / 1000.0),
                met: Some(us <= 1000),
            },
            None => Goal {
                goal: "end-to-end p99 <= 1 ms at 20k req/s".into(),
                measured: "not measured".into(),
                met: None,
            },
        },
    ]);
    goals.extend(memory_goals(footprint));
    goals.extend([js(1), js(3), every_accepted_delivered(jetstream)]);
    goals.extend(durable_goals(durable));
    goals
}

fn opt<T: std::fmt::Display>(v: &Option<T>) -> String {
    v.as_ref().map_or("-".into(), ToString::to_string)
}

fn millions(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| {
        if v >= 1e6 {
            format!("{:.2}M", v / 1e6)
        } else {
            format!("{:.0}k", v / 1e3)
        }
    })
}

/// The rows of an HTTP table (the header is written by the caller).
fn http_rows(s: &mut String, rows: &[http::Row]) {
    for h in rows {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            h.server,
            h.mode,
            h.requests_per_sec.map_or("-".into(), |v| format!("{v:.0}")),
            h.ok_per_sec.map_or("-".into(), |v| format!("{v:.0}")),
            opt(&h.p50),
            opt(&h.p99),
            opt(&h.errors),
            opt(&h.note)
        );
    }
}

/// A table of pub/sub rows under `title`, after `intro`.
fn bus_table(s: &mut String, title: &str, intro: &str, rows: &[bus::Row]) {
    let _ = writeln!(
        s,
        "\n## {title}\n\n{intro}| shape | system | published/s | delivered/s | lost | note |\n| --- | --- | --- | --- | --- | --- |"
    );
    for b in rows {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} |",
            b.shape,
            b.system,
            millions(b.published_per_sec),
            millions(b.delivered_per_sec),
            opt(&b.lost),
            opt(&b.note)
        );
    }
}

pub fn markdown(r: &Results) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# Tracker benchmark results\n");
    let _ = writeln!(
        s,
        "Generated {} on {} by `cargo bench -p benches --bench compare`, {} s per run, {} {}{}. Every figure in a table comes from this one run; load generators share the machine's cores with the servers.\n",
        r.generated,
        r.machine,
        r.seconds_per_run,
        r.rounds,
        if r.rounds == 1 {
            "round of each HTTP and pub/sub row"
        } else {
            "rounds of each HTTP and pub/sub row, the systems taking turns, each row the median round (its note lists every round)"
        },
        if r.smoke {
            " (smoke run: not for comparison)"
        } else {
            ""
        }
    );
    let _ = writeln!(
        s,
        "## Goals\n\n| goal | measured | met |\n| --- | --- | --- |"
    );
    for g in &r.goals {
        let met = match g.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "-",
        };
        let _ = writeln!(s, "| {} | {} | {} |", g.goal, g.measured, met);
    }
    let _ = writeln!(
        s,
        "\n## HTTP (wrk -t1)\n\nTracker's row is the whole path: parse, account lookup, event encode, batch to the embedded busd, delivery to one subscriber that counts every event. `2xx/s` counts successful responses only (ingest answers 503 when its outbound buffer is full) and is what the goals compare. Each row follows one second of the same load that is not counted.\n\n| server | load | req/s | 2xx/s | p50 | p99 | non-2xx or socket errors | note |\n| --- | --- | --- | --- | --- | --- | --- | --- |"
    );
    http_rows(&mut s, &r.http);
    bus_table(&mut s, "Pub/sub, 64-byte payloads", "", &r.bus);
    if !r.groups.is_empty() {
        let intro = "The same work shared by a consumer group of 4 members (`Join`, each frame \
            acknowledged) and split by hand over 4 plain subscribers of 250 accounts each; the \
            clients decode every frame in both rows.\n\n";
        bus_table(&mut s, "Consumer groups on busd", intro, &r.groups);
    }
    let _ = writeln!(
        s,
        "\n## End to end: ingest accepting to a subscriber receiving\n\n| load | achieved req/s | p50 | p99 | p999 | events | note |\n| --- | --- | --- | --- | --- | --- | --- |"
    );
    for l in &r.latency {
        let us = |v: Option<u64>| v.map_or("-".into(), |v| format!("{:.2} ms", v as f64 / 1000.0));
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} |",
            l.load,
            l.achieved_per_sec.map_or("-".into(), |v| format!("{v:.0}")),
            us(l.p50_us),
            us(l.p99_us),
            us(l.p999_us),
            opt(&l.events),
            opt(&l.note)
        );
    }
    let _ = writeln!(
        s,
        "\n## ingest -> NATS JetStream -> one watcher\n\nThe pinned nats-server on loopback, a fresh cluster per stream size: R1 is one node, R3 three nodes with the stream on all of them. The raw row is async-nats publishing {}-byte payloads with `Nats-Msg-Id` and asynchronous acknowledgements to a stream configured like ingest's: the most a client gets from these servers, and `acked or 2xx/s` is its acknowledged messages per second. ingest's rows are the real binary publishing to stream `TRACKER` (events of accounts 1-9 with {}-byte `data`, each a JSON message of about 250 bytes) while one watcher (the client library's subscriber, as `busctl watch --all` runs it) receives every event: `acked or 2xx/s` is 2xx answers per second, `accepted` the 2xx answers, `delivered` the distinct events the watcher received (waited for up to 30 s after the load), p50/p99 from ingest accepting an event to the watcher receiving it. The load generators, the raw publisher and the watcher run on one thread of the harness; each note gives the CPU that ingest, the nats-servers and the harness used, in cores, since they all share the machine's.\n\n| stream | client | load | acked or 2xx/s | p50 | p99 | accepted | delivered | note |\n| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        jetstream::PAYLOAD_BYTES,
        jetstream::PAYLOAD_BYTES
    );
    for j in &r.jetstream {
        let us = |v: Option<u64>| v.map_or("-".into(), |v| format!("{:.2} ms", v as f64 / 1000.0));
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            j.stream,
            j.client,
            j.load,
            j.per_sec.map_or("-".into(), |v| format!("{v:.0}")),
            us(j.p50_us),
            us(j.p99_us),
            opt(&j.accepted),
            opt(&j.delivered),
            opt(&j.note)
        );
    }
    let _ = writeln!(
        s,
        "\n## ingest --durable against its default (wrk -t1)\n\nThe same request as the HTTP part, `GET /1?data=<64 bytes>`, to an ingest answering as soon as the event is in its outbox (default) and to one answering only once the bus acknowledged the event (`--durable`), on its embedded busd and on a one-node JetStream, measured one after the other in this run.\n\n| server | load | req/s | 2xx/s | p50 | p99 | non-2xx or socket errors | note |\n| --- | --- | --- | --- | --- | --- | --- | --- |"
    );
    http_rows(&mut s, &r.durable);
    let _ = writeln!(
        s,
        "\n## Memory and start\n\n| what | value |\n| --- | --- |"
    );
    for f in &r.footprint {
        let _ = writeln!(s, "| {} | {} |", f.what, f.value);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ratio_that_rounds_onto_its_goal_gets_a_third_decimal() {
        assert_eq!(ratio_text(0.996, 1.0), "0.996");
        assert_eq!(ratio_text(1.004, 1.0), "1.004");
        assert_eq!(ratio_text(1.0, 1.0), "1.00");
        assert_eq!(ratio_text(0.91, 1.0), "0.91");
        assert_eq!(ratio_text(5.73, 5.0), "5.73");
        assert_eq!(ratio_text(4.998, 5.0), "4.998");
        assert_eq!(ratio_text(0.9996, 1.0), "0.9996");
    }

    fn row(system: &str, shape: &str, delivered: Option<f64>) -> bus::Row {
        bus::Row {
            system: system.into(),
            shape: shape.into(),
            published_per_sec: delivered,
            delivered_per_sec: delivered,
            lost: Some(0),
            note: None,
        }
    }

    #[test]
    fn nats_goals_take_the_better_nats_server() {
        let filtered = "1000 accounts, 10 x 100 filtered";
        let fan = "1 -> 10 (all)";
        let rows = [
            row("busd", filtered, Some(10e6)),
            row("redis-server pub/sub", filtered, Some(1e6)),
            row("nats-server 2.9.10 (Debian)", filtered, Some(1e6)),
            row("nats-server 2.15.1", filtered, Some(2.5e6)),
            row("busd", fan, Some(20e6)),
            row("redis-server pub/sub", fan, Some(1e6)),
            row("nats-server 2.9.10 (Debian)", fan, Some(3e6)),
            row("nats-server 2.15.1", fan, None),
        ];
        let goals = goals(&[], &rows, &[], &[], &[], &[]);
        let goal = |name: &str| goals.iter().find(|g| g.goal == name).expect(name);
        assert_eq!(goal("busd filtered >= 5x Redis").met, Some(true));
        let nats = goal("busd filtered >= 5x NATS");
        assert_eq!(nats.met, Some(false), "{}", nats.measured);
        assert!(nats.measured.starts_with("4.00x"), "{}", nats.measured);
        let fan = goal("busd 1 -> 10 >= 5x the better of Redis and NATS");
        assert!(fan.measured.starts_with("6.67x"), "{}", fan.measured);
        assert_eq!(fan.met, Some(true));
    }

    fn js_row(
        replicas: usize,
        client: &str,
        load: &str,
        per_sec: f64,
        delivered: u64,
    ) -> jetstream::Row {
        jetstream::Row {
            replicas,
            stream: format!("R{replicas}"),
            client: client.into(),
            load: load.into(),
            per_sec: Some(per_sec),
            p50_us: None,
            p99_us: None,
            accepted: Some(100),
            delivered: (client == jetstream::INGEST).then_some(delivered),
            duplicates: (client == jetstream::INGEST).then_some(0),
            note: None,
        }
    }

    #[test]
    fn jetstream_goals_compare_ingest_with_the_raw_publisher_of_the_same_size() {
        use jetstream::{CLOSED_LOOP, INGEST, OFFERED, RAW, RAW_LOAD};
        let rows = [
            js_row(1, RAW, RAW_LOAD, 100_000.0, 0),
            js_row(1, INGEST, CLOSED_LOOP, 90_000.0, 100),
            js_row(1, INGEST, OFFERED, 5_000.0, 100),
            js_row(3, RAW, RAW_LOAD, 50_000.0, 0),
            js_row(3, INGEST, CLOSED_LOOP, 30_000.0, 99),
            js_row(3, INGEST, OFFERED, 5_000.0, 100),
        ];
        let goals = goals(&[], &[], &[], &rows, &[], &[]);
        let goal = |name: &str| goals.iter().find(|g| g.goal == name).expect(name);
        let r1 = goal("ingest -> JetStream R1 2xx/s >= 0.8x raw async-nats publisher");
        assert!(r1.measured.starts_with("0.90x"), "{}", r1.measured);
        assert_eq!(r1.met, Some(true));
        let r3 = goal("ingest -> JetStream R3 2xx/s >= 0.8x raw async-nats publisher");
        assert!(r3.measured.starts_with("0.60x"), "{}", r3.measured);
        assert_eq!(r3.met, Some(false));
        let delivered = goal("ingest -> JetStream: every accepted event delivered (R1 and R3)");
        assert_eq!(delivered.met, Some(false), "{}", delivered.measured);
        assert!(
            delivered.measured.contains("99 / 100"),
            "{}",
            delivered.measured
        );
        let none = super::goals(&[], &[], &[], &[], &[], &[]);
        assert!(
            none.iter()
                .filter(|g| g.goal.contains("JetStream"))
                .all(|g| g.met.is_none())
        );
    }

    #[test]
    fn memory_goals_judge_bytes_and_skip_a_smaller_run() {
        let row = |what: &str, bytes: u64| footprint::Row {
            what: what.into(),
            value: format!("{bytes} B"),
            bytes: Some(bytes),
        };
        let full = [
            row(footprint::PER_IDLE_SUBSCRIBER, 3600),
            row(
                "busd: resident memory with 10000 idle subscribers",
                70 << 20,
            ),
        ];
        let [per, all] = super::memory_goals(&full);
        assert_eq!(per.met, Some(true), "{}", per.measured);
        assert_eq!(all.met, Some(false), "{}", all.measured);
        let smoke = [row(
            "busd: resident memory with 500 idle subscribers",
            1 << 20,
        )];
        let [per, all] = super::memory_goals(&smoke);
        assert_eq!(per.met, None);
        assert_eq!(all.met, None, "500 subscribers say nothing of 10,000");
    }
}
