//! `busctl dashboard` through the real binaries: ingest (with its embedded busd) or busd,
//! the dashboard, and the page in headless Chromium; a bus that goes down and comes back, a
//! taken `--listen`, and pages that come and go.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use testkit::bus::{Busd, publish_events};
use testkit::chromium::{Browser, Tab, skip_without_chromium};
use testkit::http::get_blocking;
use testkit::{Proc, binary, free_port};

#[macro_use]
mod support;
use support::{WAIT, busctl, busctl_command};

/// A running `busctl dashboard` and the address it serves on.
struct Dashboard {
    proc: Proc,
    addr: SocketAddr,
}

impl Dashboard {
    /// `busctl dashboard --bus <bus>` on a free port, once it listens.
    fn start(bus: &str, extra: &[&str]) -> Dashboard {
        let mut args = vec!["dashboard", "--bus", bus, "--listen", "127.0.0.1:0"];
        args.extend_from_slice(extra);
        let proc = busctl(&args);
        let addr = proc.listening_addr();
        Dashboard { proc, addr }
    }

    fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// `/api/state` (with `query`) as JSON.
    fn state(&self, query: &str) -> Value {
        let target = format!("/api/state{query}");
        let (status, body) = get_blocking(self.addr, &target).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
    }

    /// Polls `/api/state` until `done` accepts it; panics with the last state after [`WAIT`].
    fn wait_state(&self, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let state = self.state("");
            if done(&state) {
                return state;
            }
            assert!(
                Instant::now() < deadline,
                "never {what}: {state}\n{}",
                self.proc.stderr_log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// ingest with its embedded busd on free ports, in a fresh directory (accounts 1..=1000
/// seeded, every tenth inactive); returns it with its HTTP and bus addresses.
fn ingest(dir: &Path) -> (Proc, SocketAddr, String) {
    let mut command = Command::new(binary("ingest", "ingest"));
    command.current_dir(dir).args([
        "--listen",
        "127.0.0.1:0",
        "--embedded-bus-listen",
        "127.0.0.1:0",
    ]);
    for variable in ["TRACKER_BUS", "TRACKER_STREAM", "TRACKER_SUBJECT_PREFIX"] {
        command.env_remove(variable);
    }
    let proc = Proc::spawn("ingest", &mut command);
    let after = |line: String| {
        line.split("listening on ")
            .nth(1)
            .and_then(|rest| rest.split_whitespace().next())
            .map(str::to_owned)
            .unwrap_or_else(|| panic!("no address in {line:?}"))
    };
    let bus = after(proc.wait_stderr("embedded busd listening on", WAIT));
    let http = after(proc.wait_stderr("origin=", WAIT));
    let http = http.parse().unwrap_or_else(|e| panic!("{http}: {e}"));
    (proc, http, bus)
}

/// Sends `count` events for `account` with `data` through ingest's HTTP endpoint; each must
/// be accepted.
fn send(ingest: SocketAddr, account: u64, data: &str, count: usize) {
    for _ in 0..count {
        let target = format!("/{account}?data={data}");
        let (status, body) = get_blocking(ingest, &target).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(status, 202, "{target}: {body}");
    }
}

/// The page's top table as (account, count) pairs, in the order shown.
const TOP_ROWS: &str = r#"[...document.querySelectorAll('#top tbody tr')]
    .map(r => [Number(r.dataset.account), Number(r.querySelector('.count').textContent.replace(/,/g, ''))])"#;

fn rows(value: &Value) -> Vec<(u64, u64)> {
    value
        .as_array()
        .map(|rows| {
            rows.iter()
                .map(|row| (row[0].as_u64().unwrap_or(0), row[1].as_u64().unwrap_or(0)))
                .collect()
        })
        .unwrap_or_default()
}

/// Waits until the page's top table is exactly `expected`.
fn wait_top(browser: &mut Browser, tab: &Tab, expected: &[(u64, u64)]) {
    browser.wait_for(tab, TOP_ROWS, WAIT, |value| rows(value) == expected);
}

#[test]
fn the_page_shows_each_account_and_follows_new_events() {
    if skip_without_chromium() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (_ingest, http, bus) = ingest(dir.path());
    let dashboard = Dashboard::start(&bus, &[]);
    dashboard.wait_state("live", |s| s["link"]["state"] == "live");
    send(http, 1, "one", 3);
    send(http, 2, "two", 5);
    send(http, 3, "three", 7);
    dashboard.wait_state("at 15 events", |s| s["events"] == 15);

    let mut browser = Browser::start();
    let tab = browser.open(&dashboard.url(), 1280, 900);
    wait_top(&mut browser, &tab, &[(3, 7), (2, 5), (1, 3)]);
    let badge = browser.eval(&tab, "document.getElementById('link').textContent");
    assert!(badge.as_str().unwrap().starts_with("live since"), "{badge}");

    // Only the page's own stream can bring what is sent from now on.
    dashboard.wait_state("the page's stream open", |s| s["clients"] == 1);
    send(http, 2, "two", 4);
    send(http, 11, "%3Cb%3Ebold%3C%2Fb%3E", 2);
    wait_top(&mut browser, &tab, &[(2, 9), (3, 7), (1, 3), (11, 2)]);
    browser.wait_for(
        &tab,
        "document.getElementById('events').textContent",
        WAIT,
        |v| v == "21",
    );

    // The tail, filtered to one account, shows its data as text, never as markup.
    let filter = "document.getElementById('tail-account').value = '11'; \
                  document.getElementById('tail-filter').requestSubmit(); true";
    browser.eval(&tab, filter);
    let tail = r#"[...document.querySelectorAll('#tail tbody tr')]
        .map(r => [r.dataset.account, r.lastChild.textContent, r.querySelectorAll('b').length])"#;
    let shown = browser.wait_for(&tab, tail, WAIT, |v| {
        v.as_array().is_some_and(|rows| rows.len() == 2)
    });
    for row in shown.as_array().unwrap() {
        assert_eq!(row[0], "11", "{shown}");
        assert_eq!(row[1], "<b>bold</b>", "{shown}");
        assert_eq!(row[2], 0, "data became markup: {shown}");
    }
    if let Some(path) = std::env::var_os("TRACKER_DASHBOARD_SCREENSHOT") {
        browser.screenshot(&tab, Path::new(&path));
    }

    browser.close(tab);
    dashboard.wait_state("without pages", |s| s["clients"] == 0);
}

#[test]
fn a_bus_that_goes_down_is_shown_and_the_page_recovers_with_it() {
    let browser_here = !skip_without_chromium();
    let listen = format!("127.0.0.1:{}", free_port());
    let busd = Busd::start_on(&listen, &[]);
    let dashboard = Dashboard::start(&listen, &["--accounts", "1-5"]);
    dashboard.wait_state("live", |s| s["link"]["state"] == "live");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let events: Vec<(u64, String)> = (1..=8).map(|i| (i, format!("e{i}"))).collect();
    runtime.block_on(publish_events(busd.addr, "tests", &events));
    let state = dashboard.wait_state("at 5 events", |s| s["events"] == 5);
    assert_eq!(state["filter"], "accounts 1-5");
    let mut page = browser_here.then(|| {
        let mut browser = Browser::start();
        let tab = browser.open(&dashboard.url(), 1280, 900);
        (browser, tab)
    });
    let badge = "document.getElementById('link').textContent";
    let badge_says = |page: &mut Option<(Browser, Tab)>, words: &str| {
        if let Some((browser, tab)) = page {
            browser.wait_for(tab, badge, WAIT, |v| {
                v.as_str().is_some_and(|text| text.starts_with(words))
            });
        }
    };
    badge_says(&mut page, "live since");

    busd.kill();
    let down = dashboard.wait_state("down", |s| s["link"]["state"] == "down");
    let since = down["link"]["since_us"].as_u64().unwrap();
    assert!(
        since > state["link"]["since_us"].as_u64().unwrap(),
        "{down}"
    );
    assert!(
        down["link"]["detail"]
            .as_str()
            .unwrap()
            .contains("reconnecting"),
        "{down}"
    );
    badge_says(&mut page, "disconnected since");

    let busd = Busd::start_on(&listen, &[]);
    let back = dashboard.wait_state("live again", |s| s["link"]["state"] == "live");
    assert_eq!(back["link"]["reconnects"], 1, "{back}");
    assert_eq!(back["gaps"], 1, "a crash is a gap of unknown size: {back}");
    assert!(back["recent_gaps"][0]["missed"].is_null(), "{back}");
    badge_says(&mut page, "live since");
    runtime.block_on(publish_events(busd.addr, "tests", &events));
    dashboard.wait_state("at 10 events", |s| s["events"] == 10);
}

#[test]
fn a_taken_listen_address_is_named_and_exits_1() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let output = busctl_command(&["dashboard", "--bus", "127.0.0.1:1", "--listen", &addr])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on {addr}")),
        "{stderr}"
    );
}

/// Opens an `/events` stream on `addr` and reads until its first snapshot.
fn open_stream(addr: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    stream
        .write_all(b"GET /events HTTP/1.1\r\nHost: test\r\n\r\n")
        .unwrap();
    let mut seen = Vec::new();
    let mut chunk = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains("event: state") {
        let n = stream.read(&mut chunk).unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&seen));
        seen.extend_from_slice(&chunk[..n]);
    }
    let head = String::from_utf8_lossy(&seen);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains("text/event-stream"), "{head}");
    stream
}

