//! The accounting: what each subscriber should get, what it got.
//!
//! Each event's data is `"{seq} {publish_ts_us} {pad}"` (pad: `x`s). Servers
//! may wrap it (in JSON, say) and may send no `id:` at all, so a subscriber
//! finds the first `digits SP digits SP x` in the data and trusts nothing
//! else. Every subscriber knows the sequence numbers addressed to it, in
//! publish order, and keeps one bit per position: missing, duplicate and
//! out-of-order deliveries are counted exactly.
//!
//! Order is promised per publisher only: two publishers' requests race, so a
//! server may rightly deliver publisher 1's event 5 before publisher 0's
//! event 4. Each subscriber therefore checks order per *lane*, one lane per
//! publisher whose events it expects (fanout with N publishers: event `seq`
//! is publisher `seq % N`'s; unicast: all of one user's events go through
//! one publisher, so one lane).

use std::sync::atomic::{AtomicU64, Ordering};

/// `"{seq} {ts} xxx…"`, padded to `size` bytes when that is longer.
pub(crate) fn event_data(seq: u32, ts: u64, size: usize) -> String {
    let mut data = format!("{seq} {ts} ");
    let pad = size.saturating_sub(data.len()).max(1);
    data.push_str(&"x".repeat(pad));
    data
}

/// Finds `seq ts x…` anywhere in `data` (the first occurrence).
pub(crate) fn parse_data(data: &str) -> Option<(u32, u64)> {
    let bytes = data.as_bytes();
    let digits = |from: usize| {
        bytes.get(from..).map_or(0, |rest| {
            rest.iter().take_while(|b| b.is_ascii_digit()).count()
        })
    };
    let mut i = 0;
    // Bounded: `i` grows every round.
    while i < bytes.len() {
        let starts_run = bytes[i].is_ascii_digit() && (i == 0 || !bytes[i - 1].is_ascii_digit());
        if !starts_run {
            i += 1;
            continue;
        }
        let seq_end = i + digits(i);
        let ts_start = seq_end + 1;
        let ts_end = ts_start + digits(ts_start);
        let shaped = bytes.get(seq_end) == Some(&b' ')
            && ts_end > ts_start
            && bytes.get(ts_end) == Some(&b' ')
            && bytes.get(ts_end + 1) == Some(&b'x');
        if shaped {
            if let (Ok(seq), Ok(ts)) = (data[i..seq_end].parse(), data[ts_start..ts_end].parse()) {
                return Some((seq, ts));
            }
        }
        i = seq_end;
    }
    None
}

/// The sequence numbers one subscriber should receive, in publish order.
#[derive(Debug, Clone)]
pub(crate) enum Expect {
    /// `0..events` (fanout: everyone gets everything), sent by `publishers`
    /// publishers: event `seq` by publisher `seq % publishers`, each in
    /// ascending order.
    All { events: u32, publishers: u32 },
    /// These, ascending, all sent by one publisher (unicast: the events
    /// addressed to one user).
    List(Vec<u32>),
}

impl Expect {
    /// Every event, from one publisher.
    #[cfg(test)]
    pub(crate) fn all(events: u32) -> Self {
        Expect::All {
            events,
            publishers: 1,
        }
    }

    fn len(&self) -> usize {
        match self {
            Expect::All { events, .. } => *events as usize,
            Expect::List(list) => list.len(),
        }
    }

    /// Publishers whose order is checked separately (at least 1).
    fn lanes(&self) -> usize {
        match self {
            Expect::All { publishers, .. } => (*publishers).max(1) as usize,
            Expect::List(_) => 1,
        }
    }

    /// Position of `seq` in the expected order and the lane (publisher) it
    /// comes through, `None` if not addressed here.
    fn position(&self, seq: u32) -> Option<(usize, usize)> {
        match self {
            Expect::All { events, .. } => {
                (seq < *events).then(|| (seq as usize, seq as usize % self.lanes()))
            }
            Expect::List(list) => list.binary_search(&seq).ok().map(|pos| (pos, 0)),
        }
    }
}

/// What one subscriber saw.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SubResult {
    /// Bench events received (duplicates and unexpected ones included).
    pub received: u64,
    /// Distinct expected events received.
    pub unique: u64,
    pub duplicates: u64,
    /// Expected events that arrived after one published later by the same
    /// publisher.
    pub out_of_order: u64,
    /// Bench events not addressed to this subscriber (or past `--events`).
    pub unexpected: u64,
    /// Events that are not bench events (e.g. `herald.gap`), or unparsable.
    pub other: u64,
    /// The server ended the stream (or it failed) before the run ended.
    pub disconnected: bool,
}

