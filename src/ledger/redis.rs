//! [`RedisLedger`]: one quota shared by every process that points at the same Redis.

use std::{fmt, sync::Arc, time::Duration};

use redis::{
    aio::{ConnectionManager, ConnectionManagerConfig},
    Client, Script,
};
use tokio::sync::OnceCell;

use super::spi::{
    bounded_level, hold_member, Ask, Grant, Hold, Ledger, LedgerError, LedgerFuture, Limits,
    HOLD_TTL_US, MIN_WAIT_US, WAITER_GRACE_US,
};
use crate::QuotaKey;

/// Reserve: KEYS = bucket hash, holds zset, waiters zset; ARGV = tokens per period,
/// requests per period (0: none), period µs, headroom µs, tokens, client, hold member,
/// hold ttl µs, waiter grace µs, min wait µs, start level (a new key's share of a full
/// bucket), the client's spell alone (0: none), tokens and requests it admitted alone (see
/// `Ask::alone`). Returns
/// `{1, 0}` when reserved, else
/// `{0, wait µs}`. The same arithmetic as `LocalKey::reserve`.
const RESERVE: &str = r#"
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
const SETTLE: &str = r#"
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

/// A [`Ledger`] in Redis: every process whose gate uses a `RedisLedger` on the same server
/// (and the same prefix) spends from one quota per key. Feature `redis`.
///
/// ```no_run
/// use bedrock_throttle::{OutagePolicy, Quota, RedisLedger, ThrottleConfig};
///
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let cfg = ThrottleConfig::builder()
///     .model_quota("anthropic.claude-3-5-sonnet-20240620-v1:0", Quota::new(50, 400_000))
///     .ledger(RedisLedger::open("redis://127.0.0.1:6379/")?)
///     .outage(OutagePolicy::FailOpen { share: 0.25 }) // a fleet of four
///     .build()?;
/// # let _ = cfg; Ok(()) }
/// ```
///
/// # In Redis
/// Each quota key has three Redis keys under one hash tag, `{<prefix>:<model>:<region>}`
/// (`%`, braces and a Region's `:` percent-encoded, so two quota keys never share a name),
/// so each script touches one slot as Redis Cluster requires (the ledger itself connects
/// to a single server; it has no cluster client): a hash with both buckets' levels and the time
/// of their last refill (`…:b`), a sorted set of outstanding holds by expiry (`…:h`), and
/// a sorted set of waiting clients by the time they began waiting (`…:q`). Two Lua
/// scripts do all the work, each in one round trip: reserve (both limits at once) and
/// settle. They are sent as `EVALSHA` and loaded once when the server answers `NOSCRIPT`.
/// Time is the Redis server's `TIME`, never a client's clock. The keys expire after a
/// quota period plus the hold lifetime without use.
///
/// # Failures
/// - A process that crashes leaves its holds charged whole; they refill at the quota's rate
///   like any charge, and the hold records expire after `hold_ttl` (10 minutes), after
///   which a late settle changes nothing.
/// - A Redis restart (without persistence) forgets the buckets and the holds. A key that a
///   client spent from less than a period ago comes back at the level it could have refilled
///   to since (empty at the client's last spend, then the quota's rate), not full; a key
///   nobody spent from lately starts full, as on a first start. Settles of holds made
///   before the restart change nothing, so nothing is counted twice. Requests in flight are
///   not affected; waiting ones ask again and are served.
/// - Under [`OutagePolicy::FailOpen`](crate::OutagePolicy::FailOpen) each process spends
///   its share while Redis is down and remembers what it admitted on its own; its first ask
///   afterwards takes exactly that from the key's bucket (once per outage and process, see
///   [`Ask::alone`](crate::Ask::alone)), whether the key came back with its data
///   (persistence, a promoted replica: the outage's refill is in it) or empty (it starts at
///   what it refilled since the process's last answer). The fleet never gets the outage's
///   quota twice, and what it did not spend alone is still there. Under `FailClosed`
///   nothing was spent and nothing is taken.
/// - While Redis cannot be reached the gate follows its
///   [`OutagePolicy`](crate::OutagePolicy); the connection reconnects by itself.
///
/// # Fairness
/// When a key has no room, clients (one per configuration and process) take turns in the
/// order they began waiting: a client is served only when no client that began waiting
/// before it still waits, and after it is served its next request queues behind the
/// others. Within a process, requests keep their FIFO order. A waiting client that stops
/// asking for its wait plus one second loses its place, so a crashed process blocks no
/// one for long.
#[derive(Clone)]
pub struct RedisLedger {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    conn: OnceCell<ConnectionManager>,
    prefix: String,
    timeout: Duration,
    hold_ttl: Duration,
    reserve: Script,
    settle: Script,
}

