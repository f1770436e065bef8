//! The on-disk record format (see the module doc of `durable` for the
//! layout) and a buffered forward reader over one segment file.
//!
//! Nothing here knows about segments, retention or threads: bytes in, bytes
//! out, so the format can be checked on its own.

use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt;

use herald_core::NewEvent;

/// The first bytes of every segment file: the format and its version. A
/// file that does not start with them is not ours (or not this version).
pub(crate) const MAGIC: &[u8; 8] = b"HERALDL1";
/// The on-disk format version: segment files start with `HERALDL1`.
pub const FORMAT_VERSION: u32 = 1;
/// Bytes before the first record of a segment.
pub(crate) const SEGMENT_HEADER: u64 = MAGIC.len() as u64;
/// `len: u32 | crc32: u32` before each body.
pub(crate) const RECORD_HEADER: usize = 8;
/// What the writer puts over the header of the first record of a failed
/// group it could not cut back: length 0 (no record has it) and `CUT!`
/// where the checksum goes. Recovery cuts the segment there (the rest was
/// never acknowledged) instead of resyncing past it as it does past damage.
pub(crate) const CUT_MARK: [u8; RECORD_HEADER] = [0, 0, 0, 0, b'C', b'U', b'T', b'!'];
/// The smallest body that can be valid: id, time, flags, topic count, data length.
const MIN_BODY: usize = 8 + 4 + 1 + 2 + 4;
/// The largest body we write or accept. A length above it is garbage, so
/// recovery can tell a torn length field from a real (huge) record.
pub const MAX_BODY: usize = 64 << 20;
/// Most topics (user topics included) one record holds: the count is a `u16`.
pub const MAX_RECORD_TOPICS: usize = u16::MAX as usize;
/// Longest string one record holds (a topic, the event type, the idempotency
/// key): each is stored after a `u16` length.
pub const MAX_RECORD_STRING_BYTES: usize = u16::MAX as usize;
/// Bytes of a record body besides its strings and data, at most: id, time,
/// flags, retry, topic count, data length.
pub const RECORD_FIXED_BYTES: usize = MIN_BODY + 8;
/// Bytes a record spends on each string besides the string: its length.
pub const RECORD_STRING_OVERHEAD: usize = 2;
/// Disk reads are done in blocks of this size.
const READ_BLOCK: usize = 64 * 1024;

const FLAG_BROADCAST: u8 = 1;
const FLAG_RETRY: u8 = 1 << 1;
const FLAG_TYPE: u8 = 1 << 2;
const FLAG_KEY: u8 = 1 << 3;
const KNOWN_FLAGS: u8 = FLAG_BROADCAST | FLAG_RETRY | FLAG_TYPE | FLAG_KEY;

/// Checks that `event` fits the record format, before it is given an id.
pub(crate) fn check(event: &NewEvent) -> Result<(), String> {
    let short = |what: &str, len: usize| {
        if len > usize::from(u16::MAX) {
            Err(format!(
                "{what} is {len} bytes; the durable log stores at most 65535"
            ))
        } else {
            Ok(())
        }
    };
    if event.topics.len() > usize::from(u16::MAX) {
        return Err(format!(
            "{} topics; the durable log stores at most 65535 per event",
            event.topics.len()
        ));
    }
    let mut size = MIN_BODY + 8;
    for topic in &event.topics {
        short("a topic", topic.as_str().len())?;
        size += 2 + topic.as_str().len();
    }
    if let Some(t) = &event.event_type {
        short("the event type", t.len())?;
        size += 2 + t.len();
    }
    if let Some(k) = &event.idempotency_key {
        short("the idempotency key", k.len())?;
        size += 2 + k.len();
    }
    size += event.data.len();
    if size > MAX_BODY {
        return Err(format!(
            "the event is {size} bytes; the durable log stores at most {MAX_BODY}"
        ));
    }
    Ok(())
}

