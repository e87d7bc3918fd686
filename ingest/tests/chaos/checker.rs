//! The promise, checked on plain data: every request answered 202 is delivered exactly once
//! to every watcher of its account, or that watcher reported a gap covering it; and no
//! watcher says "nothing was missed" when something was.
//!
//! The inputs are what the load recorded (every request with its send and answer times and
//! outcome) and what each watcher incarnation printed (deliveries, gap lines, and the times
//! it said "nothing was missed"), so this module has no processes and is tested on its own.

use std::collections::HashSet;
use std::fmt;
use std::time::Duration;

use super::ident::{Key, Seen};

/// How long after a 202 a watcher may take to report the event's loss as a gap, and how
/// long before a watcher's end an event must have been accepted to be expected by it.
pub const HORIZON: Duration = Duration::from_secs(30);

/// At most this many examples per kind of finding in a report.
const EXAMPLES: usize = 20;

/// A point in the run: microseconds since it started (compact: millions are kept).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct At(pub u64);

impl At {
    pub fn from_duration(d: Duration) -> At {
        At(u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
    }

    pub fn secs(s: f64) -> At {
        At((s * 1e6) as u64)
    }

    pub fn plus(self, d: Duration) -> At {
        At(self.0.saturating_add(At::from_duration(d).0))
    }

    pub fn as_secs(self) -> f64 {
        self.0 as f64 / 1e6
    }
}

impl fmt::Debug for At {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:.3}s", self.as_secs())
    }
}

/// How a request ended, as the client saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// 202: the event must reach every watcher of its account.
    Accepted,
    /// 503: refused, so it must not arrive anywhere.
    Refused,
    /// No answer (the connection failed): it may or may not have been accepted, so it need
    /// not arrive, but must not arrive twice.
    Unknown,
}

/// One request the load sent (32 bytes: millions are kept).
#[derive(Debug, Clone, Copy)]
pub struct Request {
    pub account: u32,
    pub key: Key,
    pub len: u16,
    /// When its bytes were written: ingest cannot have accepted it earlier.
    pub sent: At,
    /// When its answer (or the connection's failure) arrived.
    pub answered: At,
    pub outcome: Outcome,
}

/// One event a watcher printed (16 bytes: millions are kept).
#[derive(Debug, Clone, Copy)]
pub struct Delivery {
    pub key: Key,
    /// `u32::MAX` for an account id beyond what this test uses.
    pub account: u32,
    pub len: u16,
    pub intact: bool,
}

impl Delivery {
    pub fn new(account: u64, seen: Seen) -> Delivery {
        Delivery {
            key: seen.key,
            account: u32::try_from(account).unwrap_or(u32::MAX),
            len: seen.len,
            intact: seen.intact,
        }
    }
}

/// Which accounts a watcher asked for.
#[derive(Debug, Clone)]
pub enum Accounts {
    All,
    Only(HashSet<u32>),
}

impl Accounts {
    fn contains(&self, account: u32) -> bool {
        match self {
            Accounts::All => true,
            Accounts::Only(set) => set.contains(&account),
        }
    }
}

/// Which accepted events a watcher incarnation owes.
#[derive(Debug, Clone, Copy)]
pub enum Expect {
    /// Every one: it watched from before the load to after everything arrived.
    Everything,
    /// Those sent after it was live, and (if it was stopped early) answered at least
    /// [`HORIZON`] before it was stopped.
    Between { live: At, stopped: Option<At> },
    /// None: it never became live. Duplicates and strays are still checked.
    Nothing,
}

/// What one watcher process printed, and what it owes.
#[derive(Debug, Clone)]
pub struct Incarnation {
    pub name: String,
    pub accounts: Accounts,
    pub expect: Expect,
    pub deliveries: Vec<Delivery>,
    /// Arrival times of its gap lines.
    pub gaps: Vec<At>,
    /// Arrival times of its "nothing was missed" status lines.
    pub nothing_missed: Vec<At>,
    /// Lines on stdout that were neither an event nor a gap.
    pub bad_lines: Vec<String>,
}

