//! The load demo: one realistic workload against the emulated Bedrock, through each client
//! stack in turn, side by side.
//!
//! ```text
//! cargo run --release --example load_demo --features emulator
//! cargo run --release --example load_demo --features emulator -- --stacks layer-http,retry --requests 600 --callers 128
//! cargo run --release --example load_demo --all-features -- --scenario unknown-quota --stacks sdk-adaptive,layer-http,layer-sdk
//! cargo run --release --example load_demo --features emulator,aws-sdk -- --workload one-model --period-secs 60 --callers 48 --requests 400 --stacks sdk-adaptive,layer-http
//! ```
//!
//! `--workload one-model` is issue 21's: one model with RPM 400 and TPM 300,000, 30 % documents
//! of 20,000 to 60,000 characters (`max_tokens` 1,024), the rest 300 to 2,000 characters
//! (`max_tokens` 256 or 512), outputs of 30 to 100 % of `max_tokens`, 50 ms + 0.5 ms per
//! output token; upstream counts 3.6 characters a token plus 3 per message
//! (`EmulatorBuilder::tokens_per_message`), which the gate's estimate from the text alone
//! does not know; with `--period-secs 60` it runs in real time (minutes of it).
//! `--clock-offset-secs` and `--admission-delay-ms` skew the emulator against the gate (see
//! `EmulatorBuilder::clock_offset` and `admission_delay`).
//!
//! `--workload streams` is issue 21's streaming case: short ConverseStream calls (320 to 440
//! characters, `maxTokens` 128) to the same model and quota, nowhere near the quota, against
//! an upstream that refuses a share of the stream attempts (`--stream-throttle-first`, 10 %
//! by default) with a `throttlingException` as the first frame after the HTTP 200 head, as
//! Bedrock can when it is short of capacity (the emulator's `Faults::stream_throttle_first`).
//! The SDK stacks call `converse_stream` and read the stream to its end; the HTTP stacks post
//! to `/converse-stream` and read the event stream, an exception frame counting as a failure.
//!
//! ```text
//! cargo run --release --example load_demo --features emulator,aws-sdk -- --workload streams --period-secs 60 --callers 8 --requests 40 --stacks sdk-adaptive,layer-sdk
//! ```
//!
//! `--scenario` sets what the layer stacks are told about the quotas: `known` (the default:
//! the emulator's numbers), `unknown-quota` (nothing: `Quota::discover()`, found from
//! throttles) or `double-quota` (twice the real numbers).
//!
//! Each stack gets a fresh emulator with the same quotas, seed and workload: chat requests
//! and large RAG prompts for three models, sent by `--callers` concurrent callers. Quotas
//! count per `--period-secs` (6 s by default, a tenth of a minute, so the demo is short);
//! the stacks that know about quotas are told the same period.
//!
//! At the end it prints a table (completed, failed, upstream throttles, goodput as a share
//! of the ideal up to the last upstream admission and up to the last response, p50 and p99
//! latency) and writes an SVG plot of the quota tokens billed per second against the quota,
//! one line per stack, then the capacity report of each layer stack
//! (`ThrottleConfig::capacity_report`): per model, the limit that binds and what a
//! quota-increase request should ask for. Its rates are per minute, so with the 6 s period
//! they are ten times the per-period quotas above.
//!
//! `--timeline FILE.csv` writes, once a second per stack and model, the gate's view of the
//! key (tokens and requests its buckets hold, its token and request rates per period, its
//! queue, admissions and throttles seen; empty for stacks without the gate) beside the
//! emulator's buckets for the same key (tokens and requests available, tokens reserved and
//! requests in flight, admissions and throttles). A throttle shows as a step in
//! `upstream_throttled`; the rows before it say whether the gate thought the request fit
//! (`gate_tokens_available`) where upstream's bucket had less (`upstream_tokens_available`),
//! or whether the gate's rate had been cut.
//!
//! `--runs N` repeats every stack N times, taking turns round by round, and adds a summary
//! per stack (throttles over attempts, goodput's mean and range); the plot and the capacity
//! reports are of the last round.

mod plot;
mod timeline;

use std::{
    collections::VecDeque,
    fmt::Write as _,
    sync::{Arc, Mutex},
    time::Duration,
};

