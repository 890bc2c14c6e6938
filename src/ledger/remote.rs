//! Spending from a shared [`Ledger`]: the link to it, a waiter's step of asking it, the hold
//! to settle.
//!
//! Waiting stays with the key's own queue (see the `acquire` module); once the head of the
//! queue has room in the key's own buckets, [`RemoteStep`] asks the shared ledger, waits as
//! long as it answers, and during an outage follows the link's [`OutagePolicy`].

use std::{
    fmt,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    task::{Context, Poll},
    time::Duration,
};

use tokio::time::Instant;

use super::{
    local::LocalLedger,
    lock::lock,
    spi::{Alone, Ask, Grant, Hold, Ledger, LedgerError, LedgerFuture, Limits, OutagePolicy},
};
use crate::{quota::ResolvedQuota, QuotaKey};

/// A shared ledger as the gate holds it: the ledger, who this client is, and the policy
/// for outages.
pub(crate) struct LedgerLink {
    ledger: Arc<dyn Ledger>,
    policy: OutagePolicy,
    /// The in-process budget of [`OutagePolicy::FailOpen`].
    fallback: LocalLedger,
    client: u64,
    next_hold: AtomicU64,
    down_until: Mutex<Option<Instant>>,
    /// When the current outage began (the first failure since the ledger last answered).
    outage_began: Mutex<Option<Instant>>,
}

impl fmt::Debug for LedgerLink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LedgerLink")
            .field("ledger", &self.ledger)
            .field("policy", &self.policy)
            .field("client", &self.client)
            .finish_non_exhaustive()
    }
}

impl LedgerLink {
    pub(super) fn new(ledger: Arc<dyn Ledger>, policy: OutagePolicy) -> Self {
        Self {
            ledger,
            policy,
            fallback: LocalLedger::new(),
            client: fastrand::u64(..),
            next_hold: AtomicU64::new(0),
            down_until: Mutex::new(None),
            outage_began: Mutex::new(None),
        }
    }

    fn ask(&self, key: &QuotaKey, tokens: u64, limits: Limits) -> Ask {
        let hold = self.next_hold.fetch_add(1, Ordering::Relaxed);
        Ask::new(key.clone(), tokens, limits, self.client, hold)
    }

    /// Whether the ledger failed less than `retry_after` ago.
    fn is_down(&self, now: Instant) -> bool {
        lock(&self.down_until).is_some_and(|t| now < t)
    }

    fn mark_down(&self, now: Instant, error: &LedgerError) {
        let mut d = lock(&self.down_until);
        if d.is_none_or(|t| now >= t) {
            tracing::warn!(%error, policy = ?self.policy, "shared quota ledger unavailable");
        }
        *d = Some(now + OutagePolicy::retry_after());
        lock(&self.outage_began).get_or_insert(now);
    }

    /// When the fleet began spending on its own: the current outage's start, under
    /// `FailOpen` (whose shares add up to the quota); under `FailClosed` nobody did.
    fn fleet_alone_since(&self) -> Option<Instant> {
        match self.policy {
            OutagePolicy::FailOpen { .. } => *lock(&self.outage_began),
            OutagePolicy::FailClosed => None,
        }
    }

    fn mark_up(&self) {
        lock(&self.outage_began).take();
        let mut d = lock(&self.down_until);
        if d.take().is_some() {
            tracing::info!("shared quota ledger reachable again");
            // The next outage's budget starts from what is known then, not from what this
            // one left over.
            self.fallback.clear();
        }
    }
}

/// One key's link to the shared ledger: the link, the key's limits there, and what this
/// client's spending from the key must remember.
#[derive(Debug)]
pub(super) struct RemoteKey {
    link: Arc<LedgerLink>,
    limits: Limits,
    spending: Arc<Mutex<Spending>>,
}

impl RemoteKey {
    pub(super) fn new(link: Arc<LedgerLink>, limits: Limits) -> Self {
        Self {
            link,
            limits,
            spending: Arc::default(),
        }
    }

    /// A waiter's step of asking the shared ledger.
    pub(super) fn step(&self) -> RemoteStep {
        RemoteStep {
            link: self.link.clone(),
            limits: self.limits,
            spending: self.spending.clone(),
            asking: None,
            retry_at: None,
        }
    }
}

/// What this client's spending from one key must remember across an outage.
#[derive(Debug, Default)]
struct Spending {
    /// When the shared ledger last answered this client about the key, reserved or not:
    /// the last time its bucket is known to have been there (and, with the fleet spending,
    /// possibly empty).
    last_answer: Option<Instant>,
    /// When this client began admitting from its outage fallback, if it has since the
    /// ledger last answered.
    fallback_since: Option<Instant>,
    /// The current or last spell alone (see `Ask::alone`), counting from 1.
    spell: u64,
    /// Tokens the spell admitted, less what its settlements gave back.
    alone_tokens: f64,
    /// Requests the spell admitted.
    alone_requests: u64,
}