/// An accepted event that did not arrive.
#[derive(Debug, Clone, Copy)]
pub struct Missing {
    pub account: u32,
    pub key: Key,
    pub sent: At,
    pub answered: At,
}

/// What the check found for one incarnation.
#[derive(Debug, Default)]
pub struct Verdict {
    pub name: String,
    pub delivered: usize,
    pub expected: usize,
    pub gaps: usize,
    pub duplicates: usize,
    pub covered_missing: usize,
    /// Accepted events owed and missing with no gap covering them, by send time.
    pub uncovered: Vec<Missing>,
    /// How many of those provably reached busd: this watcher got an event that the same
    /// ingest process accepted after their 202, and ingest forwards in order. The others
    /// may never have left ingest.
    pub reached_busd: usize,
    /// Of the uncovered ones that reached busd, those answered 202 before a "nothing was
    /// missed" line (within [`HORIZON`]): the watcher vouched for what it had lost.
    pub lies: Vec<Missing>,
    /// Failure descriptions other than missing events, with examples.
    pub problems: Vec<String>,
}

impl Verdict {
    pub fn passed(&self) -> bool {
        self.problems.is_empty() && self.uncovered.is_empty()
    }
}

/// Where no request has an id.
const NO_REQUEST: u32 = u32::MAX;

/// The requests, indexed for lookups by delivered data. Ids are dense (the load counts
/// them from 1), so plain vectors index them: a few bytes per request even for millions.
pub struct Ledger<'a> {
    requests: &'a [Request],
    /// Request index by id.
    by_id: Vec<u32>,
    /// Short-data requests as (account, key, request index), sorted: each run of equal
    /// (account, key) is one multiset.
    shorts: Vec<(u32, Key, u32)>,
    /// ingest restarts, from SIGTERM to the new process listening, sorted: between two,
    /// one ingest process accepted everything, in order.
    restarts: Vec<(At, At)>,
}