use aws_sdk_bedrockruntime::{
    config::{retry::RetryConfig, BehaviorVersion, Credentials, Region},
    primitives::Blob,
    types::{ContentBlock, ConversationRole, InferenceConfiguration, Message},
};
use aws_smithy_eventstream::frame::{DecodedFrame, MessageFrameDecoder};
use aws_smithy_runtime_api::client::http::HttpClient;
use bedrock_throttle::{
    aws::ThrottledHttpClient,
    diagnosis::CapacityReport,
    emulator::{EmulatedQuota, Emulator, EmulatorHandle, Faults, LatencyModel, OutputLength},
    retry::RetryLayer,
    BedrockThrottleLayer, BoxError, Quota, ThrottleConfig,
};
use bytes::{Bytes, BytesMut};
use http::{Request, Response};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper_util::{client::legacy::Client, rt::TokioExecutor};
use indicatif::{ProgressBar, ProgressStyle};
use tokio::time::Instant;
use tower::{util::BoxCloneService, ServiceBuilder, ServiceExt};

/// (model id, RPM, TPM) per period.
const MODELS: [(&str, Option<u64>, u64); 3] = [
    (
        "us.anthropic.claude-sonnet-4-20250514-v1:0",
        Some(40),
        200_000,
    ),
    (
        "anthropic.claude-3-5-haiku-20241022-v1:0",
        Some(80),
        150_000,
    ),
    ("amazon.nova-pro-v1:0", None, 100_000),
];

/// The `one-model` workload's model (burndown 1), RPM and TPM per period.
const ONE_MODEL: [(&str, Option<u64>, u64); 1] = [(
    "anthropic.claude-3-5-haiku-20241022-v1:0",
    Some(400),
    300_000,
)];

/// The emulated model's latency: first token, then per output token; outputs of 50..400.
const FIRST_TOKEN: Duration = Duration::from_millis(300);
const PER_OUTPUT_TOKEN: Duration = Duration::from_millis(4);
const MIN_OUTPUT: u64 = 50;

const WORKLOADS: [&str; 3] = ["mixed", "one-model", "streams"];

const ALL_STACKS: [&str; 6] = [
    "none",
    "retry",
    "sdk-standard",
    "sdk-adaptive",
    "layer-http",
    "layer-sdk",
];

const SCENARIOS: [&str; 3] = ["known", "unknown-quota", "double-quota"];

struct Options {
    scenario: String,
    workload: String,
    /// How far the emulator's buckets run behind the gate's, and how long after arrival it
    /// counts a request.
    clock_offset: Duration,
    admission_delay: Duration,
    /// The share of stream attempts refused in their first frame; `None`: 10 % for the
    /// `streams` workload, none otherwise.
    stream_throttle_first: Option<f64>,
    /// Attempts of the SDK stacks' retry (the SDK's default, 3, unless set).
    sdk_attempts: u32,
    callers: usize,
    requests: usize,
    period: Duration,
    seed: u64,
    stacks: Vec<String>,
    out: String,
    /// Where to write the per-second timeline of the gate against the emulator.
    timeline: Option<String>,
    /// Rounds of every stack; above 1 a summary of the rounds follows the table.
    runs: usize,
}

