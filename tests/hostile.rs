//! Hostile and broken input through the whole layer: numbers from the wire that would
//! overflow, panic or poison a key are bounded before they are used.

mod common;

use std::{
    collections::VecDeque,
    convert::Infallible,
    sync::{Arc, Mutex},
    time::Duration,
};

use bedrock_throttle::{BedrockThrottleLayer, Quota, ThrottleConfig};
use bytes::Bytes;
use common::invoke;
use http::{Request, Response};
use http_body_util::Full;
use tokio::time::Instant;
use tower::{service_fn, Service, ServiceBuilder, ServiceExt};

const MODEL: &str = "anthropic.claude-3-5-sonnet-20240620-v1:0";

/// An upstream that answers from a script (then plain 200s) and records when it was called.
#[derive(Clone, Default)]
struct Scripted {
    replies: Arc<Mutex<VecDeque<Response<Full<Bytes>>>>>,
    calls: Arc<Mutex<Vec<Instant>>>,
}

impl Scripted {
    fn new(replies: Vec<Response<Full<Bytes>>>) -> Self {
        Self {
            replies: Arc::new(Mutex::new(replies.into())),
            calls: Arc::default(),
        }
    }

    fn calls(&self) -> Vec<Instant> {
        self.calls.lock().unwrap().clone()
    }

    fn service(
        &self,
    ) -> impl Service<
        Request<Full<Bytes>>,
        Response = Response<Full<Bytes>>,
        Error = Infallible,
        Future = impl Send,
    > + Clone
           + Send
           + 'static {
        let this = self.clone();
        service_fn(move |_req: Request<Full<Bytes>>| {
            this.calls.lock().unwrap().push(Instant::now());
            let reply = this.replies.lock().unwrap().pop_front().unwrap_or_else(|| {
                Response::builder()
                    .header("x-amzn-bedrock-input-token-count", "10")
                    .header("x-amzn-bedrock-output-token-count", "10")
                    .body(Full::new(Bytes::from_static(b"{}")))
                    .unwrap()
            });
            async move { Ok::<_, Infallible>(reply) }
        })
    }
}

fn reply(status: u16, headers: &[(&str, &str)], body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::builder().status(status);
    for (k, v) in headers {
        r = r.header(*k, *v);
    }
    r.body(Full::new(Bytes::from_static(body.as_bytes())))
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn absurd_retry_after_hints_are_clamped_not_panicked_on() {
    for (name, value) in [
        ("retry-after", "99999999999999999999"),
        ("retry-after", "1e300"),
        ("x-amz-retry-after", "1e30"),
        ("retry-after-ms", "1e300"),
    ] {
        let upstream = Scripted::new(vec![
            reply(429, &[(name, value)], r#"{"message":"Too many requests"}"#),
            reply(503, &[(name, value)], ""),
        ]);
        let cfg = ThrottleConfig::builder()
            .quota(Quota::new(100, 1_000_000))
            .max_retry_after(Duration::from_secs(7))
            .build()
            .unwrap();
        let svc = ServiceBuilder::new()
            .layer(BedrockThrottleLayer::new(cfg))
            .service(upstream.service());
        let start = Instant::now();
        let response = svc.oneshot(invoke(MODEL, "hello", 100)).await.unwrap();
        assert_eq!(response.status(), 200, "{name}: {value}");
        let calls = upstream.calls();
        assert_eq!(calls.len(), 3, "{name}: {value}");
        // Each retry waited the clamp, max_retry_after, and no longer.
        assert_eq!(
            calls[1] - calls[0],
            Duration::from_secs(7),
            "{name}: {value}"
        );
        assert_eq!(
            calls[2] - calls[1],
            Duration::from_secs(7),
            "{name}: {value}"
        );
        assert!(Instant::now() - start < Duration::from_secs(15));
    }
}
