//! [`LocalLedger`]: a shared quota kept in this process, with the Redis scripts' arithmetic.

use std::{
    collections::{BTreeMap, HashMap},
    sync::Mutex,
    time::Duration,
};

use tokio::time::Instant;

use super::{
    bucket,
    lock::lock,
    spi::{
        bounded_level, hold_member, Ask, Grant, Hold, Ledger, LedgerFuture, Limits, HOLD_TTL_US,
        MIN_WAIT_US, WAITER_GRACE_US,
    },
};
use crate::QuotaKey;

/// A [`Ledger`] kept in this process: the same arithmetic as the Redis scripts, over the
/// process's clock.
///
/// The gate uses one as the outage fallback of [`OutagePolicy::FailOpen`](crate::OutagePolicy::FailOpen); it also serves
/// to share one budget between gates of different configurations in one process.
#[derive(Debug)]
pub struct LocalLedger {
    start: Instant,
    keys: Mutex<HashMap<QuotaKey, LocalKey>>,
}

impl Default for LocalLedger {
    fn default() -> Self {
        Self::new()
    }
}

impl LocalLedger {
    /// An empty ledger: every key starts with full buckets.
    pub fn new() -> Self {
        Self {
            start: Instant::now(),
            keys: Mutex::new(HashMap::new()),
        }
    }

    fn now_us(&self) -> f64 {
        (Instant::now() - self.start).as_micros() as f64
    }

    /// Reserves or answers at once (the [`Ledger::reserve`] future is always ready).
    pub(crate) fn reserve_now(&self, ask: &Ask) -> Grant {
        let now = self.now_us();
        let mut keys = lock(&self.keys);
        let state = keys
            .entry(ask.key.clone())
            .or_insert_with(|| LocalKey::new(ask.limits, now, ask.start_level));
        match state.reserve(now, ask, HOLD_TTL_US, WAITER_GRACE_US) {
            None => Grant::Reserved(Hold::for_ask(ask)),
            Some(wait_us) => Grant::FitsIn(Duration::from_micros(wait_us)),
        }
    }

    /// Forgets every key: each starts again at the level its next ask gives.
    pub(crate) fn clear(&self) {
        lock(&self.keys).clear();
    }

    pub(crate) fn settle_now(&self, hold: &Hold, actual: u64) {
        let now = self.now_us();
        if let Some(state) = lock(&self.keys).get_mut(&hold.key) {
            state.settle(now, hold, actual);
        }
    }
}

impl Ledger for LocalLedger {
    fn reserve(&self, ask: Ask) -> LedgerFuture<Grant> {
        let grant = self.reserve_now(&ask);
        Box::pin(std::future::ready(Ok(grant)))
    }

    fn settle(&self, hold: Hold, actual: u64) -> LedgerFuture<()> {
        self.settle_now(&hold, actual);
        Box::pin(std::future::ready(Ok(())))
    }
}

/// One key's state in a [`LocalLedger`], in microseconds of the ledger's clock; the Redis
/// scripts keep the same numbers in a hash and two sorted sets.
#[derive(Clone, Debug, PartialEq)]
struct LocalKey {
    /// Token level and request level.
    tokens: f64,
    requests: f64,
    updated: f64,
    /// The last spell alone of each client taken from the buckets (see `Ask::alone`).
    taken: HashMap<u64, u64>,
    /// Outstanding holds: member → expiry.
    holds: HashMap<String, f64>,
    /// Waiting clients: (first ask, client) → (place kept until, tokens asked).
    waiters: BTreeMap<(u64, u64), (f64, u64)>,
}

impl LocalKey {
    /// A key at `level` (a share of a full bucket) of both limits.
    fn new(limits: Limits, now: f64, level: f64) -> Self {
        let level = bounded_level(level);
        Self {
            tokens: limits.tokens as f64 * level,
            requests: limits.requests.map_or(0.0, |r| f64::from(r) * level),
            updated: now,
            taken: HashMap::new(),
            holds: HashMap::new(),
            waiters: BTreeMap::new(),
        }
    }

