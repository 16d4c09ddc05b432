//! The shared spool (`spool.backend: redis`): several replicas keep their messages in the Redis
//! the replay guard already uses, under its prefix plus `spool:`, and deliver them between
//! them through Redis Streams and a consumer group.
//!
//! Keys (`P` = `replay.redis_prefix` + `spool:`):
//! - `P m:<seq>`: a message, a hash: its envelope (JSON), body, upstream, state (`queued` or
//!   `dead`), attempts, finished attempts, client errors, ambiguous attempts, when it is next
//!   due, its last result, its size, `entry`: the stream entry it is on (none while it waits in
//!   its schedule), and `holder`: the replica that started its last attempt;
//! - `P s:new`: a stream, every message enqueued, in arrival order; `P s:due`: a stream, the
//!   messages whose time came in their schedule. Both are read by the consumer group
//!   `deliver`, each replica a consumer;
//! - `P at:<upstream>`: a schedule, the queued messages to that upstream waiting for a time
//!   (a retry's backoff, `Retry-After`, a down upstream's backlog), by due time (members the
//!   sequence number zero-padded, so that messages due at once go in arrival order);
//!   `P upstreams`: the upstreams with a schedule;
//! - `P queued`, `P dead`: the messages of each state in arrival order (sorted sets);
//! - `P d:<key>`: a message key seen, for `dedup_ttl` (Redis expires it);
//! - `P down`: the upstreams some replica found down, each `next probe ms:backoff step`, so
//!   that the replicas probe each once per step between them (the probe claimed in a script);
//! - `P meta`: counters (the next sequence number; queued and dead counts and bytes; the
//!   totals enqueued, delivered and ambiguous; new messages not read yet).
//!
//! Every change is one Lua script, so it is atomic: an enqueue checks every key of the
//! message and the `max_bytes` bound and writes the message, its keys and its stream entry,
//! or nothing; a copy sent to any replica is a duplicate.
//!
//! **Who delivers what: the consumer group.** A replica takes messages with one script
//! (`XREADGROUP`): each is then an entry pending to it, which no other replica reads. It first
//! claims entries pending to a replica for longer than the lease (`spool.redis_lease`, longer
//! than an attempt can last: `XAUTOCLAIM`), which only a dead replica leaves; then a quarter
//! from the new messages, so that a draining backlog does not starve them; then the due
//! messages of each upstream that is not down, moved from its schedule onto the due stream and
//! read at once; then more new messages. An attempt starts with a script that checks the
//! entry is still pending to this replica, restarts its idle time (`XCLAIM`: the lease runs
//! from the attempt's start) and records the attempt. Its result acknowledges and deletes the
//! entry (`XACK`, `XDEL`) and deletes the message, or puts it in its upstream's schedule for
//! the next attempt, or dead-letters it; it is recorded only while the attempt is still the
//! message's last and the replica still its holder. A replica that dies mid-delivery records
//! nothing: once its entry has been idle for the lease, another replica claims it and the
//! unfinished attempt is counted ambiguous (it may have reached the application).
//!
//! A down upstream's messages wait in its schedule: entries of it read meanwhile are set back
//! there, and its schedule is not read until its probe is due. Each upstream has its own
//! schedule, so however long one's backlog grows, the others' messages are not behind it.
//!
//! The scripts name keys they compute (the sequence number is made in the script), so the
//! spool needs one Redis (a primary with replicas, Sentinel), not Redis Cluster.
//!
//! The connection and its tasks run on a small runtime of their own, as the replay store's
//! do; every call is bounded by `replay.redis_timeout`. Messages and errors never carry the
//! Redis URL (it may hold a password).
//!
//! Longer than 500 lines: the Lua scripts that make each operation one atomic step (about 330
//! lines), the start-time durability checks, and the backend's operations, which read best in
//! one file next to the scripts they call.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::Script;
use tokio::runtime::{Handle, Runtime};

use super::{
    now_ms, Enqueued, Envelope, Filter, Finish, Health, HealthChange, Incoming, Record, SharedDown,
    SpoolBackend, SpoolError, Started, State, StoreStats,
};
use crate::config::{RedisSettings, SpoolSettings};

/// Lua shared by the scripts: the stream an entry (`n<id>` or `d<id>`) is on, and letting go
/// of a message's entry (acknowledged and deleted; a no-op when it has none).
const COMMON: &str = r"
local P = ARGV[1]
local function stream_of(tag)
  if tag == 'n' then return P .. 's:new' end
  return P .. 's:due'
end
local function drop_entry(m)
  local e = redis.call('HGET', m, 'entry')
  if e and e ~= '' then
    local s, id = stream_of(string.sub(e, 1, 1)), string.sub(e, 2)
    redis.call('XACK', s, 'deliver', id)
    redis.call('XDEL', s, id)
  end
end
local function schedule(up, at, member)
  redis.call('ZADD', P .. 'at:' .. up, at, member)
  redis.call('SADD', P .. 'upstreams', up)
end
";

/// ARGV: prefix, now, max bytes, dedup TTL (ms), bytes, envelope, body, upstream, received,
/// number of keys, keys. Returns the sequence number; -1 a duplicate; -2 full. The message
/// goes onto the stream of new messages.
const ENQUEUE: &str = r"
local n = tonumber(ARGV[10])
for i = 1, n do
  if redis.call('EXISTS', P .. 'd:' .. ARGV[10 + i]) == 1 then return -1 end
end
local meta = P .. 'meta'
local bytes = tonumber(ARGV[5])
local held = tonumber(redis.call('HGET', meta, 'queued_bytes') or '0')
  + tonumber(redis.call('HGET', meta, 'dead_bytes') or '0')
if held + bytes > tonumber(ARGV[3]) then return -2 end
local seq = redis.call('HINCRBY', meta, 'next_seq', 1)
local member = string.format('%020d', seq)
local id = redis.call('XADD', P .. 's:new', '*', 'seq', seq, 'up', ARGV[8])
redis.call('HSET', P .. 'm:' .. seq, 'env', ARGV[6], 'body', ARGV[7], 'upstream', ARGV[8],
  'state', 'queued', 'attempts', 0, 'finished', 0, 'client_errors', 0, 'ambiguous', 0,
  'next_ms', ARGV[2], 'received', ARGV[9], 'bytes', bytes, 'holder', '', 'entry', 'n' .. id)
redis.call('ZADD', P .. 'queued', seq, member)
redis.call('HINCRBY', meta, 'queued', 1)
redis.call('HINCRBY', meta, 'queued_bytes', bytes)
redis.call('HINCRBY', meta, 'enqueued_total', 1)
redis.call('HINCRBY', meta, 'unread_new', 1)
for i = 1, n do
  redis.call('SET', P .. 'd:' .. ARGV[10 + i], seq, 'PX', ARGV[4])
end
return seq
";