#[test]
fn pages_that_go_away_leave_nothing_behind() {
    let busd = Busd::start(&[]);
    let dashboard = Dashboard::start(&busd.addr.to_string(), &[]);
    for round in 0..3 {
        let streams: Vec<TcpStream> = (0..40).map(|_| open_stream(dashboard.addr)).collect();
        let open = dashboard.state("");
        assert_eq!(open["clients"], 40, "round {round}: {open}");
        drop(streams);
        dashboard.wait_state("back to no pages", |s| s["clients"] == 0);
    }
    // At the cap, one more page is refused rather than served.
    let streams: Vec<TcpStream> = (0..256).map(|_| open_stream(dashboard.addr)).collect();
    let (status, body) = get_blocking(dashboard.addr, "/events").unwrap();
    assert_eq!(status, 503, "{body}");
    drop(streams);
    dashboard.wait_state("back to no pages", |s| s["clients"] == 0);
    // A bad filter is refused; a good one is applied.
    let (status, _) = get_blocking(dashboard.addr, "/api/state?account=x").unwrap();
    assert_eq!(status, 400);
    assert_eq!(dashboard.state("?account=7")["tail_account"], 7);
    let (status, page) = get_blocking(dashboard.addr, "/").unwrap();
    assert_eq!(status, 200);
    assert!(page.contains("<script src=\"/page.js\">"), "{page}");
    // Ctrl-C ends it cleanly, an open page or not.
    let _page = open_stream(dashboard.addr);
    let mut proc = dashboard.proc;
    proc.signal("INT");
    assert!(proc.wait_exit(WAIT).success(), "{}", proc.stderr_log());
}

