//! The gateway example (`examples/gateway/`), run in process over loopback against the
//! crate's emulator, driven by clients nobody here wrote: boto3's `bedrock-runtime` client
//! (`tests/python/boto3_gateway.py`) and the AWS SDK for Rust. Both send a tenant's key as a
//! Bedrock API key, over HTTPS with the example's demo certificate (botocore sends a bearer
//! token nowhere else). Real time: the emulator streams and Redis keep wall-clock time.
//!
//! The boto3 test is skipped with a printed reason when `python3 -c 'import boto3'` fails
//! (`scripts/test` installs boto3 when Python has pip).

#![cfg(all(feature = "emulator", feature = "redis", feature = "sigv4"))]

#[allow(dead_code)]
#[path = "../examples/gateway/config.rs"]
mod config;
#[allow(dead_code)]
#[path = "../examples/gateway/routes.rs"]
mod routes;
#[allow(dead_code)]
#[path = "../examples/gateway/server.rs"]
mod server;
#[allow(dead_code)]
#[path = "../examples/gateway/tls.rs"]
mod tls;
#[allow(dead_code)]
#[path = "../examples/gateway/upstream.rs"]
mod upstream;

use std::{
    net::{SocketAddr, TcpListener},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use aws_sdk_bedrockruntime::{
    config::{retry::RetryConfig, BehaviorVersion, Region, Token},
    primitives::Blob,
    types::{
        ContentBlock, ConversationRole, ConverseStreamOutput, InferenceConfiguration, Message,
    },
    Client,
};
use bedrock_throttle::emulator::EmulatorHandle;
use config::GatewayConfig;
use upstream::Upstream;

const MODEL: &str = "anthropic.claude-3-haiku-20240307-v1:0";
const SEARCH_KEY: &str = "gw-test-search";
const REPORTS_KEY: &str = "gw-test-reports";

/// Two tenants: `search`, and `reports` capped at 1 % of the model's 100 RPM, that is one
/// request a minute, so its second request in a minute waits for its cap and is refused
/// after `max_wait` (300 ms) with a 429. The file lists the reports key by its digest.
fn config(redis_url: Option<&str>) -> GatewayConfig {
    let redis = redis_url.map_or(String::new(), |url| {
        format!(r#""redis_url": "{url}", "replicas": 2,"#)
    });
    let reports = config::digest(REPORTS_KEY);
    GatewayConfig::parse(&format!(
        r#"{{
            {redis}
            "max_wait_ms": 300,
            "models": {{ "{MODEL}": {{ "rpm": 100, "tpm": 200000 }} }},
            "tenants": {{
                "search": {{ "weight": 3, "keys": ["{SEARCH_KEY}"] }},
                "reports": {{ "cap": 0.01, "priority": "batch", "keys": ["sha256:{reports}"] }}
            }}
        }}"#
    ))
    .unwrap()
}

/// The authority of the demo certificate that `--emulator` serves.
const DEMO_CA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/gateway/tls/ca.pem");

/// The gateway as `--emulator` starts it, on a free loopback port: with HTTPS and the demo
/// certificate (as the example does without a `tls` setting), or with plain HTTP.
async fn start_with(config: &GatewayConfig, https: bool) -> (server::Running, EmulatorHandle) {
    let (upstream, emulator) = Upstream::emulated(config).await.unwrap();
    let listen = SocketAddr::from(([127, 0, 0, 1], 0));
    let tls = https.then(|| tls::acceptor(tls::DEMO_CERT, tls::DEMO_KEY).unwrap());
    let gateway = server::start(config, &upstream, listen, tls).await.unwrap();
    (gateway, emulator)
}

async fn start(config: &GatewayConfig) -> (server::Running, EmulatorHandle) {
    start_with(config, false).await
}

/// The Rust SDK with a tenant's key, no retries of its own, over plain HTTP.
fn sdk(gateway: SocketAddr, key: &str) -> Client {
    let http = aws_smithy_http_client::Builder::new().build_http();
    sdk_with(format!("http://{gateway}"), http, key)
}

/// The Rust SDK over HTTPS, trusting the demo certificate's authority only.
fn sdk_https(gateway: SocketAddr, key: &str) -> Client {
    use aws_smithy_http_client::tls::{
        rustls_provider::CryptoMode, Provider, TlsContext, TrustStore,
    };
    let trust = TrustStore::empty().with_pem_certificate(std::fs::read(DEMO_CA).unwrap());
    let https = aws_smithy_http_client::Builder::new()
        .tls_provider(Provider::Rustls(CryptoMode::Ring))
        .tls_context(
            TlsContext::builder()
                .with_trust_store(trust)
                .build()
                .unwrap(),
        )
        .build_https();
    sdk_with(format!("https://localhost:{}", gateway.port()), https, key)
}