impl<'a> Ledger<'a> {
    pub fn new(requests: &'a [Request], mut restarts: Vec<(At, At)>) -> Ledger<'a> {
        assert!(
            requests.len() < NO_REQUEST as usize,
            "too many requests to index"
        );
        let max_id = requests.iter().filter_map(|r| r.key.as_id()).max();
        let mut by_id = vec![NO_REQUEST; max_id.map_or(0, |m| m as usize + 1)];
        let mut shorts = Vec::new();
        for (i, r) in requests.iter().enumerate() {
            match r.key.as_id() {
                Some(id) => {
                    let slot = &mut by_id[id as usize];
                    assert_eq!(*slot, NO_REQUEST, "the load reused id {id:#x}");
                    *slot = i as u32;
                }
                None => shorts.push((r.account, r.key, i as u32)),
            }
        }
        shorts.sort_unstable();
        restarts.sort();
        Ledger {
            requests,
            by_id,
            shorts,
            restarts,
        }
    }

    /// Checks one incarnation against the promise.
    pub fn check(&self, inc: &Incarnation) -> Verdict {
        let mut scan = Scan {
            ledger: self,
            inc,
            gaps: sorted(&inc.gaps),
            claims: sorted(&inc.nothing_missed),
            reached: Vec::new(),
            verdict: Verdict {
                name: inc.name.clone(),
                delivered: inc.deliveries.len(),
                gaps: inc.gaps.len(),
                ..Verdict::default()
            },
            findings: Findings::default(),
        };
        let (ids, shorts) = scan.tally();
        scan.check_ids(&ids);
        scan.check_shorts(&shorts);
        scan.finish()
    }

    /// Which stretch between ingest restarts `t` falls in; `None` during a restart.
    fn segment(&self, t: At) -> Option<usize> {
        let started = self.restarts.partition_point(|&(from, _)| from <= t);
        match started.checked_sub(1).map(|i| self.restarts[i]) {
            Some((_, to)) if t <= to => None,
            _ => Some(started),
        }
    }

    /// The segment a request was certainly accepted in, if its whole exchange fell in one.
    fn accepted_in(&self, r: &Request) -> Option<usize> {
        let segment = self.segment(r.sent)?;
        (self.segment(r.answered) == Some(segment)).then_some(segment)
    }

    fn request(&self, id: u64) -> Option<&Request> {
        match self.by_id.get(id as usize) {
            Some(&i) if i != NO_REQUEST => Some(&self.requests[i as usize]),
            _ => None,
        }
    }

    /// The requests that sent short data `key` to `account`.
    fn short_requests(&self, account: u32, key: Key) -> impl Iterator<Item = &Request> {
        let lo = self.shorts.partition_point(|s| (s.0, s.1) < (account, key));
        self.shorts[lo..]
            .iter()
            .take_while(move |s| (s.0, s.1) == (account, key))
            .map(|&(_, _, i)| &self.requests[i as usize])
    }
}

/// Order per account, where it is owed: an event answered 202 before another event of the
/// same account was sent must be delivered before it. Only events with ids can be told
/// apart (short data repeats), and only a 202 orders anything: an event whose answer never
/// came may still be on its way. Returns how many accepted events were checked and the ones
/// that arrived after an event sent once they had been answered, as (account, the late
/// one's key, the earlier-delivered one's key).
pub fn out_of_order(ledger: &Ledger, deliveries: &[Delivery]) -> (usize, Vec<(u32, Key, Key)>) {
    use std::collections::HashMap;
    // Per account, the latest-sent event delivered so far.
    let mut latest: HashMap<u32, &Request> = HashMap::new();
    let (mut checked, mut late) = (0, Vec::new());
    for d in deliveries {
        let Some(r) = d.key.as_id().and_then(|id| ledger.request(id)) else {
            continue;
        };
        if r.outcome == Outcome::Accepted {
            checked += 1;
            if let Some(after) = latest.get(&r.account).filter(|l| l.sent > r.answered) {
                late.push((r.account, r.key, after.key));
            }
        }
        let slot = latest.entry(r.account).or_insert(r);
        if r.sent > slot.sent {
            *slot = r;
        }
    }
    (checked, late)
}

fn sorted(times: &[At]) -> Vec<At> {
    let mut times = times.to_vec();
    times.sort();
    times
}

/// One incarnation's check in progress.
struct Scan<'a> {
    ledger: &'a Ledger<'a>,
    inc: &'a Incarnation,
    gaps: Vec<At>,
    claims: Vec<At>,
    /// Per ingest segment, the latest send time of an event of it this watcher got.
    reached: Vec<Option<At>>,
    verdict: Verdict,
    findings: Findings,
}

