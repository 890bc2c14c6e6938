//! The real AWS SDK client pointed at the crate's emulator, shared by the SDK tests.

#![allow(dead_code)]

use std::time::Duration;

use aws_sdk_bedrockruntime::{
    config::{retry::RetryConfig, BehaviorVersion, Credentials, Region},
    primitives::Blob,
    types::{ContentBlock, ConversationRole, Message},
    Client,
};
use aws_smithy_runtime_api::client::http::HttpClient;
use bedrock_throttle::{
    aws::ThrottledHttpClient, emulator::EmulatorHandle, Quota, ThrottleConfig,
    ThrottleConfigBuilder,
};

/// Burndown 1, so quota tokens are plain tokens.
pub const MODEL: &str = "anthropic.claude-3-5-sonnet-20240620-v1:0";

/// An SDK client for `url` over `http`, with test credentials and `retry`.
pub fn sdk_client(url: &str, http: impl HttpClient + 'static, retry: RetryConfig) -> Client {
    let conf = aws_sdk_bedrockruntime::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(url)
        .credentials_provider(Credentials::new("AKID", "SECRET", None, None, "test"))
        .http_client(http)
        .retry_config(retry)
        .build();
    Client::from_conf(conf)
}

/// An SDK client throttled by `cfg`, with the SDK's own retry off as recommended.
pub fn throttled(emu: &EmulatorHandle, cfg: &ThrottleConfig) -> Client {
    let inner = aws_smithy_http_client::Builder::new().build_http();
    sdk_client(
        &emu.endpoint_url(),
        ThrottledHttpClient::new(inner, cfg.clone()),
        RetryConfig::disabled(),
    )
}

/// A configuration with `quota` for [`MODEL`] and short backoff.
pub fn config(quota: Quota) -> ThrottleConfigBuilder {
    ThrottleConfig::builder()
        .model_quota(MODEL, quota)
        .base_delay(Duration::from_millis(20))
        .max_delay(Duration::from_millis(200))
}

/// An InvokeModel body in the Anthropic Messages shape.
pub fn anthropic_body(prompt: &str, max_tokens: u64) -> Blob {
    Blob::new(
        serde_json::json!({
            "anthropic_version": "bedrock-2023-05-31",
            "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": prompt}],
        })
        .to_string(),
    )
}

/// A Converse user message.
pub fn message(text: &str) -> Message {
    Message::builder()
        .role(ConversationRole::User)
        .content(ContentBlock::Text(text.into()))
        .build()
        .unwrap()
}