impl Options {
    fn parse() -> Self {
        let mut o = Options {
            scenario: "known".into(),
            workload: "mixed".into(),
            clock_offset: Duration::ZERO,
            admission_delay: Duration::ZERO,
            stream_throttle_first: None,
            sdk_attempts: 3,
            callers: 64,
            requests: 360,
            period: Duration::from_secs(6),
            seed: 42,
            stacks: ALL_STACKS.iter().map(|s| s.to_string()).collect(),
            out: "load_demo.svg".into(),
            timeline: None,
            runs: 1,
        };
        let mut args = std::env::args().skip(1);
        while let Some(flag) = args.next() {
            let mut value = || {
                args.next()
                    .unwrap_or_else(|| fail(&format!("{flag} needs a value")))
            };
            match flag.as_str() {
                "--callers" => o.callers = value().parse().unwrap_or_else(|_| fail("--callers N")),
                "--requests" => {
                    o.requests = value().parse().unwrap_or_else(|_| fail("--requests N"))
                }
                "--period-secs" => {
                    o.period = Duration::from_secs_f64(
                        value().parse().unwrap_or_else(|_| fail("--period-secs F")),
                    )
                }
                "--seed" => o.seed = value().parse().unwrap_or_else(|_| fail("--seed N")),
                "--stacks" => o.stacks = value().split(',').map(str::to_string).collect(),
                "--scenario" => o.scenario = value(),
                "--workload" => o.workload = value(),
                "--clock-offset-secs" => {
                    o.clock_offset = Duration::from_secs_f64(
                        value()
                            .parse()
                            .unwrap_or_else(|_| fail("--clock-offset-secs F")),
                    )
                }
                "--admission-delay-ms" => {
                    o.admission_delay = Duration::from_millis(
                        value()
                            .parse()
                            .unwrap_or_else(|_| fail("--admission-delay-ms N")),
                    )
                }
                "--sdk-attempts" => {
                    o.sdk_attempts = value()
                        .parse()
                        .ok()
                        .filter(|n| *n >= 1)
                        .unwrap_or_else(|| fail("--sdk-attempts N (at least 1)"))
                }
                "--stream-throttle-first" => {
                    o.stream_throttle_first = Some(
                        value()
                            .parse()
                            .ok()
                            .filter(|f| (0.0..=1.0).contains(f))
                            .unwrap_or_else(|| fail("--stream-throttle-first F (0 to 1)")),
                    )
                }
                "--out" => o.out = value(),
                "--timeline" => o.timeline = Some(value()),
                "--runs" => {
                    o.runs = value()
                        .parse()
                        .ok()
                        .filter(|n| *n >= 1)
                        .unwrap_or_else(|| fail("--runs N (at least 1)"))
                }
                _ => fail(&format!("unknown flag {flag}")),
            }
        }
        if !SCENARIOS.contains(&o.scenario.as_str()) {
            fail(&format!(
                "unknown scenario {}; scenarios: {}",
                o.scenario,
                SCENARIOS.join(",")
            ));
        }
        if !WORKLOADS.contains(&o.workload.as_str()) {
            fail(&format!(
                "unknown workload {}; workloads: {}",
                o.workload,
                WORKLOADS.join(",")
            ));
        }
        for s in &o.stacks {
            if !ALL_STACKS.contains(&s.as_str()) {
                fail(&format!(
                    "unknown stack {s}; stacks: {}",
                    ALL_STACKS.join(",")
                ));
            }
        }
        o
    }

    /// The one-model quota and latency: the `one-model` and `streams` workloads.
    fn one_model(&self) -> bool {
        self.workload == "one-model" || self.streams()
    }

    fn streams(&self) -> bool {
        self.workload == "streams"
    }

    /// The share of stream attempts upstream refuses in their first frame.
    fn stream_throttle_first(&self) -> f64 {
        self.stream_throttle_first
            .unwrap_or(if self.streams() { 0.1 } else { 0.0 })
    }

    /// (model id, RPM, TPM) per period.
    fn models(&self) -> &'static [(&'static str, Option<u64>, u64)] {
        if self.one_model() {
            &ONE_MODEL
        } else {
            &MODELS
        }
    }

    /// The emulated model's latency.
    fn latency(&self) -> LatencyModel {
        if self.one_model() {
            LatencyModel {
                first_token: Duration::from_millis(50),
                per_output_token: Duration::from_micros(500),
            }
        } else {
            LatencyModel {
                first_token: FIRST_TOKEN,
                per_output_token: PER_OUTPUT_TOKEN,
            }
        }
    }

    /// The shortest a request can take.
    fn shortest(&self) -> Duration {
        if self.streams() {
            // 30 % of max_tokens 128.
            self.latency().total(38)
        } else if self.one_model() {
            // 30 % of the smallest max_tokens, 256.
            self.latency().total(77)
        } else {
            self.latency().total(MIN_OUTPUT)
        }
    }
}

fn fail(msg: &str) -> ! {
    eprintln!("{msg}");
    eprintln!(
        "usage: load_demo [--scenario known|unknown-quota|double-quota] [--workload mixed|one-model|streams] [--clock-offset-secs F] [--admission-delay-ms N] [--stream-throttle-first F] [--sdk-attempts N] [--callers N] [--requests N] [--period-secs F] [--seed N] [--stacks {}] [--out FILE.svg] [--timeline FILE.csv] [--runs N]",
        ALL_STACKS.join(",")
    );
    std::process::exit(2)
}

/// One request of the workload.
#[derive(Clone)]
struct Job {
    model: &'static str,
    /// The HTTP body: InvokeModel's, or ConverseStream's when `stream` is set.
    body: Bytes,
    /// A ConverseStream call's prompt and `maxTokens`, for the SDK stacks.
    stream: Option<(String, i32)>,
}

