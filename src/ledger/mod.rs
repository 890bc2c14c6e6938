//! The in-process quota ledger: per quota key, a request bucket and a token bucket that
//! admit in fair order, take reservations and give back what was not used.
//!
//! governor's GCRA cannot refund tokens, and a dual limit must check both buckets before it
//! takes from either, so both buckets are kept here, side by side, under one lock per key.
//! Each bucket holds one period's worth of its current rate when full and refills
//! continuously at that rate. A token bucket may go below zero when a settled charge exceeds
//! its reservation; admissions then wait for the debt to refill.
//!
//! The current rate of each bucket is its quota's rate times a multiplier that a controller
//! of its own moves: down on the upstream throttles that name its limit ("Too many tokens"
//! the token bucket, "Too many requests" the request bucket, an unrecognised throttle both),
//! back up on a cubic curve afterwards (see the `gate` module docs, "Slowing down").
//!
//! As governor splits algorithm, state and waiting, so does this module, each file using
//! only the ones listed before it (and `lock`, the poison-tolerant lock they all take):
//!
//! - `bucket`, `rate`: pure values, a bucket and the rate controller;
//! - `meter`: the buckets of one key and their controllers on a grid of steps;
//! - `queue`: the fair order of one key's waiters;
//! - `spi`, `local`, `redis`: the public [`Ledger`] trait for a shared quota state and its
//!   two implementations;
//! - `remote`: how a key spends from a shared ledger;
//! - `key`: one key's state behind one lock;
//! - `reservation`: what an admission holds until it is settled;
//! - `acquire`: admission, and the one future that waits for room;
//! - this file: the registry of every key's state, and its eviction at rest.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use self::{daily::DailyBudget, lock::lock, remote::LedgerLink};
use crate::{quota::ResolvedQuota, tenant::Tenant, QuotaKey, ThrottleError};

mod acquire;
mod bucket;
mod daily;
mod key;
mod local;
mod lock;
mod meter;
mod queue;
mod rate;
#[cfg(feature = "redis")]
mod redis;
mod remote;
mod reservation;
mod spi;
#[cfg(test)]
mod tests;

#[cfg(feature = "redis")]
pub use self::redis::RedisLedger;
pub(crate) use self::{
    acquire::{Acquire, Admission},
    daily::DailyHolds,
    key::{KeyLedger, Waiter},
    reservation::Reservation,
};
pub use self::{
    local::LocalLedger,
    spi::{Alone, Ask, Grant, Hold, Ledger, LedgerError, LedgerFuture, Limits, OutagePolicy},
};

/// The caps on one key, by whose they are: a tenant's own, or (`None`) the one all other
/// tenants share.
type Caps = HashMap<Option<Tenant>, Arc<KeyLedger>>;

/// Quota state of every key.
#[derive(Debug)]
pub(crate) struct Registry {
    keys: Mutex<HashMap<QuotaKey, Arc<KeyLedger>>>,
    /// Per key, each capped tenant's cap, and (under `None`) the one cap every tenant without
    /// a policy of its own shares (see [`crate::tenant`]); and per Region the stage of
    /// unproven models (see [`crate::keys`]).
    caps: Mutex<HashMap<QuotaKey, Caps>>,
    recovery: Option<Duration>,
    headroom: Duration,
    /// A ledger shared with other processes, asked after the key's own buckets.
    link: Option<Arc<LedgerLink>>,
    /// Per key with a daily quota, what it spent in the last day (see the `daily` module).
    daily: Mutex<HashMap<QuotaKey, Arc<DailyBudget>>>,
    /// The account-wide daily quota, shared by every key.
    account_daily: Option<Arc<DailyBudget>>,
}

impl Registry {
    pub(crate) fn new(recovery: Option<Duration>, headroom: Duration) -> Self {
        Self {
            keys: Mutex::new(HashMap::new()),
            caps: Mutex::new(HashMap::new()),
            recovery,
            headroom,
            link: None,
            daily: Mutex::new(HashMap::new()),
            account_daily: None,
        }
    }

    /// Limits every key together to `limit` tokens a day, if given.
    pub(crate) fn with_account_daily(mut self, limit: Option<u64>) -> Self {
        self.account_daily = limit.map(|l| Arc::new(DailyBudget::new(l)));
        self
    }