/// ARGV: prefix, now, consumer, lease (ms), how many, number of blocked upstreams, their
/// names. Takes up to that many messages for this replica (the consumer), each an entry
/// pending to it in the group `deliver`: first the entries of replicas idle longer than the
/// lease (`XAUTOCLAIM`: a dead replica's), then a quarter from the new messages' stream, then
/// the due messages of each upstream not blocked (moved from its schedule onto the due stream
/// and read at once), then new messages again for the room left. Entries of a blocked
/// upstream read meanwhile are set back in its schedule. Returns {claimed, new, due}, each a
/// list of {entry, seq, upstream}.
const TAKE: &str = r"
local now = tonumber(ARGV[2])
local consumer = ARGV[3]
local want = tonumber(ARGV[5])
local blocked = {}
for i = 1, tonumber(ARGV[6]) do blocked[ARGV[6 + i]] = true end
local function park(tag, id, seq, up)
  local s = stream_of(tag)
  redis.call('XACK', s, 'deliver', id)
  redis.call('XDEL', s, id)
  local m = P .. 'm:' .. seq
  local f = redis.call('HMGET', m, 'state', 'entry', 'next_ms')
  if f[1] == 'queued' and f[2] == tag .. id then
    redis.call('HSET', m, 'entry', '')
    schedule(up, tonumber(f[3]) or now, string.format('%020d', tonumber(seq)))
  end
end
local function keep(out, tag, entries)
  for _, e in ipairs(entries) do
    -- (a deleted entry that XAUTOCLAIM returns is not a table in Redis 6.2)
    local id, f = nil, nil
    if type(e) == 'table' then id, f = e[1], e[2] end
    if f then
      local seq, up
      for i = 1, #f, 2 do
        if f[i] == 'seq' then seq = f[i + 1] elseif f[i] == 'up' then up = f[i + 1] end
      end
      if seq and up then
        if blocked[up] then park(tag, id, seq, up)
        else table.insert(out, {tag .. id, seq, up}) end
      end
    end
  end
end
-- Whether the new messages' stream was read to its end.
local drained = false
local function read(out, tag, count)
  if count <= 0 then return 0 end
  local r = redis.call('XREADGROUP', 'GROUP', 'deliver', consumer, 'COUNT', count,
    'STREAMS', stream_of(tag), '>')
  local got = 0
  if r and r[1] then
    keep(out, tag, r[1][2])
    got = #r[1][2]
  end
  if tag == 'n' and got < count then drained = true end
  return got
end
local claimed, new, due = {}, {}, {}
for _, tag in ipairs({'n', 'd'}) do
  local r = redis.call('XAUTOCLAIM', stream_of(tag), 'deliver', consumer, ARGV[4], '0-0',
    'COUNT', want)
  keep(claimed, tag, r[2])
