//! The gate with a shared `Ledger`, in virtual time: configurations sharing one budget, a
//! 429 refunded to it at once, and both outage policies with a ledger that goes down and
//! comes back.

use std::{
    convert::Infallible,
    sync::{
        atomic::{AtomicBool, AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use bedrock_throttle::{
    estimate::TokenEstimate, gate::GateLayer, Ask, BoxError, Grant, Hold, Ledger, LedgerError,
    LedgerFuture, LocalLedger, OutagePolicy, Quota, ThrottleConfig, ThrottleError,
};
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use tokio::time::Instant;
use tower::{service_fn, Service, ServiceBuilder, ServiceExt};

const MODEL: &str = "amazon.titan-text-express-v1";

fn request(tokens: u64) -> Request<Full<Bytes>> {
    let mut r = Request::post(format!("/model/{MODEL}/invoke"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    r.extensions_mut().insert(TokenEstimate::new(tokens, 0));
    r
}

/// A gate over a mock that answers `status`, charging the reservation in full on 200.
fn gate(
    cfg: ThrottleConfig,
    status: StatusCode,
) -> impl Service<Request<Full<Bytes>>, Response = Response<impl Sized>, Error = BoxError> + Clone {
    ServiceBuilder::new()
        .layer(GateLayer::new(cfg))
        .service(service_fn(move |_req: Request<Full<Bytes>>| async move {
            Ok::<_, Infallible>(
                Response::builder()
                    .status(status)
                    .body(Full::new(Bytes::new()))
                    .unwrap(),
            )
        }))
}

fn config(ledger: impl Ledger, policy: OutagePolicy) -> ThrottleConfig {
    ThrottleConfig::builder()
        .quota(Quota::new(None, 1_000))
        .headroom(Duration::ZERO)
        .ledger(ledger)
        .outage(policy)
        .build()
        .unwrap()
}

/// Sends `tokens` through `svc`; returns when it was admitted (the mock answers at once).
async fn send<S>(svc: &S, tokens: u64) -> Result<Instant, BoxError>
where
    S: Service<Request<Full<Bytes>>, Error = BoxError> + Clone,
{
    svc.clone().oneshot(request(tokens)).await?;
    Ok(Instant::now())
}

#[tokio::test(start_paused = true)]
async fn two_configurations_on_one_ledger_share_its_quota() {
    let budget = Arc::new(LocalLedger::new());
    let a = gate(
        config(budget.clone(), OutagePolicy::FailClosed),
        StatusCode::OK,
    );
    let b = gate(config(budget, OutagePolicy::FailClosed), StatusCode::OK);
    let start = Instant::now();
    // A takes the whole quota (each config alone would have 1 000 of its own).
    assert_eq!(send(&a, 1_000).await.unwrap(), start);
    // B waits for 500 tokens to refill: 30 s at 1 000 per minute.
    let at = send(&b, 500).await.unwrap();
    let waited = at - start;
    assert!(
        waited >= Duration::from_secs(30) && waited <= Duration::from_millis(30_010),
        "{waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_throttle_gives_the_shared_reservation_back_at_once() {
    let budget = Arc::new(LocalLedger::new());
    let throttled = gate(
        config(budget.clone(), OutagePolicy::FailClosed),
        StatusCode::TOO_MANY_REQUESTS,
    );
    let ok = gate(config(budget, OutagePolicy::FailClosed), StatusCode::OK);
    let start = Instant::now();
    send(&throttled, 1_000).await.unwrap();
    // The 429's settle runs on the runtime; let it.
    tokio::task::yield_now().await;
    assert_eq!(send(&ok, 1_000).await.unwrap(), start, "refunded at once");
}

/// A ledger that fails while `down`, else spends from a `LocalLedger`.
#[derive(Debug)]
struct Flaky {
    down: Arc<AtomicBool>,
    asked: Arc<AtomicUsize>,
    inner: LocalLedger,
}

impl Ledger for Flaky {
    fn reserve(&self, ask: Ask) -> LedgerFuture<Grant> {
        self.asked.fetch_add(1, Ordering::SeqCst);
        if self.down.load(Ordering::SeqCst) {
            return Box::pin(async { Err(LedgerError::new("connection refused")) });
        }
        self.inner.reserve(ask)
    }

    fn settle(&self, hold: Hold, actual: u64) -> LedgerFuture<()> {
        if self.down.load(Ordering::SeqCst) {
            return Box::pin(async { Err(LedgerError::new("connection refused")) });
        }
        self.inner.settle(hold, actual)
    }
}

fn flaky() -> (Flaky, Arc<AtomicBool>, Arc<AtomicUsize>) {
    let down = Arc::new(AtomicBool::new(false));
    let asked = Arc::new(AtomicUsize::new(0));
    let l = Flaky {
        down: down.clone(),
        asked: asked.clone(),
        inner: LocalLedger::new(),
    };
    (l, down, asked)
}

#[tokio::test(start_paused = true)]
async fn failing_closed_is_a_typed_error_until_the_ledger_answers_again() {
    let (ledger, down, asked) = flaky();
    let svc = gate(config(ledger, OutagePolicy::FailClosed), StatusCode::OK);
    send(&svc, 100).await.unwrap();
    down.store(true, Ordering::SeqCst);
    let err = send(&svc, 100).await.unwrap_err();
    match err.downcast_ref::<ThrottleError>() {
        Some(ThrottleError::LedgerUnavailable { source, .. }) => {
            assert!(
                source.to_string().contains("connection refused"),
                "{source}"
            )
        }
        other => panic!("{other:?}"),
    }
    // Within the retry pause the ledger is not asked again: the error comes at once.
    let before = asked.load(Ordering::SeqCst);
    assert!(send(&svc, 100).await.is_err());
    assert_eq!(asked.load(Ordering::SeqCst), before);
    // It is back: after the pause the gate asks again and admits.
    down.store(false, Ordering::SeqCst);
    tokio::time::advance(OutagePolicy::retry_after()).await;
    send(&svc, 100).await.unwrap();
    assert_eq!(asked.load(Ordering::SeqCst), before + 1);
}

#[tokio::test(start_paused = true)]
async fn failing_open_spends_a_share_of_the_quota_in_process_then_resumes() {
    let (ledger, down, asked) = flaky();
    let svc = gate(
        config(ledger, OutagePolicy::FailOpen { share: 0.5 }),
        StatusCode::OK,
    );
    down.store(true, Ordering::SeqCst);
    let start = Instant::now();
    // 500 tokens, half the quota, at once from the in-process fallback ...
    assert_eq!(send(&svc, 400).await.unwrap(), start);
    assert_eq!(send(&svc, 100).await.unwrap(), start);
    // ... then at half the rate: 300 more take 36 s at 500 per minute.
    let at = send(&svc, 300).await.unwrap();
    let waited = at - start;
    assert!(
        waited >= Duration::from_secs(36) && waited <= Duration::from_millis(36_300),
        "{waited:?}"
    );
    // Back up: the next request is reserved in the shared ledger, which takes the 800
    // tokens admitted alone from its full bucket: 600 wait for 400 more, 24 s.
    down.store(false, Ordering::SeqCst);
    tokio::time::advance(OutagePolicy::retry_after()).await;
    let before = asked.load(Ordering::SeqCst);
    let now = Instant::now();
    let at = send(&svc, 600).await.unwrap();
    let waited = at - now;
    assert!(
        waited >= Duration::from_secs(24) && waited <= Duration::from_millis(24_300),
        "{waited:?}"
    );
    assert!(asked.load(Ordering::SeqCst) > before);
    // Then at the shared ledger's whole rate: 1 000 more after a minute.
    let at = send(&svc, 1_000).await.unwrap();
    let waited = at - now;
    assert!(
        waited >= Duration::from_secs(84) && waited <= Duration::from_millis(84_300),
        "{waited:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_request_waiting_for_its_fallback_share_takes_the_ledger_as_soon_as_it_answers() {
    let (ledger, down, _asked) = flaky();
    let svc = gate(
        config(ledger, OutagePolicy::FailOpen { share: 0.5 }),
        StatusCode::OK,
    );
    down.store(true, Ordering::SeqCst);
    let start = Instant::now();
    // The fallback's 500 go at once; 400 more would wait 48 s for the fallback's share.
    assert_eq!(send(&svc, 500).await.unwrap(), start);
    // The ledger answers again 2 s in: the waiting request is reserved there (which takes
    // the 500 admitted alone and has 500 left) within a retry pause or two, not after 48 s.
    let (at, ()) = tokio::join!(send(&svc, 400), async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        down.store(false, Ordering::SeqCst);
    });
    let at = at.unwrap();
    let waited = at - start;
    assert!(
        waited <= Duration::from_secs(2) + 2 * OutagePolicy::retry_after(),
        "{waited:?}"
    );
}

#[test]
fn a_shared_ledger_rejects_a_discovered_quota_and_a_bad_share() {
    let e = ThrottleConfig::builder()
        .quota(Quota::discover())
        .ledger(LocalLedger::new())
        .build()
        .unwrap_err();
    assert!(e.to_string().contains("discover"), "{e}");
    let e = ThrottleConfig::builder()
        .quota(Quota::new(None, 1_000))
        .ledger(LocalLedger::new())
        .outage(OutagePolicy::FailOpen { share: 0.0 })
        .build()
        .unwrap_err();
    assert!(e.to_string().contains("share"), "{e}");
}

/// A ledger whose answers arrive two seconds after it decided (a slow link to Redis, whose
/// script runs whether or not anyone still waits for its answer), spending from a shared
/// `LocalLedger`.
#[derive(Debug)]
struct Slow(Arc<LocalLedger>);

impl Ledger for Slow {
    fn reserve(&self, ask: Ask) -> LedgerFuture<Grant> {
        let decided = self.0.reserve(ask);
        Box::pin(async move {
            let grant = decided.await;
            tokio::time::sleep(Duration::from_secs(2)).await;
            grant
        })
    }

    fn settle(&self, hold: Hold, actual: u64) -> LedgerFuture<()> {
        self.0.settle(hold, actual)
    }
}

#[tokio::test(start_paused = true)]
async fn a_grant_that_comes_after_its_waiter_left_is_given_back() {
    let budget = Arc::new(LocalLedger::new());
    let cfg = ThrottleConfig::builder()
        .quota(Quota::new(None, 1_000))
        .headroom(Duration::ZERO)
        .max_wait(Duration::from_secs(1))
        .ledger(Slow(budget.clone()))
        .build()
        .unwrap();
    let slow = gate(cfg, StatusCode::OK);
    // The question is in flight when the deadline passes; the ledger grants it later.
    let err = send(&slow, 800).await.unwrap_err();
    assert!(
        matches!(
            err.downcast_ref::<ThrottleError>(),
            Some(ThrottleError::MaxWaitExceeded { .. })
        ),
        "{err}"
    );
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    tokio::task::yield_now().await;
    // Nothing of the late grant is left charged: the whole quota is there at once.
    let ok = gate(config(budget, OutagePolicy::FailClosed), StatusCode::OK);
    let start = Instant::now();
    assert_eq!(send(&ok, 1_000).await.unwrap(), start);
}