/// Seen positions of one subscriber.
#[derive(Debug)]
pub(crate) struct SeqTracker {
    expect: Expect,
    seen: Vec<u64>,
    /// Per lane (publisher), the highest position received so far.
    max_pos: Vec<Option<usize>>,
    pub result: SubResult,
}

impl SeqTracker {
    pub(crate) fn new(expect: Expect) -> Self {
        Self {
            seen: vec![0; expect.len().div_ceil(64)],
            max_pos: vec![None; expect.lanes()],
            expect,
            result: SubResult::default(),
        }
    }

    /// Records one bench event; true when it is an expected one not seen
    /// before (what the run's outstanding count goes down by).
    pub(crate) fn record(&mut self, seq: u32) -> bool {
        let r = &mut self.result;
        r.received += 1;
        let Some((pos, lane)) = self.expect.position(seq) else {
            r.unexpected += 1;
            return false;
        };
        let (word, bit) = (pos / 64, 1u64 << (pos % 64));
        let (Some(slot), Some(max_pos)) = (self.seen.get_mut(word), self.max_pos.get_mut(lane))
        else {
            r.unexpected += 1;
            return false;
        };
        if *slot & bit != 0 {
            r.duplicates += 1;
            return false;
        }
        *slot |= bit;
        r.unique += 1;
        match *max_pos {
            Some(max) if pos < max => r.out_of_order += 1,
            _ => *max_pos = Some(pos),
        }
        true
    }

    /// Records an event that is not a bench event.
    pub(crate) fn record_other(&mut self) {
        self.result.other += 1;
    }

    /// Every expected event has arrived.
    pub(crate) fn complete(&self) -> bool {
        self.result.unique >= self.expect.len() as u64
    }

    /// `(expected, missing)`: acknowledged events addressed here, and those of
    /// them that never arrived.
    pub(crate) fn missing(&self, acked: &AckSet) -> (u64, u64) {
        match &self.expect {
            Expect::All { events, .. } => {
                let (mut expected, mut missing) = (0, 0);
                for (i, seen) in self.seen.iter().enumerate() {
                    let mut acked_word = acked.word(i);
                    let bits_left = (*events as usize).saturating_sub(i * 64);
                    if bits_left < 64 {
                        acked_word &= (1u64 << bits_left) - 1;
                    }
                    expected += u64::from(acked_word.count_ones());
                    missing += u64::from((acked_word & !seen).count_ones());
                }
                (expected, missing)
            }
            Expect::List(list) => {
                let (mut expected, mut missing) = (0, 0);
                for (pos, &seq) in list.iter().enumerate() {
                    if acked.contains(seq) {
                        expected += 1;
                        let seen = self
                            .seen
                            .get(pos / 64)
                            .is_some_and(|w| w & (1u64 << (pos % 64)) != 0);
                        missing += u64::from(!seen);
                    }
                }
                (expected, missing)
            }
        }
    }
}

/// The sequence numbers the server acknowledged (2xx), shared by publishers.
#[derive(Debug)]
pub(crate) struct AckSet {
    bits: Vec<AtomicU64>,
}

impl AckSet {
    pub(crate) fn new(events: u32) -> Self {
        Self {
            bits: (0..(events as usize).div_ceil(64))
                .map(|_| AtomicU64::new(0))
                .collect(),
        }
    }

    pub(crate) fn mark(&self, seq: u32) {
        if let Some(word) = self.bits.get(seq as usize / 64) {
            word.fetch_or(1u64 << (seq % 64), Ordering::Relaxed);
        }
    }

    pub(crate) fn contains(&self, seq: u32) -> bool {
        self.word(seq as usize / 64) & (1u64 << (seq % 64)) != 0
    }

    fn word(&self, i: usize) -> u64 {
        self.bits.get(i).map_or(0, |w| w.load(Ordering::Relaxed))
    }