impl Spending {
    /// When the fleet began spending on its own, as far as this client knows: its own
    /// fallback's first admission, or the outage's start (`alone`, under `FailOpen`).
    fn alone_since(&self, alone: Option<Instant>) -> Option<Instant> {
        match (self.fallback_since, alone) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The level, as a share of a full bucket, that the key can have refilled to since
    /// the ledger last answered (had the bucket been empty then) until `until`: where a
    /// bucket the ledger no longer knows starts (`until` now; what the fleet spent alone
    /// comes off it with each client's [`Ask::alone`]), or the fallback's (`until` the
    /// fleet began spending on its own: under `FailOpen` the fleet's shares add up to the
    /// quota, so what refills from then on is theirs).
    fn start_level(&self, until: Instant, period: Duration) -> f64 {
        self.last_answer.map_or(1.0, |t| {
            let until = until.max(t);
            ((until - t).as_secs_f64() / period.as_secs_f64().max(1e-9)).min(1.0)
        })
    }

    /// What the current spell alone admitted, while it is open.
    fn alone(&self) -> Option<Alone> {
        self.fallback_since.map(|_| Alone {
            spell: self.spell,
            tokens: self.alone_tokens.max(0.0) as u64,
            requests: self.alone_requests,
        })
    }

    /// The fallback admitted `tokens` at `now`: the first admission since the ledger last
    /// answered opens a new spell.
    fn admitted_alone(&mut self, now: Instant, tokens: u64) {
        if self.fallback_since.is_none() {
            self.fallback_since = Some(now);
            self.spell += 1;
            self.alone_tokens = 0.0;
            self.alone_requests = 0;
        }
        self.alone_tokens += tokens as f64;
        self.alone_requests += 1;
    }
}

/// The limits of a resolved quota.
pub(super) fn limits(q: ResolvedQuota, headroom: Duration) -> Limits {
    Limits {
        tokens: q.tokens,
        requests: q.requests,
        period: q.period,
        headroom,
    }
}

/// What a [`RemoteStep`] came to.
#[derive(Debug)]
pub(super) enum Answer {
    /// Reserved, in the shared ledger or (during an outage) in the fallback.
    Reserved(RemoteHold),
    /// The ledger is unreachable and the policy fails closed.
    Unavailable(LedgerError),
    /// A question was sent, or the step knows when to ask again: look again at once.
    Again,
}

/// One waiter's dealings with the shared ledger: the question in flight, and when to ask
/// again.
pub(super) struct RemoteStep {
    link: Arc<LedgerLink>,
    limits: Limits,
    spending: Arc<Mutex<Spending>>,
    /// Behind a mutex only so that the gate's response future stays `Sync`; it is polled
    /// through `&mut`, never locked.
    asking: Option<Mutex<LedgerFuture<Grant>>>,
    retry_at: Option<Instant>,
}

impl fmt::Debug for RemoteStep {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RemoteStep")
            .field("limits", &self.limits)
            .field("asking", &self.asking.is_some())
            .field("retry_at", &self.retry_at)
            .finish_non_exhaustive()
    }
}

impl RemoteStep {
    /// Whether a question is in flight.
    pub(super) fn in_flight(&self) -> bool {
        self.asking.is_some()
    }

    /// When the last answer said to ask again, if that is still to come.
    pub(super) fn retry_at(&self, now: Instant) -> Option<Instant> {
        self.retry_at.filter(|t| now < *t)
    }

    /// The answer to the question in flight, once it has come.
    pub(super) fn poll_answer(
        &mut self,
        key: &QuotaKey,
        tokens: u64,
        now: Instant,
        cx: &mut Context<'_>,
    ) -> Option<Answer> {
        let future = self.asking.as_mut()?;
        let future = future.get_mut().unwrap_or_else(|e| e.into_inner());
        let Poll::Ready(result) = future.as_mut().poll(cx) else {
            return None;
        };
        self.asking = None;
        if result.is_ok() {
            // The ledger has taken the outage into account (see `Ask::alone`).
            let mut spending = lock(&self.spending);
            spending.last_answer = Some(now);
            spending.fallback_since = None;
        }
        Some(match result {
            Ok(Grant::Reserved(hold)) => {
                self.link.mark_up();
                self.reserved(hold, false)
            }
            Ok(Grant::FitsIn(d)) => {
                self.link.mark_up();
                self.later(now + d)
            }
            Err(error) => {
                self.link.mark_down(now, &error);
                self.fallback(key, tokens, now, error)
            }
        })
    }

