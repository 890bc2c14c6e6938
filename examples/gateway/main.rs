//! A Bedrock gateway for internal teams: one endpoint that speaks bedrock-runtime's own API,
//! so boto3, the AWS SDKs and the AWS CLI work against it unchanged, and that keeps every
//! team inside its share of the account's quotas.
//!
//! ```text
//! # no AWS account: the crate's emulator upstream, the example configuration
//! cargo run --example gateway --features emulator,redis,sigv4 -- --emulator
//! # real Bedrock: credentials from the default AWS chain (or AWS_BEARER_TOKEN_BEDROCK)
//! cargo run --release --example gateway --features emulator,redis,sigv4 -- --config gateway.json
//! ```
//!
//! - **Paths**: `POST /model/{modelId}/invoke`, `/invoke-with-response-stream`, `/converse`
//!   and `/converse-stream`, forwarded to bedrock-runtime; event streams pass through byte
//!   for byte.
//! - **Callers**: each sends its team's key as `Authorization: Bearer <key>`, the way boto3
//!   and the AWS SDKs send a Bedrock API key (`AWS_BEARER_TOKEN_BEDROCK=<key>` for boto3,
//!   `bearer_token` for the Rust SDK). The configuration maps keys to tenants with weights,
//!   caps and priorities (see `config.rs`); a missing or unknown key is a 403
//!   `AccessDeniedException`.
//! - **Quotas**: one per model, in process, or shared by every replica through Redis when
//!   `redis_url` is set. Refusals are Bedrock's own errors (429 `ThrottlingException` with
//!   `Retry-After` when a team is at its cap or the queue is full, 400
//!   `ValidationException` for a request that can never fit), so clients back off as they
//!   do for Bedrock.
//! - **Upstream**: SigV4 with the default AWS credential chain, each attempt signed when it
//!   is sent, or a Bedrock API key (`"upstream_auth": "api-key"`, `AWS_BEARER_TOKEN_BEDROCK`).
//! - **Operators**: `/metrics` (Prometheus), `/capacity` (which limit binds per model, and
//!   what to ask AWS for), `/stats` (counters per model and tenant), `/healthz`. SIGTERM or
//!   Ctrl-C stops accepting and lets requests in flight finish.
//! - **HTTPS** with the configured certificate (`"tls"`), since boto3 sends a bearer token
//!   only over HTTPS; `--emulator` without one serves a demo certificate of `localhost`
//!   whose authority is `examples/gateway/tls/ca.pem` (`AWS_CA_BUNDLE` for boto3).
//!
//! Flags: `--config PATH` (`examples/gateway/gateway.json` with `--emulator` when absent),
//! `--listen ADDR` (overrides the file's), `--emulator`.

mod config;
mod routes;
mod server;
mod tls;
mod upstream;

use std::{net::SocketAddr, path::PathBuf};

use bedrock_throttle::BoxError;

use crate::{config::GatewayConfig, upstream::Upstream};

const EXAMPLE_CONFIG: &str = include_str!("gateway.json");

fn usage() -> ! {
    eprintln!("usage: gateway [--config PATH] [--listen ADDR] [--emulator]");
    std::process::exit(2)
}

#[tokio::main]
async fn main() -> Result<(), BoxError> {
    let (mut path, mut listen, mut emulator) = (None::<PathBuf>, None::<SocketAddr>, false);
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        match flag.as_str() {
            "--config" => path = Some(args.next().unwrap_or_else(|| usage()).into()),
            "--listen" => {
                listen = Some(
                    args.next()
                        .and_then(|a| a.parse().ok())
                        .unwrap_or_else(|| usage()),
                )
            }
            "--emulator" => emulator = true,
            _ => usage(),
        }
    }
    let config = match &path {
        Some(path) => GatewayConfig::load(path)?,
        None if emulator => GatewayConfig::parse(EXAMPLE_CONFIG)?,
        None => {
            eprintln!("--config is required without --emulator");
            usage()
        }
    };
    let (upstream, emulator) = if emulator {
        let (upstream, handle) = Upstream::emulated(&config).await?;
        (upstream, Some(handle))
    } else {
        (Upstream::from_config(&config).await?, None)
    };
    // HTTPS with the configured certificate; with `--emulator` and none configured, with
    // the demo certificate of localhost (clients check it against `tls/ca.pem`).
    let tls = match &config.tls {
        Some(files) => Some(files.acceptor()?),
        None if emulator.is_some() => Some(tls::acceptor(tls::DEMO_CERT, tls::DEMO_KEY)?),
        None => None,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    let gateway = server::start(&config, &upstream, listen.unwrap_or(config.listen), tls).await?;

    println!("{scheme}://{}", gateway.addr);
    if emulator.is_some() && config.tls.is_none() {
        eprintln!("its certificate's authority: examples/gateway/tls/ca.pem (local demos only)");
    }
    eprintln!(
        "bedrock gateway on {scheme}://{} → {}{}; keys: {}",
        gateway.addr,
        upstream.endpoint,
        if emulator.is_some() {
            " (emulator)"
        } else {
            ""
        },
        config
            .callers()
            .map(|(key, _, caller)| format!("{key} ({})", caller.tenant))
            .collect::<Vec<_>>()
            .join(", ")
    );
    eprintln!("/metrics, /capacity, /stats, /healthz; Ctrl-C or SIGTERM to stop");

    stop_signal().await?;
    eprintln!("stopping: finishing the requests in flight");
    let throttle = gateway.throttle.clone();
    gateway.shutdown().await?;
    eprintln!("{}", throttle.stats());
    if let Some(emulator) = emulator {
        emulator.shutdown().await;
    }
    Ok(())
}

/// Ctrl-C, or SIGTERM (what Kubernetes and systemd send).
async fn stop_signal() -> std::io::Result<()> {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            result = tokio::signal::ctrl_c() => result,
            _ = term.recv() => Ok(()),
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c().await
}