end
local meta = P .. 'meta'
local read_new = read(new, 'n', math.ceil(want / 4))
local room = want - #claimed - #new
if room > 0 then
  local ups = {}
  for _, up in ipairs(redis.call('SMEMBERS', P .. 'upstreams')) do
    if not blocked[up] then table.insert(ups, up) end
  end
  local moved = 0
  if #ups > 0 then
    local per = math.ceil(room / #ups)
    for _, up in ipairs(ups) do
      local at = P .. 'at:' .. up
      for _, member in ipairs(redis.call('ZRANGEBYSCORE', at, '-inf', now, 'LIMIT', 0, per)) do
        redis.call('ZREM', at, member)
        local seq = tonumber(member)
        local m = P .. 'm:' .. seq
        if redis.call('HGET', m, 'state') == 'queued' then
          local id = redis.call('XADD', P .. 's:due', '*', 'seq', seq, 'up', up)
          redis.call('HSET', m, 'entry', 'd' .. id)
          moved = moved + 1
        end
      end
      if redis.call('ZCARD', at) == 0 then redis.call('SREM', P .. 'upstreams', up) end
    end
  end
  read(due, 'd', math.max(moved, 1))
end
room = want - #claimed - #new - #due
read_new = read_new + read(new, 'n', room)
local unread = tonumber(redis.call('HGET', meta, 'unread_new') or '0') - read_new
if unread < 0 or drained then unread = 0 end
redis.call('HSET', meta, 'unread_new', unread)
return {claimed, new, due}
";

/// ARGV: prefix, consumer, then entry, seq, upstream of each message taken but not started
/// whose upstream is now blocked: set back in its schedule (unless another replica took it
/// over meanwhile). Returns how many.
const PARK: &str = r"
local consumer = ARGV[2]
local n = 0
for i = 3, #ARGV, 3 do
  local tag, id = string.sub(ARGV[i], 1, 1), string.sub(ARGV[i], 2)
  local s = stream_of(tag)
  if #redis.call('XPENDING', s, 'deliver', id, id, 1, consumer) > 0 then
    redis.call('XACK', s, 'deliver', id)
    redis.call('XDEL', s, id)
    local m = P .. 'm:' .. ARGV[i + 1]
    local f = redis.call('HMGET', m, 'state', 'entry', 'next_ms')
    if f[1] == 'queued' and f[2] == ARGV[i] then
      redis.call('HSET', m, 'entry', '')
      schedule(ARGV[i + 2], tonumber(f[3]), string.format('%020d', tonumber(ARGV[i + 1])))
      n = n + 1
    end
  end
end
return n
";

/// ARGV: prefix, seq, entry, consumer. Returns the attempts counted ambiguous now (the
/// previous one had not finished) and the message (HGETALL), or nil when the entry is no
/// longer pending to this replica (taken over) or no longer the message's (purged, or
/// retried by hand). The entry's idle time starts over: the lease runs from now.
const START: &str = r"
local tag, id = string.sub(ARGV[3], 1, 1), string.sub(ARGV[3], 2)
local s = stream_of(tag)
if #redis.call('XPENDING', s, 'deliver', id, id, 1, ARGV[4]) == 0 then return false end
local m = P .. 'm:' .. ARGV[2]
local f = redis.call('HMGET', m, 'state', 'entry')
if f[1] ~= 'queued' or f[2] ~= ARGV[3] then
  redis.call('XACK', s, 'deliver', id)
  redis.call('XDEL', s, id)
  return false
end
redis.call('XCLAIM', s, 'deliver', ARGV[4], 0, id, 'JUSTID')
local attempts = tonumber(redis.call('HGET', m, 'attempts'))
local unknown = attempts - tonumber(redis.call('HGET', m, 'finished'))
if unknown > 0 then
  redis.call('HINCRBY', m, 'ambiguous', unknown)
  redis.call('HINCRBY', P .. 'meta', 'ambiguous_total', unknown)
end
redis.call('HSET', m, 'attempts', attempts + 1, 'finished', attempts, 'holder', ARGV[4])
return {unknown, redis.call('HGETALL', m)}
";

/// ARGV: prefix, seq, attempt, holder, kind (`delivered`, `retry`, `dead`), next ms, note,
/// client error (0/1), ambiguous (0/1), reason. Returns 1 recorded, 0 ignored (the attempt
/// is not the message's last one, or another replica holds it).
const FINISH: &str = r"
local seq = tonumber(ARGV[2])
local m = P .. 'm:' .. ARGV[2]
local member = string.format('%020d', seq)
local meta = P .. 'meta'
local f = redis.call('HMGET', m, 'state', 'attempts', 'holder', 'bytes', 'upstream')
if f[1] ~= 'queued' or tonumber(f[2]) ~= tonumber(ARGV[3]) or f[3] ~= ARGV[4] then
  return 0
end
local bytes = tonumber(f[4])
drop_entry(m)
if ARGV[5] == 'delivered' then
  redis.call('DEL', m)
  redis.call('ZREM', P .. 'queued', member)
  redis.call('HINCRBY', meta, 'queued', -1)
  redis.call('HINCRBY', meta, 'queued_bytes', -bytes)
  redis.call('HINCRBY', meta, 'delivered_total', 1)
elseif ARGV[5] == 'retry' then
  redis.call('HSET', m, 'finished', ARGV[3], 'next_ms', ARGV[6], 'last', ARGV[7], 'holder', '',
    'entry', '')
  redis.call('HINCRBY', m, 'client_errors', ARGV[8])
  if ARGV[9] == '1' then
    redis.call('HINCRBY', m, 'ambiguous', 1)
    redis.call('HINCRBY', meta, 'ambiguous_total', 1)
  end
  schedule(f[5], ARGV[6], member)
else
  redis.call('HSET', m, 'finished', ARGV[3], 'state', 'dead', 'reason', ARGV[10],
    'last', ARGV[7], 'holder', '', 'entry', '')
  redis.call('ZREM', P .. 'queued', member)
  redis.call('ZADD', P .. 'dead', seq, member)
  redis.call('HINCRBY', meta, 'queued', -1)
  redis.call('HINCRBY', meta, 'queued_bytes', -bytes)
  redis.call('HINCRBY', meta, 'dead', 1)
  redis.call('HINCRBY', meta, 'dead_bytes', bytes)
end
return 1
";

/// ARGV: prefix, upstream, now. Every message in the upstream's schedule made due now (it is
/// back; messages on a stream are already someone's to deliver); returns how many.
const WAKE: &str = r"
local at = P .. 'at:' .. ARGV[2]
local n = 0
for _, member in ipairs(redis.call('ZRANGE', at, 0, -1)) do
  redis.call('ZADD', at, ARGV[3], member)
  redis.call('HSET', P .. 'm:' .. tonumber(member), 'next_ms', ARGV[3])
  n = n + 1
end
return n
";

/// ARGV: prefix, seq, now. A dead message queued again, or a queued one in its schedule made
/// due now (one on a stream is being delivered already); returns 1, or 0 if there is no such
/// message.
const RETRY_ONE: &str = r"
local seq = tonumber(ARGV[2])
local m = P .. 'm:' .. ARGV[2]
local member = string.format('%020d', seq)
local meta = P .. 'meta'
local f = redis.call('HMGET', m, 'state', 'bytes', 'entry', 'upstream')
if not f[1] then return 0 end
if f[1] == 'dead' then
  local bytes = tonumber(f[2])
  redis.call('ZREM', P .. 'dead', member)
  redis.call('ZADD', P .. 'queued', seq, member)
  redis.call('HINCRBY', meta, 'dead', -1)
  redis.call('HINCRBY', meta, 'dead_bytes', -bytes)
  redis.call('HINCRBY', meta, 'queued', 1)
  redis.call('HINCRBY', meta, 'queued_bytes', bytes)
  redis.call('HSET', m, 'state', 'queued', 'holder', '', 'entry', '')
  redis.call('HDEL', m, 'reason')
  schedule(f[4], ARGV[3], member)
elseif not f[3] or f[3] == '' then
  schedule(f[4], ARGV[3], member)
end
redis.call('HSET', m, 'next_ms', ARGV[3], 'client_errors', 0, 'received', ARGV[3])
return 1
";

/// ARGV: prefix, seq. The message deleted (its keys stay); returns 1, or 0 if there is none.
const PURGE_ONE: &str = r"
local m = P .. 'm:' .. ARGV[2]
local member = string.format('%020d', tonumber(ARGV[2]))
local meta = P .. 'meta'
local f = redis.call('HMGET', m, 'state', 'bytes', 'upstream')
if not f[1] then return 0 end
local bytes = tonumber(f[2])
drop_entry(m)
redis.call('DEL', m)
if f[1] == 'queued' then
  redis.call('ZREM', P .. 'at:' .. f[3], member)
  redis.call('ZREM', P .. 'queued', member)
  redis.call('HINCRBY', meta, 'queued', -1)
  redis.call('HINCRBY', meta, 'queued_bytes', -bytes)
else
  redis.call('ZREM', P .. 'dead', member)
  redis.call('HINCRBY', meta, 'dead', -1)
  redis.call('HINCRBY', meta, 'dead_bytes', -bytes)
end
return 1
";

/// ARGV: prefix, now, number of blocked upstreams, their names. When the next message is due
/// (unix ms): now when new messages wait on their stream; otherwise the earliest in the
/// schedules of the upstreams not blocked; nil when nothing is queued there.
const NEXT_DUE: &str = r"
if tonumber(redis.call('HGET', P .. 'meta', 'unread_new') or '0') > 0 then
  return tonumber(ARGV[2])
end
local blocked = {}
for i = 1, tonumber(ARGV[3]) do blocked[ARGV[3 + i]] = true end
local first = false
for _, up in ipairs(redis.call('SMEMBERS', P .. 'upstreams')) do
  if not blocked[up] then
    local r = redis.call('ZRANGE', P .. 'at:' .. up, 0, 0, 'WITHSCORES')
    if r[2] and (not first or tonumber(r[2]) < first) then first = tonumber(r[2]) end
  end
end
return first
";

/// ARGV: prefix. The two streams and their group `deliver` made if missing; a spool written
/// by an older hookguard (one sorted set `due` for every upstream) moved to the per-upstream
/// schedules.
const INIT: &str = r"
for _, tag in ipairs({'n', 'd'}) do
  redis.pcall('XGROUP', 'CREATE', stream_of(tag), 'deliver', '0', 'MKSTREAM')
end
local old = P .. 'due'
local n = 0
if redis.call('TYPE', old).ok == 'zset' then
  local all = redis.call('ZRANGE', old, 0, -1, 'WITHSCORES')
  for i = 1, #all, 2 do
    local m = P .. 'm:' .. tonumber(all[i])
    local up = redis.call('HGET', m, 'upstream')
    if up then
      redis.call('HSET', m, 'entry', '')
      schedule(up, all[i + 1], all[i])
      n = n + 1
    end
  end
  redis.call('DEL', old)
end
return n
";

/// ARGV: prefix, idle (ms), this replica's name. Consumers (replicas) with nothing pending,
/// idle longer than that, removed from the group (each restart is a new consumer); returns
/// how many. Checked and removed in one script: a consumer's pending entries are never
/// dropped with it.
const FORGET_CONSUMERS: &str = r"
local n = 0
for _, tag in ipairs({'n', 'd'}) do
  local s = stream_of(tag)
  for _, c in ipairs(redis.call('XINFO', 'CONSUMERS', s, 'deliver')) do
    local name, pending, idle
    for i = 1, #c, 2 do
      if c[i] == 'name' then name = c[i + 1]
      elseif c[i] == 'pending' then pending = c[i + 1]
      elseif c[i] == 'idle' then idle = c[i + 1] end
    end
    if name and name ~= ARGV[3] and pending == 0 and idle > tonumber(ARGV[2]) then
      redis.call('XGROUP', 'DELCONSUMER', s, 'deliver', name)
      n = n + 1
    end
  end
end
return n
";

/// ARGV: prefix, upstream, op, now, then `found`: the next probe's time; `failed`: the next
/// probe's time and step; `claim`: how long the probe holds it; `release`: nothing. The upstream's state in
/// `P down` (`next_ms:step`; absent: up) after the change: {0: claimed by this replica, 1:
/// down, 2: up; next probe ms; step}.
const HEALTH: &str = r"
local key, up, op, now = P .. 'down', ARGV[2], ARGV[3], tonumber(ARGV[4])
local v = redis.call('HGET', key, up)
local next_ms, step
if v then
  local i = string.find(v, ':', 1, true)
  next_ms, step = tonumber(string.sub(v, 1, i - 1)), tonumber(string.sub(v, i + 1))
end
local function set(t, s)
  redis.call('HSET', key, up, string.format('%d:%d', t, s))
end
if op == 'up' then
  redis.call('HDEL', key, up)
  return {2, 0, 0}
elseif op == 'found' then
  if v then return {1, next_ms, step} end
  set(tonumber(ARGV[5]), 1)
  return {1, tonumber(ARGV[5]), 1}
elseif op == 'failed' then
  set(tonumber(ARGV[5]), tonumber(ARGV[6]))
  return {1, tonumber(ARGV[5]), tonumber(ARGV[6])}
end
if not v then return {2, 0, 0} end
if op == 'release' then
  set(now, step)
  return {1, now, step}
end
if now < next_ms then return {1, next_ms, step} end
set(now + tonumber(ARGV[5]), step)
return {0, now + tonumber(ARGV[5]), step}
";

/// A message's fields other than its body, as `list` reads them.
const FIELDS: [&str; 13] = [
    "env",
    "upstream",
    "state",
    "reason",
    "attempts",
    "finished",
    "client_errors",
    "ambiguous",
    "next_ms",
    "last",
    "received",
    "bytes",
    "holder",
];

/// Messages read per round trip by `list`.
const LIST_CHUNK: usize = 500;

/// Connection attempts at start, each bounded by 8 × `replay.redis_timeout`.
const CONNECT_ATTEMPTS: u32 = 5;

/// What the spool knows of Redis's durability, found at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Durability {
    /// Every write is synced before Redis answers (`appendfsync always`).
    Synced,
    /// Something the operator should know (logged as a warning).
    Warning(String),
}

