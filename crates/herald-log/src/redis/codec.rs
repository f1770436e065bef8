//! An event as one Redis Stream entry, and back.
//!
//! The entry id is `<herald id>-0`; the fields are short names, present
//! only when they say something:
//!
//! | field | value |
//! |---|---|
//! | `e` | the epoch of the history the entry belongs to (decimal) |
//! | `s` | when it was stored, milliseconds since the Unix epoch (decimal) |
//! | `d` | the data |
//! | `t` | the topics, joined by `\n` (a topic holds no control character); absent when none |
//! | `y` | the event type; absent when untyped |
//! | `r` | the `retry` in milliseconds (decimal); absent when none |
//! | `b` | `1` when the event is a broadcast; absent otherwise |
//!
//! Decoding never panics: an entry that is not one of ours (a foreign
//! writer, a garbled value) is a [`DecodeError`]; the caller skips it with
//! a warning and counts it (`herald_redis_entries_skipped_total`), so a
//! stray entry never stops delivery of the events around it.

use herald_core::{Event, EventId, FrameArena, Topic};
use redis::Value;

use crate::names::{Names, StoredFields};

/// Why an entry is not an event.
#[derive(Debug, thiserror::Error)]
#[error("stream entry {entry}: {reason}")]
pub(crate) struct DecodeError {
    /// The entry id as Redis gave it.
    pub entry: String,
    /// What is wrong.
    pub reason: &'static str,
}

/// A decoded entry: its Herald id, its epoch and the event.
#[derive(Debug)]
pub(crate) struct Decoded {
    pub id: EventId,
    pub epoch: u64,
    pub event: Event,
}

/// The Herald id of a stream entry id: `<id>-0`.
pub(crate) fn parse_entry_id(entry: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(entry).ok()?;
    let (ms, seq) = text.split_once('-')?;
    if seq != "0" || ms.is_empty() || !ms.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    ms.parse().ok()
}

fn bytes(value: &Value) -> Option<&[u8]> {
    match value {
        Value::BulkString(b) => Some(b),
        Value::SimpleString(s) => Some(s.as_bytes()),
        _ => None,
    }
}

fn number(value: &[u8]) -> Option<u64> {
    std::str::from_utf8(value).ok()?.parse().ok()
}

/// Decodes one entry, `[id, [field, value, ...]]`, as XRANGE and XREAD
/// return it.
pub(crate) fn decode(
    entry: &Value,
    names: &mut Names,
    arena: &mut FrameArena,
) -> Result<Decoded, DecodeError> {
    let fail = |entry: &str, reason| DecodeError {
        entry: entry.to_owned(),
        reason,
    };
    let Value::Array(parts) = entry else {
        return Err(fail("?", "not an entry"));
    };
    let (Some(raw_id), Some(Value::Array(fields))) = (parts.first().and_then(bytes), parts.get(1))
    else {
        return Err(fail("?", "not an entry"));
    };
    let shown = String::from_utf8_lossy(raw_id).into_owned();
    let id = parse_entry_id(raw_id).ok_or_else(|| fail(&shown, "id is not <herald id>-0"))?;
    if id == 0 {
        return Err(fail(&shown, "0 is never an id"));
    }
    let (mut epoch, mut stored_at_ms, mut data, mut topics, mut event_type, mut retry) =
        (None, None, None, None, None, None);
    let mut broadcast = false;
    for pair in fields.chunks(2) {
        let [name, value] = pair else {
            return Err(fail(&shown, "odd number of fields"));
        };
        let (Some(name), Some(value)) = (bytes(name), bytes(value)) else {
            return Err(fail(&shown, "a field is not a string"));
        };
        match name {
            b"e" => epoch = Some(number(value).ok_or_else(|| fail(&shown, "bad epoch"))?),
            b"s" => stored_at_ms = Some(number(value).ok_or_else(|| fail(&shown, "bad time"))?),
            b"d" => {
                data = Some(
                    std::str::from_utf8(value).map_err(|_| fail(&shown, "data is not UTF-8"))?,
                )
            }
            b"t" => topics = Some(value),
            b"y" => {
                event_type = Some(
                    std::str::from_utf8(value).map_err(|_| fail(&shown, "type is not UTF-8"))?,
                )
            }
            b"r" => retry = Some(number(value).ok_or_else(|| fail(&shown, "bad retry"))?),
            b"b" => broadcast = value == b"1",
            // A field a later version adds is ignored.
            _ => {}
        }
    }
    let (Some(epoch), Some(stored_at_ms), Some(data)) = (epoch, stored_at_ms, data) else {
        return Err(fail(&shown, "a required field (e, s, d) is missing"));
    };
    let topics: Box<[Topic]> = match topics {
        None => Box::new([]),
        Some(list) => {
            let list =
                std::str::from_utf8(list).map_err(|_| fail(&shown, "topics are not UTF-8"))?;
            list.split('\n')
                .map(|t| names.topic_str(t))
                .collect::<Option<_>>()
                .ok_or_else(|| fail(&shown, "a topic is not valid"))?
        }
    };
    if topics.is_empty() && !broadcast {
        return Err(fail(&shown, "neither topics nor broadcast"));
    }
    if event_type.is_some_and(|t| t.contains(['\r', '\n'])) {
        return Err(fail(&shown, "the type holds a line break"));
    }
    let fields = StoredFields {
        id: EventId(id),
        broadcast,
        event_type,
        data,
        retry,
        stored_at_ms,
    };
    Ok(Decoded {
        id: EventId(id),
        epoch,
        event: names.event(fields, topics, arena),
    })
}

