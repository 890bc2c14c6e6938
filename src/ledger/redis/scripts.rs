//! The ledger's two Lua scripts and how they are sent.
//!
//! Each script names every key it touches in `KEYS`, and the keys of one quota key share
//! one hash tag, so on a cluster each call runs on the one node that owns that slot.

use redis::{aio::ConnectionLike, Cmd, ErrorKind, FromRedisValue, RedisResult, ServerErrorKind};

/// Reserve: KEYS = bucket hash, holds zset, waiters zset; ARGV = tokens per period,
/// requests per period (0: none), period µs, headroom µs, tokens, client, hold member,
/// hold ttl µs, waiter grace µs, min wait µs, start level (a new key's share of a full
/// bucket), the client's spell alone (0: none), tokens and requests it admitted alone (see
/// `Ask::alone`). Returns
/// `{1, 0}` when reserved, else
/// `{0, wait µs}`. The same arithmetic as `LocalKey::reserve`.
pub(super) const RESERVE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local T, R, P, H = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local tokens, me, member = tonumber(ARGV[5]), ARGV[6], ARGV[7]
local ttl, grace, minwait = tonumber(ARGV[8]), tonumber(ARGV[9]), tonumber(ARGV[10])
local level, spell = tonumber(ARGV[11]), tonumber(ARGV[12])
local s = redis.call('HMGET', KEYS[1], 'tl', 'rl', 'ts', 'o:' .. me)
local tl, rl, ts, taken = tonumber(s[1]), tonumber(s[2]), tonumber(s[3]), tonumber(s[4])
if not ts then tl = T * level; rl = R * level; ts = now end
local dt = math.max(now - ts, 0)
tl = math.min(T, tl + T * dt / P)
if R > 0 then rl = math.min(R, rl + R * dt / P) else rl = 0 end
ts = math.max(ts, now)
if spell > 0 and taken ~= spell then
  tl = tl - tonumber(ARGV[13])
  if R > 0 then rl = rl - tonumber(ARGV[14]) end
  redis.call('HSET', KEYS[1], 'o:' .. me, spell)
end
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, 100)
if #expired > 0 then redis.call('ZREM', KEYS[2], unpack(expired)) end
local head, headn
for _ = 1, 100 do
  local h = redis.call('ZRANGE', KEYS[3], 0, 0)
  if #h == 0 then break end
  local w = redis.call('HMGET', KEYS[1], 'w:' .. h[1], 'n:' .. h[1])
  local untl = tonumber(w[1])
  if untl and untl >= now then head = h[1]; headn = tonumber(w[2]); break end
  redis.call('ZREM', KEYS[3], h[1])
  redis.call('HDEL', KEYS[1], 'w:' .. h[1], 'n:' .. h[1])
end
local function wait_for(n)
  local w = (math.min(n + T * H / P, T) - tl) * P / T
  if R > 0 then w = math.max(w, (math.min(1 + R * H / P, R) - rl) * P / R) end
  return math.max(w, 0)
end
local keep = math.ceil((P + ttl) / 1000)
local wait
if head == nil or head == me then
  wait = wait_for(tokens)
  if wait <= 0 then
    tl = tl - tokens
    if R > 0 then rl = rl - 1 end
    redis.call('HSET', KEYS[1], 'tl', tl, 'rl', rl, 'ts', ts)
    redis.call('ZADD', KEYS[2], now + ttl, member)
    if head == me then
      redis.call('ZREM', KEYS[3], me)
      redis.call('HDEL', KEYS[1], 'w:' .. me, 'n:' .. me)
    end
    redis.call('PEXPIRE', KEYS[1], keep)
    redis.call('PEXPIRE', KEYS[2], keep)
    return {1, 0}
  end
else
  wait = wait_for(headn or tokens)
end
wait = math.max(math.ceil(wait), minwait)
redis.call('ZADD', KEYS[3], 'NX', now, me)
redis.call('HSET', KEYS[1], 'tl', tl, 'rl', rl, 'ts', ts, 'w:' .. me, now + wait + grace, 'n:' .. me, tokens)
redis.call('PEXPIRE', KEYS[1], keep)
redis.call('PEXPIRE', KEYS[3], keep)
return {0, wait}
"#;

/// Settle: KEYS = bucket hash, holds zset; ARGV = tokens per period, requests per period,
/// period µs, hold member, tokens reserved, tokens charged. Returns 1 when the hold was
/// known and settled, 0 when it had expired or was lost. As `LocalKey::settle`.
pub(super) const SETTLE: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local expiry = tonumber(redis.call('ZSCORE', KEYS[2], ARGV[4]))
if not expiry then return 0 end
redis.call('ZREM', KEYS[2], ARGV[4])
if expiry <= now then return 0 end
local T, R, P = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local s = redis.call('HMGET', KEYS[1], 'tl', 'rl', 'ts')
local tl, rl, ts = tonumber(s[1]), tonumber(s[2]), tonumber(s[3])
if not ts then tl = T; rl = R; ts = now end
local dt = math.max(now - ts, 0)
tl = math.min(T, tl + T * dt / P)
if R > 0 then rl = math.min(R, rl + R * dt / P) else rl = 0 end
tl = math.min(T, tl + tonumber(ARGV[5]) - tonumber(ARGV[6]))
redis.call('HSET', KEYS[1], 'tl', tl, 'rl', rl, 'ts', math.max(ts, now))
return 1
"#;

/// A script sent as `EVALSHA`, and as `EVAL` (which also caches it on that node) when the
/// node answers `NOSCRIPT`.
///
/// Not `redis::Script::invoke_async`: that loads a missing script with `SCRIPT LOAD`, which
/// a cluster client sends to every primary; while one primary is down (the moment a
/// replica has just been promoted and does not know the script yet) that fails, and the
/// call with it. `EVAL` goes by the script's keys to the one node that runs it.
pub(super) struct LuaScript {
    source: &'static str,
    hash: String,
}

impl LuaScript {
    pub(super) fn new(source: &'static str) -> Self {
        Self {
            source,
            hash: redis::Script::new(source).get_hash().to_owned(),
        }
    }

    /// Runs the script with `keys` and `args` on `conn`.
    pub(super) async fn call<T: FromRedisValue>(
        &self,
        conn: &mut impl ConnectionLike,
        keys: &[String],
        args: &[String],
    ) -> RedisResult<T> {
        match self.command("EVALSHA", keys, args).query_async(conn).await {
            Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
                self.command("EVAL", keys, args).query_async(conn).await
            }
            other => other,
        }
    }

    fn command(&self, verb: &str, keys: &[String], args: &[String]) -> Cmd {
        let mut cmd = redis::cmd(verb);
        match verb {
            "EVAL" => cmd.arg(self.source),
            _ => cmd.arg(&self.hash),
        };
        cmd.arg(keys.len()).arg(keys).arg(args);
        cmd
    }
}
