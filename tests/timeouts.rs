//! Requests that find no room by their deadline, `max_wait` or a `SendDeadline`, count as
//! timeouts of their tenant, in `stats()` and in the metrics, in virtual time.

use std::{convert::Infallible, time::Duration};

use bedrock_throttle::{
    estimate::TokenEstimate, BedrockThrottleLayer, BoxError, Quota, QuotaKey, SendDeadline, Tenant,
    TenantPolicy, ThrottleConfig, ThrottleError,
};
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use tokio::time::Instant;
use tower::{service_fn, Layer, ServiceExt};

const MODEL: &str = "meta.llama3-70b-instruct-v1:0";

fn request(
    tenant: Option<&str>,
    tokens: u64,
    deadline: Option<SendDeadline>,
) -> Request<Full<Bytes>> {
    let mut req = Request::post(
        "https://bedrock-runtime.us-east-1.amazonaws.com/model/meta.llama3-70b-instruct-v1%3A0/invoke",
    )
    .body(Full::new(Bytes::from_static(b"{}")))
    .unwrap();
    req.extensions_mut().insert(TokenEstimate::new(tokens, 0));
    if let Some(t) = tenant {
        req.extensions_mut().insert(Tenant::new(t));
    }
    if let Some(d) = deadline {
        req.extensions_mut().insert(d);
    }
    req
}

/// Each refusal's variant name and the tenant it names, for the assertions.
fn refusal(result: Result<Response<impl Sized>, BoxError>) -> (&'static str, Option<String>) {
    let error = result.map(|_| ()).unwrap_err();
    let (name, tenant) = match error.downcast_ref::<ThrottleError>() {
        Some(ThrottleError::SendDeadlinePassed { tenant, .. }) => ("send deadline", tenant),
        Some(ThrottleError::MaxWaitExceeded { tenant, .. }) => ("max wait", tenant),
        other => panic!("unexpected {other:?}"),
    };
    let tenant = tenant.as_ref().map(|t| t.as_str().to_owned());
    if let Some(t) = &tenant {
        assert!(
            error.to_string().contains(&format!("tenant {t}")),
            "{error}"
        );
    }
    (name, tenant)
}

#[test]
fn send_deadlines_and_max_wait_count_as_timeouts_of_the_tenant() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    let cfg = ThrottleConfig::builder()
        .quota(Quota::tokens_per_minute(1_000).with_burndown(1.0))
        .headroom(Duration::ZERO)
        .max_wait(Duration::from_secs(5))
        .tenant("gold", TenantPolicy::weight(1.0))
        .tenant_metrics(true)
        .build()
        .unwrap();
    let upstream = service_fn(|_req: Request<Full<Bytes>>| async {
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
    });
    metrics::with_local_recorder(&recorder, || {
        rt.block_on(async {
            let svc = BedrockThrottleLayer::new(cfg.clone()).layer(upstream);
            // The whole quota: the next requests wait 30 s for half of it.
            svc.clone()
                .oneshot(request(None, 1_000, None))
                .await
                .unwrap();
            tokio::time::advance(Duration::from_secs(1)).await;
            // Its deadline passes while it waits.
            let soon = Some(SendDeadline::after(Duration::from_secs(2)));
            let waited = svc.clone().oneshot(request(Some("gold"), 500, soon)).await;
            assert_eq!(refusal(waited), ("send deadline", Some("gold".into())));
            // Its deadline had passed before it could queue.
            let past = Some(SendDeadline(Instant::now() - Duration::from_millis(1)));
            let late = svc.clone().oneshot(request(Some("gold"), 500, past)).await;
            assert_eq!(refusal(late), ("send deadline", Some("gold".into())));
            // `max_wait` passes, for a tenant without a policy of its own.
            let walk_in = svc.oneshot(request(Some("walk-in"), 500, None)).await;
            assert_eq!(refusal(walk_in), ("max wait", Some("walk-in".into())));
        })
    });

    let stats = cfg.stats();
    let key = stats
        .key(&QuotaKey::new(Some(MODEL), Some("us-east-1")))
        .unwrap();
    assert_eq!(key.timed_out, 3);
    assert_eq!(key.tenant(Some("gold")).unwrap().timed_out, 2);
    assert_eq!(key.tenant(None).unwrap().timed_out, 1);

    let mut timed_out: Vec<(String, u64)> = (snapshotter.snapshot().into_vec().into_iter())
        .filter(|(k, ..)| k.key().name() == "bedrock_throttle_timed_out_total")
        .map(|(k, _, _, v)| {
            let tenant = k.key().labels().find(|l| l.key() == "tenant").unwrap();
            let DebugValue::Counter(n) = v else {
                panic!("a counter")
            };
            (tenant.value().to_owned(), n)
        })
        .collect();
    timed_out.sort();
    assert_eq!(
        timed_out,
        [("(default)".to_owned(), 1), ("gold".to_owned(), 2)]
    );
}