impl fmt::Debug for RedisLedger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLedger")
            .field("server", &self.inner.client.get_connection_info().addr())
            .field("prefix", &self.inner.prefix)
            .field("timeout", &self.inner.timeout)
            .field("hold_ttl", &self.inner.hold_ttl)
            .finish()
    }
}

impl RedisLedger {
    /// A ledger on the Redis server at `url` (`redis://host:port/db`). It connects on first
    /// use and reconnects by itself.
    pub fn open(url: &str) -> Result<Self, redis::RedisError> {
        Ok(Self::from_client(Client::open(url)?))
    }

    /// A ledger on `client`'s server.
    pub fn from_client(client: Client) -> Self {
        Self {
            inner: Arc::new(Inner {
                client,
                conn: OnceCell::new(),
                prefix: "bt".into(),
                timeout: Duration::from_millis(500),
                hold_ttl: Duration::from_micros(HOLD_TTL_US as u64),
                reserve: Script::new(RESERVE),
                settle: Script::new(SETTLE),
            }),
        }
    }

    fn with(self, f: impl FnOnce(&mut Inner)) -> Self {
        let mut inner = Arc::try_unwrap(self.inner).unwrap_or_else(|shared| Inner {
            client: shared.client.clone(),
            conn: OnceCell::new(),
            prefix: shared.prefix.clone(),
            timeout: shared.timeout,
            hold_ttl: shared.hold_ttl,
            reserve: Script::new(RESERVE),
            settle: Script::new(SETTLE),
        });
        f(&mut inner);
        Self {
            inner: Arc::new(inner),
        }
    }

    /// The first part of the Redis key names (`bt`): fleets with different quotas on one
    /// server use different prefixes.
    pub fn prefix(self, prefix: impl Into<String>) -> Self {
        let prefix = prefix.into();
        self.with(|i| i.prefix = prefix)
    }

    /// How long one round trip or connection attempt may take before it counts as an
    /// outage (500 ms).
    pub fn timeout(self, timeout: Duration) -> Self {
        self.with(|i| i.timeout = timeout)
    }

    /// How long a hold can be settled (10 minutes); after that its whole charge stands.
    /// Set it above the longest request.
    pub fn hold_ttl(self, ttl: Duration) -> Self {
        self.with(|i| i.hold_ttl = ttl)
    }

    /// The Redis key names of `key`, all under one hash tag.
    fn names(&self, key: &QuotaKey) -> [String; 3] {
        let tag = hash_tag(&self.inner.prefix, key);
        [format!("{tag}:b"), format!("{tag}:h"), format!("{tag}:q")]
    }
}

/// `{<prefix>:<model>:<region>}` (`{<prefix>:<model>:<region>:1m}` for a 1M-context key),
/// one name per quota key: `%`, braces (which would end the
/// hash tag early) and, in the Region, `:` are percent-encoded, and an empty id is `%`, so
/// no two keys share a name. Model ids as Bedrock spells them need no encoding.
fn hash_tag(prefix: &str, key: &QuotaKey) -> String {
    fn encode(s: Option<&str>, colon: bool) -> String {
        match s {
            None => String::new(),
            Some("") => "%".to_owned(),
            Some(s) => s
                .chars()
                .map(|c| match c {
                    '%' => "%25".to_owned(),
                    '{' => "%7B".to_owned(),
                    '}' => "%7D".to_owned(),
                    ':' if colon => "%3A".to_owned(),
                    c => c.to_string(),
                })
                .collect(),
        }
    }
    // The 1M-context variant of a model is a quota of its own; standard keys keep their
    // names. The region's colons are encoded, so the suffix cannot be mistaken.
    let context = match key.context() {
        crate::ContextWindow::OneMillion => ":1m",
        _ => "",
    };
    format!(
        "{{{prefix}:{}:{}{context}}}",
        encode(key.model(), false),
        encode(key.region(), true)
    )
}