/// `mixed`: 70 % chat (a few hundred to a few thousand characters), 30 % RAG (8 to 40 KB of
/// context), over three models. `one-model`: issue 21's, one model, 30 % documents of 20 to
/// 60 KB with `max_tokens` 1,024, the rest 300 to 2,000 characters with 256 or 512.
fn workload(n: usize, opts: &Options) -> Vec<Job> {
    if opts.streams() {
        return streams_workload(n);
    }
    if opts.one_model() {
        return one_model_workload(n, opts.seed);
    }
    let mut rng = fastrand::Rng::with_seed(opts.seed);
    let sentence =
        "The pump on Broad Street was the source, and removing its handle ended the outbreak. ";
    (0..n)
        .map(|i| {
            let (model, _, _) = MODELS[i % MODELS.len()];
            let rag = rng.f64() < 0.3;
            let chars = if rag {
                rng.usize(8_000..40_000)
            } else {
                rng.usize(300..3_000)
            };
            let text = sentence.repeat(chars / sentence.len() + 1);
            let max_tokens = if rag { 1_024 } else { rng.u64(300..800) };
            let body = if model.starts_with("amazon.nova") {
                serde_json::json!({
                    "messages": [{"role": "user", "content": [{"text": text}]}],
                    "inferenceConfig": {"maxTokens": max_tokens},
                })
            } else {
                serde_json::json!({
                    "anthropic_version": "bedrock-2023-05-31",
                    "max_tokens": max_tokens,
                    "messages": [{"role": "user", "content": text}],
                })
            };
            Job {
                model,
                body: Bytes::from(body.to_string()),
                stream: None,
            }
        })
        .collect()
}

fn one_model_workload(n: usize, seed: u64) -> Vec<Job> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let sentence =
        "The pump on Broad Street was the source, and removing its handle ended the outbreak. ";
    (0..n)
        .map(|_| {
            let (chars, max_tokens) = if rng.f64() < 0.3 {
                (rng.usize(20_000..60_000), 1_024)
            } else {
                (rng.usize(300..2_000), if rng.bool() { 256 } else { 512 })
            };
            let text = &sentence.repeat(chars / sentence.len() + 1)[..chars];
            let body = serde_json::json!({
                "anthropic_version": "bedrock-2023-05-31",
                "max_tokens": max_tokens,
                "messages": [{"role": "user", "content": text}],
            });
            Job {
                model: ONE_MODEL[0].0,
                body: Bytes::from(body.to_string()),
                stream: None,
            }
        })
        .collect()
}

/// `streams`: short ConverseStream calls with `maxTokens` 128.
fn streams_workload(n: usize) -> Vec<Job> {
    (0..n)
        .map(|i| {
            let text = "tell me a story ".repeat(20 + i % 7);
            let max_tokens = 128;
            let body = serde_json::json!({
                "messages": [{"role": "user", "content": [{"text": text}]}],
                "inferenceConfig": {"maxTokens": max_tokens},
            });
            Job {
                model: ONE_MODEL[0].0,
                body: Bytes::from(body.to_string()),
                stream: Some((text, max_tokens)),
            }
        })
        .collect()
}

/// Reads an event stream to its end; false at an exception frame or a broken stream.
async fn read_event_stream(mut body: BoxBody<Bytes, BoxError>) -> bool {
    let mut decoder = MessageFrameDecoder::new();
    let mut buf = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let Ok(frame) = frame else { return false };
        let Ok(data) = frame.into_data() else {
            continue;
        };
        buf.extend_from_slice(&data);
        loop {
            match decoder.decode_frame(&mut buf) {
                Ok(DecodedFrame::Complete(message)) => {
                    let exception = message.headers().iter().any(|h| {
                        h.name().as_str() == ":message-type"
                            && h.value().as_string().is_ok_and(|v| v.as_str() != "event")
                    });
                    if exception {
                        return false;
                    }
                }
                Ok(DecodedFrame::Incomplete) => break,
                Err(_) => return false,
            }
        }
    }
    true
}

