//! Rounds: each row of the HTTP and pub/sub parts is measured several times, the systems
//! taking turns within each round, and reported as its median round.
//!
//! On a shared 2-core machine one measurement of a row moves by 15 to 30% with whatever
//! else runs at that moment, and rows measured minutes apart see different moments. Taking
//! turns puts every system's rounds across the same minutes, and the median keeps one bad
//! or lucky moment from deciding a ratio. Every round's figure is kept in the row.

/// The run whose `key` is the median of all runs (of an even number, the lower of the two
/// middle ones, so a reported figure is always one that was measured), with every run's
/// key in the order measured. `None` when there are no runs.
pub fn median<T>(runs: Vec<(f64, T)>) -> Option<(T, Vec<f64>)> {
    let keys: Vec<f64> = runs.iter().map(|(key, _)| *key).collect();
    let mut runs = runs;
    runs.sort_by(|a, b| a.0.total_cmp(&b.0));
    let middle = runs.len().checked_sub(1)? / 2;
    let (_, run) = runs.into_iter().nth(middle)?;
    Some((run, keys))
}

/// The order in which `count` systems take their turn in round `round`: each round starts
/// one system later, so none is always measured first or right after another's load.
pub fn turns(count: usize, round: usize) -> impl Iterator<Item = usize> {
    (0..count).map(move |i| (i + round) % count)
}

/// A row's note on its rounds: "median of 3 rounds (1.02M, 1.10M, 0.98M)".
pub fn note(keys: &[f64], format: impl Fn(f64) -> String) -> Option<String> {
    if keys.len() < 2 {
        return None;
    }
    let each: Vec<String> = keys.iter().map(|&k| format(k)).collect();
    Some(format!(
        "median of {} rounds ({})",
        keys.len(),
        each.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_median_round_is_reported_with_every_round_in_order() {
        let runs = vec![(3.0, "c"), (1.0, "a"), (2.0, "b")];
        assert_eq!(median(runs), Some(("b", vec![3.0, 1.0, 2.0])));
    }

    #[test]
    fn of_an_even_number_the_lower_middle_round_is_reported() {
        let runs = vec![(4.0, 'd'), (1.0, 'a'), (3.0, 'c'), (2.0, 'b')];
        assert_eq!(median(runs).map(|(run, _)| run), Some('b'));
        assert_eq!(median::<char>(Vec::new()), None);
        assert_eq!(median(vec![(5.0, 'x')]), Some(('x', vec![5.0])));
    }

    #[test]
    fn each_round_starts_one_system_later() {
        assert_eq!(turns(3, 0).collect::<Vec<_>>(), [0, 1, 2]);
        assert_eq!(turns(3, 1).collect::<Vec<_>>(), [1, 2, 0]);
        assert_eq!(turns(3, 5).collect::<Vec<_>>(), [2, 0, 1]);
    }

    #[test]
    fn one_round_needs_no_note() {
        assert_eq!(note(&[1.0], |k| k.to_string()), None);
        assert_eq!(
            note(&[1.0, 2.0], |k| format!("{k:.1}")).as_deref(),
            Some("median of 2 rounds (1.0, 2.0)")
        );
    }
}