#[test]
fn over_jetstream_the_page_counts_the_same_and_rides_out_a_server_restart() {
    nats_or_skip!();
    let mut cluster = testkit::nats::Cluster::start(1);
    let bus = cluster.urls();
    let dir = tempfile::tempdir().unwrap();
    let mut command = Command::new(binary("ingest", "ingest"));
    command
        .current_dir(dir.path())
        .args(["--listen", "127.0.0.1:0", "--bus", &bus]);
    let ingest = Proc::spawn("ingest", &mut command);
    let http = ingest.listening_addr();
    let ready = || get_blocking(http, "/readyz").is_ok_and(|(status, _)| status == 200);
    let deadline = Instant::now() + WAIT;
    while !ready() {
        assert!(Instant::now() < deadline, "ingest never ready on {bus}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let dashboard = Dashboard::start(&bus, &["--accounts", "1,2"]);
    dashboard.wait_state("live", |s| s["link"]["state"] == "live");
    send(http, 1, "one", 4);
    send(http, 2, "two", 6);
    send(http, 3, "three", 5);
    let state = dashboard.wait_state("at 10 events", |s| s["events"] == 10);
    let top: Vec<(u64, u64)> = state["top"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["account_id"].as_u64().unwrap(),
                t["count"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(top, [(2, 6), (1, 4)], "account 3 is not watched: {state}");

    cluster.kill(0);
    dashboard.wait_state("down", |s| s["link"]["state"] == "down");
    cluster.restart(0);
    dashboard.wait_state("live again", |s| s["link"]["state"] == "live");
    send(http, 1, "one", 3);
    let state = dashboard.wait_state("at 13 events", |s| s["events"] == 13);
    assert_eq!(state["gaps"], 0, "the stream kept everything: {state}");
}