/// Sends a ConverseStream call through the SDK and reads its stream to the end.
async fn sdk_stream(
    client: &aws_sdk_bedrockruntime::Client,
    model: &str,
    text: String,
    max_tokens: i32,
) -> bool {
    let message = Message::builder()
        .role(ConversationRole::User)
        .content(ContentBlock::Text(text))
        .build()
        .expect("message");
    let sent = client
        .converse_stream()
        .model_id(model)
        .messages(message)
        .inference_config(
            InferenceConfiguration::builder()
                .max_tokens(max_tokens)
                .build(),
        )
        .send()
        .await;
    let Ok(mut out) = sent else { return false };
    loop {
        match out.stream.recv().await {
            Ok(Some(_)) => {}
            Ok(None) => return true,
            Err(_) => return false,
        }
    }
}

/// A client stack: a tower HTTP service or an AWS SDK client.
#[derive(Clone)]
enum Stack {
    Http(HttpService),
    Sdk(aws_sdk_bedrockruntime::Client),
}

impl Stack {
    /// Sends one job; true when it succeeded.
    async fn send(self, base: &str, job: Job) -> bool {
        match self {
            Stack::Http(svc) => {
                let path = format!(
                    "{base}/model/{}/{}",
                    percent_encoding::utf8_percent_encode(
                        job.model,
                        percent_encoding::NON_ALPHANUMERIC
                    ),
                    if job.stream.is_some() {
                        "converse-stream"
                    } else {
                        "invoke"
                    }
                );
                let req = Request::post(path)
                    .header("content-type", "application/json")
                    .body(Full::new(job.body))
                    .expect("request");
                match svc.oneshot(req).await {
                    Ok(resp) if job.stream.is_some() => {
                        resp.status().is_success() && read_event_stream(resp.into_body()).await
                    }
                    Ok(resp) => {
                        let ok = resp.status().is_success();
                        let _ = resp.into_body().collect().await;
                        ok
                    }
                    Err(_) => false,
                }
            }
            Stack::Sdk(client) => match job.stream {
                Some((text, max_tokens)) => sdk_stream(&client, job.model, text, max_tokens).await,
                None => client
                    .invoke_model()
                    .model_id(job.model)
                    .content_type("application/json")
                    .body(Blob::new(job.body.to_vec()))
                    .send()
                    .await
                    .is_ok(),
            },
        }
    }
}

fn sdk(base: &str, http: impl HttpClient + 'static, retry: RetryConfig) -> Stack {
    let conf = aws_sdk_bedrockruntime::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(base)
        .credentials_provider(Credentials::new(
            "AKIDEXAMPLE",
            "secret",
            None,
            None,
            "load-demo",
        ))
        .http_client(http)
        .retry_config(retry)
        .build();
    Stack::Sdk(aws_sdk_bedrockruntime::Client::from_conf(conf))
}

type HttpService =
    BoxCloneService<Request<Full<Bytes>>, Response<BoxBody<Bytes, BoxError>>, BoxError>;

fn boxed<B>(resp: Response<B>) -> Response<BoxBody<Bytes, BoxError>>
where
    B: http_body::Body<Data = Bytes> + Send + Sync + 'static,
    B::Error: Into<BoxError>,
{
    resp.map(|b| b.map_err(Into::into).boxed())
}

/// The client stack named `name`, pointed at the emulator at `base`.
/// The stack, and the configuration of the layer stacks (for their capacity report).
fn stack(name: &str, base: &str, opts: &Options) -> (Stack, Option<ThrottleConfig>) {
    let sdk_http = || aws_smithy_http_client::Builder::new().build_http();
    let client = Client::builder(TokioExecutor::new()).build_http::<Full<Bytes>>();
    let config = || {
        let mut b = ThrottleConfig::builder();
        for &(model, rpm, tpm) in opts.models() {
            let rpm = rpm.map(|r| r as u32);
            let quota = match opts.scenario.as_str() {
                "unknown-quota" => Quota::discover(),
                "double-quota" => Quota::new(rpm.map(|r| 2 * r), 2 * tpm),
                _ => Quota::new(rpm, tpm),
            };
            b = b.model_quota(model, quota.with_period(opts.period));
        }
        b.max_wait(Duration::from_secs(600))
            .build()
            .expect("valid config")
    };
    let layer_config = config();
    let stack = match name {
        "none" => Stack::Http(
            ServiceBuilder::new()
                .map_response(boxed)
                .map_err(Into::into)
                .service(client)
                .boxed_clone(),
        ),
        "retry" => Stack::Http(
            ServiceBuilder::new()
                .map_response(boxed)
                .layer(RetryLayer::new(config()))
                .service(client)
                .boxed_clone(),
        ),
        "layer-http" => Stack::Http(
            ServiceBuilder::new()
                .map_response(boxed)
                .layer(BedrockThrottleLayer::new(layer_config.clone()))
                .service(client)
                .boxed_clone(),
        ),
        "sdk-standard" => sdk(
            base,
            sdk_http(),
            RetryConfig::standard().with_max_attempts(opts.sdk_attempts),
        ),
        "sdk-adaptive" => sdk(
            base,
            sdk_http(),
            RetryConfig::adaptive().with_max_attempts(opts.sdk_attempts),
        ),
        "layer-sdk" => sdk(
            base,
            ThrottledHttpClient::new(sdk_http(), layer_config.clone()),
            RetryConfig::disabled(),
        ),
        _ => unreachable!("checked in Options::parse"),
    };
    let layered = name.starts_with("layer-");
    (stack, layered.then_some(layer_config))
}

