//! [`RedisLedger`]: one quota shared by every process that points at the same Redis.

use std::{fmt, sync::Arc, time::Duration};

use redis::{
    cluster::{ClusterClient, ClusterClientBuilder},
    Client, IntoConnectionInfo,
};
use tokio::sync::Mutex;

mod connection;
mod scripts;

use connection::{Connection, Server};
use scripts::{LuaScript, RESERVE, SETTLE};

use super::spi::{
    bounded_level, hold_member, Ask, Grant, Hold, Ledger, LedgerError, LedgerFuture, Limits,
    HOLD_TTL_US, MIN_WAIT_US, WAITER_GRACE_US,
};
use crate::QuotaKey;

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
/// (`%`, braces and a Region's `:` percent-encoded, so two quota keys never share a name;
/// braces in the prefix encoded too), so each script touches one slot, as Redis Cluster
/// requires: a hash with both buckets' levels and the time of their last refill (`…:b`),
/// a sorted set of outstanding holds by expiry (`…:h`), and
/// a sorted set of waiting clients by the time they began waiting (`…:q`). Two Lua
/// scripts do all the work, each in one round trip: reserve (both limits at once) and
/// settle. They are sent as `EVALSHA`, and as `EVAL` when a server answers `NOSCRIPT`.
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
/// # Cluster
/// [`RedisLedger::cluster`] connects to a Redis Cluster (ElastiCache or MemoryDB in cluster
/// mode, a Valkey cluster) with the `redis` crate's cluster client. Each script runs on the
/// primary that owns its quota key's slot (different models spread over the primaries);
/// the client follows `MOVED` redirects and learns the new slot map after a failover.
/// While a slot's primary is down and before its replica takes over, calls for that slot
/// fail and the gate follows its [`OutagePolicy`](crate::OutagePolicy), as for a single
/// server that is down; keys on the other primaries carry on. Replication is asynchronous,
/// so a promoted replica can miss the last writes of the failed primary: a reserve it
/// missed is quota spent that the fleet no longer sees (as when Redis comes back with
/// slightly old data), a settle it missed leaves that hold charged whole (it gives nothing
/// back later, so nothing is counted twice). Every call goes to a primary: the scripts
/// write, and a replica's copy lags, so reading from replicas would hand out quota twice.
///
/// # Sentinel and replicas
/// Sentinel is not supported: the ledger does not ask Sentinel where the primary is. Point
/// [`RedisLedger::open`] at the primary, or at an endpoint that follows it across a
/// failover (ElastiCache's and MemoryDB's primary endpoint, a DNS name that moves with the
/// primary; the connection resolves it again when it reconnects). Never point it at a
/// replica or a reader endpoint: replicas refuse the scripts' writes. A primary demoted
/// to a replica keeps its clients' connections open and answers `READONLY`: that call
/// fails (the gate follows its outage policy) and the ledger connects again for the next.
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
    server: Server,
    /// Made on first use, and again after a server answered `READONLY`.
    conn: Mutex<Option<Connection>>,
    prefix: String,
    timeout: Duration,
    hold_ttl: Duration,
    reserve: LuaScript,
    settle: LuaScript,
}