    pub(crate) fn count(&self) -> u64 {
        self.bits
            .iter()
            .map(|w| u64::from(w.load(Ordering::Relaxed).count_ones()))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all_acked(events: u32) -> AckSet {
        let acked = AckSet::new(events);
        for seq in 0..events {
            acked.mark(seq);
        }
        acked
    }

    /// `(received, unique, duplicates, out_of_order, unexpected)`.
    fn counts(t: &SeqTracker) -> (u64, u64, u64, u64, u64) {
        let r = t.result;
        (
            r.received,
            r.unique,
            r.duplicates,
            r.out_of_order,
            r.unexpected,
        )
    }

    fn run(expect: Expect, seqs: &[u32]) -> SeqTracker {
        let mut t = SeqTracker::new(expect);
        for &seq in seqs {
            t.record(seq);
        }
        t
    }

    #[test]
    fn data_round_trips_and_pads() {
        let data = event_data(42, 1_700_000_000_000_000, 100);
        assert_eq!(data.len(), 100);
        assert_eq!(parse_data(&data), Some((42, 1_700_000_000_000_000)));
        assert_eq!(parse_data("0 5 x"), Some((0, 5)));
    }

    #[test]
    fn data_is_found_inside_wrappers() {
        let wrapped = r#"{"channel":"u12","data":{"text":"7 1700000000000001 xxxx"},"n":99}"#;
        assert_eq!(parse_data(wrapped), Some((7, 1_700_000_000_000_001)));
        assert_eq!(parse_data("id 12 34 and 56 78 xy"), Some((56, 78)));
        assert_eq!(parse_data("12 34"), None);
        assert_eq!(parse_data("12 34 y"), None);
        assert_eq!(parse_data("a12 34 "), None);
        assert_eq!(parse_data(""), None);
        assert_eq!(parse_data("99999999999 1 x"), None, "seq over u32");
    }

    #[test]
    fn perfect_stream() {
        let t = run(Expect::all(5), &[0, 1, 2, 3, 4]);
        assert!(t.complete());
        assert_eq!(t.missing(&all_acked(5)), (5, 0));
        assert_eq!(
            t.result,
            SubResult {
                received: 5,
                unique: 5,
                ..SubResult::default()
            }
        );
    }

    #[test]
    fn counts_missing_duplicates_and_reordering() {
        // 3 dropped, 5 duplicated, 7 and 8 swapped (the misbehaving server's pattern).
        let t = run(Expect::all(10), &[0, 1, 2, 4, 5, 5, 6, 8, 7, 9]);
        assert!(!t.complete());
        assert_eq!(t.missing(&all_acked(10)), (10, 1));
        assert_eq!(counts(&t), (10, 9, 1, 1, 0));
    }

    #[test]
    fn out_of_range_is_unexpected_and_order_is_against_the_highest_seen() {
        let t = run(Expect::all(100), &[0, 2, 1, 2, 99, 100, 50]);
        assert_eq!(counts(&t), (7, 5, 1, 2, 1));
        assert_eq!(t.missing(&all_acked(100)), (100, 95));
    }

    #[test]
    fn order_is_checked_per_publisher() {
        // Three publishers: lanes {0,3,6,9}, {1,4,7}, {2,5,8}. Lanes
        // interleave freely; 9 before 6 is the one reordering (lane 0),
        // and 4 after 7 the other (lane 1).
        let three = Expect::All {
            events: 10,
            publishers: 3,
        };
        let t = run(three.clone(), &[1, 0, 2, 7, 3, 5, 4, 9, 6, 8]);
        assert_eq!(counts(&t), (10, 10, 0, 2, 0));
        assert_eq!(t.missing(&all_acked(10)), (10, 0));
        // Published order within every lane, lanes far apart: none.
        let t = run(three, &[2, 5, 8, 0, 3, 6, 9, 1, 4, 7]);
        assert_eq!(counts(&t), (10, 10, 0, 0, 0));
        // With one publisher the same arrival is full of reordering.
        let t = run(Expect::all(10), &[2, 5, 8, 0, 3, 6, 9, 1, 4, 7]);
        assert_eq!(counts(&t).3, 6);
    }

    #[test]
    fn a_user_checks_only_its_own_events() {
        // User owns 3, 10, 11, 40 of 64 events; gets a stranger's 12 and 10 twice.
        let t = run(Expect::List(vec![3, 10, 11, 40]), &[3, 12, 11, 10, 10]);
        assert_eq!(counts(&t), (5, 3, 1, 1, 1));
        assert_eq!(t.missing(&all_acked(64)), (4, 1));
        assert!(!t.complete());
    }

    #[test]
    fn only_acknowledged_events_are_expected() {
        let acked = AckSet::new(130);
        for seq in [0, 1, 64, 129] {
            acked.mark(seq);
        }
        assert_eq!(acked.count(), 4);
        let fan = run(Expect::all(130), &[0, 5]);
        assert_eq!(fan.missing(&acked), (4, 3));
        let user = run(Expect::List(vec![1, 2, 129]), &[2]);
        assert_eq!(user.missing(&acked), (2, 2));
    }

    #[test]
    fn an_empty_expectation_is_complete_and_flags_strays() {
        let t = run(Expect::List(Vec::new()), &[4]);
        assert!(t.complete());
        assert_eq!(t.result.unexpected, 1);
        assert_eq!(t.missing(&all_acked(8)), (0, 0));
    }
}