async fn emulator(opts: &Options) -> EmulatorHandle {
    let output = if opts.one_model() {
        OutputLength::PercentOfLimit { min: 30, max: 100 }
    } else {
        OutputLength::Uniform {
            min: MIN_OUTPUT,
            max: 400,
        }
    };
    let mut b = Emulator::builder()
        .latency(opts.latency())
        .chars_per_token(3.6)
        // The one-model upstream wraps each message in template tokens the gate cannot see.
        .tokens_per_message(if opts.one_model() { 3 } else { 0 })
        .output_tokens(output)
        .clock_offset(opts.clock_offset)
        .admission_delay(opts.admission_delay)
        .faults(Faults {
            stream_throttle_first: opts.stream_throttle_first(),
            ..Faults::NONE
        })
        .seed(opts.seed);
    for &(model, rpm, tpm) in opts.models() {
        b = b.model_quota(
            model,
            EmulatedQuota {
                rpm,
                tpm,
                tpd: None,
                period: opts.period,
            },
        );
    }
    b.spawn().await.expect("emulator")
}

struct StackResult {
    name: String,
    completed: usize,
    failed: usize,
    attempts: u64,
    throttles: u64,
    /// The ideal time to admit the billed work, over the time the stack took to have it
    /// admitted; NaN when the work fit in the first full bucket.
    goodput: f64,
    /// The ideal time plus the shortest request's latency, over the time until the last
    /// response.
    goodput_to_last_response: f64,
    p50: Duration,
    p99: Duration,
    wall: Duration,
    /// (seconds since start, quota tokens billed per second as a share of the quota rate)
    series: Vec<(f64, f64)>,
    /// The layer stacks' capacity report.
    report: Option<CapacityReport>,
    /// CSV rows of `--timeline`, one per second and model.
    timeline: String,
}