impl Inner {
    async fn conn(&self) -> Result<ConnectionManager, LedgerError> {
        self.conn
            .get_or_try_init(|| async {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(self.timeout))
                    .set_response_timeout(Some(self.timeout))
                    .set_number_of_retries(2)
                    .set_max_delay(self.timeout);
                ConnectionManager::new_lazy_with_config(self.client.clone(), config)
            })
            .await
            .cloned()
            .map_err(LedgerError::new)
    }
}

/// `level` clamped to `[0, 1]` (1 when it is not a number), to three decimals: what the
/// reserve script reads.
fn start_level(level: f64) -> String {
    format!("{:.3}", bounded_level(level))
}

fn limit_args(l: &Limits) -> (u64, u32, u64) {
    (
        l.tokens,
        l.requests.unwrap_or(0),
        l.period.as_micros().max(1) as u64,
    )
}

impl Ledger for RedisLedger {
    fn reserve(&self, ask: Ask) -> LedgerFuture<Grant> {
        let this = self.clone();
        Box::pin(async move {
            let i = &this.inner;
            let mut conn = i.conn().await?;
            let [b, h, q] = this.names(&ask.key);
            let (t, r, p) = limit_args(&ask.limits);
            let alone = ask.alone.unwrap_or_default();
            let (reserved, wait): (i64, i64) = i
                .reserve
                .key(b)
                .key(h)
                .key(q)
                .arg(t)
                .arg(r)
                .arg(p)
                .arg(ask.limits.headroom.as_micros() as u64)
                .arg(ask.tokens)
                .arg(format!("{:x}", ask.client))
                .arg(hold_member(ask.client, ask.hold, ask.tokens))
                .arg(i.hold_ttl.as_micros() as u64)
                .arg(WAITER_GRACE_US as u64)
                .arg(MIN_WAIT_US as u64)
                .arg(start_level(ask.start_level))
                .arg(alone.spell)
                .arg(alone.tokens)
                .arg(alone.requests)
                .invoke_async(&mut conn)
                .await
                .map_err(LedgerError::new)?;
            Ok(if reserved == 1 {
                Grant::Reserved(Hold::for_ask(&ask))
            } else {
                Grant::FitsIn(Duration::from_micros(wait.max(0) as u64))
            })
        })
    }

    fn settle(&self, hold: Hold, actual: u64) -> LedgerFuture<()> {
        let this = self.clone();
        Box::pin(async move {
            let i = &this.inner;
            let mut conn = i.conn().await?;
            let [b, h, _] = this.names(&hold.key);
            let (t, r, p) = limit_args(&hold.limits);
            let _settled: i64 = i
                .settle
                .key(b)
                .key(h)
                .arg(t)
                .arg(r)
                .arg(p)
                .arg(hold_member(hold.client, hold.id, hold.tokens))
                .arg(hold.tokens)
                .arg(actual)
                .invoke_async(&mut conn)
                .await
                .map_err(LedgerError::new)?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_quota_key_has_a_hash_tag_of_its_own() {
        let keys = [
            (Some("a{b"), None),
            (Some("a}b"), None),
            (Some("a_b"), None),
            (Some("a%7Bb"), None),
            (Some("a:b"), None),
            (Some("a"), Some("b")),
            (Some("a:b"), Some("c")),
            (Some("a"), Some("b:c")),
            (Some(""), None),
            (None, None),
            (None, Some("")),
            (Some("%"), None),
        ];
        let tags: std::collections::HashSet<String> = keys
            .iter()
            .map(|(m, r)| hash_tag("bt", &QuotaKey::new(*m, *r)))
            .collect();
        assert_eq!(tags.len(), keys.len(), "{tags:?}");
        for tag in &tags {
            // One hash tag: the first `{` and the first `}` enclose everything.
            assert_eq!(tag.matches('{').count(), 1, "{tag}");
            assert_eq!(tag.matches('}').count(), 1, "{tag}");
        }
        // Names as Bedrock spells them are unchanged.
        let sonnet = QuotaKey::new(
            Some("us.anthropic.claude-sonnet-4-20250514-v1:0"),
            Some("us-east-1"),
        );
        assert_eq!(
            hash_tag("bt", &sonnet),
            "{bt:us.anthropic.claude-sonnet-4-20250514-v1:0:us-east-1}"
        );
        // The 1M-context variant is a quota of its own, named apart.
        let long = sonnet.with_context(crate::ContextWindow::OneMillion);
        assert_eq!(
            hash_tag("bt", &long),
            "{bt:us.anthropic.claude-sonnet-4-20250514-v1:0:us-east-1:1m}"
        );
    }
}