/// Appends the record of `event` to `buf`; returns its length. The event
/// must have passed [`check`] (otherwise lengths would be cut).
pub(crate) fn encode(buf: &mut Vec<u8>, id: u64, stored_at_s: u32, event: &NewEvent) -> usize {
    let start = buf.len();
    buf.extend_from_slice(&[0; RECORD_HEADER]);
    buf.extend_from_slice(&id.to_le_bytes());
    buf.extend_from_slice(&stored_at_s.to_le_bytes());
    let mut flags = 0;
    if event.broadcast {
        flags |= FLAG_BROADCAST;
    }
    if event.retry.is_some() {
        flags |= FLAG_RETRY;
    }
    if event.event_type.is_some() {
        flags |= FLAG_TYPE;
    }
    if event.idempotency_key.is_some() {
        flags |= FLAG_KEY;
    }
    buf.push(flags);
    if let Some(retry) = event.retry {
        buf.extend_from_slice(&retry.to_le_bytes());
    }
    put_u16(buf, event.topics.len());
    for topic in &event.topics {
        put_short(buf, topic.as_str());
    }
    if let Some(t) = &event.event_type {
        put_short(buf, t);
    }
    if let Some(k) = &event.idempotency_key {
        put_short(buf, k);
    }
    buf.extend_from_slice(&(event.data.len() as u32).to_le_bytes());
    buf.extend_from_slice(event.data.as_bytes());
    let body_len = buf.len() - start - RECORD_HEADER;
    let crc = crc32fast::hash(&buf[start + RECORD_HEADER..]);
    buf[start..start + 4].copy_from_slice(&(body_len as u32).to_le_bytes());
    buf[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
    buf.len() - start
}

fn put_u16(buf: &mut Vec<u8>, n: usize) {
    buf.extend_from_slice(&(n as u16).to_le_bytes());
}

fn put_short(buf: &mut Vec<u8>, s: &str) {
    put_u16(buf, s.len());
    buf.extend_from_slice(s.as_bytes());
}

/// One decoded record, borrowing from the read buffer.
#[derive(Debug)]
pub(crate) struct RecordView<'a> {
    pub id: u64,
    pub stored_at_s: u32,
    pub broadcast: bool,
    pub retry: Option<u64>,
    pub topics: Vec<&'a str>,
    pub event_type: Option<&'a str>,
    pub key: Option<&'a str>,
    pub data: &'a str,
}

/// The id of a body, without decoding the rest (to skip records cheaply).
pub(crate) fn peek_id(body: &[u8]) -> u64 {
    body.get(..8)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_le_bytes)
}

/// Decodes a body whose checksum matched. `None` if it does not parse to
/// exactly its length (a bug or corruption the checksum missed).
pub(crate) fn decode(body: &[u8]) -> Option<RecordView<'_>> {
    let mut r = Reader { rest: body };
    let id = r.u64()?;
    let stored_at_s = r.u32()?;
    let flags = r.u8()?;
    if flags & !KNOWN_FLAGS != 0 {
        return None;
    }
    let retry = if flags & FLAG_RETRY != 0 {
        Some(r.u64()?)
    } else {
        None
    };
    let ntopics = r.u16()?;
    let mut topics = Vec::with_capacity(usize::from(ntopics));
    for _ in 0..ntopics {
        topics.push(r.short_str()?);
    }
    let event_type = if flags & FLAG_TYPE != 0 {
        Some(r.short_str()?)
    } else {
        None
    };
    let key = if flags & FLAG_KEY != 0 {
        Some(r.short_str()?)
    } else {
        None
    };
    let data_len = r.u32()? as usize;
    let data = std::str::from_utf8(r.take(data_len)?).ok()?;
    if !r.rest.is_empty() {
        return None;
    }
    Some(RecordView {
        id,
        stored_at_s,
        broadcast: flags & FLAG_BROADCAST != 0,
        retry,
        topics,
        event_type,
        key,
        data,
    })
}

struct Reader<'a> {
    rest: &'a [u8],
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.rest.len() < n {
            return None;
        }
        let (head, rest) = self.rest.split_at(n);
        self.rest = rest;
        Some(head)
    }

    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }

    fn u16(&mut self) -> Option<u16> {
        self.take(2)?.try_into().ok().map(u16::from_le_bytes)
    }

    fn u32(&mut self) -> Option<u32> {
        self.take(4)?.try_into().ok().map(u32::from_le_bytes)
    }

    fn u64(&mut self) -> Option<u64> {
        self.take(8)?.try_into().ok().map(u64::from_le_bytes)
    }

    fn short_str(&mut self) -> Option<&'a str> {
        let len = usize::from(self.u16()?);
        std::str::from_utf8(self.take(len)?).ok()
    }
}

