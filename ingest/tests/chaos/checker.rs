//! The promise, checked on plain data: every request answered 202 is delivered exactly once
//! to every watcher of its account, or that watcher reported a gap covering it; and no
//! watcher says "nothing was missed" when something was.
//!
//! The inputs are what the load recorded (every request with its send and answer times and
//! outcome) and what each watcher incarnation printed (deliveries, gap lines, and the times
//! it said "nothing was missed"), so this module has no processes and is tested on its own.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::time::Duration;

use super::ident::{Key, Seen, Short};

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

/// One request the load sent.
#[derive(Debug, Clone, Copy)]
pub struct Request {
    pub account: u64,
    pub key: Key,
    pub len: u32,
    /// When its bytes were written: ingest cannot have accepted it earlier.
    pub sent: At,
    /// When its answer (or the connection's failure) arrived.
    pub answered: At,
    pub outcome: Outcome,
}

/// One event a watcher printed.
#[derive(Debug, Clone, Copy)]
pub struct Delivery {
    pub account: u64,
    pub seen: Seen,
}

/// Which accounts a watcher asked for.
#[derive(Debug, Clone)]
pub enum Accounts {
    All,
    Only(HashSet<u64>),
}

impl Accounts {
    fn contains(&self, account: u64) -> bool {
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
    pub account: u64,
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
    /// Accepted events owed and missing with no gap covering them, in request order.
    pub uncovered: Vec<Missing>,
    /// Of those, the ones sent before a "nothing was missed" line that came within
    /// [`HORIZON`] of their 202.
    pub lies: Vec<Missing>,
    /// Failure descriptions other than missing events, with examples.
    pub problems: Vec<String>,
}

impl Verdict {
    pub fn passed(&self) -> bool {
        self.problems.is_empty() && self.uncovered.is_empty()
    }
}

/// The requests, indexed for lookups by delivered data.
pub struct Ledger<'a> {
    requests: &'a [Request],
    by_id: HashMap<u64, usize>,
    by_short: HashMap<(u64, Short), Vec<usize>>,
}

