//! The budget a gate may share with other processes: the [`Ledger`] trait, its in-process
//! implementation [`LocalLedger`], and what happens when a shared budget cannot be reached.

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    future::Future,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

use std::task::{Context, Poll};

use tokio::time::{Instant, Sleep};

use super::{lock, Reservation, Ticket};
use crate::{quota::ResolvedQuota, BoxError, QuotaKey, ThrottleError};

/// The future a [`Ledger`] answers with.
pub type LedgerFuture<T> = Pin<Box<dyn Future<Output = Result<T, LedgerError>> + Send>>;

/// The one place that knows the quota state a gate spends from when that state is shared:
/// reserve, settle, and "when could this fit".
///
/// Set one with [`ThrottleConfigBuilder::ledger`](crate::ThrottleConfigBuilder::ledger);
/// [`RedisLedger`](crate::RedisLedger) (feature `redis`) shares a quota between processes,
/// [`LocalLedger`] keeps it in this process. Without one, the gate spends from its own
/// in-process buckets only.
///
/// # How the gate uses it
/// Waiting stays in the process: requests of a key queue in arrival order in the process's
/// own FIFO queue, and only the head of that queue asks the ledger. The ledger either
/// reserves one request and `tokens` tokens at once, both limits in one step, or answers
/// how long until it could ([`Grant::FitsIn`]); the head sleeps that long and asks again.
/// When the response comes, the gate settles the [`Hold`] with the tokens actually charged
/// (a 429 settles to zero at once); a hold that is never settled stays charged whole.
///
/// A ledger must be fair between the clients that ask it: a client ([`Ask::client`]) that
/// keeps asking must eventually be served even while others ask too. Both implementations
/// here serve clients in the order they began waiting, one reservation per turn.
///
/// The process's own buckets stay in front of the shared ledger as a per-process ceiling at
/// the full quota: they only hold a process back after an upstream throttle (see
/// "Slowing down" in the [`gate`](crate::gate) docs), which therefore slows only the
/// process that received it.
///
/// Two configurations, each with its own settings, spending from one budget in process:
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use bedrock_throttle::{LocalLedger, Quota, ThrottleConfig};
///
/// let budget = Arc::new(LocalLedger::new());
/// let interactive = ThrottleConfig::builder()
///     .quota(Quota::new(50, 400_000))
///     .max_wait(Duration::from_secs(5))
///     .ledger(budget.clone())
///     .build()?;
/// let batch = ThrottleConfig::builder()
///     .quota(Quota::new(50, 400_000))
///     .max_wait(Duration::from_secs(600))
///     .ledger(budget)
///     .build()?;
/// # let _ = (interactive, batch);
/// # Ok::<(), bedrock_throttle::ConfigError>(())
/// ```
///
/// Across processes, use [`RedisLedger`](crate::RedisLedger) (its docs have the example).
pub trait Ledger: fmt::Debug + Send + Sync + 'static {
    /// Reserves one request and `ask.tokens` tokens of `ask.key` if both fit now and no
    /// client that began waiting earlier is still waiting; otherwise answers when to ask
    /// again.
    fn reserve(&self, ask: Ask) -> LedgerFuture<Grant>;

    /// Charges `actual` tokens for `hold` instead of what it reserved: the difference goes
    /// back, or is taken as debt when `actual` is larger. A hold that has expired or is
    /// unknown (the ledger lost its state) is left alone: its charge stands.
    fn settle(&self, hold: Hold, actual: u64) -> LedgerFuture<()>;
}

impl<L: Ledger> Ledger for Arc<L> {
    fn reserve(&self, ask: Ask) -> LedgerFuture<Grant> {
        (**self).reserve(ask)
    }

    fn settle(&self, hold: Hold, actual: u64) -> LedgerFuture<()> {
        (**self).settle(hold, actual)
    }
}

/// The limits of one quota key, as the gate resolved them.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Limits {
    /// Tokens per period.
    pub tokens: u64,
    /// Requests per period, when limited.
    pub requests: Option<u32>,
    /// The quota period.
    pub period: Duration,
    /// Refill time each bucket keeps unused on top of every cost.
    pub headroom: Duration,
}