    /// Refills both buckets up to `now` at the limits' rates, never above a period's worth.
    fn refill(&mut self, now: f64, l: Limits) {
        let dt = (now - self.updated).max(0.0);
        let period = l.period.as_micros() as f64;
        let t = l.tokens as f64;
        self.tokens = (self.tokens + t * dt / period).min(t);
        self.requests = match l.requests {
            Some(r) => {
                let r = f64::from(r);
                (self.requests + r * dt / period).min(r)
            }
            None => 0.0,
        };
        self.updated = self.updated.max(now);
    }

    /// Microseconds until `tokens` (and one request) fit, headroom included; zero when they
    /// fit now.
    fn wait_for(&self, tokens: u64, l: Limits) -> f64 {
        let period = l.period.as_micros() as f64;
        let head = l.headroom.as_micros() as f64;
        let t = l.tokens as f64;
        // The headroom refill is reckoned per period in µs, as the Redis scripts do.
        let need = bucket::need(tokens as f64, t * head / period, t);
        let mut wait = (need - self.tokens) * period / t;
        if let Some(r) = l.requests {
            let r = f64::from(r);
            let need = bucket::need(1.0, r * head / period, r);
            wait = wait.max((need - self.requests) * period / r);
        }
        wait.max(0.0)
    }

    /// The reserve script: `None` when reserved, else the wait in microseconds.
    fn reserve(&mut self, now: f64, ask: &Ask, ttl: f64, grace: f64) -> Option<u64> {
        let l = ask.limits;
        self.refill(now, l);
        if let Some(alone) = ask.alone.filter(|a| a.spell > 0) {
            if self.taken.insert(ask.client, alone.spell) != Some(alone.spell) {
                // What the client admitted on its own comes off the buckets, once.
                self.tokens -= alone.tokens as f64;
                if l.requests.is_some() {
                    self.requests -= alone.requests as f64;
                }
            }
        }
        self.holds.retain(|_, expiry| *expiry > now);
        // Waiters that stopped asking lose their place.
        self.waiters.retain(|_, (until, _)| *until >= now);
        let head = self.waiters.iter().next().map(|(&(_, c), &(_, n))| (c, n));
        let wait = match head {
            Some((c, n)) if c != ask.client => self.wait_for(n, l),
            _ => {
                let wait = self.wait_for(ask.tokens, l);
                if wait <= 0.0 {
                    self.tokens -= ask.tokens as f64;
                    if l.requests.is_some() {
                        self.requests -= 1.0;
                    }
                    self.holds
                        .insert(hold_member(ask.client, ask.hold, ask.tokens), now + ttl);
                    self.waiters.retain(|&(_, c), _| c != ask.client);
                    return None;
                }
                wait
            }
        };
        let wait = wait.ceil().max(MIN_WAIT_US);
        let since = self
            .waiters
            .keys()
            .find(|&&(_, c)| c == ask.client)
            .map(|&(s, _)| s);
        let since = since.unwrap_or(now as u64);
        self.waiters
            .insert((since, ask.client), (now + wait + grace, ask.tokens));
        Some(wait as u64)
    }