struct Inner {
    conn: ConnectionManager,
    /// `replay.redis_prefix` + `spool:`.
    prefix: String,
    timeout: Duration,
    /// This replica's name: its consumer in the group, and the holder of the messages it
    /// delivers: host, process id and a random part (a restarted process is another replica).
    holder: String,
    lease: Duration,
    max_bytes: u64,
    dedup_ttl: Duration,
    on_commit: Box<dyn Fn(Duration) + Send + Sync>,
    /// Messages taken (pending to this replica) and not started yet, in the order to start
    /// them. At most what the scheduler asks for (4 × `spool.workers`).
    taken: Mutex<Vec<Taken>>,
    /// How many the scheduler last asked for: while that many are taken and waiting, the
    /// scheduler waits for a worker, not for Redis.
    wanted: AtomicUsize,
    enqueue: Script,
    take: Script,
    park: Script,
    start: Script,
    finish: Script,
    wake: Script,
    retry_one: Script,
    purge_one: Script,
    next_due: Script,
    forget_consumers: Script,
    health: Script,
    init: Script,
}

/// A message taken from a stream by this replica, waiting for a worker.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Taken {
    /// The stream entry: `n` (new) or `d` (due), then its id.
    entry: String,
    seq: u64,
    upstream: String,
}

/// A script: the shared Lua functions, then its own text.
fn script(body: &str) -> Script {
    Script::new(&format!("{COMMON}{body}"))
}

/// The spool's store on Redis, shared by every replica configured with the same Redis and
/// prefix.
pub struct RedisSpool {
    inner: Arc<Inner>,
    handle: Handle,
    /// Owned here; shut down in the background on drop (dropping a runtime from async code
    /// would panic).
    runtime: Option<Runtime>,
}