    /// Books `tokens` in the daily budget of `key` (when `limit` is set) and in the
    /// account's (when configured), or refuses them, naming the budget the day has no room
    /// in.
    pub(crate) fn reserve_daily(
        &self,
        key: &QuotaKey,
        limit: Option<u64>,
        tokens: u64,
    ) -> Result<DailyHolds, ThrottleError> {
        let own = limit.map(|limit| {
            let mut daily = lock(&self.daily);
            daily
                .entry(key.clone())
                .or_insert_with(|| Arc::new(DailyBudget::new(limit)))
                .clone()
        });
        let budgets = own
            .as_ref()
            .map(|b| (Some(key.clone()), b))
            .into_iter()
            .chain(self.account_daily.as_ref().map(|b| (None, b)));
        DailyHolds::reserve(budgets, tokens).map_err(|(key, e)| {
            ThrottleError::DailyQuotaExhausted {
                key,
                limit: e.limit,
                used: e.used,
                needed: tokens,
                resets_in: e.resets_in,
            }
        })
    }

    /// Tokens charged to the daily budget of `key` (`None`: the account's) in the last
    /// day, and its limit.
    #[cfg(test)]
    pub(crate) fn daily_used(&self, key: Option<&QuotaKey>) -> Option<(u64, u64)> {
        let budget = match key {
            Some(k) => lock(&self.daily).get(k).cloned(),
            None => self.account_daily.clone(),
        }?;
        Some((budget.used(), budget.limit()))
    }

    /// Spends from `ledger` as well, if given, following `policy` while it is unreachable.
    pub(crate) fn with_shared(
        mut self,
        ledger: Option<Arc<dyn Ledger>>,
        policy: OutagePolicy,
    ) -> Self {
        self.link = ledger.map(|l| Arc::new(LedgerLink::new(l, policy)));
        self
    }

    /// The ledger of `key`, created with `quota` on first use.
    pub(crate) fn key(&self, key: &QuotaKey, quota: ResolvedQuota) -> Arc<KeyLedger> {
        let mut keys = lock(&self.keys);
        if let Some(k) = keys.get(key) {
            return k.clone();
        }
        let recovery = self.recovery.unwrap_or(quota.period.mul_f64(1.5));
        let remote = self
            .link
            .clone()
            .map(|l| remote::RemoteKey::new(l, remote::limits(quota, self.headroom)));
        let ledger = Arc::new(
            KeyLedger::new(key.clone(), quota, recovery, self.headroom).with_remote(remote),
        );
        keys.insert(key.clone(), ledger.clone());
        ledger
    }

    /// The cap ledger of `owner` on `key` (`None`: the cap shared by every tenant without a
    /// policy of its own): `share` of `quota`, fixed (no adaptation).
    pub(crate) fn cap(
        &self,
        key: &QuotaKey,
        owner: Option<&Tenant>,
        quota: ResolvedQuota,
        share: f64,
    ) -> Arc<KeyLedger> {
        let mut caps = lock(&self.caps);
        let caps = caps.entry(key.clone()).or_default();
        if let Some(k) = caps.get(&owner.cloned()) {
            return k.clone();
        }
        let capped = ResolvedQuota {
            requests: quota
                .requests
                .map(|r| ((f64::from(r) * share).ceil() as u32).max(1)),
            tokens: ((quota.tokens as f64 * share).ceil() as u64).max(1),
            discover: false,
            ..quota
        };
        let ledger = Arc::new(KeyLedger::new(
            key.clone(),
            capped,
            Duration::ZERO,
            self.headroom,
        ));
        caps.insert(owner.cloned(), ledger.clone());
        ledger
    }

    /// Removes the state of `key` and of its caps if every one of them is at rest (see
    /// [`KeyLedger::at_rest`]) and nobody else holds it, so that a ledger made anew later
    /// starts exactly where this one was; true when nothing of `key` is left.
    pub(crate) fn evict(&self, key: &QuotaKey) -> bool {
        let mut keys = lock(&self.keys);
        let mut caps = lock(&self.caps);
        // Only the registry holds a ledger at rest: no reservation, no waiter, no admission
        // in progress.
        let idle = |l: &Arc<KeyLedger>| Arc::strong_count(l) == 1 && l.at_rest();
        if !keys.get(key).is_none_or(idle) || !caps.get(key).is_none_or(|c| c.values().all(idle)) {
            return false;
        }
        // A day's spending is kept until it has aged out (so a key with daily spending
        // counts among the `max_keys` until then).
        let mut daily = lock(&self.daily);
        if !daily
            .get(key)
            .is_none_or(|b| Arc::strong_count(b) == 1 && b.is_empty())
        {
            return false;
        }
        keys.remove(key);
        caps.remove(key);
        daily.remove(key);
        true
    }

    /// How many keys have state (for tests).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        lock(&self.keys).len()
    }

    /// The ledger of `key`, if it has been used.
    pub(crate) fn get(&self, key: &QuotaKey) -> Option<Arc<KeyLedger>> {
        lock(&self.keys).get(key).cloned()
    }
}