impl Limits {
    /// These limits at `share` of their rate (requests rounded down, at least one).
    pub fn scaled(self, share: f64) -> Self {
        Self {
            tokens: ((self.tokens as f64 * share).floor() as u64).max(1),
            requests: self
                .requests
                .map(|r| ((f64::from(r) * share).floor() as u32).max(1)),
            ..self
        }
    }
}

/// A request for room in a shared budget.
#[derive(Clone, Debug)]
pub struct Ask {
    /// The quota key.
    pub key: QuotaKey,
    /// Tokens to reserve (with one request).
    pub tokens: u64,
    /// The key's limits.
    pub limits: Limits,
    /// Who asks: one id per gate configuration and process; the ledger's fairness is
    /// between clients.
    pub client: u64,
    /// An id for the hold, unique for `client`.
    pub hold: u64,
}

/// A ledger's answer to an [`Ask`].
#[derive(Debug)]
pub enum Grant {
    /// Reserved: settle the hold when the outcome is known.
    Reserved(Hold),
    /// Not now: ask again after this long.
    FitsIn(Duration),
}

/// Tokens and one request reserved in a [`Ledger`], to be settled.
#[derive(Clone, Debug)]
pub struct Hold {
    /// The quota key.
    pub key: QuotaKey,
    /// The key's limits at the time of the reservation.
    pub limits: Limits,
    /// The client that reserved.
    pub client: u64,
    /// The hold's id, unique for `client`.
    pub id: u64,
    /// Tokens reserved.
    pub tokens: u64,
}

impl Hold {
    /// The hold that answers `ask`.
    pub fn for_ask(ask: &Ask) -> Self {
        Self {
            key: ask.key.clone(),
            limits: ask.limits,
            client: ask.client,
            id: ask.hold,
            tokens: ask.tokens,
        }
    }
}

/// A shared ledger could not be reached or answered nonsense.
#[derive(Debug)]
pub struct LedgerError(BoxError);

impl LedgerError {
    /// Wraps the underlying failure.
    pub fn new(source: impl Into<BoxError>) -> Self {
        Self(source.into())
    }
}

impl fmt::Display for LedgerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "shared quota ledger unavailable: {}", self.0)
    }
}

impl std::error::Error for LedgerError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

/// What the gate does while its shared [`Ledger`] cannot be reached.
///
/// Either way the gate asks the shared ledger again on the next admission after
/// [`OutagePolicy::retry_after`]; the Redis connection reconnects by itself, and the gate
/// resumes spending from the shared budget as soon as it answers.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum OutagePolicy {
    /// Requests that need the shared budget fail with
    /// [`ThrottleError::LedgerUnavailable`](crate::ThrottleError::LedgerUnavailable);
    /// nothing is sent upstream. The fleet never exceeds the quota, and stops while the
    /// ledger is down.
    FailClosed,
    /// Requests are admitted from an in-process budget of `share` of the quota (for a
    /// fleet of `n` processes, `1 / n` keeps the fleet inside the quota). The fleet keeps
    /// working, within `n × share` of the quota.
    FailOpen {
        /// The share of the quota each process may spend on its own, in `(0, 1]`.
        share: f64,
    },
}

impl OutagePolicy {
    /// How long after a failure the gate goes straight to the outage policy before it asks
    /// the shared ledger again: 250 ms.
    pub const fn retry_after() -> Duration {
        Duration::from_millis(250)
    }
}

/// A shared ledger as the gate holds it: the ledger, who this client is, and the policy
/// for outages.
pub(crate) struct Budget {
    pub(crate) ledger: Arc<dyn Ledger>,
    pub(crate) policy: OutagePolicy,
    pub(crate) fallback: LocalLedger,
    pub(crate) client: u64,
    next_hold: AtomicU64,
    down_until: Mutex<Option<Instant>>,
}

impl fmt::Debug for Budget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Budget")
            .field("ledger", &self.ledger)
            .field("policy", &self.policy)
            .field("client", &self.client)
            .finish_non_exhaustive()
    }
}

