//! The daily token budget: Bedrock's "tokens per day" quotas, per model and account-wide.
//!
//! AWS documents the per-model quota ("Model invocation max tokens per day for ${model}":
//! "the maximum number of tokens per day (input + output, combined) that your account can
//! use for the model", by default the per-minute quota × 24 × 60) and the account-wide one
//! ("Cross-Model Max Tokens Per Day", listed on accounts as "Cross-Model Account-Level
//! Tokens Per Day"), in "Quotas for the bedrock-runtime endpoint"
//! (<https://docs.aws.amazon.com/bedrock/latest/userguide/quotas-runtime.html>) and "How
//! tokens are counted in Amazon Bedrock"
//! (<https://docs.aws.amazon.com/bedrock/latest/userguide/quotas-token-burndown.html>). AWS
//! does not say how the day is counted: a calendar day (in UTC or another zone) or the last
//! 24 hours. This budget takes the safe side of both: it counts the last 24 hours, so it
//! never admits what a calendar day would refuse (the tokens since midnight are among the
//! last 24 hours' tokens), and it never treats a day as over before 24 hours have passed.
//!
//! Charges are booked in slots of [`SLOT`]; a slot is counted until it ends a whole day
//! ago, so a charge counts for a day and at most one slot more. The memory is bounded: at
//! most [`SLOTS`] slots per budget.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::time::Instant;

use super::lock::lock;

/// A day, as the daily quotas count it (see the module docs).
pub(crate) const DAY: Duration = Duration::from_secs(24 * 60 * 60);

/// The granularity of a daily budget: a charge leaves the budget at most this much later
/// than a day after it was made.
pub(crate) const SLOT: Duration = Duration::from_secs(15 * 60);

/// Slots a budget holds at most: a day's worth and the current one.
const SLOTS: u64 = DAY.as_secs() / SLOT.as_secs() + 1;

/// A daily budget of `limit` tokens: what was charged in the last day, by slot.
#[derive(Debug)]
pub(crate) struct DailyBudget {
    limit: u64,
    window: Mutex<Window>,
}

#[derive(Debug)]
struct Window {
    /// Where slot 0 starts.
    origin: Instant,
    /// (slot number, tokens charged in it), oldest first; never more than [`SLOTS`].
    slots: VecDeque<(u64, u64)>,
}

/// The day has no room for a request: what the budget had, and when it would.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Exhausted {
    pub(crate) limit: u64,
    pub(crate) used: u64,
    /// How long until enough of the day's charges have aged out that the request fits;
    /// `None` when it never fits (it asks for more than the whole limit).
    pub(crate) resets_in: Option<Duration>,
}

impl Window {
    fn slot_of(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.origin).as_secs() / SLOT.as_secs()
    }

    /// Drops the slots that ended a day or more ago.
    fn expire(&mut self, now: Instant) -> u64 {
        let current = self.slot_of(now);
        while self
            .slots
            .front()
            .is_some_and(|(slot, _)| slot + SLOTS <= current)
        {
            self.slots.pop_front();
        }
        current
    }

    fn used(&self) -> u64 {
        self.slots.iter().map(|(_, t)| t).sum()
    }

    /// The end of `slot` plus a day: when its charges stop counting.
    fn ages_out_at(&self, slot: u64) -> Instant {
        self.origin + SLOT * (slot + SLOTS) as u32
    }
}

impl DailyBudget {
    pub(crate) fn new(limit: u64) -> Self {
        Self {
            limit,
            window: Mutex::new(Window {
                origin: Instant::now(),
                slots: VecDeque::new(),
            }),
        }
    }

    #[cfg(test)]
    pub(crate) fn limit(&self) -> u64 {
        self.limit
    }

    /// Tokens charged in the last day.
    pub(crate) fn used(&self) -> u64 {
        let mut w = lock(&self.window);
        w.expire(Instant::now());
        w.used()
    }

    /// Books `tokens` now if the day has room for them; the slot they were booked in is
    /// returned, to settle them in.
    pub(crate) fn reserve(&self, tokens: u64) -> Result<u64, Exhausted> {
        let now = Instant::now();
        let mut w = lock(&self.window);
        let current = w.expire(now);
        let used = w.used();
        if used.saturating_add(tokens) <= self.limit {
            match w.slots.back_mut() {
                Some((slot, t)) if *slot == current => *t += tokens,
                _ => w.slots.push_back((current, tokens)),
            }
            return Ok(current);
        }
        let resets_in = (tokens <= self.limit).then(|| {
            // The oldest slots age out first: wait until enough of them have.
            let mut left = used;
            let mut at = now;
            for &(slot, t) in &w.slots {
                if left.saturating_add(tokens) <= self.limit {
                    break;
                }
                left -= t;
                at = w.ages_out_at(slot);
            }
            at.saturating_duration_since(now)
        });
        Err(Exhausted {
            limit: self.limit,
            used,
            resets_in,
        })
    }

