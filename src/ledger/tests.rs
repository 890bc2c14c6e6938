//! The key ledger as the gate drives it: admission, waiting, settling and slowing down.

use std::{sync::Arc, task::Poll, time::Duration};

use tokio::time::Instant;
use tokio_test::{assert_pending, assert_ready_ok, task};

use super::{
    acquire::{Acquire, Admission},
    key::KeyLedger,
    rate::FLOOR,
    reservation::Reservation,
};
use crate::{quota::ResolvedQuota, QuotaKey, ThrottleError, ThrottleKind};

fn ledger(rpm: Option<u32>, tpm: u64) -> Arc<KeyLedger> {
    Arc::new(KeyLedger::new(
        QuotaKey::new(Some("m"), None),
        ResolvedQuota {
            requests: rpm,
            tokens: tpm,
            period: Duration::from_secs(60),
            burndown: 1.0,
            discover: false,
            daily: None,
        },
        Duration::from_secs(60),
        Duration::ZERO,
    ))
}

fn far() -> Instant {
    Instant::now() + Duration::from_secs(3600)
}

fn admitted(a: Admission) -> Reservation {
    match a {
        Admission::Admitted(r) => r,
        other => panic!("not admitted: {other:?}"),
    }
}

fn queued(a: Admission) -> Acquire {
    match a {
        Admission::Queued(q) => q,
        other => panic!("not queued: {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn refills_at_quota_per_period_and_settles_the_difference() {
    let l = ledger(None, 6_000);
    let r = admitted(l.admit(6_000, far()));
    assert_eq!(l.snapshot().0, 0.0);
    tokio::time::advance(Duration::from_secs(10)).await;
    assert!((l.snapshot().0 - 1_000.0).abs() < 1e-6);
    r.settle(2_000);
    assert!((l.snapshot().0 - 5_000.0).abs() < 1e-6);
    // Never above the capacity.
    tokio::time::advance(Duration::from_secs(600)).await;
    assert_eq!(l.snapshot().0, 6_000.0);
    // A charge above the reservation is debt.
    let r = admitted(l.admit(1_000, far()));
    r.settle(7_000);
    assert!((l.snapshot().0 - -1_000.0).abs() < 1e-6);
}

#[tokio::test(start_paused = true)]
async fn requests_limit_admission_too() {
    let l = ledger(Some(2), 1_000_000);
    let _a = admitted(l.admit(1, far()));
    let _b = admitted(l.admit(1, far()));
    let mut c = task::spawn(queued(l.admit(1, far())));
    assert_pending!(c.poll());
    tokio::time::advance(Duration::from_secs(29)).await;
    assert_pending!(c.poll());
    // 30 s refill one request; the wake-up is rounded up to the timer's millisecond.
    tokio::time::advance(Duration::from_millis(1_001)).await;
    assert!(c.is_woken());
    assert_ready_ok!(c.poll());
}

#[tokio::test(start_paused = true)]
async fn the_head_is_not_overtaken_and_a_dropped_head_lets_the_next_in() {
    let l = ledger(None, 1_000);
    let _all = admitted(l.admit(1_000, far()));
    let mut big = task::spawn(queued(l.admit(900, far())));
    assert_pending!(big.poll());
    // A small request behind the big one waits even though it would fit sooner.
    tokio::time::advance(Duration::from_secs(6)).await; // 100 tokens back
    let mut small = task::spawn(queued(l.admit(50, far())));
    assert_pending!(small.poll());
    assert_pending!(big.poll());
    drop(big);
    assert!(small.is_woken());
    assert_ready_ok!(small.poll());
    assert_eq!(l.snapshot().2, 0);
}

#[tokio::test(start_paused = true)]
async fn a_waiter_past_its_deadline_fails_and_leaves_the_queue() {
    let l = ledger(None, 1_000);
    let _all = admitted(l.admit(1_000, far()));
    let mut w = task::spawn(queued(
        l.admit(1_000, Instant::now() + Duration::from_secs(5)),
    ));
    assert_pending!(w.poll());
    tokio::time::advance(Duration::from_secs(5)).await;
    match w.poll() {
        Poll::Ready(Err(ThrottleError::MaxWaitExceeded { waited, .. })) => {
            assert_eq!(waited, Duration::from_secs(5))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(l.snapshot().2, 0);
}

#[tokio::test(start_paused = true)]
async fn a_throttle_empties_the_buckets_and_cuts_the_rate_once_per_cut() {
    let l = ledger(None, 6_000);
    let t0 = Instant::now();
    // A period's quota drawn: the rate that was throttled is the whole quota.
    let _r = admitted(l.admit(6_000, far()));
    tokio::time::advance(Duration::from_millis(10)).await;
    l.throttled(t0, ThrottleKind::Unknown);
    let (level, scale, _) = l.snapshot();
    assert_eq!((level, scale), (0.0, 0.7));
    // Refusals of requests admitted before the cut do not cut again ...
    tokio::time::advance(Duration::from_secs(1)).await;
    l.throttled(t0, ThrottleKind::Unknown);
    let (level, scale, _) = l.snapshot();
    assert_eq!(level, 0.0, "but they empty the bucket");
    // (the rate has begun to climb back)
    assert!(scale > 0.7 && scale < 0.71, "{scale}");
    // ... a refusal of one admitted after it does.
    let later = Instant::now();
    tokio::time::advance(Duration::from_millis(1)).await;
    l.throttled(later, ThrottleKind::Unknown);
    assert!(
        (l.snapshot().1 - 0.7 * scale).abs() < 1e-3,
        "{}",
        l.snapshot().1
    );
    // Never below the floor, however many.
    for _ in 0..40 {
        let t = Instant::now();
        tokio::time::advance(Duration::from_millis(1)).await;
        l.throttled(t, ThrottleKind::Unknown);
    }
    assert!((l.snapshot().1 - FLOOR).abs() < 1e-3);
}

#[tokio::test(start_paused = true)]
async fn a_stray_refusal_empties_the_bucket_and_keeps_the_rate_a_recurring_one_cuts() {
    let l = ledger(Some(60), 6_000);
    // The key draws its rate: a period's quota at once.
    admitted(l.admit(6_000, far())).settle(6_000);
    tokio::time::advance(Duration::from_secs(3)).await;
    // A 429 of a request admitted now: refunded and refused.
    let r = admitted(l.admit(200, far()));
    tokio::time::advance(Duration::from_millis(10)).await;
    r.throttled(true, ThrottleKind::Tokens);
    let (level, scale, _) = l.snapshot();
    assert_eq!((level, scale), (0.0, 1.0), "emptied, rate kept");
    // A refusal of one admitted after it, within the period: the rate is cut from the rate
    // drawn (the whole quota).
    tokio::time::advance(Duration::from_secs(2)).await;
    let r = admitted(l.admit(100, far()));
    tokio::time::advance(Duration::from_millis(10)).await;
    r.throttled(true, ThrottleKind::Tokens);
    let (tokens, requests) = l.rates();
    assert!((tokens - 4_200.0).abs() < 1e-6, "{tokens}");
    assert_eq!(
        requests,
        Some(60.0),
        "a token refusal leaves the request rate"
    );
}

/// The current rates per period: (tokens, requests).
fn rates(l: &KeyLedger) -> (f64, Option<f64>) {
    l.rates()
}

#[tokio::test(start_paused = true)]
async fn each_class_of_throttle_cuts_the_budget_it_names() {
    let t = || Instant::now();
    // "Too many tokens": the token rate only.
    let l = ledger(Some(60), 6_000);
    let at = t();
    let _r = admitted(l.admit(100, far()));
    tokio::time::advance(Duration::from_millis(10)).await;
    l.throttled(at, ThrottleKind::Tokens);
    let (tokens, requests) = rates(&l);
    assert!((tokens - 4_200.0).abs() < 1e-6, "{tokens}");
    assert_eq!(requests, Some(60.0));
    assert!(l.snapshot().0 <= 0.0, "the token bucket is emptied");

    // "Too many requests": the request rate only, and the request bucket is emptied.
    let l = ledger(Some(60), 6_000);
    let at = t();
    let _r = admitted(l.admit(100, far()));
    tokio::time::advance(Duration::from_millis(10)).await;
    l.throttled(at, ThrottleKind::Requests);
    let (tokens, requests) = rates(&l);
    assert_eq!(tokens, 6_000.0);
    assert!((requests.unwrap() - 42.0).abs() < 1e-6, "{requests:?}");
    assert!(l.snapshot().0 > 5_000.0, "the token bucket keeps its room");
    // The next request waits for the request bucket.
    assert!(matches!(l.admit(1, far()), Admission::Queued(_)));

    // Unknown: both.
    let l = ledger(Some(60), 6_000);
    let at = t();
    let _r = admitted(l.admit(100, far()));
    tokio::time::advance(Duration::from_millis(10)).await;
    l.throttled(at, ThrottleKind::Unknown);
    let (tokens, requests) = rates(&l);
    assert!((tokens - 4_200.0).abs() < 1e-6, "{tokens}");
    assert!((requests.unwrap() - 42.0).abs() < 1e-6, "{requests:?}");

    // Daily: neither rate moves, nothing is emptied.
    let l = ledger(Some(60), 6_000);
    let at = t();
    let _r = admitted(l.admit(100, far()));
    tokio::time::advance(Duration::from_millis(10)).await;
    l.throttled(at, ThrottleKind::DailyTokens);
    assert_eq!(rates(&l), (6_000.0, Some(60.0)));
    assert!(l.snapshot().0 > 5_800.0);
}

#[tokio::test(start_paused = true)]
async fn a_request_throttle_without_a_request_quota_starts_one_at_the_rate_that_was_throttled() {
    // No RPM configured; 30 requests in the first 30 s, then "Too many requests".
    let l = ledger(None, 1_000_000);
    let mut last = Instant::now();
    for _ in 0..30 {
        last = Instant::now();
        drop(admitted(l.admit(10, far())));
        tokio::time::advance(Duration::from_secs(1)).await;
    }
    assert_eq!(rates(&l).1, None);
    l.throttled(last, ThrottleKind::Requests);
    let (tokens, requests) = rates(&l);
    assert_eq!(tokens, 1_000_000.0, "the token rate is not cut");
    // 30 requests in 30 s is 60 per minute; cut to 70 %.
    assert!((requests.unwrap() - 42.0).abs() < 1e-6, "{requests:?}");
    let mut next = task::spawn(queued(l.admit(10, far())));
    assert_pending!(next.poll());
    // One request refills in 60 / 42 s at the cut rate (plus the curve's climb).
    tokio::time::advance(Duration::from_millis(1_430)).await;
    assert_ready_ok!(next.poll());
    // Discovered: it climbs back past the throttled rate while it is used.
    for _ in 0..600 {
        if let Admission::Admitted(r) = l.admit(10, far()) {
            drop(r);
        }
        tokio::time::advance(Duration::from_millis(500)).await;
    }
    assert!(rates(&l).1.unwrap() > 60.0, "{:?}", rates(&l));
}

fn period() -> Duration {
    Duration::from_secs(60)
}

#[tokio::test(start_paused = true)]
async fn a_discovered_quota_admits_a_request_larger_than_its_guess_from_a_full_bucket() {
    let l = Arc::new(KeyLedger::new(
        QuotaKey::new(Some("m"), None),
        ResolvedQuota {
            requests: None,
            tokens: 1_000,
            period: period(),
            burndown: 1.0,
            discover: true,
            daily: None,
        },
        period(),
        Duration::ZERO,
    ));
    let r = admitted(l.admit(5_000, far()));
    assert_eq!(l.snapshot().0, -4_000.0);
    drop(r);
    // The debt refills (and, busy, the guess grows), then the next one is admitted.
    let mut next = task::spawn(queued(l.admit(5_000, far())));
    assert_pending!(next.poll());
    tokio::time::advance(Duration::from_secs(600)).await;
    assert_ready_ok!(next.poll());
    assert!(l.rates().0 > 1_000.0);
}

/// A key is evicted only at rest, so a ledger made anew in its place is the same: a
/// reservation in flight, a debt or a throttled rate keep it.
#[tokio::test(start_paused = true)]
async fn a_key_is_evicted_only_at_rest() {
    let registry = super::Registry::new(None, Duration::ZERO);
    let key = QuotaKey::new(Some("m"), None);
    let quota = ResolvedQuota {
        requests: Some(10),
        tokens: 1_000,
        period: Duration::from_secs(60),
        burndown: 1.0,
        discover: false,
        daily: None,
    };
    assert!(registry.evict(&key), "nothing to keep");
    let r = admitted(registry.key(&key, quota).admit(600, far()));
    assert!(!registry.evict(&key), "a reservation is in flight");
    r.settle(900);
    assert!(!registry.evict(&key), "in debt");
    tokio::time::advance(Duration::from_secs(30)).await;
    assert!(!registry.evict(&key), "the debt is not refilled yet");
    tokio::time::advance(Duration::from_secs(30)).await;
    assert!(registry.evict(&key));
    assert_eq!(registry.len(), 0);

    // A refusal leaves a strike: kept while the strike counts.
    let r = admitted(registry.key(&key, quota).admit(100, far()));
    r.throttled(true, ThrottleKind::Tokens);
    tokio::time::advance(Duration::from_secs(30)).await;
    assert!(!registry.evict(&key), "the strike still counts");
    tokio::time::advance(Duration::from_secs(30)).await;
    assert!(registry.evict(&key), "a strike a period old is forgotten");
    // A throttle that moves the rate: kept until it is back at the quota.
    let l = registry.key(&key, quota);
    admitted(l.admit(100, far())).throttled(true, ThrottleKind::Tokens);
    tokio::time::advance(Duration::from_millis(1)).await;
    l.refused(Instant::now(), ThrottleKind::Tokens, 100);
    drop(l);
    tokio::time::advance(Duration::from_secs(60)).await;
    assert!(!registry.evict(&key), "the rate is still recovering");
    tokio::time::advance(Duration::from_secs(3_600)).await;
    assert!(registry.evict(&key));

    // A tenant cap of the key is part of it.
    let cap = registry.cap(&key, None, quota, 0.5);
    admitted(cap.admit(100, far())).settle(100);
    drop(cap);
    registry.key(&key, quota);
    assert!(!registry.evict(&key), "the cap is not full");
    tokio::time::advance(Duration::from_secs(60)).await;
    assert!(registry.evict(&key));
}

/// A day's spending keeps its key (so it counts among `max_keys`) until it has aged out;
/// the account's budget is one for every key, and a refusal books nothing anywhere.
#[tokio::test(start_paused = true)]
async fn daily_budgets_are_kept_a_day_and_the_account_is_shared() {
    let registry = super::Registry::new(None, Duration::ZERO).with_account_daily(Some(3_000));
    let (a, b) = (
        QuotaKey::new(Some("a"), None),
        QuotaKey::new(Some("b"), None),
    );
    let held = registry.reserve_daily(&a, Some(2_000), 1_500).unwrap();
    assert_eq!(registry.daily_used(Some(&a)), Some((1_500, 2_000)));
    held.settle(500);
    registry
        .reserve_daily(&b, None, 2_000)
        .unwrap()
        .settle(2_000);
    assert_eq!(registry.daily_used(None), Some((2_500, 3_000)));
    // `a` has room of its own but the account has not: nothing is booked in `a`.
    match registry.reserve_daily(&a, Some(2_000), 1_000) {
        Err(ThrottleError::DailyQuotaExhausted {
            key: None,
            limit: 3_000,
            used: 2_500,
            needed: 1_000,
            ..
        }) => {}
        other => panic!("{other:?}"),
    }
    assert_eq!(registry.daily_used(Some(&a)), Some((500, 2_000)));
    assert!(!registry.evict(&a), "spent today");
    tokio::time::advance(super::daily::DAY + super::daily::SLOT).await;
    assert!(registry.evict(&a));
    assert_eq!(registry.daily_used(Some(&a)), None);
    assert_eq!(registry.daily_used(None), Some((0, 3_000)));
}