impl Scan<'_> {
    fn finish(mut self) -> Verdict {
        if !self.inc.bad_lines.is_empty() {
            self.findings.add(
                "lines on stdout that are neither an event nor a gap",
                self.inc.bad_lines.iter().cloned(),
            );
        }
        self.verdict.uncovered.sort_by_key(|m| m.sent);
        self.verdict.lies.sort_by_key(|m| m.sent);
        self.verdict.duplicates = self.findings.duplicates;
        self.verdict.problems = self.findings.into_messages();
        self.verdict
    }

    /// Counts deliveries per id (saturating at 255) and collects the short ones sorted,
    /// noting strays and how far each ingest segment's events got, as it goes.
    fn tally(&mut self) -> (Vec<u8>, Vec<(u32, Key)>) {
        let mut ids = vec![0u8; self.ledger.by_id.len()];
        let mut shorts = Vec::new();
        for d in &self.inc.deliveries {
            if !self.inc.accounts.contains(d.account) {
                self.findings
                    .note("events of accounts the watcher did not ask for", d);
            }
            let Some(id) = d.key.as_id() else {
                shorts.push((d.account, d.key));
                continue;
            };
            let Some(r) = self.ledger.request(id) else {
                self.findings.note("events no request sent", d);
                continue;
            };
            ids[id as usize] = ids[id as usize].saturating_add(1);
            self.check_content(r, d);
            self.note_reached(r);
        }
        shorts.sort_unstable();
        (ids, shorts)
    }

    fn note_reached(&mut self, r: &Request) {
        let Some(segment) = self.ledger.segment(r.sent) else {
            return;
        };
        if self.reached.len() <= segment {
            self.reached.resize(segment + 1, None);
        }
        let latest = &mut self.reached[segment];
        *latest = (*latest).max(Some(r.sent));
    }

    /// A delivered id must have come to its request's account, with its bytes, and not
    /// have been refused.
    fn check_content(&mut self, r: &Request, d: &Delivery) {
        if r.account != d.account {
            self.findings
                .note("events delivered under another account", d);
        }
        if r.len != d.len || !d.intact {
            self.findings
                .note("events whose data differs from what was sent", d);
        }
        if r.outcome == Outcome::Refused {
            self.findings.note(
                "events delivered although their request was refused (503)",
                d,
            );
        }
    }

    fn check_ids(&mut self, ids: &[u8]) {
        for (id, &n) in ids.iter().enumerate().filter(|(_, n)| **n > 1) {
            self.findings.duplicates += usize::from(n - 1);
            self.findings.add(
                "events delivered more than once",
                [format!("{:?} x{n}", Key::id(id as u64))],
            );
        }
        let ledger = self.ledger;
        for r in ledger.requests.iter().filter(|r| owes(self.inc, r)) {
            let Some(id) = r.key.as_id() else { continue };
            self.verdict.expected += 1;
            if ids[id as usize] == 0 {
                if covering(r, &self.gaps).is_some() {
                    self.verdict.covered_missing += 1;
                } else {
                    self.uncovered(r);
                }
            }
        }
    }

    /// Short data is not unique, so it is checked as a multiset per (account, data): more
    /// deliveries than requests that may have been accepted are duplicates, and fewer than
    /// those owed are missing (as few as can be proven: a delivery is credited to an owed
    /// request before an unknown one, covered instances are excused first, and the latest
    /// instances not vouched for by a "nothing was missed" line are blamed first).
    fn check_shorts(&mut self, delivered: &[(u32, Key)]) {
        for group in delivered.chunk_by(|a, b| a == b) {
            let (account, key) = group[0];
            let possible = self
                .ledger
                .short_requests(account, key)
                .filter(|r| r.outcome != Outcome::Refused)
                .count();
            if group.len() > possible {
                self.findings.duplicates += group.len() - possible;
                self.findings.add(
                    "short data delivered more often than it was accepted",
                    [format!(
                        "account {account} {key:?}: {} deliveries, {possible} accepted or unknown",
                        group.len()
                    )],
                );
            }
        }
        let ledger = self.ledger;
        for group in ledger.shorts.chunk_by(|a, b| (a.0, a.1) == (b.0, b.1)) {
            let (account, key, _) = group[0];
            let owed: Vec<&Request> = group
                .iter()
                .map(|&(_, _, i)| &ledger.requests[i as usize])
                .filter(|r| owes(self.inc, r))
                .collect();
            self.verdict.expected += owed.len();
            let lo = delivered.partition_point(|&d| d < (account, key));
            let hi = delivered.partition_point(|&d| d <= (account, key));
            let mut missing = owed.len().saturating_sub(hi - lo);
            let (covered, uncovered): (Vec<&Request>, Vec<&Request>) = owed
                .into_iter()
                .partition(|r| covering(r, &self.gaps).is_some());
            let excused = missing.min(covered.len());
            self.verdict.covered_missing += excused;
            missing -= excused;
            let (unvouched, vouched): (Vec<&Request>, Vec<&Request>) =
                uncovered.into_iter().partition(|r| !self.vouched(r));
            for r in unvouched
                .into_iter()
                .rev()
                .chain(vouched.into_iter().rev())
                .take(missing)
            {
                self.uncovered(r);
            }
        }
    }

    /// Whether this watcher got an event that the ingest process which accepted `r`
    /// accepted after `r`'s 202: then `r` was forwarded to busd before it.
    fn reached_busd(&self, r: &Request) -> bool {
        self.ledger
            .accepted_in(r)
            .and_then(|segment| self.reached.get(segment).copied().flatten())
            .is_some_and(|latest| latest > r.answered)
    }

    /// Whether a "nothing was missed" line vouched for `r` having arrived.
    fn vouched(&self, r: &Request) -> bool {
        self.reached_busd(r) && claim_after(r, &self.claims).is_some()
    }

    fn uncovered(&mut self, r: &Request) {
        let missing = Missing {
            account: r.account,
            key: r.key,
            sent: r.sent,
            answered: r.answered,
        };
        self.verdict.uncovered.push(missing);
        if self.reached_busd(r) {
            self.verdict.reached_busd += 1;
            if claim_after(r, &self.claims).is_some() {
                self.verdict.lies.push(missing);
            }
        }
    }
}