impl<'a> Ledger<'a> {
    pub fn new(requests: &'a [Request]) -> Ledger<'a> {
        let mut by_id = HashMap::with_capacity(requests.len());
        let mut by_short: HashMap<(u64, Short), Vec<usize>> = HashMap::new();
        for (i, r) in requests.iter().enumerate() {
            match r.key {
                Key::Id(id) => {
                    let previous = by_id.insert(id, i);
                    assert!(previous.is_none(), "the load reused id {id:#x}");
                }
                Key::Short(short) => by_short.entry((r.account, short)).or_default().push(i),
            }
        }
        Ledger {
            requests,
            by_id,
            by_short,
        }
    }

    /// Checks one incarnation against the promise.
    pub fn check(&self, inc: &Incarnation) -> Verdict {
        let mut verdict = Verdict {
            name: inc.name.clone(),
            delivered: inc.deliveries.len(),
            gaps: inc.gaps.len(),
            ..Verdict::default()
        };
        let mut gaps = inc.gaps.clone();
        gaps.sort();
        let mut claims = inc.nothing_missed.clone();
        claims.sort();
        let mut findings = Findings::default();
        let (ids, shorts) = self.tally(inc, &mut findings);
        self.check_ids(inc, &ids, &gaps, &claims, &mut verdict, &mut findings);
        self.check_shorts(inc, &shorts, &gaps, &claims, &mut verdict, &mut findings);
        if !inc.bad_lines.is_empty() {
            findings.add(
                "lines on stdout that are neither an event nor a gap",
                inc.bad_lines.iter().cloned(),
            );
        }
        verdict.duplicates = findings.duplicates;
        verdict.problems = findings.into_messages();
        verdict
    }

    /// Counts deliveries per id and per short key, noting strays as it goes.
    fn tally(
        &self,
        inc: &Incarnation,
        findings: &mut Findings,
    ) -> (HashMap<u64, u32>, HashMap<(u64, Short), u32>) {
        let mut ids: HashMap<u64, u32> = HashMap::new();
        let mut shorts: HashMap<(u64, Short), u32> = HashMap::new();
        for d in &inc.deliveries {
            if !inc.accounts.contains(d.account) {
                findings.note("events of accounts the watcher did not ask for", d);
            }
            match d.seen.key {
                Key::Id(id) => {
                    *ids.entry(id).or_default() += 1;
                    self.check_content(id, d, findings);
                }
                Key::Short(short) => *shorts.entry((d.account, short)).or_default() += 1,
            }
        }
        (ids, shorts)
    }

    /// A delivered id must be one the load sent, to that account, with those bytes, and
    /// not refused.
    fn check_content(&self, id: u64, d: &Delivery, findings: &mut Findings) {
        let Some(&i) = self.by_id.get(&id) else {
            return findings.note("events no request sent", d);
        };
        let r = &self.requests[i];
        if r.account != d.account {
            findings.note("events delivered under another account", d);
        }
        if r.len != d.seen.len || !d.seen.intact {
            findings.note("events whose data differs from what was sent", d);
        }
        if r.outcome == Outcome::Refused {
            findings.note(
                "events delivered although their request was refused (503)",
                d,
            );
        }
    }

    fn check_ids(
        &self,
        inc: &Incarnation,
        ids: &HashMap<u64, u32>,
        gaps: &[At],
        claims: &[At],
        verdict: &mut Verdict,
        findings: &mut Findings,
    ) {
        for (&id, &n) in ids {
            if n > 1 {
                findings.duplicates += (n - 1) as usize;
                findings.add(
                    "events delivered more than once",
                    [format!("{:?} x{n}", Key::Id(id))],
                );
            }
        }
        for r in self.requests.iter().filter(|r| matches!(r.key, Key::Id(_))) {
            if !owes(inc, r) {
                continue;
            }
            verdict.expected += 1;
            let Key::Id(id) = r.key else { continue };
            if !ids.contains_key(&id) {
                classify_missing(r, gaps, claims, verdict);
            }
        }
    }

    /// Short data is not unique, so it is checked as a multiset per (account, data): more
    /// deliveries than requests that may have been accepted are duplicates, and fewer than
    /// those owed are missing (as few as can be proven: a delivery is credited to an owed
    /// request before an unknown one, covered instances are excused first, and instances
    /// a "nothing was missed" line vouched for are blamed last).
    fn check_shorts(
        &self,
        inc: &Incarnation,
        shorts: &HashMap<(u64, Short), u32>,
        gaps: &[At],
        claims: &[At],
        verdict: &mut Verdict,
        findings: &mut Findings,
    ) {
        for (key, &n) in shorts {
            let possible = self.by_short.get(key).map_or(0, |requests| {
                requests
                    .iter()
                    .filter(|&&i| self.requests[i].outcome != Outcome::Refused)
                    .count()
            });
            if n as usize > possible {
                findings.duplicates += n as usize - possible;
                findings.add(
                    "short data delivered more often than it was accepted",
                    [format!(
                        "account {} {:?}: {n} deliveries, {possible} accepted or unknown",
                        key.0, key.1
                    )],
                );
            }
        }
        for (key, requests) in &self.by_short {
            let owed: Vec<&Request> = requests
                .iter()
                .map(|&i| &self.requests[i])
                .filter(|r| owes(inc, r))
                .collect();
            verdict.expected += owed.len();
            let delivered = shorts.get(key).copied().unwrap_or(0) as usize;
            let mut missing = owed.len().saturating_sub(delivered);
            let (covered, uncovered): (Vec<&Request>, Vec<&Request>) =
                owed.into_iter().partition(|r| covering(r, gaps).is_some());
            let excused = missing.min(covered.len());
            verdict.covered_missing += excused;
            missing -= excused;
            // Which instances are missing is unknowable: blame those no "nothing was
            // missed" line vouched for first, so a lie is only reported when proven.
            let (unclaimed, claimed): (Vec<&Request>, Vec<&Request>) = uncovered
                .into_iter()
                .partition(|r| covering(r, claims).is_none());
            for r in unclaimed.into_iter().chain(claimed).take(missing) {
                classify_uncovered(r, claims, verdict);
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

fn classify_missing(r: &Request, gaps: &[At], claims: &[At], verdict: &mut Verdict) {
    if covering(r, gaps).is_some() {
        verdict.covered_missing += 1;
    } else {
        classify_uncovered(r, claims, verdict);
    }
}

/// An uncovered missing event; a lie if a "nothing was missed" came after it was sent and
/// within [`HORIZON`] of its 202.
fn classify_uncovered(r: &Request, claims: &[At], verdict: &mut Verdict) {
    let missing = Missing {
        account: r.account,
        key: r.key,
        sent: r.sent,
        answered: r.answered,
    };
    verdict.uncovered.push(missing);
    if covering(r, claims).is_some() {
        verdict.lies.push(missing);
    }
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
                d.seen.key,
                d.seen.len,
                if d.seen.intact { "" } else { ", damaged" }
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