    /// Asks for `tokens` of `key` (the key's own buckets have room): sends the question, or,
    /// while the ledger is known to be down, goes straight to the outage policy.
    pub(super) fn ask(&mut self, key: &QuotaKey, tokens: u64, now: Instant) -> Answer {
        self.retry_at = None;
        if self.link.is_down(now) {
            let error = LedgerError::new("unreachable at the last attempt");
            return self.fallback(key, tokens, now, error);
        }
        let mut ask = self.link.ask(key, tokens, self.limits);
        {
            let spending = lock(&self.spending);
            ask.start_level = spending.start_level(now, self.limits.period);
            ask.alone = spending.alone();
        }
        self.asking = Some(Mutex::new(self.link.ledger.reserve(ask)));
        Answer::Again
    }

    /// Gives up the question in flight: should the ledger still grant it, the hold is
    /// settled to zero at once, so a waiter that left is not charged for.
    pub(super) fn abandon(&mut self) {
        let Some(asking) = self.asking.take() else {
            return;
        };
        let future = asking.into_inner().unwrap_or_else(|e| e.into_inner());
        let ledger = self.link.ledger.clone();
        // Without a runtime a late grant stays charged until the hold expires.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Ok(Grant::Reserved(hold)) = future.await {
                    tracing::debug!(quota_key = %hold.key, "a grant came after its waiter left: settled to zero");
                    if let Err(error) = ledger.settle(hold, 0).await {
                        tracing::debug!(%error, "settle in the shared ledger failed: the hold stays charged");
                    }
                }
            });
        }
    }

    fn fallback(&mut self, key: &QuotaKey, tokens: u64, now: Instant, e: LedgerError) -> Answer {
        match self.link.policy {
            OutagePolicy::FailClosed => Answer::Unavailable(e),
            OutagePolicy::FailOpen { share } => {
                let mut ask = self.link.ask(key, tokens, self.limits.scaled(share));
                // The fallback starts no fuller than the shared bucket can be: a fleet
                // that spent it just before the outage has nothing more to spend at once.
                let alone = self.link.fleet_alone_since();
                {
                    let spending = lock(&self.spending);
                    let until = spending.alone_since(alone).unwrap_or(now).min(now);
                    ask.start_level = spending.start_level(until, self.limits.period);
                }
                match self.link.fallback.reserve_now(&ask) {
                    Grant::Reserved(hold) => {
                        lock(&self.spending).admitted_alone(now, hold.tokens);
                        self.reserved(hold, true)
                    }
                    // The shared ledger is asked again within the retry pause, not only
                    // when the fallback would have room: a process whose next request waits
                    // seconds for its share must not keep spending alone (on top of a fleet
                    // back on the shared budget) long after the ledger answers again.
                    Grant::FitsIn(d) => self.later(now + d.min(OutagePolicy::retry_after())),
                }
            }
        }
    }

    fn reserved(&self, hold: Hold, fallback: bool) -> Answer {
        let alone = fallback.then(|| (self.spending.clone(), lock(&self.spending).spell));
        Answer::Reserved(RemoteHold {
            link: self.link.clone(),
            hold,
            alone,
        })
    }

    fn later(&mut self, at: Instant) -> Answer {
        self.retry_at = Some(at);
        Answer::Again
    }
}

impl Drop for RemoteStep {
    /// A waiter dropped while its question is in flight leaves like one that timed out.
    fn drop(&mut self) {
        self.abandon();
    }
}

/// A hold in the shared ledger (or, during an outage, in the fallback) to settle.
#[derive(Debug)]
pub(super) struct RemoteHold {
    link: Arc<LedgerLink>,
    hold: Hold,
    /// For a hold in the outage fallback: the spending it counts in, and its spell.
    alone: Option<(Arc<Mutex<Spending>>, u64)>,
}

impl RemoteHold {
    /// Whether the hold is in the outage fallback rather than the shared ledger.
    pub(super) fn is_fallback(&self) -> bool {
        self.alone.is_some()
    }

    pub(super) fn settle(self, actual: u64) {
        if let Some((spending, spell)) = &self.alone {
            self.link.fallback.settle_now(&self.hold, actual);
            // While its spell is still to be told to the ledger, what it gives back (or
            // takes more) counts there too; after, the ledger has taken the reservation.
            let mut spending = lock(spending);
            if spending.spell == *spell && spending.fallback_since.is_some() {
                spending.alone_tokens += actual as f64 - self.hold.tokens as f64;
            }
            return;
        }
        let future = self.link.ledger.settle(self.hold, actual);
        // Without a runtime the hold stays charged whole and expires: the safe side.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Err(error) = future.await {
                    tracing::debug!(%error, "settle in the shared ledger failed: the hold stays charged");
                }
            });
        }
    }
}