async fn run(name: &str, jobs: &[Job], opts: &Options) -> StackResult {
    let emu = emulator(opts).await;
    let base = emu.endpoint_url();
    let (svc, layer_config) = stack(name, &base, opts);
    // One queue per model, each served by its share of the callers: the models' traffic is
    // independent, as it is in a real application, so no model's queue starves another's.
    let models = opts.models();
    let queues: Vec<_> = models
        .iter()
        .map(|(model, _, _)| {
            let jobs: VecDeque<Job> = jobs.iter().filter(|j| j.model == *model).cloned().collect();
            Arc::new(Mutex::new(jobs))
        })
        .collect();
    let bar = ProgressBar::new(jobs.len() as u64).with_style(
        ProgressStyle::with_template("{prefix:>11} [{bar:40}] {pos}/{len} {elapsed}")
            .expect("template")
            .progress_chars("=> "),
    );
    bar.set_prefix(name.to_string());

    let start = Instant::now();
    let quota_rate: f64 =
        models.iter().map(|(_, _, tpm)| *tpm as f64).sum::<f64>() / opts.period.as_secs_f64();
    let finished = Arc::new(Mutex::new(start));
    let callers: Vec<_> = (0..opts.callers)
        .map(|i| {
            let queue = queues[i % queues.len()].clone();
            let finished = finished.clone();
            let svc = svc.clone();
            let base = base.clone();
            let bar = bar.clone();
            tokio::spawn(async move {
                let mut out = Vec::new();
                loop {
                    let Some(job) = queue.lock().unwrap().pop_front() else {
                        break;
                    };
                    let sent = Instant::now();
                    let ok = svc.clone().send(&base, job).await;
                    out.push((ok, sent.elapsed()));
                    let mut f = finished.lock().unwrap();
                    *f = (*f).max(Instant::now());
                    bar.inc(1);
                }
                out
            })
        })
        .collect();
    // Sample what the emulator billed every half second while the callers work, and with
    // --timeline the gate against the emulator every second.
    let mut series = Vec::new();
    let mut rows = String::new();
    let model_ids: Vec<&str> = models.iter().map(|m| m.0).collect();
    let sample_timeline = |rows: &mut String| {
        if opts.timeline.is_some() {
            let secs = start.elapsed().as_secs_f64();
            timeline::sample(rows, name, secs, &model_ids, layer_config.as_ref(), &emu);
        }
    };
    sample_timeline(&mut rows);
    let mut last = 0u64;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    tick.tick().await;
    let mut ticks = 0u64;
    while !callers.iter().all(|c| c.is_finished()) {
        tick.tick().await;
        ticks += 1;
        if ticks.is_multiple_of(2) {
            sample_timeline(&mut rows);
        }
        let billed = emu.stats().total().tokens_billed;
        series.push((
            start.elapsed().as_secs_f64(),
            (billed - last) as f64 / 0.5 / quota_rate,
        ));
        last = billed;
    }
    let mut done = Vec::new();
    for c in callers {
        done.extend(c.await.expect("caller"));
    }
    sample_timeline(&mut rows);
    // The last completion, not the sampler's tick that noticed it.
    let wall = *finished.lock().unwrap() - start;
    bar.finish();

    let stats = emu.stats();
    // The ideal: each model's billed work pushed through its quotas back to back (the first
    // period's worth is free: buckets start full), plus the shortest a request can take,
    // since the last one is billed only when it ends.
    let shortest = opts.shortest();
    let mut ideal_admission = Duration::ZERO;
    for &(model, rpm, tpm) in models {
        let m = stats.model(model);
        let per_sec = |n: u64| n as f64 / opts.period.as_secs_f64();
        let by_tokens = (m.tokens_billed.saturating_sub(tpm)) as f64 / per_sec(tpm);
        let by_requests = rpm.map_or(0.0, |r| m.settled.saturating_sub(r) as f64 / per_sec(r));
        ideal_admission = ideal_admission.max(Duration::from_secs_f64(by_tokens.max(by_requests)));
        if std::env::var_os("LOAD_DEMO_DEBUG").is_some() {
            eprintln!("{model}: billed {} settled {} by_tokens {by_tokens:.1} by_requests {by_requests:.1} throttled {}/{}", m.tokens_billed, m.settled, m.throttled_rpm, m.throttled_tpm);
        }
    }
    let ideal = ideal_admission + shortest;
    let total = stats.total();
    // When the last billed work passed the quota.
    let admitted_by = total.last_admitted.map_or(wall, |t| t - start);
    let mut latencies: Vec<Duration> = done.iter().filter(|d| d.0).map(|d| d.1).collect();
    latencies.sort();
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or_default()
    };
    let result = StackResult {
        name: name.to_string(),
        completed: done.iter().filter(|d| d.0).count(),
        failed: done.iter().filter(|d| !d.0).count(),
        // Every request that reached the emulator, throttled ones included.
        attempts: total.requests,
        // Refusals in a stream's frames are throttles the client saw too.
        throttles: total.throttled_rpm
            + total.throttled_tpm
            + total.throttled_tpd
            + total.faults_stream_throttle_first
            + total.faults_stream_throttle,
        // Work that fits in the first full bucket has no ideal time to compare with.
        goodput: if ideal_admission.is_zero() {
            f64::NAN
        } else {
            ideal_admission.as_secs_f64() / admitted_by.as_secs_f64().max(1e-9)
        },
        goodput_to_last_response: ideal.as_secs_f64() / wall.as_secs_f64(),
        p50: pct(0.5),
        p99: pct(0.99),
        wall,
        series,
        report: layer_config.map(|c| c.capacity_report()),
        timeline: rows,
    };
    emu.shutdown().await;
    result
}

