//! Clients that share one quota through a Redis ledger, over real HTTP to the emulator:
//! the workload of the Redis and Redis Cluster tests.

#![allow(dead_code)]

use std::time::{Duration, Instant};

use bedrock_throttle::{
    emulator::{EmulatedQuota, Emulator, EmulatorHandle, LatencyModel, OutputLength},
    BedrockThrottleLayer, BoxError, OutagePolicy, Quota, RedisLedger, ThrottleConfig,
    ThrottleError,
};
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use tower::{Service, ServiceBuilder, ServiceExt};

pub const SONNET_4: &str = "us.anthropic.claude-sonnet-4-20250514-v1:0";

/// The quota period: short, so a run takes seconds.
pub const PERIOD: Duration = Duration::from_secs(5);
pub const RPM: u64 = 60;
pub const TPM: u64 = 30_000;
pub const FIRST_TOKEN: Duration = Duration::from_millis(200);
pub const PER_OUTPUT_TOKEN: Duration = Duration::from_millis(2);

pub async fn emulator() -> EmulatorHandle {
    Emulator::builder()
        .default_quota(EmulatedQuota {
            rpm: Some(RPM),
            tpm: TPM,
            tpd: None,
            period: PERIOD,
        })
        .latency(LatencyModel {
            first_token: FIRST_TOKEN,
            per_output_token: PER_OUTPUT_TOKEN,
        })
        .chars_per_token(3.6)
        .output_tokens(OutputLength::Uniform { min: 20, max: 200 })
        .seed(11)
        .spawn()
        .await
        .unwrap()
}

pub fn request(base: &str, caller: usize, i: usize) -> Request<Full<Bytes>> {
    let prompt = format!(
        "Caller {caller} asks question {i}: summarise the history of the Broad Street pump and what it taught about cholera. "
    )
    .repeat(1 + (caller + i) % 5);
    let body = serde_json::json!({
        "anthropic_version": "bedrock-2023-05-31",
        "max_tokens": 200,
        "messages": [{"role": "user", "content": prompt}],
    });
    Request::post(format!(
        "{base}/model/us.anthropic.claude-sonnet-4-20250514-v1%3A0/invoke"
    ))
    .header("content-type", "application/json")
    .body(Full::new(Bytes::from(body.to_string())))
    .unwrap()
}

pub type Body = http_body_util::combinators::BoxBody<Bytes, BoxError>;

/// One independent client: its own configuration (so its own in-process buckets), its own
/// HTTP client and layer stack, spending through `ledger`.
pub fn client(
    ledger: RedisLedger,
    policy: OutagePolicy,
) -> impl Service<
    Request<Full<Bytes>>,
    Response = http::Response<Body>,
    Error = BoxError,
    Future = impl Send,
> + Clone
       + Send
       + 'static {
    let cfg = ThrottleConfig::builder()
        .model_quota(SONNET_4, Quota::new(RPM as u32, TPM).with_period(PERIOD))
        .ledger(ledger)
        .outage(policy)
        .max_wait(Duration::from_secs(60))
        .base_delay(Duration::from_millis(100))
        .max_delay(Duration::from_secs(2))
        .build()
        .unwrap();
    stack(cfg)
}

/// The layer configured by `cfg` over a plain HTTP client, its bodies boxed.
pub fn stack(
    cfg: ThrottleConfig,
) -> impl Service<
    Request<Full<Bytes>>,
    Response = http::Response<Body>,
    Error = BoxError,
    Future = impl Send,
> + Clone
       + Send
       + 'static {
    let http = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    ServiceBuilder::new()
        .map_response(boxed)
        .layer(BedrockThrottleLayer::new(cfg))
        .service(http)
}

pub fn boxed<B>(resp: http::Response<B>) -> http::Response<Body>
where
    B: http_body::Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    resp.map(|b| b.map_err(Into::into).boxed())
}

/// What became of one request.
#[derive(Debug)]
#[allow(dead_code)] // the fields are for the failure messages
pub enum Outcome {
    Ok { done: Instant },
    Status(StatusCode),
    Unavailable { done: Instant },
    Other(String),
}

/// `callers` tasks per client, each sending `per_caller` requests one after another.
/// Returns each request's client and outcome.
pub async fn run<S>(
    clients: Vec<S>,
    base: &str,
    callers: usize,
    per_caller: usize,
) -> Vec<(usize, Outcome)>
where
    S: Service<Request<Full<Bytes>>, Response = http::Response<Body>, Error = BoxError>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
{
    let mut tasks = Vec::new();
    for (n, svc) in clients.into_iter().enumerate() {
        for c in 0..callers {
            let mut svc = svc.clone();
            let base = base.to_string();
            let caller = n * callers + c;
            tasks.push(tokio::spawn(async move {
                let mut out = Vec::new();
                for i in 0..per_caller {
                    let svc = svc.ready().await.unwrap();
                    let outcome = match svc.call(request(&base, caller, i)).await {
                        Ok(resp) if resp.status() == StatusCode::OK => {
                            resp.into_body().collect().await.unwrap();
                            Outcome::Ok {
                                done: Instant::now(),
                            }
                        }
                        Ok(resp) => Outcome::Status(resp.status()),
                        Err(e) => match e.downcast_ref::<ThrottleError>() {
                            Some(ThrottleError::LedgerUnavailable { .. }) => {
                                let done = Instant::now();
                                // As a caller would: back off before the next request.
                                tokio::time::sleep(Duration::from_millis(500)).await;
                                Outcome::Unavailable { done }
                            }
                            _ => Outcome::Other(e.to_string()),
                        },
                    };
                    out.push((n, outcome));
                }
                out
            }));
        }
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("caller task"));
    }
    all
}