/// The first position in `bytes` where a whole record verifies: a possible
/// length, a body that fits in `bytes`, an id `accept_id` takes, a matching
/// checksum and a body that decodes. How recovery finds where good records
/// resume after damage (resync).
///
/// Why it is hard to fool: random bytes pass the length and id checks
/// rarely, and then need a matching CRC-32 (one chance in 2^32) and a body
/// that parses to exactly its length; the id must also be newer than the
/// last good record and within the segment's range (the caller's
/// `accept_id`). Each position costs a few comparisons; the checksum is
/// computed only for positions that passed them (about one in 10^5 of
/// random bytes, given an id bound near the clock), so even a segment of
/// garbage is scanned in seconds, not hours.
pub(crate) fn find_record(bytes: &[u8], accept_id: impl Fn(u64) -> bool) -> Option<usize> {
    let word = |at: usize| {
        bytes
            .get(at..at + 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
    };
    (0..bytes.len().saturating_sub(RECORD_HEADER)).find(|&at| {
        let (Some(len), Some(crc)) = (word(at), word(at + 4)) else {
            return false;
        };
        let len = len as usize;
        if !(MIN_BODY..=MAX_BODY).contains(&len) {
            return false;
        }
        let Some(body) = bytes.get(at + RECORD_HEADER..at + RECORD_HEADER + len) else {
            return false;
        };
        // Cheap tests first: the flags byte, the id; the checksum last.
        let flags_known = body.get(12).is_some_and(|f| f & !KNOWN_FLAGS == 0);
        flags_known
            && accept_id(peek_id(body))
            && crc32fast::hash(body) == crc
            && decode(body).is_some()
    })
}

/// What the cursor found at its position.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Next {
    /// A record whose length and checksum are valid; its body is
    /// [`Cursor::body`] until the next call.
    Record { offset: u64 },
    /// The end of the readable range, at a record boundary.
    End,
    /// No valid record at `offset`: the bytes there are cut short or damaged.
    Bad { offset: u64, reason: &'static str },
}

/// Reads the records of one file forward, in blocks, from `pos` to `end`.
#[derive(Debug)]
pub(crate) struct Cursor<'f> {
    file: &'f File,
    buf: Vec<u8>,
    /// The file offset of `buf[0]`.
    buf_off: u64,
    /// The file offset of the next record.
    pos: u64,
    end: u64,
    body: Range<usize>,
    /// Byte ranges the cursor steps over (damage set aside by recovery);
    /// each starts and ends at a record boundary. Sorted, usually empty.
    holes: Vec<Range<u64>>,
}

impl<'f> Cursor<'f> {
    /// A cursor over `file[pos..end]`; `pos` must be a record boundary.
    pub(crate) fn new(file: &'f File, pos: u64, end: u64) -> Self {
        Self {
            file,
            buf: Vec::new(),
            buf_off: pos,
            pos,
            end,
            body: 0..0,
            holes: Vec::new(),
        }
    }

    /// The same cursor, stepping over `holes` (see [`Cursor`]'s field).
    pub(crate) fn skipping(mut self, holes: &[Range<u64>]) -> Self {
        self.holes = holes.to_vec();
        self
    }

    /// The file offset of the next record (after the last one returned).
    pub(crate) fn pos(&self) -> u64 {
        self.pos
    }

    /// Whether every byte up to `end` has been consumed.
    pub(crate) fn at_end(&self) -> bool {
        self.pos >= self.end
    }

    /// The body of the record last returned by [`Cursor::next`].
    pub(crate) fn body(&self) -> &[u8] {
        &self.buf[self.body.clone()]
    }

    /// The next record, validating its length and checksum.
    pub(crate) fn next(&mut self) -> io::Result<Next> {
        while let Some(hole) = self
            .holes
            .iter()
            .find(|h| h.start == self.pos && h.end > h.start)
        {
            self.pos = hole.end;
        }
        if self.pos >= self.end {
            return Ok(Next::End);
        }
        let offset = self.pos;
        if !self.fill(RECORD_HEADER)? {
            return Ok(Next::Bad {
                offset,
                reason: "record header cut short",
            });
        }
        let rel = (self.pos - self.buf_off) as usize;
        let word = |at: usize| {
            self.buf
                .get(at..at + 4)
                .and_then(|b| b.try_into().ok())
                .map_or(0, u32::from_le_bytes)
        };
        let len = word(rel) as usize;
        let crc = word(rel + 4);
        if !(MIN_BODY..=MAX_BODY).contains(&len) {
            return Ok(Next::Bad {
                offset,
                reason: "impossible record length",
            });
        }
        if !self.fill(RECORD_HEADER + len)? {
            return Ok(Next::Bad {
                offset,
                reason: "record cut short",
            });
        }
        // `fill` may have moved the buffer.
        let rel = (self.pos - self.buf_off) as usize;
        let body = rel + RECORD_HEADER..rel + RECORD_HEADER + len;
        if crc32fast::hash(&self.buf[body.clone()]) != crc {
            return Ok(Next::Bad {
                offset,
                reason: "checksum mismatch",
            });
        }
        self.body = body;
        self.pos += (RECORD_HEADER + len) as u64;
        Ok(Next::Record { offset })
    }