impl Drop for RedisSpool {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

fn unavailable(e: impl std::fmt::Display) -> SpoolError {
    SpoolError::Unavailable(format!("Redis: {e}"))
}

impl RedisSpool {
    /// Connects to Redis (retrying a few times: a Redis starting beside hookguard) and returns
    /// the spool; an error when Redis cannot be reached, naming it by `redis.display` (no
    /// password). Called off any async runtime (at start, or by the command line).
    /// `on_commit` sees each enqueue's duration.
    pub fn open(
        redis: &RedisSettings,
        settings: &SpoolSettings,
        on_commit: Box<dyn Fn(Duration) + Send + Sync>,
    ) -> Result<RedisSpool, String> {
        let client = crate::replay::redis_client(redis)
            .map_err(|_| format!("invalid Redis URL or TLS files for {}", redis.display))?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("hookguard-spool-redis")
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the spool's Redis client: {e}"))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(redis.timeout)
            .set_response_timeout(redis.timeout)
            .set_number_of_retries(3)
            .set_factor(100)
            .set_max_delay(1000);
        let conn = runtime.block_on(async {
            let mut delay = Duration::from_millis(200);
            let mut last = String::new();
            for _ in 0..CONNECT_ATTEMPTS {
                let attempt = ConnectionManager::new_with_config(client.clone(), config.clone());
                match tokio::time::timeout(redis.timeout * 8, attempt).await {
                    Ok(Ok(conn)) => return Ok(conn),
                    Ok(Err(e)) => last = e.to_string(),
                    Err(_) => last = "no answer".into(),
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            Err(format!("cannot reach Redis {}: {last}", redis.display))
        })?;
        let inner = Inner {
            conn,
            prefix: format!("{}spool:", redis.prefix),
            timeout: redis.timeout,
            holder: holder_name(),
            lease: settings.redis_lease,
            max_bytes: settings.max_bytes,
            dedup_ttl: settings.dedup_ttl,
            on_commit,
            taken: Mutex::new(Vec::new()),
            wanted: AtomicUsize::new(usize::MAX),
            enqueue: script(ENQUEUE),
            take: script(TAKE),
            park: script(PARK),
            start: script(START),
            finish: script(FINISH),
            wake: script(WAKE),
            retry_one: script(RETRY_ONE),
            purge_one: script(PURGE_ONE),
            next_due: script(NEXT_DUE),
            forget_consumers: script(FORGET_CONSUMERS),
            health: script(HEALTH),
            init: script(INIT),
        };
        let migrated = runtime.block_on(inner.init());
        match migrated {
            Ok(0) => {}
            Ok(n) => tracing::info!(
                messages = n,
                "spool: queued messages moved to the per-upstream schedules of this version"
            ),
            Err(e) => return Err(format!("cannot prepare the spool's streams in Redis: {e}")),
        }
        Ok(RedisSpool {
            inner: Arc::new(inner),
            handle: runtime.handle().clone(),
            runtime: Some(runtime),
        })
    }

    /// Removes from the consumer group the consumers (replicas; each restart is a new one)
    /// with nothing pending that have been idle for longer than `idle`, never this replica;
    /// returns how many. Checked and removed in one script: a consumer's pending entries are
    /// never dropped with it.
    pub async fn forget_gone_consumers(&self, idle: Duration) -> Result<usize, SpoolError> {
        self.run(move |inner| async move {
            let mut conn = inner.conn.clone();
            let mut call = inner.forget_consumers.prepare_invoke();
            call.arg(&inner.prefix)
                .arg(super::ms(idle))
                .arg(&inner.holder);
            let n: u64 = inner.bounded(call.invoke_async(&mut conn)).await?;
            Ok(usize::try_from(n).unwrap_or(usize::MAX))
        })
        .await
    }

    /// This replica's name on the messages it is delivering.
    pub fn holder(&self) -> &str {
        &self.inner.holder
    }

    /// Checks what can be checked of Redis's durability: a message answered 202 must survive
    /// Redis restarting. `Err`: refused (an append-only file off, or a memory policy that
    /// evicts keys), unless `allow_volatile`. Otherwise what to log. Called off any runtime.
    pub fn check_durability(&self, allow_volatile: bool) -> Result<Vec<Durability>, String> {
        let inner = Arc::clone(&self.inner);
        let runtime = self
            .runtime
            .as_ref()
            .ok_or("the spool's Redis client stopped")?;
        let found = runtime.block_on(async move { inner.durability().await });
        let mut notes = Vec::new();
        let mut refusals = Vec::new();
        let config = match found {
            Ok(c) => c,
            Err(e) => {
                notes.push(Durability::Warning(format!(
                    "spool: could not check Redis's persistence (CONFIG GET answered: {e}); make sure it runs with appendonly yes and appendfsync always"
                )));
                return Ok(notes);
            }
        };
        match config.get("appendonly").map(String::as_str) {
            Some("yes") => {}
            Some(_) => refusals.push(
                "Redis keeps no append-only file (appendonly no): a message answered 202 would be lost when Redis restarts. Set appendonly yes (and appendfsync always), or spool.redis_allow_volatile: true to accept the loss",
            ),
            None => notes.push(Durability::Warning(
                "spool: Redis did not say whether appendonly is on; make sure it is".into(),
            )),
        }
        match config.get("appendfsync").map(String::as_str) {
            Some("always") => notes.push(Durability::Synced),
            Some("everysec") => notes.push(Durability::Warning(
                "spool: Redis syncs its append-only file once a second (appendfsync everysec): if Redis itself crashes (or its host loses power), up to about 1 s of messages answered 202 can be lost; appendfsync always closes that window".into(),
            )),
            Some(other) => notes.push(Durability::Warning(format!(
                "spool: Redis leaves syncing its append-only file to the operating system (appendfsync {other}): if its host crashes, the last seconds of messages answered 202 can be lost; appendfsync always closes that window"
            ))),
            None => {}
        }
        let limited = config.get("maxmemory").is_some_and(|m| m != "0");
        let policy = config.get("maxmemory-policy").map_or("", String::as_str);
        if limited && policy != "noeviction" && !policy.is_empty() {
            refusals.push(
                "Redis may evict keys when it is full (maxmemory set, maxmemory-policy not noeviction): queued messages, or the keys that recognise copies, could vanish. Set maxmemory-policy noeviction (a full Redis then answers 503 spool_unavailable), or spool.redis_allow_volatile: true",
            );
        }
        if refusals.is_empty() {
            return Ok(notes);
        }
        if allow_volatile {
            for r in refusals {
                notes.push(Durability::Warning(format!(
                    "spool: {r} (allowed by spool.redis_allow_volatile)"
                )));
            }
            return Ok(notes);
        }
        Err(refusals.join("; "))
    }

    /// Runs `f` on the spool's own runtime (the connection's), whatever runtime calls it.
    async fn run<T, Fut>(&self, f: impl FnOnce(Arc<Inner>) -> Fut) -> Result<T, SpoolError>
    where
        T: Send + 'static,
        Fut: std::future::Future<Output = Result<T, SpoolError>> + Send + 'static,
    {
        let task = self.handle.spawn(f(Arc::clone(&self.inner)));
        task.await
            .map_err(|_| SpoolError::Unavailable("the spool's Redis client stopped".into()))?
    }
}

/// `host-pid-random`.
fn holder_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "host".into());
    format!(
        "{host}-{}-{}",
        std::process::id(),
        crate::random::hex_token(8)
    )
}

fn field_u64(fields: &HashMap<String, Vec<u8>>, name: &str) -> u64 {
    fields
        .get(name)
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

fn field_str(fields: &HashMap<String, Vec<u8>>, name: &str) -> Option<String> {
    fields
        .get(name)
        .map(|v| String::from_utf8_lossy(v).into_owned())
        .filter(|v| !v.is_empty())
}

/// A message's record from its hash's fields.
fn record(seq: u64, fields: &HashMap<String, Vec<u8>>) -> Result<Record, SpoolError> {
    let env = fields
        .get("env")
        .ok_or_else(|| SpoolError::Unavailable(format!("message {seq} has no envelope")))?;
    let mut envelope: Envelope = serde_json::from_slice(env)
        .map_err(|e| SpoolError::Unavailable(format!("message {seq}: {e}")))?;
    // A retry by hand starts the message's age over: the hash holds the current one.
    envelope.received_ms = field_u64(fields, "received");
    let state = match field_str(fields, "state").as_deref() {
        Some("dead") => State::Dead {
            reason: field_str(fields, "reason").unwrap_or_default(),
        },
        _ => State::Queued,
    };
    let n = |name: &str| u32::try_from(field_u64(fields, name)).unwrap_or(u32::MAX);
    Ok(Record {
        seq,
        envelope,
        state,
        attempts: n("attempts"),
        finished: n("finished"),
        client_errors: n("client_errors"),
        ambiguous: n("ambiguous"),
        next_ms: field_u64(fields, "next_ms"),
        last: field_str(fields, "last"),
        bytes: field_u64(fields, "bytes"),
    })
}

/// A flat `[field, value, ...]` reply as a map.
fn pairs(flat: Vec<Vec<u8>>) -> HashMap<String, Vec<u8>> {
    let mut out = HashMap::new();
    let mut it = flat.into_iter();
    while let (Some(k), Some(v)) = (it.next(), it.next()) {
        out.insert(String::from_utf8_lossy(&k).into_owned(), v);
    }
    out
}

impl Inner {
    fn key(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    async fn bounded<T>(
        &self,
        f: impl std::future::Future<Output = redis::RedisResult<T>>,
    ) -> Result<T, SpoolError> {
        match tokio::time::timeout(self.timeout, f).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(unavailable(e)),
            Err(_) => Err(SpoolError::Unavailable(format!(
                "no answer from Redis within {:?}",
                self.timeout
            ))),
        }
    }

    /// `CONFIG GET` of the settings that decide durability; an error when CONFIG is not
    /// allowed (renamed away, or denied by an ACL).
    async fn durability(&self) -> Result<HashMap<String, String>, String> {
        let mut conn = self.conn.clone();
        let mut out = HashMap::new();
        for name in ["appendonly", "appendfsync", "maxmemory", "maxmemory-policy"] {
            let mut cmd = redis::cmd("CONFIG");
            cmd.arg("GET").arg(name);
            let reply: Vec<String> =
                match tokio::time::timeout(self.timeout, cmd.query_async(&mut conn)).await {
                    Ok(Ok(reply)) => reply,
                    Ok(Err(e)) => return Err(e.to_string()),
                    Err(_) => return Err(format!("no answer within {:?}", self.timeout)),
                };
            if let [k, v] = reply.as_slice() {
                out.insert(k.clone(), v.clone());
            }
        }
        Ok(out)
    }

    async fn enqueue(&self, m: Incoming) -> Result<Enqueued, SpoolError> {
        let started = Instant::now();
        let mut conn = self.conn.clone();
        let bytes = m.bytes();
        let envelope = serde_json::to_vec(&m.envelope)
            .map_err(|e| SpoolError::Unavailable(format!("an envelope: {e}")))?;
        let mut call = self.enqueue.prepare_invoke();
        call.arg(&self.prefix)
            .arg(now_ms())
            .arg(self.max_bytes)
            .arg(super::ms(self.dedup_ttl).max(1))
            .arg(bytes)
            .arg(envelope)
            .arg(&m.body[..])
            .arg(&m.envelope.upstream)
            .arg(m.envelope.received_ms)
            .arg(m.keys.len());
        for key in &m.keys {
            call.arg(format!("{key:032x}"));
        }
        let seq: i64 = self.bounded(call.invoke_async(&mut conn)).await?;
        (self.on_commit)(started.elapsed());
        match seq {
            -1 => Ok(Enqueued::Duplicate),
            -2 => Err(SpoolError::Full("spool.max_bytes reached")),
            seq => Ok(Enqueued::Queued(u64::try_from(seq).unwrap_or(0))),
        }
    }

    /// Makes the streams and their group if they are missing, and moves a spool of the
    /// previous layout to this one; returns how many messages were moved.
    async fn init(&self) -> Result<u64, SpoolError> {
        let mut conn = self.conn.clone();
        let mut call = self.init.prepare_invoke();
        call.arg(&self.prefix);
        self.bounded(call.invoke_async(&mut conn)).await
    }

    /// Starts an attempt of a message this replica took; `None` when it did not take it, or
    /// it was taken over meanwhile (it waited longer than the lease), purged or retried by
    /// hand.
    async fn start(&self, seq: u64) -> Result<Option<Started>, SpoolError> {
        let taken = {
            let mut taken = self.taken.lock().unwrap_or_else(|p| p.into_inner());
            match taken.iter().position(|t| t.seq == seq) {
                Some(i) => taken.remove(i),
                None => return Ok(None),
            }
        };
        let mut conn = self.conn.clone();
        let mut call = self.start.prepare_invoke();
        call.arg(&self.prefix)
            .arg(seq)
            .arg(&taken.entry)
            .arg(&self.holder);
        let reply: Option<(i64, Vec<Vec<u8>>)> =
            match self.bounded(call.invoke_async(&mut conn)).await {
                Ok(reply) => reply,
                Err(e) => {
                    // Still pending to this replica: tried again at the next dispatch.
                    self.taken
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(0, taken);
                    return Err(e);
                }
            };
        let Some((unknown, flat)) = reply else {
            return Ok(None);
        };
        let fields = pairs(flat);
        let record = record(seq, &fields)?;
        let body = fields
            .get("body")
            .cloned()
            .map(Bytes::from)
            .unwrap_or_default();
        // The previous attempt never finished: its replica died (or lost its lease) while
        // the application may have had the message.
        Ok(Some((Box::new(record), body, unknown > 0)))
    }

    /// The messages taken and not started, after taking more when there is room for them:
    /// those of an upstream now `blocked` are set back in its schedule first.
    async fn due(&self, limit: usize, blocked: &[String]) -> Result<Vec<u64>, SpoolError> {
        self.wanted.store(limit, Ordering::Relaxed);
        let (parked, room) = {
            let mut taken = self.taken.lock().unwrap_or_else(|p| p.into_inner());
            let (parked, kept): (Vec<Taken>, Vec<Taken>) = std::mem::take(&mut *taken)
                .into_iter()
                .partition(|t| blocked.contains(&t.upstream));
            *taken = kept;
            (parked, limit.saturating_sub(taken.len()))
        };
        let mut conn = self.conn.clone();
        if !parked.is_empty() {
            let mut call = self.park.prepare_invoke();
            call.arg(&self.prefix).arg(&self.holder);
            for t in &parked {
                call.arg(&t.entry).arg(t.seq).arg(&t.upstream);
            }
            // When this fails the entries stay pending to this replica and are claimed again
            // after the lease.
            let _: u64 = self.bounded(call.invoke_async(&mut conn)).await?;
        }
        if room > 0 {
            let mut call = self.take.prepare_invoke();
            call.arg(&self.prefix)
                .arg(now_ms())
                .arg(&self.holder)
                .arg(super::ms(self.lease))
                .arg(room)
                .arg(blocked.len());
            for b in blocked {
                call.arg(b);
            }
            type Entries = Vec<(String, u64, String)>;
            let (claimed, new, due): (Entries, Entries, Entries) = match self
                .bounded(call.invoke_async(&mut conn))
                .await
            {
                Ok(taken) => taken,
                // The group is gone: Redis lost its data (restarted without it), or the
                // keys were deleted. Without it nothing new would ever be delivered.
                Err(e) if e.to_string().contains("NOGROUP") => {
                    tracing::warn!(
                            "spool: the consumer group was missing in Redis (restarted without its data?); made again"
                        );
                    self.init().await?;
                    (Vec::new(), Vec::new(), Vec::new())
                }
                Err(e) => return Err(e),
            };
            let as_taken = |(entry, seq, upstream): (String, u64, String)| Taken {
                entry,
                seq,
                upstream,
            };
            // Claimed ones first (they have waited longest), then three due to one new.
            let mut order: Vec<Taken> = claimed.into_iter().map(as_taken).collect();
            let mut new = new.into_iter().map(as_taken);
            for (i, t) in due.into_iter().map(as_taken).enumerate() {
                order.push(t);
                if i % 3 == 2 {
                    order.extend(new.next());
                }
            }
            order.extend(new);
            let mut taken = self.taken.lock().unwrap_or_else(|p| p.into_inner());
            for t in order {
                if !taken.iter().any(|have| have.seq == t.seq) {
                    taken.push(t);
                }
            }
        }
        let taken = self.taken.lock().unwrap_or_else(|p| p.into_inner());
        Ok(taken.iter().map(|t| t.seq).collect())
    }
}

#[async_trait]
impl SpoolBackend for RedisSpool {
    async fn enqueue(&self, message: Incoming) -> Result<Enqueued, SpoolError> {
        self.run(|inner| async move { inner.enqueue(message).await })
            .await
    }

    async fn start(&self, seq: u64) -> Result<Option<Started>, SpoolError> {
        self.run(move |inner| async move { inner.start(seq).await })
            .await
    }

    async fn finish(&self, seq: u64, attempt: u32, finish: Finish) -> Result<(), SpoolError> {
        self.run(move |inner| async move {
            let mut conn = inner.conn.clone();
            let mut call = inner.finish.prepare_invoke();
            call.arg(&inner.prefix)
                .arg(seq)
                .arg(attempt)
                .arg(&inner.holder);
            match finish {
                Finish::Delivered => call.arg("delivered").arg(0).arg("").arg(0).arg(0).arg(""),
                Finish::Retry {
                    next_ms,
                    note,
                    client_error,
                    ambiguous,
                } => call
                    .arg("retry")
                    .arg(next_ms)
                    .arg(note)
                    .arg(u8::from(client_error))
                    .arg(u8::from(ambiguous))
                    .arg(""),
                Finish::Dead { reason, note } => call
                    .arg("dead")
                    .arg(0)
                    .arg(note)
                    .arg(0)
                    .arg(0)
                    .arg(reason),
            };
            let recorded: i64 = inner.bounded(call.invoke_async(&mut conn)).await?;
            if recorded == 0 {
                tracing::warn!(
                    seq,
                    attempt,
                    "spool: an attempt's result came after its lease ended and the message was taken over (or purged); not recorded"
                );
            }
            Ok(())
        })
        .await
    }

    async fn wake(&self, upstream: &str) -> Result<usize, SpoolError> {
        let upstream = upstream.to_owned();
        self.run(move |inner| async move {
            let mut conn = inner.conn.clone();
            let mut call = inner.wake.prepare_invoke();
            call.arg(&inner.prefix).arg(upstream).arg(now_ms());
            let n: u64 = inner.bounded(call.invoke_async(&mut conn)).await?;
            Ok(usize::try_from(n).unwrap_or(usize::MAX))
        })
        .await
    }

    async fn retry(&self, filter: Filter) -> Result<usize, SpoolError> {
        let seqs: Vec<u64> = self.list(&filter).await?.iter().map(|r| r.seq).collect();
        self.run(move |inner| async move {
            let mut n = 0;
            for seq in seqs {
                let mut conn = inner.conn.clone();
                let mut call = inner.retry_one.prepare_invoke();
                call.arg(&inner.prefix).arg(seq).arg(now_ms());
                let done: u64 = inner.bounded(call.invoke_async(&mut conn)).await?;
                n += usize::from(done == 1);
            }
            Ok(n)
        })
        .await
    }

    async fn purge(&self, filter: Filter) -> Result<usize, SpoolError> {
        let seqs: Vec<u64> = self.list(&filter).await?.iter().map(|r| r.seq).collect();
        self.run(move |inner| async move {
            let mut n = 0;
            for seq in seqs {
                let mut conn = inner.conn.clone();
                let mut call = inner.purge_one.prepare_invoke();
                call.arg(&inner.prefix).arg(seq);
                let done: u64 = inner.bounded(call.invoke_async(&mut conn)).await?;
                n += usize::from(done == 1);
            }
            Ok(n)
        })
        .await
    }

    /// Redis forgets the keys itself (each is written with `dedup_ttl`). Replicas gone for
    /// long (nothing pending, idle for 10 leases) are removed from the consumer group.
    async fn sweep(&self) -> Result<usize, SpoolError> {
        let n = self.forget_gone_consumers(self.inner.lease * 10).await?;
        if n > 0 {
            tracing::info!(
                consumers = n,
                "spool: replicas gone removed from the consumer group"
            );
        }
        Ok(0)
    }

    /// The messages this replica has taken from the streams (pending to it) and not started,
    /// after taking more: they are this replica's to deliver, in the order to start them.
    /// `newest_first` asks for nothing: new messages have their own stream and a quarter of
    /// what is taken.
    async fn due(
        &self,
        now_ms: u64,
        limit: usize,
        newest_first: bool,
        blocked: &[String],
    ) -> Result<Vec<(u64, u64)>, SpoolError> {
        if newest_first {
            return Ok(Vec::new());
        }
        let blocked = blocked.to_vec();
        let seqs = self
            .run(move |inner| async move { inner.due(limit, &blocked).await })
            .await?;
        Ok(seqs.into_iter().map(|seq| (now_ms, seq)).collect())
    }

    async fn next_due(&self, blocked: &[String]) -> Result<Option<u64>, SpoolError> {
        // Every worker busy with what this replica has taken: the scheduler is woken when one
        // is free, and asking Redis meanwhile (new messages wait: due now) would only make it
        // look again every few milliseconds.
        let waiting = self
            .inner
            .taken
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|t| !blocked.contains(&t.upstream))
            .count();
        if waiting > 0 && waiting >= self.inner.wanted.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let blocked = blocked.to_vec();
        self.run(move |inner| async move {
            let mut conn = inner.conn.clone();
            let mut call = inner.next_due.prepare_invoke();
            call.arg(&inner.prefix).arg(now_ms()).arg(blocked.len());
            for b in &blocked {
                call.arg(b);
            }
            inner.bounded(call.invoke_async(&mut conn)).await
        })
        .await
    }

    async fn upstream_of(&self, seq: u64) -> Result<Option<String>, SpoolError> {
        let known = self
            .inner
            .taken
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|t| t.seq == seq)
            .map(|t| t.upstream.clone());
        if known.is_some() {
            return Ok(known);
        }
        self.run(move |inner| async move {
            let mut conn = inner.conn.clone();
            let mut cmd = redis::cmd("HGET");
            cmd.arg(inner.key(&format!("m:{seq}"))).arg("upstream");
            inner.bounded(cmd.query_async(&mut conn)).await
        })
        .await
    }