/// Whether the entry's topics include `topic`, without decoding the rest.
pub(crate) fn has_topic(entry: &Value, topic: &str) -> bool {
    let Value::Array(parts) = entry else {
        return false;
    };
    let Some(Value::Array(fields)) = parts.get(1) else {
        return false;
    };
    fields.chunks(2).any(|pair| match pair {
        [name, value] => {
            bytes(name) == Some(b"t".as_slice())
                && bytes(value)
                    .is_some_and(|list| list.split(|b| *b == b'\n').any(|t| t == topic.as_bytes()))
        }
        _ => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &str) -> Value {
        Value::BulkString(s.as_bytes().to_vec())
    }

    fn entry(id: &str, fields: &[(&str, &str)]) -> Value {
        Value::Array(vec![
            bulk(id),
            Value::Array(
                fields
                    .iter()
                    .flat_map(|(k, v)| [bulk(k), bulk(v)])
                    .collect(),
            ),
        ])
    }

    #[test]
    fn entries_decode_to_events() {
        let mut names = Names::default();
        let mut arena = FrameArena::new();
        let e = entry(
            "1700000000000123-0",
            &[
                ("e", "1700000000000000"),
                ("s", "1700000000000"),
                ("d", "hello\nworld"),
                ("t", "a\nb/c"),
                ("y", "created"),
                ("r", "5000"),
            ],
        );
        let d = decode(&e, &mut names, &mut arena).expect("decodes");
        assert_eq!(d.id, EventId(1_700_000_000_000_123));
        assert_eq!(d.epoch, 1_700_000_000_000_000);
        assert_eq!(d.event.data(), "hello\nworld");
        assert_eq!(d.event.topics.len(), 2);
        assert_eq!(d.event.event_type.as_deref(), Some("created"));
        assert_eq!(d.event.retry(), Some(5000));
        assert_eq!(d.event.stored_at_ms(), 1_700_000_000_000);
        assert!(!d.event.broadcast);
        let b = entry("7-0", &[("e", "1"), ("s", "1"), ("d", ""), ("b", "1")]);
        let d = decode(&b, &mut names, &mut arena).expect("decodes");
        assert!(d.event.broadcast && d.event.topics.is_empty());
    }

    #[test]
    fn foreign_entries_are_errors_not_panics() {
        let mut names = Names::default();
        let mut arena = FrameArena::new();
        for (e, reason) in [
            (bulk("x"), "not an entry"),
            (
                entry("5-1", &[("e", "1"), ("s", "1"), ("d", "x"), ("b", "1")]),
                "<herald id>-0",
            ),
            (
                entry("0-0", &[("e", "1"), ("s", "1"), ("d", "x"), ("b", "1")]),
                "never an id",
            ),
            (entry("5-0", &[("temperature", "21")]), "required field"),
            (
                entry("5-0", &[("e", "x"), ("s", "1"), ("d", "x")]),
                "bad epoch",
            ),
            (
                entry("5-0", &[("e", "1"), ("s", "1"), ("d", "x")]),
                "neither topics",
            ),
            (
                entry(
                    "5-0",
                    &[("e", "1"), ("s", "1"), ("d", "x"), ("t", "a\u{1}")],
                ),
                "topic",
            ),
            (
                entry(
                    "5-0",
                    &[
                        ("e", "1"),
                        ("s", "1"),
                        ("d", "x"),
                        ("b", "1"),
                        ("y", "a\nb"),
                    ],
                ),
                "line break",
            ),
            (
                Value::Array(vec![bulk("5-0"), Value::Array(vec![bulk("e")])]),
                "odd number",
            ),
        ] {
            let err = decode(&e, &mut names, &mut arena).expect_err(reason);
            assert!(err.to_string().contains(reason), "{err}");
        }
    }
}
