//! Where a log's ids start, the one rule every backend shares.
//!
//! Invariant: an id is never issued twice for different events, also across
//! restarts and repairs. So an empty log starts numbering at the wall clock
//! in microseconds (ids keep increasing across a restart of `MemoryLog` or a
//! wiped data directory, and a client holding an old id gets `herald.gap`
//! instead of silently skipping new events), and a log whose recovery cut
//! records jumps to the clock too: the ids cut may have been acknowledged
//! and seen, and must not name other events.

/// Why an append is refused once ids reach `u64::MAX`: ids never wrap
/// (a wrapped id would sort before every id clients hold).
pub(crate) const EXHAUSTED: &str =
    "event ids are exhausted (the next id would pass 18446744073709551615); nothing was stored";

/// The wall clock in microseconds since the Unix epoch; at least 1, since 0
/// is never an id (a clock before 1970 gives 1).
pub(crate) fn clock_id() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(1)
        .max(1)
}

/// The id a log (re)opened with `last` as its newest stored id gives next:
/// `last + 1`, or the clock when nothing is stored, or at least the clock
/// when `repaired` (recovery cut records that may have been acknowledged).
pub(crate) fn start_id(last: Option<u64>, repaired: bool) -> u64 {
    match last {
        Some(last) if repaired => last.saturating_add(1).max(clock_id()),
        Some(last) => last.saturating_add(1),
        None => clock_id(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_start_at_the_clock_and_jump_to_it_after_a_repair() {
        let before = clock_id();
        assert!(start_id(None, false) >= before);
        assert_eq!(start_id(Some(41), false), 42);
        assert!(start_id(Some(41), true) >= before);
        // A newest id ahead of the clock is kept ahead of.
        assert_eq!(start_id(Some(u64::MAX - 1), true), u64::MAX);
    }
}