    async fn get(&self, seq: u64) -> Result<Option<(Record, Bytes)>, SpoolError> {
        self.run(move |inner| async move {
            let mut conn = inner.conn.clone();
            let mut cmd = redis::cmd("HGETALL");
            cmd.arg(inner.key(&format!("m:{seq}")));
            let flat: Vec<Vec<u8>> = inner.bounded(cmd.query_async(&mut conn)).await?;
            if flat.is_empty() {
                return Ok(None);
            }
            let fields = pairs(flat);
            let body = fields
                .get("body")
                .cloned()
                .map(Bytes::from)
                .unwrap_or_default();
            Ok(Some((record(seq, &fields)?, body)))
        })
        .await
    }

    async fn list(&self, filter: &Filter) -> Result<Vec<Record>, SpoolError> {
        let filter = filter.clone();
        self.run(move |inner| async move { inner.list(&filter).await })
            .await
    }

    async fn stats(&self) -> Result<StoreStats, SpoolError> {
        self.run(move |inner| async move {
            let mut conn = inner.conn.clone();
            let mut cmd = redis::cmd("HGETALL");
            cmd.arg(inner.key("meta"));
            let meta = pairs(inner.bounded(cmd.query_async(&mut conn)).await?);
            let mut cmd = redis::cmd("ZRANGE");
            cmd.arg(inner.key("queued")).arg(0).arg(0);
            let first: Vec<String> = inner.bounded(cmd.query_async(&mut conn)).await?;
            let mut oldest_queued_ms = None;
            if let Some(seq) = first.first().and_then(|m| m.parse::<u64>().ok()) {
                let mut cmd = redis::cmd("HGET");
                cmd.arg(inner.key(&format!("m:{seq}"))).arg("received");
                let received: Option<u64> = inner.bounded(cmd.query_async(&mut conn)).await?;
                oldest_queued_ms = received;
            }
            let get = |k: &str| field_u64(&meta, k);
            Ok(StoreStats {
                queued: get("queued"),
                queued_bytes: get("queued_bytes"),
                dead: get("dead"),
                dead_bytes: get("dead_bytes"),
                oldest_queued_ms,
                enqueued_total: get("enqueued_total"),
                delivered_total: get("delivered_total"),
                ambiguous_total: get("ambiguous_total"),
            })
        })
        .await
    }