/// Whether `inc` owes the accepted event `r`.
fn owes(inc: &Incarnation, r: &Request) -> bool {
    if r.outcome != Outcome::Accepted || !inc.accounts.contains(r.account) {
        return false;
    }
    match inc.expect {
        Expect::Everything => true,
        Expect::Nothing => false,
        Expect::Between { live, stopped } => {
            r.sent > live && stopped.is_none_or(|end| r.answered.plus(HORIZON) <= end)
        }
    }
}

/// The first gap line that may be about `r`: printed after `r` was sent (it cannot be about
/// an event that did not exist yet) and within [`HORIZON`] of its 202.
fn covering(r: &Request, gaps: &[At]) -> Option<At> {
    let first = gaps.partition_point(|&g| g < r.sent);
    gaps.get(first)
        .copied()
        .filter(|&g| g <= r.answered.plus(HORIZON))
}

/// The first "nothing was missed" line after `r` was surely accepted (its 202) and within
/// [`HORIZON`] of it.
fn claim_after(r: &Request, claims: &[At]) -> Option<At> {
    let first = claims.partition_point(|&c| c <= r.answered);
    claims
        .get(first)
        .copied()
        .filter(|&c| c <= r.answered.plus(HORIZON))
}

/// Problems other than missing events, by kind, with a few examples each.
#[derive(Default)]
struct Findings {
    kinds: Vec<(&'static str, usize, Vec<String>)>,
    duplicates: usize,
}

impl Findings {
    fn note(&mut self, kind: &'static str, d: &Delivery) {
        self.add(
            kind,
            [format!(
                "account {} {:?} ({} bytes{})",
                d.account,
                d.key,
                d.len,
                if d.intact { "" } else { ", damaged" }
            )],
        );
    }

    fn add(&mut self, kind: &'static str, examples: impl IntoIterator<Item = String>) {
        let index = match self.kinds.iter().position(|(k, _, _)| *k == kind) {
            Some(i) => i,
            None => {
                self.kinds.push((kind, 0, Vec::new()));
                self.kinds.len() - 1
            }
        };
        let entry = &mut self.kinds[index];
        for example in examples {
            entry.1 += 1;
            if entry.2.len() < EXAMPLES {
                entry.2.push(example);
            }
        }
    }

    fn into_messages(self) -> Vec<String> {
        self.kinds
            .into_iter()
            .map(|(kind, n, examples)| format!("{n} {kind}, e.g. {}", examples.join("; ")))
            .collect()
    }
}

#[cfg(test)]
mod tests;