impl Budget {
    pub(crate) fn new(ledger: Arc<dyn Ledger>, policy: OutagePolicy) -> Self {
        Self {
            ledger,
            policy,
            fallback: LocalLedger::new(),
            client: fastrand::u64(..),
            next_hold: AtomicU64::new(0),
            down_until: Mutex::new(None),
        }
    }

    pub(crate) fn ask(&self, key: &QuotaKey, tokens: u64, limits: Limits) -> Ask {
        Ask {
            key: key.clone(),
            tokens,
            limits,
            client: self.client,
            hold: self.next_hold.fetch_add(1, Ordering::Relaxed),
        }
    }

    /// Whether the ledger failed less than `retry_after` ago.
    pub(crate) fn is_down(&self, now: Instant) -> bool {
        lock(&self.down_until).is_some_and(|t| now < t)
    }

    pub(crate) fn mark_down(&self, now: Instant, error: &LedgerError) {
        let mut d = lock(&self.down_until);
        if d.is_none_or(|t| now >= t) {
            tracing::warn!(%error, policy = ?self.policy, "shared quota ledger unavailable");
        }
        *d = Some(now + OutagePolicy::retry_after());
    }

    pub(crate) fn mark_up(&self) {
        let mut d = lock(&self.down_until);
        if d.take().is_some() {
            tracing::info!("shared quota ledger reachable again");
        }
    }
}

/// A [`Ledger`] kept in this process: the same arithmetic as the Redis scripts, over the
/// process's clock.
///
/// The gate uses one as the outage fallback of [`OutagePolicy::FailOpen`]; it also serves
/// to share one budget between gates of different configurations in one process.
#[derive(Debug)]
pub struct LocalLedger {
    start: Instant,
    keys: Mutex<HashMap<QuotaKey, BudgetState>>,
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
            .or_insert_with(|| BudgetState::new(ask.limits, now));
        match state.reserve(now, ask, HOLD_TTL_US, WAITER_GRACE_US) {
            None => Grant::Reserved(Hold::for_ask(ask)),
            Some(wait_us) => Grant::FitsIn(Duration::from_micros(wait_us)),
        }
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

/// How long a hold can be settled after it was reserved (ten minutes, the longest a Bedrock
/// invocation runs); after that its charge stands.
pub(crate) const HOLD_TTL_US: f64 = 600e6;
/// How long past the wait it was given a waiting client keeps its place without asking.
pub(crate) const WAITER_GRACE_US: f64 = 1e6;
/// The shortest wait a ledger answers, so a client behind a late head does not spin.
pub(crate) const MIN_WAIT_US: f64 = 2_000.0;

/// One key's shared state, in microseconds of the ledger's clock; the Redis scripts keep
/// the same numbers in a hash and two sorted sets.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct BudgetState {
    /// Token level and request level.
    pub(crate) tokens: f64,
    pub(crate) requests: f64,
    pub(crate) updated: f64,
    /// Outstanding holds: member → expiry.
    pub(crate) holds: HashMap<String, f64>,
    /// Waiting clients: (first ask, client) → (place kept until, tokens asked).
    pub(crate) waiters: BTreeMap<(u64, u64), (f64, u64)>,
}

/// The member naming a hold: client, id and tokens, so a settle can only match the hold it
/// was made for.
pub(crate) fn hold_member(client: u64, id: u64, tokens: u64) -> String {
    format!("{client:x}:{id:x}:{tokens}")
}

impl BudgetState {
    pub(crate) fn new(limits: Limits, now: f64) -> Self {
        Self {
            tokens: limits.tokens as f64,
            requests: limits.requests.map_or(0.0, f64::from),
            updated: now,
            holds: HashMap::new(),
            waiters: BTreeMap::new(),
        }
    }