    async fn down_upstreams(&self) -> Result<Option<HashMap<String, SharedDown>>, SpoolError> {
        self.run(move |inner| async move {
            let mut conn = inner.conn.clone();
            let mut cmd = redis::cmd("HGETALL");
            cmd.arg(inner.key("down"));
            let all: HashMap<String, String> = inner.bounded(cmd.query_async(&mut conn)).await?;
            let parse = |v: &str| {
                let (next, step) = v.split_once(':')?;
                Some(SharedDown {
                    next_ms: next.parse().ok()?,
                    step: step.parse().ok()?,
                })
            };
            Ok(Some(
                all.into_iter()
                    .filter_map(|(up, v)| Some((up, parse(&v)?)))
                    .collect(),
            ))
        })
        .await
    }

    async fn upstream_health(
        &self,
        upstream: &str,
        change: HealthChange,
    ) -> Result<Option<Health>, SpoolError> {
        let upstream = upstream.to_owned();
        self.run(move |inner| async move {
            let mut conn = inner.conn.clone();
            let mut call = inner.health.prepare_invoke();
            call.arg(&inner.prefix).arg(upstream);
            match change {
                HealthChange::Up => call.arg("up").arg(now_ms()),
                HealthChange::FoundDown { next_ms } => call.arg("found").arg(now_ms()).arg(next_ms),
                HealthChange::ProbeFailed { next_ms, step } => {
                    call.arg("failed").arg(now_ms()).arg(next_ms).arg(step)
                }
                HealthChange::Claim { hold_ms } => call.arg("claim").arg(now_ms()).arg(hold_ms),
                HealthChange::Release => call.arg("release").arg(now_ms()),
            };
            let (code, next_ms, step): (u8, u64, u32) =
                inner.bounded(call.invoke_async(&mut conn)).await?;
            let down = SharedDown { next_ms, step };
            Ok(Some(match code {
                0 => Health::Claimed(down),
                1 => Health::Down(down),
                _ => Health::Up,
            }))
        })
        .await
    }
}

