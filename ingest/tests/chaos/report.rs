//! What a finished run found: failures described with examples and the faults around
//! them, and the figures printed for every seed.

use std::collections::BTreeMap;
use std::time::Duration;

use super::checker::{At, Missing, Outcome, Verdict};
use super::load::{ConnError, Outcomes};
use super::schedule::{Done, Kind};
use super::watcher::Record;

/// Missing events shown per finding.
const EXAMPLES: usize = 20;

/// Checks and figures over one finished run.
pub struct Report<'a> {
    pub seed: u64,
    pub outcomes: &'a Outcomes,
    pub faults: &'a [Done],
    /// When the load ran.
    pub window: (At, At),
}

impl Report<'_> {
    /// Adds to `failures` what the load saw go wrong, watchers that did not exit cleanly
    /// on SIGTERM, and every verdict's findings.
    pub fn check(
        &self,
        records: &[Record],
        finished: &[Record],
        verdicts: &[Verdict],
        failures: &mut Vec<String>,
    ) {
        self.check_load(failures);
        for r in records.iter().chain(finished.last()) {
            if !r.exit.is_some_and(|s| s.success()) {
                failures.push(format!("{} exited with {:?} on SIGTERM", r.name, r.exit));
            }
        }
        for verdict in verdicts {
            self.describe(verdict, failures);
        }
    }

    /// Statuses, stalls and connection errors the load saw.
    fn check_load(&self, failures: &mut Vec<String>) {
        let out = self.outcomes;
        if !out.bad_statuses.is_empty() {
            let examples: Vec<String> = out
                .bad_statuses
                .iter()
                .take(5)
                .map(|(at, status, body)| format!("{status} {body} at {at:?}"))
                .collect();
            failures.push(format!(
                "{} answers other than 202 or 503, e.g. {}",
                out.bad_statuses.len(),
                examples.join("; ")
            ));
        }
        if out.stalls > 0 {
            failures.push(format!(
                "{} requests got no answer within 30 s (ingest stalled)",
                out.stalls
            ));
        }
        let unexpected: Vec<&ConnError> = out
            .conn_errors
            .iter()
            .filter(|e| !self.ingest_restarted_during(e))
            .collect();
        if !unexpected.is_empty() {
            let examples: Vec<String> = unexpected
                .iter()
                .take(5)
                .map(|e| format!("{} at {:?} (opened {:?})", e.what, e.at, e.opened))
                .collect();
            failures.push(format!(
                "{} HTTP connections failed though ingest was not restarted while they were \
                 open, e.g. {}",
                unexpected.len(),
                examples.join("; ")
            ));
        }
    }

    /// Whether an ingest restart overlapped the failed connection's life: then the error
    /// (and its requests' unknown outcome) is expected.
    fn ingest_restarted_during(&self, e: &ConnError) -> bool {
        self.faults
            .iter()
            .any(|f| f.kind == Kind::IngestTerm && f.at <= e.at && e.opened <= f.end)
    }

    fn describe(&self, v: &Verdict, failures: &mut Vec<String>) {
        for problem in &v.problems {
            failures.push(format!("{}: {problem}", v.name));
        }
        if !v.lies.is_empty() {
            failures.push(format!(
                "{}: said \"nothing was missed\" after the 202 of {} events that reached busd \
                 and are missing with no gap; {}",
                v.name,
                v.lies.len(),
                self.examples(&v.lies)
            ));
        }
        if !v.uncovered.is_empty() {
            failures.push(format!(
                "{}: {} of {} accepted events missing with no gap covering them, {} of which \
                 provably reached busd ({} more were covered by gaps); {}",
                v.name,
                v.uncovered.len(),
                v.expected,
                v.reached_busd,
                v.covered_missing,
                self.examples(&v.uncovered)
            ));
        }
    }

    /// Up to [`EXAMPLES`] missing events spread over the run, and the faults around them.
    fn examples(&self, missing: &[Missing]) -> String {
        let (Some(first), Some(last)) = (missing.first(), missing.last()) else {
            return String::new();
        };
        let step = missing.len().div_ceil(EXAMPLES);
        let examples: Vec<String> = missing
            .iter()
            .step_by(step)
            .map(|m| {
                format!(
                    "account {} {:?} sent {:?} 202 {:?}",
                    m.account, m.key, m.sent, m.answered
                )
            })
            .collect();
        let around = Duration::from_secs(10);
        let near: Vec<String> = self
            .faults
            .iter()
            .filter(|f| f.end.plus(around) >= first.sent && f.at <= last.answered.plus(around))
            .map(|f| format!("{}@{:?}", f.kind, f.at))
            .collect();
        format!(
            "their 202s from {:?} to {:?}; faults from 10 s before to 10 s after: {}; e.g. {}",
            first.answered,
            last.answered,
            if near.is_empty() {
                "none".into()
            } else {
                near.join(", ")
            },
            examples.join(", ")
        )
    }

    /// The figures printed at the end of every seed: requests and outcomes, rates, faults
    /// by kind, and per watcher incarnation what it got and missed.
    pub fn figures(&self, records: &[Record], finished: &[Record], verdicts: &[Verdict]) -> String {
        let out = self.outcomes;
        let count = |o: Outcome| out.requests.iter().filter(|r| r.outcome == o).count();
        let secs = (self.window.1.as_secs() - self.window.0.as_secs()).max(0.001);
        let accepted = count(Outcome::Accepted);
        let mut by_kind: BTreeMap<Kind, usize> = BTreeMap::new();
        for f in self.faults {
            *by_kind.entry(f.kind).or_default() += 1;
        }
        let faults: Vec<String> = by_kind.iter().map(|(k, n)| format!("{k} {n}")).collect();
        let mut lines = vec![
            format!(
                "CHAOS_SEED={}: {:.1} s of load: {} requests, 202 {}, 503 {}, unknown {}, \
                 other {}; {:.0} events/s, {:.2} MB/s of data accepted",
                self.seed,
                secs,
                out.requests.len(),
                accepted,
                count(Outcome::Refused) - out.bad_statuses.len(),
                count(Outcome::Unknown),
                out.bad_statuses.len(),
                accepted as f64 / secs,
                out.accepted_bytes as f64 / secs / 1e6,
            ),
            format!(
                "  faults: {}",
                if faults.is_empty() {
                    "none".into()
                } else {
                    faults.join(", ")
                }
            ),
        ];
        let all: Vec<&Record> = records.iter().chain(finished).collect();
        for (v, r) in verdicts.iter().zip(&all) {
            lines.push(format!(
                "  {:<15} delivered {:>8} of {:>8} owed; duplicates {}, gaps {}, \
                 covered-missing {}, uncovered-missing {} (reached busd {}, after \
                 \"nothing was missed\" {}), longest silence {:.1}s",
                v.name,
                v.delivered,
                v.expected,
                v.duplicates,
                v.gaps,
                v.covered_missing,
                v.uncovered.len(),
                v.reached_busd,
                v.lies.len(),
                self.longest_silence(r),
            ));
        }
        lines.join("\n")
    }

    /// The longest stretch without a stdout line while the load ran and the watcher lived.
    fn longest_silence(&self, r: &Record) -> f64 {
        let (from, to) = (
            self.window.0.max(r.live.unwrap_or(self.window.0)),
            self.window.1.min(r.stopped),
        );
        let tail = r.printed.last_line.map_or(from, |l| l.max(from));
        r.printed
            .silences
            .iter()
            .map(|&(a, b)| (a.max(from), b.min(to)))
            .chain([(tail, to)])
            .filter(|(a, b)| a < b)
            .map(|(a, b)| b.as_secs() - a.as_secs())
            .fold(0.0, f64::max)
    }
}