impl fmt::Debug for RedisLedger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisLedger")
            .field("server", &self.inner.server)
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
        Self::on(Server::One(client))
    }

    /// A ledger on the Redis Cluster (ElastiCache or MemoryDB in cluster mode, a Valkey
    /// cluster) that `nodes` belong to: one or more of its nodes (`redis://host:port`,
    /// `rediss://` for TLS), from which it learns the rest. It connects on first use,
    /// routes each script to the node that owns its key's slot, and follows the cluster
    /// through failovers by itself; see [Cluster](#cluster).
    ///
    /// ```no_run
    /// # fn main() -> Result<(), redis::RedisError> {
    /// use bedrock_throttle::RedisLedger;
    ///
    /// let ledger = RedisLedger::cluster([
    ///     "redis://10.0.1.10:6379",
    ///     "redis://10.0.2.10:6379",
    /// ])?;
    /// # let _ = ledger; Ok(()) }
    /// ```
    pub fn cluster<T: IntoConnectionInfo>(
        nodes: impl IntoIterator<Item = T>,
    ) -> Result<Self, redis::RedisError> {
        // The client's own retries wait at least 1.28 s by default, longer than a call may
        // take before it counts as an outage: short waits instead, and the gate asks again.
        let client = ClusterClientBuilder::new(nodes)
            .retries(3)
            .min_retry_wait(20)
            .max_retry_wait(200)
            .build()?;
        Ok(Self::from_cluster_client(client))
    }

    /// A ledger on `client`'s cluster, for settings [`cluster`](Self::cluster) does not
    /// make (a password, TLS certificates, its retries). The ledger's
    /// [`timeout`](Self::timeout) replaces the client's connection and response timeouts.
    /// Leave reads on the primaries (no `read_from_replicas`): the scripts write.
    pub fn from_cluster_client(client: ClusterClient) -> Self {
        Self::on(Server::Cluster(Box::new(client)))
    }

    fn on(server: Server) -> Self {
        Self {
            inner: Arc::new(Inner {
                server,
                conn: Mutex::new(None),
                prefix: "bt".into(),
                timeout: Duration::from_millis(500),
                hold_ttl: Duration::from_micros(HOLD_TTL_US as u64),
                reserve: LuaScript::new(RESERVE),
                settle: LuaScript::new(SETTLE),
            }),
        }
    }

    fn with(self, f: impl FnOnce(&mut Inner)) -> Self {
        let mut inner = Arc::try_unwrap(self.inner).unwrap_or_else(|shared| Inner {
            server: shared.server.clone(),
            conn: Mutex::new(None),
            prefix: shared.prefix.clone(),
            timeout: shared.timeout,
            hold_ttl: shared.hold_ttl,
            reserve: LuaScript::new(RESERVE),
            settle: LuaScript::new(SETTLE),
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
    /// outage (500 ms). On a cluster a call may take twice as long in all, so that it can
    /// follow a redirect after a slow first attempt.
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
    // Braces in the prefix would end the tag early too (an empty `{}` tag would hash each
    // name whole and split a key's names over slots); they are encoded, the rest is kept,
    // so existing prefixes keep their names.
    let prefix = prefix.replace('{', "%7B").replace('}', "%7D");
    format!(
        "{{{prefix}:{}:{}{context}}}",
        encode(key.model(), false),
        encode(key.region(), true)
    )
}

impl Inner {
    async fn conn(&self) -> Result<Connection, LedgerError> {
        let mut conn = self.conn.lock().await;
        if let Some(c) = &*conn {
            return Ok(c.clone());
        }
        let c = self
            .server
            .connect(self.timeout)
            .await
            .map_err(LedgerError::new)?;
        *conn = Some(c.clone());
        Ok(c)
    }

    /// Runs `script`. A server that answers `READONLY` was demoted under an open
    /// connection: the connection is dropped, and the next call connects again, resolving
    /// the server's name again (behind a primary endpoint, that finds the new primary).
    async fn run<T: redis::FromRedisValue>(
        &self,
        script: &LuaScript,
        keys: &[String],
        args: &[String],
    ) -> Result<T, LedgerError> {
        let mut conn = self.conn().await?;
        let result = script.call(&mut conn, keys, args).await;
        if let Err(e) = &result {
            if conn.must_reconnect(e) {
                *self.conn.lock().await = None;
            }
        }
        result.map_err(LedgerError::new)
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
            let [b, h, q] = this.names(&ask.key);
            let (t, r, p) = limit_args(&ask.limits);
            let alone = ask.alone.unwrap_or_default();
            let args = [
                t.to_string(),
                r.to_string(),
                p.to_string(),
                (ask.limits.headroom.as_micros() as u64).to_string(),
                ask.tokens.to_string(),
                format!("{:x}", ask.client),
                hold_member(ask.client, ask.hold, ask.tokens),
                (i.hold_ttl.as_micros() as u64).to_string(),
                (WAITER_GRACE_US as u64).to_string(),
                (MIN_WAIT_US as u64).to_string(),
                start_level(ask.start_level),
                alone.spell.to_string(),
                alone.tokens.to_string(),
                alone.requests.to_string(),
            ];
            let (reserved, wait): (i64, i64) = i.run(&i.reserve, &[b, h, q], &args).await?;
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
            let [b, h, _] = this.names(&hold.key);
            let (t, r, p) = limit_args(&hold.limits);
            let args = [
                t.to_string(),
                r.to_string(),
                p.to_string(),
                hold_member(hold.client, hold.id, hold.tokens),
                hold.tokens.to_string(),
                actual.to_string(),
            ];
            let _settled: i64 = i.run(&i.settle, &[b, h], &args).await?;
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

    #[test]
    fn the_names_of_a_quota_key_hash_to_one_cluster_slot() {
        use redis::cluster_routing::Slot;
        let keys = [
            QuotaKey::new(Some("a{b}c"), Some("us-east-1")),
            QuotaKey::new(Some("}"), None),
            QuotaKey::new(None, None),
            QuotaKey::new(Some(""), Some("")),
        ];
        // Braces in a prefix would end the tag early, and an empty tag (`{}`) hashes each
        // name whole: they must not split a key's names over slots.
        for prefix in ["bt", "", "}", "{", "{}", "a}b{c", "%7D"] {
            for key in &keys {
                let ledger = RedisLedger::open("redis://127.0.0.1:1/")
                    .unwrap()
                    .prefix(prefix);
                let names = ledger.names(key);
                let slots: Vec<Slot> = names.iter().map(Slot::for_key).collect();
                assert!(slots.iter().all(|s| *s == slots[0]), "{names:?}: {slots:?}");
                // And the tag is the whole name but its suffix: other keys spread.
                let tag = hash_tag(prefix, key);
                assert_eq!(
                    Slot::for_key(&names[0]),
                    Slot::for_key(&tag[1..tag.len() - 1])
                );
            }
        }
        // Different models land on different slots (so on different primaries).
        let a = RedisLedger::open("redis://127.0.0.1:1/").unwrap();
        let slots: std::collections::HashSet<Slot> = (0..20)
            .map(|i| Slot::for_key(&a.names(&QuotaKey::new(Some(&format!("m{i}")), None))[0]))
            .collect();
        assert!(slots.len() > 10, "{slots:?}");
    }
}