impl Inner {
    /// The messages matching `filter`, in arrival order: the sequence numbers of both states,
    /// then the records (without bodies) a chunk per round trip.
    async fn list(&self, filter: &Filter) -> Result<Vec<Record>, SpoolError> {
        let mut conn = self.conn.clone();
        let mut seqs: Vec<u64> = match &filter.seqs {
            Some(s) => s.clone(),
            None => {
                let mut all = Vec::new();
                for state in ["queued", "dead"] {
                    if filter.state.as_deref().is_some_and(|s| s != state) {
                        continue;
                    }
                    let mut cmd = redis::cmd("ZRANGE");
                    cmd.arg(self.key(state)).arg(0).arg(-1);
                    let members: Vec<String> = self.bounded(cmd.query_async(&mut conn)).await?;
                    all.extend(members.iter().filter_map(|m| m.parse::<u64>().ok()));
                }
                all
            }
        };
        seqs.sort_unstable();
        seqs.dedup();
        let now = now_ms();
        let limit = filter.limit.unwrap_or(usize::MAX);
        let mut out = Vec::new();
        for chunk in seqs.chunks(LIST_CHUNK) {
            let mut pipe = redis::pipe();
            for seq in chunk {
                pipe.cmd("HMGET")
                    .arg(self.key(&format!("m:{seq}")))
                    .arg(&FIELDS[..]);
            }
            let rows: Vec<Vec<Option<Vec<u8>>>> = self.bounded(pipe.query_async(&mut conn)).await?;
            for (seq, row) in chunk.iter().zip(rows) {
                let fields: HashMap<String, Vec<u8>> = FIELDS
                    .iter()
                    .zip(row)
                    .filter_map(|(k, v)| Some(((*k).to_owned(), v?)))
                    .collect();
                if fields.is_empty() {
                    continue; // delivered or purged meanwhile
                }
                let record = record(*seq, &fields)?;
                if filter.matches(&record, now) {
                    out.push(record);
                    if out.len() >= limit {
                        return Ok(out);
                    }
                }
            }
        }
        Ok(out)
    }
}