fn sdk_with(
    endpoint: String,
    http: aws_smithy_runtime_api::client::http::SharedHttpClient,
    key: &str,
) -> Client {
    let conf = aws_sdk_bedrockruntime::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .bearer_token(Token::new(key, None))
        .http_client(http)
        .retry_config(RetryConfig::disabled())
        .build();
    Client::from_conf(conf)
}

fn message(text: &str) -> Message {
    Message::builder()
        .role(ConversationRole::User)
        .content(ContentBlock::Text(text.into()))
        .build()
        .unwrap()
}

fn anthropic_body(prompt: &str, max_tokens: u64) -> Blob {
    Blob::new(
        serde_json::json!({
            "anthropic_version": "bedrock-2023-05-31",
            "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": prompt}],
        })
        .to_string(),
    )
}

fn tenant(gateway: &server::Running, tenant: &str) -> bedrock_throttle::TenantStats {
    let stats = gateway.throttle.stats();
    assert_eq!(stats.keys.len(), 1, "{stats}");
    stats.keys[0]
        .tenant(Some(tenant))
        .expect("the tenant's counters")
        .clone()
}

fn tenant_admitted(gateway: &server::Running, name: &str) -> u64 {
    tenant(gateway, name).admitted
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn boto3_invokes_converses_streams_and_sees_throttling_exceptions() {
    let probe = Command::new("python3")
        .args([
            "-c",
            "import boto3; from botocore.utils import get_token_from_environment",
        ])
        .output();
    if !probe.is_ok_and(|o| o.status.success()) {
        println!(
            "skipped: python3 with boto3 (botocore 1.39 or later, for Bedrock API keys) is not \
             available; scripts/test installs it with pip"
        );
        return;
    }
    // HTTPS: botocore sends a bearer token to no other endpoint.
    let (gateway, emulator) = start_with(&config(None), true).await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/boto3_gateway.py");
    let run = |key: &'static str, scenario: &'static str| {
        let endpoint = format!("https://localhost:{}", gateway.addr.port());
        async move {
            let out = tokio::process::Command::new("python3")
                .args([script, &endpoint, MODEL, scenario])
                // The tenant's key as boto3 reads a Bedrock API key; no other credentials.
                .env("AWS_BEARER_TOKEN_BEDROCK", key)
                .env_remove("AWS_ACCESS_KEY_ID")
                .env_remove("AWS_SECRET_ACCESS_KEY")
                .env_remove("AWS_SESSION_TOKEN")
                .env_remove("AWS_PROFILE")
                .env("AWS_CONFIG_FILE", "/nonexistent")
                .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
                .env("AWS_EC2_METADATA_DISABLED", "true")
                // The demo certificate's authority, as boto3 reads a custom one.
                .env("AWS_CA_BUNDLE", DEMO_CA)
                .output()
                .await
                .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            println!("{scenario}:\n{stdout}");
            assert!(
                out.status.success(),
                "{scenario}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            stdout
        }
    };
    let line = |out: &str, prefix: &str| -> Vec<String> {
        let line = out
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} in {out}"));
        line.split_whitespace().map(str::to_owned).collect()
    };

    let calls = run(SEARCH_KEY, "calls").await;
    let numbers = |prefix: &str| -> Vec<u64> {
        line(&calls, prefix)
            .iter()
            .map(|n| n.parse().unwrap())
            .collect()
    };
    // The stream reached botocore whole (its parser checks each frame's CRCs) and ended
    // with its metadata event, whose usage adds up.
    let stream = numbers("stream usage ");
    assert_eq!(stream[0] + stream[1], stream[2], "{calls}");
    assert!(stream[1] > 0, "{calls}");
    // The gate settled each call from the usage it passed on (burndown 1 for this model):
    // what boto3 was told is what the tenant was charged.
    let (invoke, converse) = (numbers("invoke usage "), numbers("converse usage "));
    let search = tenant(&gateway, "search");
    assert_eq!(search.admitted, 3);
    assert_eq!(
        search.tokens_settled,
        invoke[0] + invoke[1] + converse[0] + converse[1] + stream[2],
        "{calls}"
    );

    let denied = run("not-a-key-of-this-gateway", "denied").await;
    assert_eq!(line(&denied, "denied "), ["AccessDeniedException", "403"]);

    let throttled = run(REPORTS_KEY, "throttled").await;
    assert_eq!(line(&throttled, "refused "), ["ThrottlingException", "429"]);
    // botocore retried it twice (3 attempts), and its checkers call it throttling.
    assert_eq!(
        line(&throttled, "attempts "),
        ["3", "retry", "attempts", "2"]
    );
    assert_eq!(line(&throttled, "throttling "), ["True"]);
    assert_eq!(line(&throttled, "retryable "), ["True"]);
    let retry_after: u64 = line(&throttled, "retry-after ")[0].parse().unwrap();
    // The cap admits one request a minute: the hint is most of that minute.
    assert!((30..=120).contains(&retry_after), "{throttled}");
    assert_eq!(tenant_admitted(&gateway, "reports"), 1);
    // Nothing refused reached upstream: one call for reports, three for search.
    assert_eq!(emulator.stats().model(MODEL).admitted, 4);

    gateway.shutdown().await.unwrap();
    emulator.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_sdk_invokes_converses_streams_and_sees_throttling_exceptions() {
    let (gateway, emulator) = start_with(&config(None), true).await;
    let search = sdk_https(gateway.addr, SEARCH_KEY);

    let out = search
        .invoke_model()
        .model_id(MODEL)
        .content_type("application/json")
        .body(anthropic_body("Summarise the Broad Street pump.", 200))
        .send()
        .await
        .unwrap();
    let answer: serde_json::Value = serde_json::from_slice(out.body().as_ref()).unwrap();
    assert!(answer["usage"]["output_tokens"].as_u64().unwrap() > 0);

    let out = search
        .converse()
        .model_id(MODEL)
        .messages(message("What did the Broad Street pump teach?"))
        .send()
        .await
        .unwrap();
    assert!(out.usage().unwrap().output_tokens() > 0);

    let mut out = search
        .converse_stream()
        .model_id(MODEL)
        .messages(message("And what did it not teach?"))
        .inference_config(InferenceConfiguration::builder().max_tokens(120).build())
        .send()
        .await
        .unwrap();
    let (mut text, mut usage) = (String::new(), None);
    while let Some(event) = out.stream.recv().await.unwrap() {
        match event {
            ConverseStreamOutput::ContentBlockDelta(d) => {
                text += d.delta().unwrap().as_text().unwrap();
            }
            ConverseStreamOutput::Metadata(m) => usage = m.usage().cloned(),
            _ => {}
        }
    }
    let usage = usage.expect("the metadata event with usage");
    assert!(!text.is_empty() && usage.output_tokens() > 0);

    let err = sdk_https(gateway.addr, "not-a-key")
        .converse()
        .model_id(MODEL)
        .messages(message("Hello"))
        .send()
        .await
        .unwrap_err()
        .into_service_error();
    assert!(err.is_access_denied_exception(), "{err:?}");

    // The reports tenant's cap admits one request a minute.
    let reports = sdk_https(gateway.addr, REPORTS_KEY);
    let converse = || {
        reports
            .converse()
            .model_id(MODEL)
            .messages(message("The monthly report, please."))
            .send()
    };
    converse().await.unwrap();
    let err = converse().await.unwrap_err().into_service_error();
    assert!(err.is_throttling_exception(), "{err:?}");
    assert!(
        err.to_string().contains("reports"),
        "names the tenant: {err}"
    );

    assert_eq!(tenant_admitted(&gateway, "search"), 3);
    assert_eq!(tenant_admitted(&gateway, "reports"), 1);
    gateway.shutdown().await.unwrap();
    emulator.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_lets_a_stream_in_flight_finish_and_refuses_new_connections() {
    shutdown_during_a_stream(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_over_https_lets_a_stream_finish_and_stops_accepting() {
    shutdown_during_a_stream(true).await;
}

async fn shutdown_during_a_stream(https: bool) {
    let (gateway, emulator) = start_with(&config(None), https).await;
    let addr = gateway.addr;
    let client = if https {
        sdk_https(addr, SEARCH_KEY)
    } else {
        sdk(addr, SEARCH_KEY)
    };
    let mut out = client
        .converse_stream()
        .model_id(MODEL)
        .messages(message("A long answer, please."))
        .inference_config(InferenceConfiguration::builder().max_tokens(200).build())
        .send()
        .await
        .unwrap();
    // The stream has begun; now stop the gateway while it runs.
    assert!(out.stream.recv().await.unwrap().is_some());
    let stopped = tokio::spawn(gateway.shutdown());
    let mut events = 1;
    let mut usage = None;
    while let Some(event) = out.stream.recv().await.unwrap() {
        events += 1;
        if let ConverseStreamOutput::Metadata(m) = event {
            usage = m.usage().cloned();
        }
    }
    assert!(
        usage.is_some(),
        "the stream ran to its metadata after {events} events"
    );
    tokio::time::timeout(Duration::from_secs(10), stopped)
        .await
        .expect("shutdown returns once the stream is done")
        .unwrap()
        .unwrap();
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    emulator.shutdown().await;
}

/// A `redis-server` this test started on a free port, killed when dropped.
struct RedisServer {
    port: u16,
    child: Child,
}

impl RedisServer {
    fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        // Owned at once, so that it is killed however this ends.
        let server = Self {
            port,
            child: Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .stdout(Stdio::null())
                .spawn()
                .expect("redis-server on PATH (scripts/test installs it)"),
        };
        let client = redis::Client::open(format!("redis://127.0.0.1:{port}/")).unwrap();
        for _ in 0..500 {
            if let Ok(mut c) = client.get_connection() {
                if redis::cmd("PING").query::<String>(&mut c).is_ok() {
                    return server;
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!("redis-server on port {port} did not come up");
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_with_one_redis_url_share_the_model_quota() {
    let redis = RedisServer::start();
    // Three requests a minute for the model, for the whole fleet. Each replica has an
    // emulator of its own that would take three more: only the shared ledger refuses.
    let config = GatewayConfig::parse(&format!(
        r#"{{
            "redis_url": "redis://127.0.0.1:{}/", "replicas": 2, "max_wait_ms": 300,
            "models": {{ "{MODEL}": {{ "rpm": 3, "tpm": 200000 }} }},
            "tenants": {{ "search": {{ "keys": ["{SEARCH_KEY}"] }} }}
        }}"#,
        redis.port
    ))
    .unwrap();
    let (a, emulator_a) = start(&config).await;
    let (b, emulator_b) = start(&config).await;
    let converse = |gateway: SocketAddr| async move {
        sdk(gateway, SEARCH_KEY)
            .converse()
            .model_id(MODEL)
            .messages(message("Search this."))
            .send()
            .await
    };
    for replica in [a.addr, b.addr, a.addr] {
        converse(replica).await.unwrap();
    }
    let err = converse(b.addr).await.unwrap_err().into_service_error();
    assert!(err.is_throttling_exception(), "{err:?}");
    let upstream =
        emulator_a.stats().model(MODEL).admitted + emulator_b.stats().model(MODEL).admitted;
    assert_eq!(upstream, 3);
    for (gateway, emulator) in [(a, emulator_a), (b, emulator_b)] {
        gateway.shutdown().await.unwrap();
        emulator.shutdown().await;
    }
}

/// An upstream on loopback that answers every Converse call and keeps the headers it was
/// sent.
async fn recording_upstream() -> (SocketAddr, Arc<Mutex<Vec<http::HeaderMap>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = seen.clone();
    let app = axum::Router::new().fallback(move |headers: http::HeaderMap| {
        record.lock().unwrap().push(headers);
        async {
            let body = r#"{"output":{"message":{"role":"assistant","content":[{"text":"hi"}]}},
                "stopReason":"end_turn","usage":{"inputTokens":3,"outputTokens":2,"totalTokens":5},
                "metrics":{"latencyMs":1}}"#;
            ([(http::header::CONTENT_TYPE, "application/json")], body)
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (addr, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_gets_the_gateways_credentials_and_never_the_callers_key() {
    let (upstream, seen) = recording_upstream().await;
    let endpoint = format!("http://{upstream}");
    let credentials =
        aws_credential_types::Credentials::new("AKIDGATEWAY", "gateway-secret", None, None, "test");
    let cases = [
        (
            Upstream::api_key(endpoint.clone(), "gateway-own-key").unwrap(),
            "Bearer gateway-own-key",
        ),
        (
            Upstream::sigv4(
                endpoint.clone(),
                bedrock_throttle::sigv4::SigV4Layer::new(credentials).region("eu-west-1"),
            ),
            "AWS4-HMAC-SHA256 Credential=AKIDGATEWAY/",
        ),
    ];
    for (upstream_auth, expected) in cases {
        let listen = SocketAddr::from(([127, 0, 0, 1], 0));
        let gateway = server::start(&config(None), &upstream_auth, listen, None)
            .await
            .unwrap();
        let out = sdk(gateway.addr, SEARCH_KEY)
            .converse()
            .model_id(MODEL)
            .messages(message("Hello"))
            .send()
            .await
            .unwrap();
        assert_eq!(out.usage().unwrap().total_tokens(), 5);
        let headers = seen.lock().unwrap().pop().expect("one request upstream");
        let authorization = headers["authorization"].to_str().unwrap();
        assert!(authorization.starts_with(expected), "{authorization}");
        if expected.starts_with("AWS4") {
            assert!(authorization.contains("/eu-west-1/bedrock/aws4_request"));
        }
        // The caller's key stays at the gateway; the host is upstream's.
        for (name, value) in &headers {
            let leaked = value
                .as_bytes()
                .windows(SEARCH_KEY.len())
                .any(|w| w == SEARCH_KEY.as_bytes());
            assert!(!leaked, "the caller's key in {name}");
        }
        assert_eq!(headers["host"], upstream.to_string());
        gateway.shutdown().await.unwrap();
    }
}
