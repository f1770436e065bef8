//! The two Lua scripts: append and the first page of a read. Each runs
//! atomically on the primary, so an append's dedupe, id and `XADD` are one
//! step, and a read's gap decision and its first entries see one state.
//!
//! Numbers: Lua numbers are doubles, exact up to 2^53. Ids are microseconds
//! (2^53 µs is the year 2255), so the append script computes with numbers
//! and refuses a batch that would pass 2^53; the read script compares ids
//! as decimal strings (exact for any stream id, ours or not).

use std::sync::LazyLock;

use redis::Script;

/// Ids the append script issues stay below this (exact in a Lua double).
pub(crate) const MAX_LUA_ID: u64 = 1 << 53;

/// The error the append script answers when ids would pass [`MAX_LUA_ID`].
pub(crate) const EXHAUSTED_REPLY: &str = "HERALD_EXHAUSTED";

/// Why such an append is refused.
pub(crate) const EXHAUSTED: &str = "event ids are exhausted (the next id would pass 2^53, the largest a Redis script counts exactly: the year 2255 in microseconds); nothing was stored";

/// Retention trims exactly (by count, at most 10000 entries a batch, then
/// by age, at most 1000) and records the newest id it removed as `meta.trimmed`.
///
/// `KEYS`: the stream, the meta hash, then one idempotency key per keyed
/// event. `ARGV`: floor, idempotency window (ms, 0 = off), max events,
/// max age (µs, 0 = none), event count, then 6 per event: index of its
/// idempotency key in `KEYS` (0 = none), data, topics (`\n`-joined),
/// type (`""` = none), retry (`""` = none), broadcast (`1`/`0`).
///
/// Returns `{epoch, id1, dup1, id2, dup2, ...}` (ids as decimal strings,
/// dup 1 for a repeated key, whose id is the original's).
pub(crate) static APPEND: LazyLock<Script> = LazyLock::new(|| Script::new(APPEND_LUA));

const APPEND_LUA: &str = r#"
local stream, meta = KEYS[1], KEYS[2]
local floor = tonumber(ARGV[1])
local window_ms = tonumber(ARGV[2])
local max_events = ARGV[3]
local max_age_us = tonumber(ARGV[4])
local n = tonumber(ARGV[5])
local function fmt(x) return string.format('%.0f', x) end
local function ms_of(entry_id) return tonumber(string.match(entry_id, '^(%d+)')) end

local t = redis.call('TIME')
local now_us = tonumber(t[1]) * 1000000 + tonumber(t[2])
local now_ms = math.floor(now_us / 1000)

local epoch = redis.call('HGET', meta, 'epoch')
local last = tonumber(redis.call('HGET', meta, 'last') or '0')
if not epoch and redis.call('EXISTS', stream) == 1 then
  -- The meta hash is gone but the stream is not: stay above it.
  local info = redis.call('XINFO', 'STREAM', stream)
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then last = math.max(last, ms_of(info[i + 1])) end
  end
end
local next_id = math.max(last + 1, now_us, floor + 1)
if next_id + n >= 9007199254740992 then
  return redis.error_reply('HERALD_EXHAUSTED event ids would pass 2^53; nothing was stored')
end
if not epoch then
  -- A new (or flushed) Redis: a new history, which starts at the first id
  -- it issues. Every id of an older history is below it.
  epoch = fmt(next_id)
  redis.call('HSET', meta, 'epoch', epoch)
end

