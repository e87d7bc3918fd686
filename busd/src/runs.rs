//! A publish's events staged for each plain subscriber as runs: ranges of consecutive
//! events of the batch whose bytes lie back to back. A subscriber taking many events of a
//! batch then gets one queue entry, one shared slice of the batch's bytes, per run rather
//! than one per event: fewer reference counts, queue slots and copies on the fan-out path.

use bytes::Bytes;

use crate::filter::SubKey;
use crate::queue::Entry;

/// The most bytes one run holds: well under an `Events` frame's size
/// ([`crate::subscriber::FRAME_BYTES`]), so a frame always has room for a whole run.
pub const RUN_BYTES: usize = 64 * 1024;

/// One batch's entries, encoded back to back in `bytes`: entry `i` ends at `ends[i]`.
pub struct Encoded<'a> {
    /// Every entry of the batch.
    pub bytes: &'a Bytes,
    /// Where each entry ends.
    pub ends: &'a [usize],
    /// The first entry's seq; the others follow one by one.
    pub first_seq: u64,
}

/// Where entry `index` starts, given where each ends.
fn start(ends: &[usize], index: usize) -> usize {
    match index {
        0 => 0,
        i => ends[i - 1],
    }
}

/// The runs staged during one publish, per subscriber, kept to reuse their allocations.
#[derive(Default)]
pub struct Runs {
    /// Per subscriber key: first and last index of each run, in order.
    per_key: Vec<Vec<(usize, usize)>>,
    /// The keys with a run staged, each once.
    touched: Vec<SubKey>,
    /// A whole batch cut into runs, kept to reuse its allocation ([`Runs::stage_all`]).
    cuts: Vec<(usize, usize)>,
}

impl Runs {
    /// Stages entry `index` of the batch for `key`, extending the key's last run when it
    /// ended just before and stays within [`RUN_BYTES`].
    pub fn stage(&mut self, key: SubKey, index: usize, ends: &[usize]) {
        if key >= self.per_key.len() {
            self.per_key.resize_with(key + 1, Vec::new);
        }
        let runs = &mut self.per_key[key];
        match runs.last_mut() {
            Some((first, last))
                if *last + 1 == index && ends[index] - start(ends, *first) <= RUN_BYTES =>
            {
                *last = index;
            }
            Some(_) => runs.push((index, index)),
            None => {
                self.touched.push(key);
                runs.push((index, index));
            }
        }
    }

    /// Stages every entry of the batch (entries end at `ends`) for each of `keys`, none of
    /// which has anything staged from it yet: the batch is cut into runs of at most
    /// [`RUN_BYTES`] once, and each key gets them all, so a subscriber taking every event
    /// costs a publish a few runs rather than a step per event.
    pub fn stage_all(&mut self, keys: &[SubKey], ends: &[usize]) {
        let Some(&largest) = keys.iter().max() else {
            return;
        };
        if largest >= self.per_key.len() {
            self.per_key.resize_with(largest + 1, Vec::new);
        }
        let mut cuts = std::mem::take(&mut self.cuts);
        cuts.clear();
        let mut first = 0;
        for index in 0..ends.len() {
            if index > first && ends[index] - start(ends, first) > RUN_BYTES {
                cuts.push((first, index - 1));
                first = index;
            }
        }
        if !ends.is_empty() {
            cuts.push((first, ends.len() - 1));
        }
        for &key in keys {
            let runs = &mut self.per_key[key];
            if runs.is_empty() && !cuts.is_empty() {
                self.touched.push(key);
            }
            runs.extend_from_slice(&cuts);
        }
        self.cuts = cuts;
    }

    /// Forgets whatever is staged: runs are indices into one batch, meaningless for the next.
    pub fn clear(&mut self) {
        for key in self.touched.drain(..) {
            self.per_key[key].clear();
        }
    }

