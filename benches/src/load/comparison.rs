//! The report of `loadbench compare OLD NEW`: two sluice builds measured in alternating rounds
//! on the same core, each scenario summed up per build (best and median req/s, latency) and as
//! the new/old ratio, so a change to the hot path shows up as one number per scenario.

use super::wrk::WrkResult;
use std::fmt::Write;

/// What the rounds of one build in one scenario come to.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Summary {
    pub rounds: usize,
    pub best_rps: f64,
    /// The median of the rounds (the mean of the middle two for an even count).
    pub median_rps: f64,
    /// Medians over the rounds, each percentile on its own.
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Non-2xx answers and socket errors over all rounds.
    pub errors: u64,
}

impl Summary {
    /// The summary of `rounds`; `None` when there are none.
    #[must_use]
    pub fn of(rounds: &[WrkResult]) -> Option<Summary> {
        if rounds.is_empty() {
            return None;
        }
        let figure = |f: fn(&WrkResult) -> f64| median(rounds.iter().map(f).collect());
        Some(Summary {
            rounds: rounds.len(),
            best_rps: rounds.iter().map(|r| r.rps).fold(f64::MIN, f64::max),
            median_rps: figure(|r| r.rps),
            p50_ms: figure(|r| r.p50_ms),
            p99_ms: figure(|r| r.p99_ms),
            errors: rounds.iter().map(|r| r.errors).sum(),
        })
    }
}

/// The median of `values` (the mean of the middle two for an even count; 0 for none).
#[must_use]
pub fn median(mut values: Vec<f64>) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len().is_multiple_of(2) {
        (values[mid - 1] + values[mid]) / 2.0
    } else {
        values[mid]
    }
}

/// One scenario, both builds.
#[derive(Debug, Clone)]
pub struct ScenarioComparison {
    pub scenario: &'static str,
    pub old: Summary,
    pub new: Summary,
}

/// Everything one compare run measured.
#[derive(Debug, Clone, Default)]
pub struct Comparison {
    pub machine: String,
    pub old_bin: String,
    pub new_bin: String,
    pub seconds: u64,
    pub scenarios: Vec<ScenarioComparison>,
}

impl Comparison {
    /// The report as Markdown: how it was measured, then one table.
    #[must_use]
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "# sluice compare: new vs old build\n\nMachine: {}. Old: `{}`. New: `{}`. Each build runs alone on CPU 0 (`taskset -c 0`, 1 worker thread); wrk (1 thread, 32 connections) and the upstream (nginx `return 200` with a fixed completion) share CPU 1. Rounds of {} s alternate old, new, old, new; p50 and p99 are the medians over the rounds.\n",
            self.machine, self.old_bin, self.new_bin, self.seconds
        );
        let _ = writeln!(
            s,
            "| scenario | build | rounds | best req/s | median req/s | p50 ms | p99 ms | errors |\n|---|---|---|---|---|---|---|---|"
        );
        for c in &self.scenarios {
            for (build, m) in [("old", &c.old), ("new", &c.new)] {
                let _ = writeln!(
                    s,
                    "| {} | {build} | {} | {:.0} | {:.0} | {:.3} | {:.3} | {} |",
                    c.scenario, m.rounds, m.best_rps, m.median_rps, m.p50_ms, m.p99_ms, m.errors
                );
            }
            let _ = writeln!(
                s,
                "| {} | new/old | | {:.3}× | {:.3}× | | | |",
                c.scenario,
                c.new.best_rps / c.old.best_rps,
                c.new.median_rps / c.old.median_rps
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::{Comparison, ScenarioComparison, Summary};
    use crate::load::wrk::WrkResult;

    fn round(rps: f64, p99_ms: f64) -> WrkResult {
        WrkResult {
            rps,
            p50_ms: p99_ms / 2.0,
            p99_ms,
            errors: 1,
            requests: 0,
        }
    }

    #[test]
    fn summary_keeps_the_best_and_the_median_of_the_rounds() {
        let odd = Summary::of(&[round(300.0, 3.0), round(100.0, 9.0), round(200.0, 1.0)])
            .expect("three rounds");
        assert_eq!(
            (
                odd.rounds,
                odd.best_rps,
                odd.median_rps,
                odd.p99_ms,
                odd.errors
            ),
            (3, 300.0, 200.0, 3.0, 3)
        );
        let even = Summary::of(&[
            round(100.0, 1.0),
            round(400.0, 1.0),
            round(200.0, 1.0),
            round(300.0, 1.0),
        ])
        .expect("four rounds");
        assert_eq!((even.best_rps, even.median_rps), (400.0, 250.0));
        assert!(Summary::of(&[]).is_none());
    }

    #[test]
    fn markdown_gives_new_over_old_for_best_and_median() {
        let old = Summary::of(&[round(100.0, 1.0), round(200.0, 1.0)]).expect("rounds");
        let new = Summary::of(&[round(110.0, 1.0), round(150.0, 1.0)]).expect("rounds");
        let md = Comparison {
            machine: "2 cores, test CPU".into(),
            old_bin: "old/sluice".into(),
            new_bin: "new/sluice".into(),
            seconds: 5,
            scenarios: vec![ScenarioComparison {
                scenario: "passthrough",
                old,
                new,
            }],
        }
        .markdown();
        assert!(md.contains("Machine: 2 cores, test CPU."), "{md}");
        assert!(md.contains("| passthrough | old | 2 | 200 | 150 |"), "{md}");
        assert!(
            md.contains("| passthrough | new/old | | 0.750× | 0.867× |"),
            "{md}"
        );
    }
}