    /// Refills both buckets up to `now` at the limits' rates, never above a period's worth.
    pub(crate) fn refill(&mut self, now: f64, l: Limits) {
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
    pub(crate) fn wait_for(&self, tokens: u64, l: Limits) -> f64 {
        let period = l.period.as_micros() as f64;
        let head = l.headroom.as_micros() as f64;
        let t = l.tokens as f64;
        let need = (tokens as f64 + t * head / period).min(t);
        let mut wait = (need - self.tokens) * period / t;
        if let Some(r) = l.requests {
            let r = f64::from(r);
            let need = (1.0 + r * head / period).min(r);
            wait = wait.max((need - self.requests) * period / r);
        }
        wait.max(0.0)
    }

    /// The reserve script: `None` when reserved, else the wait in microseconds.
    pub(crate) fn reserve(&mut self, now: f64, ask: &Ask, ttl: f64, grace: f64) -> Option<u64> {
        let l = ask.limits;
        self.refill(now, l);
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
    pub(crate) fn settle(&mut self, now: f64, hold: &Hold, actual: u64) -> bool {
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

/// The limits of a resolved quota.
pub(super) fn limits(q: ResolvedQuota, headroom: Duration) -> Limits {
    Limits {
        tokens: q.tokens,
        requests: q.requests,
        period: q.period,
        headroom,
    }
}

/// A question to the shared budget in flight. Behind a mutex only so that the gate's
/// response future stays `Sync`; it is polled through `&mut`, never locked.
pub(super) struct Asking {
    future: Mutex<LedgerFuture<Grant>>,
}

impl fmt::Debug for Asking {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Asking").finish_non_exhaustive()
    }
}

/// A hold in the shared budget (or, during an outage, in the fallback) to settle.
#[derive(Debug)]
pub(super) struct Remote {
    budget: Arc<Budget>,
    hold: Hold,
    fallback: bool,
}

impl Remote {
    pub(super) fn settle(self, actual: u64) {
        if self.fallback {
            self.budget.fallback.settle_now(&self.hold, actual);
            return;
        }
        let future = self.budget.ledger.settle(self.hold, actual);
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

/// [`Acquire::poll`] with a shared budget: the head of the key's queue waits for the key's
/// own buckets (the per-process ceiling), then asks the shared budget, and waits as long as
/// it answers before it asks again.
pub(super) fn poll_acquire(
    ticket: &mut Ticket,
    mut sleep: Pin<&mut Sleep>,
    deadline: Instant,
    asking: &mut Option<Asking>,
    retry_at: &mut Option<Instant>,
    cx: &mut Context<'_>,
) -> Poll<Result<Reservation, ThrottleError>> {
    let ledger = ticket.ledger.clone();
    let Some((budget, limits)) = ledger.shared.clone() else {
        unreachable!("poll_acquire without a shared budget")
    };
    let tokens = ticket.tokens;
    let key = &ledger.key;
    // An answer: admitted (with the hold and whether it came from the fallback), or when
    // to ask again, or the outage error.
    enum Next {
        Admit(Hold, bool),
        Later(Instant),
        Fail(LedgerError),
    }
    let fallback = |now: Instant, error: LedgerError| match budget.policy {
        OutagePolicy::FailClosed => Next::Fail(error),
        OutagePolicy::FailOpen { share } => {
            let ask = budget.ask(key, tokens, limits.scaled(share));
            match budget.fallback.reserve_now(&ask) {
                Grant::Reserved(hold) => Next::Admit(hold, true),
                Grant::FitsIn(d) => Next::Later(now + d),
            }
        }
    };
    for _ in 0..8 {
        let now = Instant::now();
        let mut next = None;
        if let Some(a) = asking.as_mut() {
            let future = a.future.get_mut().unwrap_or_else(|e| e.into_inner());
            if let Poll::Ready(result) = future.as_mut().poll(cx) {
                *asking = None;
                next = Some(match result {
                    Ok(Grant::Reserved(hold)) => {
                        budget.mark_up();
                        Next::Admit(hold, false)
                    }
                    Ok(Grant::FitsIn(d)) => {
                        budget.mark_up();
                        Next::Later(now + d)
                    }
                    Err(error) => {
                        budget.mark_down(now, &error);
                        fallback(now, error)
                    }
                });
            }
        }
        let mut wake_at = deadline;
        if asking.is_none() && next.is_none() {
            let mut state = lock(&ledger.state);
            if state.queue.first() == Some(ticket.id) {
                state.refill(now);
                if !state.fits(tokens) {
                    wake_at = wake_at.min(now + state.time_to_fit(tokens));
                } else if let Some(t) = retry_at.filter(|t| now < *t) {
                    wake_at = wake_at.min(t);
                } else {
                    drop(state);
                    *retry_at = None;
                    if budget.is_down(now) {
                        next = Some(fallback(
                            now,
                            LedgerError::new("unreachable at the last attempt"),
                        ));
                    } else {
                        let ask = budget.ask(key, tokens, limits);
                        *asking = Some(Asking {
                            future: Mutex::new(budget.ledger.reserve(ask)),
                        });
                        continue;
                    }
                }
            }
        }
        match next {
            Some(Next::Admit(hold, fallback)) => {
                let mut state = lock(&ledger.state);
                state.take(tokens);
                state.leave(ticket.id, true);
                ticket.done = true;
                drop(state);
                tracing::trace!(
                    quota_key = %key,
                    fallback,
                    waited = ?now.saturating_duration_since(ticket.queued_at),
                    "admitted by the shared ledger"
                );
                let mut r = Reservation::new(ledger.clone(), tokens, now);
                r.remote = Some(Remote {
                    budget: budget.clone(),
                    hold,
                    fallback,
                });
                return Poll::Ready(Ok(r));
            }
            Some(Next::Fail(source)) => {
                lock(&ledger.state).leave(ticket.id, false);
                ticket.done = true;
                return Poll::Ready(Err(ThrottleError::LedgerUnavailable {
                    key: key.clone(),
                    source: Box::new(source),
                }));
            }
            Some(Next::Later(t)) => {
                *retry_at = Some(t);
                continue;
            }
            None => {}
        }
        if now >= deadline {
            // A question still in flight is dropped: if it reserved, the hold expires.
            *asking = None;
            lock(&ledger.state).leave(ticket.id, false);
            ticket.done = true;
            return Poll::Ready(Err(ThrottleError::MaxWaitExceeded {
                key: key.clone(),
                waited: now.saturating_duration_since(ticket.queued_at),
            }));
        }
        {
            let mut state = lock(&ledger.state);
            match state.wakers.get_mut(&ticket.id) {
                Some(w) if w.will_wake(cx.waker()) => {}
                Some(w) => w.clone_from(cx.waker()),
                None => {
                    state.wakers.insert(ticket.id, cx.waker().clone());
                }
            }
        }
        if sleep.deadline() != wake_at {
            sleep.as_mut().reset(wake_at);
        }
        if sleep.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
    }
    cx.waker().wake_by_ref();
    Poll::Pending
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> Limits {
        Limits {
            tokens: 6_000,
            requests: Some(60),
            period: Duration::from_secs(60),
            headroom: Duration::ZERO,
        }
    }

    fn ask(client: u64, hold: u64, tokens: u64) -> Ask {
        Ask {
            key: QuotaKey::new(Some("m"), None),
            tokens,
            limits: limits(),
            client,
            hold,
        }
    }

    const S: f64 = 1e6;

    #[test]
    fn reserves_both_limits_and_answers_the_refill_time() {
        let mut b = BudgetState::new(limits(), 0.0);
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
        let mut b = BudgetState::new(limits(), 0.0);
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
        let mut b = BudgetState::new(limits(), 0.0);
        let a = ask(1, 0, 6_000);
        assert_eq!(b.reserve(0.0, &a, 5.0 * S, S), None);
        assert!(!b.settle(5.0 * S, &Hold::for_ask(&a), 0));
        assert_eq!(b.tokens, 0.0);
        assert!(b.holds.is_empty());
    }

    #[test]
    fn clients_take_turns_in_the_order_they_began_waiting() {
        let mut b = BudgetState::new(limits(), 0.0);
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
        let mut b = BudgetState::new(limits(), 0.0);
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