    /// Hands every staged run to `each` as an entry of `batch`, subscriber by subscriber
    /// and in order, leaving nothing staged. `account` gives an entry's account.
    pub fn drain(
        &mut self,
        batch: &Encoded<'_>,
        account: impl Fn(usize) -> u64,
        mut each: impl FnMut(SubKey, Entry),
    ) {
        for key in self.touched.drain(..) {
            for (first, last) in self.per_key[key].drain(..) {
                let bytes = batch
                    .bytes
                    .slice(start(batch.ends, first)..batch.ends[last]);
                let entry = Entry {
                    seq: batch.first_seq + first as u64,
                    account_id: account(first),
                    bytes,
                    count: (last - first + 1) as u64,
                };
                each(key, entry);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn staged(runs: &mut Runs, batch: &Encoded<'_>) -> Vec<(SubKey, u64, u64, usize)> {
        let mut out = Vec::new();
        runs.drain(
            batch,
            |i| i as u64,
            |key, e| out.push((key, e.seq, e.count, e.bytes.len())),
        );
        out
    }

    #[test]
    fn consecutive_entries_make_one_run_per_subscriber() {
        let bytes = Bytes::from(vec![0u8; 50]);
        let ends: Vec<usize> = (1..=5).map(|i| i * 10).collect();
        let batch = Encoded {
            bytes: &bytes,
            ends: &ends,
            first_seq: 100,
        };
        let mut runs = Runs::default();
        for index in 0..5 {
            runs.stage(7, index, &ends);
            if index != 2 {
                runs.stage(3, index, &ends);
            }
        }
        assert_eq!(
            staged(&mut runs, &batch),
            vec![(7, 100, 5, 50), (3, 100, 2, 20), (3, 103, 2, 20)]
        );
        assert!(staged(&mut runs, &batch).is_empty(), "nothing stays staged");
    }

    #[test]
    fn a_whole_batch_is_staged_as_runs_for_every_key_that_takes_all() {
        let ends: Vec<usize> = (1..=5).map(|i| i * (RUN_BYTES / 2)).collect();
        let bytes = Bytes::from(vec![0u8; ends[4]]);
        let batch = Encoded {
            bytes: &bytes,
            ends: &ends,
            first_seq: 10,
        };
        let mut runs = Runs::default();
        runs.stage(1, 3, &ends);
        runs.stage_all(&[4, 0], &ends);
        let half = RUN_BYTES / 2;
        let whole = |key| {
            [
                (key, 10, 2, 2 * half),
                (key, 12, 2, 2 * half),
                (key, 14, 1, half),
            ]
        };
        let mut expected = vec![(1, 13, 1, half)];
        expected.extend(whole(4));
        expected.extend(whole(0));
        assert_eq!(staged(&mut runs, &batch), expected);

        let one = Bytes::from(vec![0u8; 3 * RUN_BYTES]);
        let ends = [3 * RUN_BYTES];
        let batch = Encoded {
            bytes: &one,
            ends: &ends,
            first_seq: 1,
        };
        runs.stage_all(&[2], &ends);
        runs.stage_all(&[], &ends);
        assert_eq!(
            staged(&mut runs, &batch),
            vec![(2, 1, 1, 3 * RUN_BYTES)],
            "an entry larger than a run is a run of its own"
        );
        runs.stage_all(&[2], &[]);
        assert!(
            staged(&mut runs, &batch).is_empty(),
            "an empty batch stages nothing"
        );
    }

    #[test]
    fn clear_forgets_runs_of_a_batch_that_was_not_drained() {
        let bytes = Bytes::from(vec![0u8; 20]);
        let ends = [10, 20];
        let batch = Encoded {
            bytes: &bytes,
            ends: &ends,
            first_seq: 1,
        };
        let mut runs = Runs::default();
        runs.stage(2, 0, &ends);
        runs.clear();
        runs.stage(2, 1, &ends);
        assert_eq!(staged(&mut runs, &batch), vec![(2, 2, 1, 10)]);
    }

    #[test]
    fn a_run_stops_growing_at_its_byte_limit() {
        let ends: Vec<usize> = (1..=3).map(|i| i * (RUN_BYTES / 2)).collect();
        let bytes = Bytes::from(vec![0u8; ends[2]]);
        let batch = Encoded {
            bytes: &bytes,
            ends: &ends,
            first_seq: 1,
        };
        let mut runs = Runs::default();
        for index in 0..3 {
            runs.stage(0, index, &ends);
        }
        let half = RUN_BYTES / 2;
        assert_eq!(
            staged(&mut runs, &batch),
            vec![(0, 1, 2, 2 * half), (0, 3, 1, half)]
        );
    }
}