local out = {epoch}
local issued = nil
for i = 0, n - 1 do
  local a = 6 + i * 6
  local key_index = tonumber(ARGV[a])
  local original = nil
  if key_index > 0 then original = redis.call('GET', KEYS[key_index]) end
  if original then
    out[#out + 1] = original
    out[#out + 1] = 1
  else
    local id = fmt(next_id)
    next_id = next_id + 1
    local fields = {'e', epoch, 's', fmt(now_ms), 'd', ARGV[a + 1]}
    if ARGV[a + 2] ~= '' then fields[#fields + 1] = 't'; fields[#fields + 1] = ARGV[a + 2] end
    if ARGV[a + 3] ~= '' then fields[#fields + 1] = 'y'; fields[#fields + 1] = ARGV[a + 3] end
    if ARGV[a + 4] ~= '' then fields[#fields + 1] = 'r'; fields[#fields + 1] = ARGV[a + 4] end
    if ARGV[a + 5] == '1' then fields[#fields + 1] = 'b'; fields[#fields + 1] = '1' end
    redis.call('XADD', stream, id .. '-0', unpack(fields))
    if key_index > 0 and window_ms > 0 then
      redis.call('SET', KEYS[key_index], id, 'PX', window_ms)
    end
    out[#out + 1] = id
    out[#out + 1] = 0
    issued = id
  end
end
if issued then redis.call('HSET', meta, 'last', issued) end

-- Retention. Trimmed exactly, and the newest id trimmed is kept in
-- `trimmed`: a read after it has nothing missing, a read before it has a
-- gap (ids are not contiguous, so the oldest retained id cannot tell).
local trimmed = nil
local function trim_through(entries)
  if #entries == 0 then return end
  local newest = ms_of(entries[#entries][1])
  redis.call('XTRIM', stream, 'MINID', fmt(newest + 1) .. '-0')
  if not trimmed or newest > trimmed then trimmed = newest end
end
-- At most 10000 a batch: a lowered retention_events is reached over a few
-- publishes instead of one long stall of Redis.
local excess = math.min(redis.call('XLEN', stream) - tonumber(max_events), 10000)
if excess > 0 then
  trim_through(redis.call('XRANGE', stream, '-', '+', 'COUNT', excess))
end
if max_age_us > 0 and now_us > max_age_us then
  -- At most 1000 per batch, so one append never stalls Redis long.
  local before = '(' .. fmt(now_us - max_age_us) .. '-0'
  trim_through(redis.call('XRANGE', stream, '-', before, 'COUNT', 1000))
end
if trimmed then redis.call('HSET', meta, 'trimmed', fmt(trimmed)) end
return out
"#;

/// `KEYS`: the stream, the meta hash. `ARGV`: `after` (decimal; `""` reads
/// from the oldest entry), how many entries to return.
///
/// Returns `{gap, oldest, entries}`: `gap` 1 when `after` is not a
/// position of this history with everything after it retained (then
/// `entries` start at the oldest); `oldest` the oldest entry's id or `""`;
/// `entries` as `XRANGE` gives them.
///
/// The gap rule (ids compared as numbers, by length then digits):
/// no epoch (nothing was ever appended to this Redis), or `after < epoch`
/// (an older history), or `after >` the last id the stream generated (never
/// issued), or `after <` the newest id retention trimmed (`meta.trimmed`)
/// or the highest id `XDEL` deleted (events after it are gone), or `after`
/// is not an entry and neither of those two (the history that named it was
/// lost: a failover to a replica that was behind, a restore from an older
/// copy).
pub(crate) static READ: LazyLock<Script> = LazyLock::new(|| Script::new(READ_LUA));

const READ_LUA: &str = r#"
local stream, meta = KEYS[1], KEYS[2]
local after = ARGV[1]
local count = ARGV[2]
local function lt(a, b)
  if #a ~= #b then return #a < #b end
  return a < b
end
local function ms_of(entry_id) return string.match(entry_id, '^(%d+)') or '0' end

local oldest, last, max_deleted = '', '0', '0'
local meta_fields = redis.call('HMGET', meta, 'epoch', 'trimmed')
local epoch, trimmed = meta_fields[1], meta_fields[2] or '0'
if redis.call('EXISTS', stream) == 1 then
  local info = redis.call('XINFO', 'STREAM', stream)
  for i = 1, #info, 2 do
    local k = info[i]
    if k == 'last-generated-id' then last = ms_of(info[i + 1])
    elseif k == 'max-deleted-entry-id' then max_deleted = ms_of(info[i + 1])
    elseif k == 'first-entry' and type(info[i + 1]) == 'table' then oldest = ms_of(info[i + 1][1])
    end
  end
end

local gap = 0
local start = '-'
if after ~= '' then
  if not epoch or lt(after, epoch) or lt(last, after) or lt(after, max_deleted) or lt(after, trimmed) then
    gap = 1
  elseif after ~= max_deleted and after ~= trimmed
      and #redis.call('XRANGE', stream, after .. '-0', after .. '-0') == 0 then
    gap = 1
  else
    start = '(' .. after .. '-0'
  end
end
return {gap, oldest, redis.call('XRANGE', stream, start, '+', 'COUNT', count)}
"#;
