//! The AWS SDK for Rust's bedrock-runtime client with the throttle as its HTTP client: a
//! burst of Converse calls that together ask for more than the quota.
//!
//! Against Bedrock, with a Bedrock API key in `AWS_BEARER_TOKEN_BEDROCK` (sent as
//! `Authorization: Bearer …`), or else the usual environment credentials
//! (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, optionally `AWS_SESSION_TOKEN`), and
//! `AWS_REGION`:
//!
//! ```text
//! cargo run --example aws_sdk -- --model us.anthropic.claude-3-5-haiku-20241022-v1:0 --tpm 20000
//! ```
//!
//! Against the crate's emulator, with fake credentials:
//!
//! ```text
//! cargo run --example emulator --features emulator -- --port 8080 --tpm 3000 --period-secs 60
//! cargo run --example aws_sdk -- --endpoint http://127.0.0.1:8080 --tpm 3000
//! ```
//!
//! Give `--tpm` (and `--rpm`) your account's quota for the model: the throttle keeps the
//! calls inside what it is told. Other flags: `--region R`, `--calls N` (16),
//! `--max-tokens N` (300).
//!
//! To keep the crate's dev-dependencies light this reads the environment itself; with
//! `aws-config` the usual setup is
//! `aws_sdk_bedrockruntime::config::Builder::from(&aws_config::load_defaults(BehaviorVersion::latest()).await)`
//! followed by the same `.http_client(..)` and `.retry_config(..)`.

use std::time::{Duration, Instant};

use aws_sdk_bedrockruntime::{
    config::{retry::RetryConfig, BehaviorVersion, Credentials, Region, Token},
    types::{ContentBlock, ConversationRole, InferenceConfiguration, Message},
    Client,
};
use aws_smithy_http_client::tls::{rustls_provider::CryptoMode, Provider};
use bedrock_throttle::{aws::ThrottledHttpClient, BoxError, Quota, ThrottleConfig};

struct Args {
    endpoint: Option<String>,
    region: String,
    model: String,
    calls: usize,
    max_tokens: i32,
    tpm: u64,
    rpm: Option<u32>,
}

fn usage() -> ! {
    eprintln!(
        "usage: aws_sdk [--endpoint URL] [--region R] [--model ID] [--calls N] \
         [--max-tokens N] [--tpm N] [--rpm N]"
    );
    std::process::exit(2)
}

fn parse<T: std::str::FromStr>(flag: &str, value: Option<String>) -> T {
    value.and_then(|v| v.parse().ok()).unwrap_or_else(|| {
        eprintln!("{flag} needs a valid value");
        usage()
    })
}

fn args() -> Args {
    let mut a = Args {
        endpoint: None,
        region: std::env::var("AWS_REGION")
            .or_else(|_| std::env::var("AWS_DEFAULT_REGION"))
            .unwrap_or_else(|_| "us-east-1".into()),
        model: "anthropic.claude-3-5-sonnet-20240620-v1:0".into(),
        calls: 16,
        max_tokens: 300,
        tpm: 20_000,
        rpm: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        match flag.as_str() {
            "--endpoint" => a.endpoint = Some(parse(&flag, args.next())),
            "--region" => a.region = parse(&flag, args.next()),
            "--model" => a.model = parse(&flag, args.next()),
            "--calls" => a.calls = parse(&flag, args.next()),
            "--max-tokens" => a.max_tokens = parse(&flag, args.next()),
            "--tpm" => a.tpm = parse(&flag, args.next()),
            "--rpm" => a.rpm = Some(parse(&flag, args.next())),
            "-h" | "--help" => usage(),
            other => {
                eprintln!("unknown argument {other}");
                usage()
            }
        }
    }
    a
}

/// Credentials from the environment, as the SDK's default chain reads them first.
fn env_credentials() -> Result<Credentials, BoxError> {
    let var = |name: &str| {
        std::env::var(name).map_err(|_| format!("{name} is not set (or pass --endpoint URL)"))
    };
    Ok(Credentials::new(
        var("AWS_ACCESS_KEY_ID")?,
        var("AWS_SECRET_ACCESS_KEY")?,
        std::env::var("AWS_SESSION_TOKEN").ok(),
        None,
        "environment",
    ))
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let args = args();
    // One budget for every client built from `cfg` (and its clones).
    let cfg = ThrottleConfig::builder()
        .model_quota(&args.model, Quota::new(args.rpm, args.tpm))
        .build()?;

    let mut conf = aws_sdk_bedrockruntime::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(args.region.clone()))
        // The throttle retries throttles and transient failures itself.
        .retry_config(RetryConfig::disabled());
    conf = match &args.endpoint {
        Some(url) => conf
            .endpoint_url(url)
            .credentials_provider(Credentials::new("AKID", "SECRET", None, None, "static"))
            .http_client(ThrottledHttpClient::new(
                aws_smithy_http_client::Builder::new().build_http(),
                cfg.clone(),
            )),
        None => {
            // A Bedrock API key if there is one (as the SDK's shared config reads it), else
            // SigV4 credentials.
            let conf = match std::env::var("AWS_BEARER_TOKEN_BEDROCK") {
                Ok(key) if !key.is_empty() => conf.bearer_token(Token::new(key, None)),
                _ => conf.credentials_provider(env_credentials()?),
            };
            conf.http_client(ThrottledHttpClient::new(
                aws_smithy_http_client::Builder::new()
                    .tls_provider(Provider::Rustls(CryptoMode::Ring))
                    .build_https(),
                cfg.clone(),
            ))
        }
    };
    let client = Client::from_conf(conf.build());

    println!(
        "{} Converse calls of up to {} output tokens to {} ({}), quota {} TPM{}",
        args.calls,
        args.max_tokens,
        args.model,
        args.endpoint.as_deref().unwrap_or("Bedrock"),
        args.tpm,
        args.rpm.map(|r| format!(", {r} RPM")).unwrap_or_default(),
    );
    let started = Instant::now();
    let calls: Vec<_> = (0..args.calls)
        .map(|i| {
            let client = client.clone();
            let model = args.model.clone();
            let max_tokens = args.max_tokens;
            tokio::spawn(async move {
                let message = Message::builder()
                    .role(ConversationRole::User)
                    .content(ContentBlock::Text(format!(
                        "Call {i}: in two sentences, why do APIs have rate limits?"
                    )))
                    .build()?;
                let out = client
                    .converse()
                    .model_id(model)
                    .messages(message)
                    .inference_config(
                        InferenceConfiguration::builder()
                            .max_tokens(max_tokens)
                            .build(),
                    )
                    .send()
                    .await?;
                Ok::<_, BoxError>((i, out.usage().cloned()))
            })
        })
        .collect();
    let mut failed = 0;
    for call in calls {
        let result = call.await?;
        let at = secs(started.elapsed());
        match result {
            Ok((i, Some(u))) => println!(
                "call {i}: collected at {at:.1} s, {} input + {} output tokens",
                u.input_tokens(),
                u.output_tokens()
            ),
            Ok((i, None)) => println!("call {i}: collected at {at:.1} s, no usage reported"),
            Err(e) => {
                failed += 1;
                println!("call failed at {at:.1} s: {}", error_chain(&*e));
            }
        }
    }
    println!(
        "{} of {} calls succeeded in {:.1} s",
        args.calls - failed,
        args.calls,
        secs(started.elapsed())
    );
    Ok(())
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

fn error_chain(mut e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    while let Some(source) = e.source() {
        text.push_str(": ");
        text.push_str(&source.to_string());
        e = source;
    }
    text
}