    /// The settle script: gives back `reserved − actual` if the hold is still known.
    fn settle(&mut self, now: f64, hold: &Hold, actual: u64) -> bool {
        let member = hold_member(hold.client, hold.id, hold.tokens);
        if self
            .holds
            .remove(&member)
            .is_none_or(|expiry| expiry <= now)
        {
            return false;
        }
        self.refill(now, hold.limits);
        let diff = hold.tokens as f64 - actual as f64;
        self.tokens = (self.tokens + diff).min(hold.limits.tokens as f64);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::spi::Alone;

    fn limits() -> Limits {
        Limits {
            tokens: 6_000,
            requests: Some(60),
            period: Duration::from_secs(60),
            headroom: Duration::ZERO,
        }
    }

    fn ask(client: u64, hold: u64, tokens: u64) -> Ask {
        Ask::new(
            QuotaKey::new(Some("m"), None),
            tokens,
            limits(),
            client,
            hold,
        )
    }

    const S: f64 = 1e6;

    #[tokio::test(start_paused = true)]
    async fn a_key_starts_at_the_asked_level_and_each_spell_alone_is_taken_once() {
        let ledger = LocalLedger::new();
        let mut a = ask(1, 0, 1_000);
        a.start_level = 0.25;
        // 1 500 tokens and 15 requests to start with: 1 000 fit, 1 000 more in 5 s.
        assert!(matches!(ledger.reserve_now(&a), Grant::Reserved(_)));
        a.hold = 1;
        assert!(matches!(
            ledger.reserve_now(&a),
            Grant::FitsIn(d) if d == Duration::from_secs(5)
        ));
        // 20 s later (2 000 refilled, 2 500 in the bucket) a client back from an outage
        // in which it admitted 600 tokens on its own has them taken, even though the
        // answer is "not now" for 3 000: 1 100 more take 11 s at 100 tokens/s.
        tokio::time::advance(Duration::from_secs(20)).await;
        let spell = |spell, tokens| {
            Some(Alone {
                spell,
                tokens,
                requests: 2,
            })
        };
        let mut back = ask(2, 2, 3_000);
        back.alone = spell(1, 600);
        let Grant::FitsIn(wait) = ledger.reserve_now(&back) else {
            panic!("1 900 left cannot hold 3 000");
        };
        assert_eq!(wait, Duration::from_secs(11));
        // The same spell told again (another waiter of the client) is not taken again ...
        let mut again = ask(2, 3, 3_000);
        again.alone = spell(1, 650);
        assert!(matches!(
            ledger.reserve_now(&again),
            Grant::FitsIn(d) if d == Duration::from_secs(11)
        ));
        // ... another client's spell is, and so is a later spell of the first.
        let mut other = ask(3, 0, 3_000);
        other.alone = spell(1, 400);
        assert!(matches!(
            ledger.reserve_now(&other),
            Grant::FitsIn(d) if d == Duration::from_secs(15)
        ));
        tokio::time::advance(Duration::from_secs(1)).await;
        let mut later = ask(2, 4, 3_000);
        later.alone = spell(2, 100);
        assert!(matches!(
            ledger.reserve_now(&later),
            Grant::FitsIn(d) if d == Duration::from_secs(15)
        ));
    }

    #[test]
    fn a_start_level_out_of_range_is_clamped() {
        for (level, tokens) in [(-1.0, 0.0), (2.0, 6_000.0), (f64::NAN, 6_000.0)] {
            assert_eq!(
                LocalKey::new(limits(), 0.0, level).tokens,
                tokens,
                "{level}"
            );
        }
    }

    #[test]
    fn reserves_both_limits_and_answers_the_refill_time() {
        let mut b = LocalKey::new(limits(), 0.0, 1.0);
        assert_eq!(b.reserve(0.0, &ask(1, 0, 5_000), 600.0 * S, S), None);
        assert_eq!((b.tokens, b.requests), (1_000.0, 59.0));
        // 2 000 more need 1 000 more tokens: 10 s at 100 tokens/s.
        assert_eq!(
            b.reserve(0.0, &ask(1, 1, 2_000), 600.0 * S, S),
            Some(10_000_000)
        );
        assert_eq!(b.reserve(10.0 * S, &ask(1, 1, 2_000), 600.0 * S, S), None);
        assert!((b.tokens - 0.0).abs() < 1e-9);
    }

    #[test]
    fn settle_gives_back_the_difference_once_and_never_above_capacity() {
        let mut b = LocalKey::new(limits(), 0.0, 1.0);
        let a = ask(1, 7, 3_000);
        assert_eq!(b.reserve(0.0, &a, 600.0 * S, S), None);
        let hold = Hold::for_ask(&a);
        assert!(b.settle(0.0, &hold, 1_000));
        assert_eq!(b.tokens, 5_000.0);
        // A second settle of the same hold changes nothing.
        assert!(!b.settle(0.0, &hold, 0));
        assert_eq!(b.tokens, 5_000.0);
        // Debt: more charged than reserved.
        let a = ask(1, 8, 1_000);
        assert_eq!(b.reserve(0.0, &a, 600.0 * S, S), None);
        assert!(b.settle(0.0, &Hold::for_ask(&a), 9_000));
        assert_eq!(b.tokens, -4_000.0);
        // Capped at a period's worth.
        let a = ask(1, 9, 100);
        assert_eq!(b.reserve(120.0 * S, &a, 600.0 * S, S), None);
        assert!(b.settle(120.0 * S, &Hold::for_ask(&a), 0));
        assert_eq!(b.tokens, 6_000.0);
    }

    #[test]
    fn an_expired_hold_is_not_refunded() {
        let mut b = LocalKey::new(limits(), 0.0, 1.0);
        let a = ask(1, 0, 6_000);
        assert_eq!(b.reserve(0.0, &a, 5.0 * S, S), None);
        assert!(!b.settle(5.0 * S, &Hold::for_ask(&a), 0));
        assert_eq!(b.tokens, 0.0);
        assert!(b.holds.is_empty());
    }

    #[test]
    fn clients_take_turns_in_the_order_they_began_waiting() {
        let mut b = LocalKey::new(limits(), 0.0, 1.0);
        assert_eq!(b.reserve(0.0, &ask(1, 0, 6_000), 600.0 * S, S), None);
        // Client 2 wants a lot and begins waiting first; client 3 wants little.
        let w2 = b.reserve(0.0, &ask(2, 0, 3_000), 600.0 * S, S).unwrap();
        assert_eq!(w2, 30_000_000);
        // Client 3 would fit after 1 s, but waits behind client 2: told 2's wait.
        assert_eq!(
            b.reserve(1.0 * S, &ask(3, 0, 100), 600.0 * S, S),
            Some(29_000_000)
        );
        assert_eq!(
            b.reserve(29.0 * S, &ask(3, 0, 100), 600.0 * S, S),
            Some(1_000_000)
        );
        // Client 2 comes back on time and is served, then 3 is the head.
        assert_eq!(b.reserve(30.0 * S, &ask(2, 0, 3_000), 600.0 * S, S), None);
        assert_eq!(
            b.reserve(30.0 * S, &ask(3, 0, 100), 600.0 * S, S),
            Some(1_000_000)
        );
        assert_eq!(b.reserve(31.0 * S, &ask(3, 0, 100), 600.0 * S, S), None);
        assert!(b.waiters.is_empty());
    }

    #[test]
    fn a_waiter_that_stops_asking_loses_its_place() {
        let mut b = LocalKey::new(limits(), 0.0, 1.0);
        assert_eq!(b.reserve(0.0, &ask(1, 0, 6_000), 600.0 * S, S), None);
        assert_eq!(
            b.reserve(0.0, &ask(2, 0, 3_000), 600.0 * S, S),
            Some(30_000_000)
        );
        // Behind client 2 while its place holds (its wait plus one second of grace) ...
        assert_eq!(
            b.reserve(20.0 * S, &ask(3, 0, 100), 600.0 * S, S),
            Some(10_000_000)
        );
        assert_eq!(
            b.reserve(31.0 * S, &ask(3, 0, 100), 600.0 * S, S),
            Some(MIN_WAIT_US as u64)
        );
        // ... and served once client 2, which never came back, has lost it.
        assert_eq!(b.reserve(31.5 * S, &ask(3, 0, 3_000), 600.0 * S, S), None);
        assert!(b.waiters.is_empty());
    }
}