fn fmt_duration(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// A share as a percentage; "n/a" for NaN (no ideal to compare with).
fn fmt_share(share: f64) -> String {
    if share.is_nan() {
        "n/a".into()
    } else {
        format!("{:.1} %", 100.0 * share)
    }
}

/// Per stack over all rounds: throttles and attempts summed, goodput's mean and range.
fn summary(stacks: &[String], rounds: &[Vec<StackResult>]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| stack | runs | failed | throttles / attempts | goodput, mean (min to max) | goodput to last response, mean | p99, mean |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|");
    for (i, name) in stacks.iter().enumerate() {
        let rs: Vec<&StackResult> = rounds.iter().map(|round| &round[i]).collect();
        let n = rs.len() as f64;
        let failed: usize = rs.iter().map(|r| r.failed).sum();
        let throttles: u64 = rs.iter().map(|r| r.throttles).sum();
        let attempts: u64 = rs.iter().map(|r| r.attempts).sum();
        let goodputs: Vec<f64> = rs.iter().map(|r| r.goodput).collect();
        let mean = goodputs.iter().sum::<f64>() / n;
        let min = goodputs.iter().copied().fold(f64::NAN, f64::min);
        let max = goodputs.iter().copied().fold(f64::NAN, f64::max);
        let to_last = rs.iter().map(|r| r.goodput_to_last_response).sum::<f64>() / n;
        let p99 = rs.iter().map(|r| r.p99.as_secs_f64()).sum::<f64>() / n;
        let _ = writeln!(
            out,
            "| {name} | {} | {failed} | {throttles} / {attempts} ({:.1} %) | {} ({} to {}) | {:.1} % | {p99:.2} s |",
            rs.len(),
            100.0 * throttles as f64 / attempts.max(1) as f64,
            fmt_share(mean),
            fmt_share(min),
            fmt_share(max),
            100.0 * to_last,
        );
    }
    out
}

fn table(results: &[&StackResult]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| stack | completed | failed | attempts | upstream throttles | throttles / attempts | goodput | goodput to last response | p50 | p99 | wall |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|");
    for r in results {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {:.1} % | {} | {:.1} % | {} | {} | {} |",
            r.name,
            r.completed,
            r.failed,
            r.attempts,
            r.throttles,
            100.0 * r.throttles as f64 / r.attempts.max(1) as f64,
            fmt_share(r.goodput),
            100.0 * r.goodput_to_last_response,
            fmt_duration(r.p50),
            fmt_duration(r.p99),
            fmt_duration(r.wall),
        );
    }
    out
}

#[tokio::main]
async fn main() {
    let opts = Options::parse();
    let jobs = workload(opts.requests, &opts);
    println!(
        "{} requests ({} callers) over {} models, quotas per {:.1} s, scenario {}, workload {}; stacks: {}",
        jobs.len(),
        opts.callers,
        opts.models().len(),
        opts.period.as_secs_f64(),
        opts.scenario,
        opts.workload,
        opts.stacks.join(", ")
    );
    // With several runs the stacks take turns round by round, so a machine that slows down
    // for a while slows every stack alike.
    let mut rounds = Vec::new();
    for round in 0..opts.runs {
        let mut results = Vec::new();
        for name in &opts.stacks {
            let mut r = run(name, &jobs, &opts).await;
            if opts.runs > 1 {
                r.name = format!("{name} #{}", round + 1);
            }
            results.push(r);
        }
        rounds.push(results);
    }
    println!();
    let all: Vec<&StackResult> = rounds.iter().flatten().collect();
    print!("{}", table(&all));
    if let Some(path) = &opts.timeline {
        let mut csv = format!("{}\n", timeline::HEADER);
        for r in &all {
            csv.push_str(&r.timeline);
        }
        std::fs::write(path, csv).expect("write timeline");
        println!("timeline: {path}");
    }
    println!();
    if opts.runs > 1 {
        print!("{}", summary(&opts.stacks, &rounds));
        println!();
    }
    let results = rounds.pop().expect("at least one round");
    println!(
        "goodput: the least time in which any client could push the same billed work through the quotas, \
         over the time this stack took to have its last request admitted upstream.\n\
         goodput to last response: the same ideal plus the shortest request's latency, over the time until \
         the stack's last response (so it also counts the model latency of the last requests, which no \
         client controls)."
    );
    let lines: Vec<plot::Line<'_>> = results
        .iter()
        .map(|r| plot::Line {
            name: &r.name,
            points: &r.series,
        })
        .collect();
    let svg = plot::svg(&lines, opts.period.as_secs_f64()).expect("draw the plot");
    std::fs::write(&opts.out, svg).expect("write plot");
    println!("plot: {}", opts.out);
    for r in &results {
        if let Some(report) = &r.report {
            println!();
            println!("capacity report of {} (per minute):", r.name);
            print!("{report}");
        }
    }
}