    /// Charges `actual` instead of the `reserved` tokens booked in `slot`: the difference
    /// goes back to that slot, or (when `actual` is larger) is booked there too. A slot
    /// that has aged out takes nothing back; an extra charge then goes to the current slot.
    pub(crate) fn settle(&self, slot: u64, reserved: u64, actual: u64) {
        let now = Instant::now();
        let mut w = lock(&self.window);
        let current = w.expire(now);
        if let Some((_, t)) = w.slots.iter_mut().find(|(s, _)| *s == slot) {
            *t = (*t + actual).saturating_sub(reserved);
        } else if actual > reserved {
            let extra = actual - reserved;
            match w.slots.back_mut() {
                Some((s, t)) if *s == current => *t += extra,
                _ => w.slots.push_back((current, extra)),
            }
        }
    }

    /// Whether nothing is charged in the last day.
    pub(crate) fn is_empty(&self) -> bool {
        self.used() == 0
    }
}

/// Tokens booked in one daily budget for one request.
#[derive(Debug)]
struct DailyHold {
    budget: Arc<DailyBudget>,
    slot: u64,
    tokens: u64,
}

/// What one request booked in the daily budgets of its key and of the account. Settle it
/// with the actual charge; dropped unsettled, the booking stays charged (the safe side when
/// the outcome is unknown).
#[derive(Debug, Default)]
pub(crate) struct DailyHolds(Vec<DailyHold>);

impl DailyHolds {
    /// Books `tokens` in each of `budgets`, or in none: the first that has no room is
    /// named with its refusal, and what the others booked goes back.
    pub(crate) fn reserve<'a, T>(
        budgets: impl IntoIterator<Item = (T, &'a Arc<DailyBudget>)>,
        tokens: u64,
    ) -> Result<Self, (T, Exhausted)> {
        let mut holds = Self::default();
        for (name, budget) in budgets {
            match budget.reserve(tokens) {
                Ok(slot) => holds.0.push(DailyHold {
                    budget: budget.clone(),
                    slot,
                    tokens,
                }),
                Err(e) => {
                    holds.settle(0);
                    return Err((name, e));
                }
            }
        }
        Ok(holds)
    }

    /// Charges `actual` tokens in every budget instead of what was booked.
    pub(crate) fn settle(self, actual: u64) {
        for h in self.0 {
            h.budget.settle(h.slot, h.tokens, actual);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn refuses_what_would_exhaust_the_day_and_says_when_it_fits() {
        let b = DailyBudget::new(1_000);
        let first = b.reserve(600).unwrap();
        tokio::time::advance(Duration::from_secs(3_600)).await;
        b.reserve(300).unwrap();
        let e = b.reserve(200).unwrap_err();
        assert_eq!((e.limit, e.used), (1_000, 900));
        // The first 600 age out a day and at most one slot after they were booked.
        let resets_in = e.resets_in.unwrap();
        assert!(
            resets_in > DAY - Duration::from_secs(3_600),
            "{resets_in:?}"
        );
        assert!(
            resets_in <= DAY + SLOT - Duration::from_secs(3_600),
            "{resets_in:?}"
        );
        assert_eq!(b.reserve(1_001).unwrap_err().resets_in, None);
        // Settled below the reservation, the rest comes back.
        b.settle(first, 600, 100);
        assert_eq!(b.used(), 400);
        b.reserve(200).unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn the_day_rolls_over_and_memory_stays_bounded() {
        let b = DailyBudget::new(10_000);
        // A charge every minute for two days: the window never holds more than a day.
        for _ in 0..(2 * 24 * 60) {
            b.reserve(1).unwrap();
            tokio::time::advance(Duration::from_secs(60)).await;
            assert!(lock(&b.window).slots.len() as u64 <= SLOTS);
        }
        // A day's charges, and at most one slot's more.
        let used = b.used();
        assert!((24 * 60..=24 * 60 + 15).contains(&used), "{used}");
        tokio::time::advance(DAY + SLOT).await;
        assert!(b.is_empty());
        assert!(lock(&b.window).slots.is_empty());
        b.reserve(10_000).unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_settle_after_its_slot_aged_out_charges_only_the_excess() {
        let b = DailyBudget::new(1_000);
        let slot = b.reserve(500).unwrap();
        tokio::time::advance(DAY + SLOT).await;
        b.settle(slot, 500, 100);
        assert_eq!(b.used(), 0);
        b.settle(slot, 500, 700);
        assert_eq!(b.used(), 200);
    }
}
