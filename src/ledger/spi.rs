//! The public [`Ledger`] trait, the contract of a quota state shared between gates.

use std::{fmt, future::Future, pin::Pin, sync::Arc, time::Duration};

use crate::{BoxError, QuotaKey};

/// The future a [`Ledger`] answers with.
pub type LedgerFuture<T> = Pin<Box<dyn Future<Output = Result<T, LedgerError>> + Send>>;

/// The one place that knows the quota state a gate spends from when that state is shared:
/// reserve, settle, and "when could this fit".
///
/// Set one with [`ThrottleConfigBuilder::ledger`](crate::ThrottleConfigBuilder::ledger);
/// [`RedisLedger`](crate::RedisLedger) (feature `redis`) shares a quota between processes,
/// [`LocalLedger`](crate::LocalLedger) keeps it in this process. Without one, the gate
/// spends from its own in-process buckets only.
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
/// A key the ledger has no state for starts at [`Ask::start_level`] of a full bucket, and
/// a client's first ask with an [`Ask::alone`] after an outage takes what that client
/// admitted on its own from the key's bucket: that is how a fleet stays inside the quota,
/// and gets what it did not spend, when the ledger comes back from an outage, empty or
/// not.
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
    /// The level, as a share of a full bucket in `[0, 1]`, at which a key the ledger holds
    /// no state for starts. 1 for a key this client has not spent from lately; less when it
    /// has, because a ledger that has no state for such a key has lost it (a restart
    /// without persistence), and a full bucket then would let the fleet spend twice.
    pub start_level: f64,
    /// What this client admitted from its outage fallback ([`OutagePolicy::FailOpen`])
    /// since the ledger last answered it, if anything: the ledger takes it from the
    /// key's bucket, once per [`Alone::spell`], so the refill of an outage that the
    /// fleet did not spend is still there when the ledger comes back.
    pub alone: Option<Alone>,
}

/// What one client admitted on its own, from its outage fallback, in one spell without the
/// shared ledger (see [`Ask::alone`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Alone {
    /// Which of this client's spells alone (counting from 1): a ledger takes each spell of
    /// a client once, however many asks carry it.
    pub spell: u64,
    /// Tokens admitted, less what settlements have given back so far.
    pub tokens: u64,
    /// Requests admitted.
    pub requests: u64,
}

impl Ask {
    /// An ask for `tokens` of `key` by `client` as hold `hold`, for a key that starts full,
    /// with nothing admitted alone behind it.
    pub fn new(key: QuotaKey, tokens: u64, limits: Limits, client: u64, hold: u64) -> Self {
        Self {
            key,
            tokens,
            limits,
            client,
            hold,
            start_level: 1.0,
            alone: None,
        }
    }
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

/// How long a hold can be settled after it was reserved (ten minutes, the longest a Bedrock
/// invocation runs); after that its charge stands.
pub(crate) const HOLD_TTL_US: f64 = 600e6;
/// How long past the wait it was given a waiting client keeps its place without asking.
pub(crate) const WAITER_GRACE_US: f64 = 1e6;
/// The shortest wait a ledger answers, so a client behind a late head does not spin.
pub(crate) const MIN_WAIT_US: f64 = 2_000.0;

/// An [`Ask::start_level`] as the ledgers use it: clamped to `[0, 1]`, and 1 (a full
/// bucket, as before start levels existed) when it is not a number.
pub(crate) fn bounded_level(level: f64) -> f64 {
    if level.is_finite() {
        level.clamp(0.0, 1.0)
    } else {
        1.0
    }
}

/// The member naming a hold: client, id and tokens, so a settle can only match the hold it
/// was made for.
pub(crate) fn hold_member(client: u64, id: u64, tokens: u64) -> String {
    format!("{client:x}:{id:x}:{tokens}")
}