    /// Makes `buf` hold `need` bytes from `pos`, reading whole blocks. False
    /// when the file (or `end`) stops before that.
    fn fill(&mut self, need: usize) -> io::Result<bool> {
        let rel = (self.pos - self.buf_off) as usize;
        if rel + need <= self.buf.len() {
            return Ok(true);
        }
        if self.end - self.pos < need as u64 {
            return Ok(false);
        }
        // Keep only the unread tail, then read at least a block.
        self.buf.drain(..rel.min(self.buf.len()));
        self.buf_off = self.pos;
        let want = need.max(READ_BLOCK).min((self.end - self.pos) as usize);
        let mut have = self.buf.len();
        self.buf.resize(want, 0);
        while have < want {
            match self
                .file
                .read_at(&mut self.buf[have..], self.buf_off + have as u64)
            {
                Ok(0) => break,
                Ok(n) => have += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.buf.truncate(have);
                    return Err(e);
                }
            }
        }
        self.buf.truncate(have);
        Ok(have >= need)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use herald_core::Topic;

    fn sample(i: u64) -> NewEvent {
        NewEvent {
            topics: vec![Topic::new("a").unwrap(), Topic::new("b/c").unwrap()],
            broadcast: i.is_multiple_of(2),
            event_type: i.is_multiple_of(3).then(|| "t".to_owned()),
            data: format!("data {i}\nline"),
            retry: i.is_multiple_of(5).then_some(i),
            idempotency_key: i.is_multiple_of(7).then(|| format!("k{i}")),
        }
    }

    #[test]
    fn records_round_trip() {
        for i in 0..50 {
            let new = sample(i);
            let mut buf = Vec::new();
            let len = encode(&mut buf, 1000 + i, 77, &new);
            assert_eq!(len, buf.len());
            let body = &buf[RECORD_HEADER..];
            assert_eq!(peek_id(body), 1000 + i);
            let v = decode(body).unwrap();
            assert_eq!(v.id, 1000 + i);
            assert_eq!(v.stored_at_s, 77);
            assert_eq!(v.broadcast, new.broadcast);
            assert_eq!(v.retry, new.retry);
            assert_eq!(v.topics, ["a", "b/c"]);
            assert_eq!(v.event_type, new.event_type.as_deref());
            assert_eq!(v.key, new.idempotency_key.as_deref());
            assert_eq!(v.data, new.data);
            // Any cut is refused.
            for cut in 0..body.len() {
                assert!(decode(&body[..cut]).is_none());
            }
        }
    }

    #[test]
    fn resync_finds_the_next_record_and_only_an_accepted_one() {
        let mut buf = Vec::new();
        let mut starts = Vec::new();
        for i in 0..20 {
            starts.push(buf.len());
            encode(&mut buf, 100 + i, 0, &sample(i));
        }
        // Damage record 5's header: from inside it, the next valid record
        // is record 6.
        buf[starts[5]] ^= 0xff;
        let from = starts[5] + 1;
        let found = find_record(&buf[from..], |id| id > 104).unwrap();
        assert_eq!(from + found, starts[6]);
        // A record whose id is refused (older than the last good one) is
        // passed over.
        let found = find_record(&buf[from..], |id| id > 110).unwrap();
        assert_eq!(from + found, starts[11]);
        assert_eq!(find_record(&buf[from..], |_| false), None);
        // Pseudo-random bytes never pass for a record.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let noise: Vec<u8> = (0..1 << 20)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        assert_eq!(find_record(&noise, |_| true), None);
    }

    #[test]
    fn cursor_reads_across_blocks_and_stops_at_damage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut buf = Vec::new();
        let big = NewEvent {
            data: "x".repeat(100_000),
            ..sample(1)
        };
        for i in 0..300 {
            let new = if i == 150 { big.clone() } else { sample(i) };
            encode(&mut buf, i, 0, &new);
        }
        let good = buf.len() as u64;
        buf.extend_from_slice(&[1, 2, 3]);
        std::fs::write(&path, &buf).unwrap();
        let file = File::open(&path).unwrap();
        let mut cursor = Cursor::new(&file, 0, buf.len() as u64);
        let mut n = 0;
        loop {
            match cursor.next().unwrap() {
                Next::Record { .. } => {
                    assert_eq!(decode(cursor.body()).unwrap().id, n);
                    n += 1;
                }
                Next::Bad { offset, .. } => {
                    assert_eq!(offset, good);
                    break;
                }
                Next::End => panic!("garbage read as the end"),
            }
        }
        assert_eq!(n, 300);
    }
}
