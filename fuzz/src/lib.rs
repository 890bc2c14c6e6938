//! The fuzz targets' bodies, shared by the cargo-fuzz binaries (`fuzz/fuzz_targets/`) and
//! the stable-Rust replay of the corpus (`tests/fuzz_corpus.rs`). Each takes arbitrary
//! bytes and panics only on a bug.

use std::{convert::Infallible, future::ready};

use bedrock_throttle::{
    estimate::{HeuristicEstimator, Operation, RequestInfo, TokenEstimate, TokenEstimator},
    gate::GateLayer,
    Quota, QuotaKey, ThrottleConfig,
};
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Full};
use tower::{service_fn, Layer, ServiceExt};

/// Model ids the first byte of an estimator input picks from; 255 and above take the id
/// from the input itself.
pub const MODELS: &[&str] = &[
    "anthropic.claude-sonnet-4-20250514-v1:0",
    "us.anthropic.claude-3-5-haiku-20241022-v1:0",
    "anthropic.claude-v2:1",
    "amazon.titan-text-express-v1",
    "amazon.titan-embed-text-v2:0",
    "eu.amazon.nova-pro-v1:0",
    "meta.llama3-1-70b-instruct-v1:0",
    "mistral.mistral-large-2407-v1:0",
    "cohere.command-r-plus-v1:0",
    "cohere.embed-multilingual-v3",
    "ai21.jamba-1-5-mini-v1:0",
    "arn%3Aaws%3Abedrock%3Aus-west-2%3A%3Afoundation-model%2Fmeta.llama3-8b-instruct-v1%3A0",
];

const OPERATIONS: &[Operation] = &[
    Operation::Invoke,
    Operation::InvokeStream,
    Operation::Converse,
    Operation::ConverseStream,
    Operation::CountTokens,
    Operation::Other,
];

/// The body estimator. Input: a model byte (an index into [`MODELS`], or, past its end, a
/// model id up to the first newline of the rest), an operation byte, then the body.
pub fn estimate(data: &[u8]) {
    let [model, op, rest @ ..] = data else {
        return;
    };
    let (model, body) = match MODELS.get(usize::from(*model)) {
        Some(m) => (Some((*m).to_owned()), rest),
        None => {
            let (id, body) = match rest.iter().position(|&b| b == b'\n') {
                Some(i) => (&rest[..i], &rest[i + 1..]),
                None => (rest, &[][..]),
            };
            (Some(String::from_utf8_lossy(id).into_owned()), body)
        }
    };
    let operation = OPERATIONS[usize::from(*op) % OPERATIONS.len()];
    let info = RequestInfo {
        model: model.as_deref(),
        operation,
        body,
    };
    let e = HeuristicEstimator::new().estimate(&info);
    if operation == Operation::CountTokens {
        assert_eq!(
            (e.input_tokens, e.output_limit),
            (0, 0),
            "CountTokens is free"
        );
    }
    // The path form of the same request parses too.
    let path = format!("/model/{}/invoke", model.unwrap_or_default());
    let from_path = RequestInfo::from_path(&path, body);
    HeuristicEstimator::new().estimate(&from_path);
}

/// The model id / operation parser. Input: a path, optionally a newline and a Host header.
pub fn path(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (path, host) = match text.split_once('\n') {
        Some((p, h)) => (p, Some(h)),
        None => (&*text, None),
    };
    // Every string parses as a `RequestInfo` path.
    let info = RequestInfo::from_path(path, b"{}");
    if let Some(m) = info.model {
        assert!(path.contains(m), "the model id is a part of the path");
    }
    // A key comes from any request `http` accepts.
    let mut builder = Request::post(path);
    if let Some(h) = host {
        builder = builder.header("host", h);
    }
    let Ok(request) = builder.body(()) else {
        return;
    };
    let (key, _operation) = QuotaKey::from_request(&request);
    let _ = key.to_string();
    if let Some(m) = key.model() {
        assert!(!m.is_empty(), "no empty model id");
    }
}

/// The event-stream reader, through the gate: an InvokeModelWithResponseStream answer of
/// arbitrary bytes. Input: a chunk-size byte, then the body, delivered in chunks of that
/// size (plus one). The bytes reach the caller unchanged; when the first frame turned the
/// response into an error, its body is a prefix of them.
pub fn event_stream(data: &[u8]) {
    let [chunk, body @ ..] = data else {
        return;
    };
    let chunk = usize::from(*chunk) + 1;
    let input = Bytes::copy_from_slice(body);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let cfg = ThrottleConfig::builder()
            .quota(Quota::new(None, 1_000_000))
            .build()
            .unwrap();
        let upstream_body = input.clone();
        let gate = GateLayer::new(cfg).layer(service_fn(move |_: Request<Full<Bytes>>| {
            let chunks = upstream_body
                .chunks(chunk)
                .map(Bytes::copy_from_slice)
                .collect();
            ready(Ok::<_, Infallible>(
                Response::builder()
                    .header("content-type", "application/vnd.amazon.eventstream")
                    .body(Chunks(chunks))
                    .unwrap(),
            ))
        }));
        let mut req = Request::post(
            "/model/anthropic.claude-3-haiku-20240307-v1%3A0/invoke-with-response-stream",
        )
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap();
        req.extensions_mut().insert(TokenEstimate::new(100, 100));
        let response = gate.oneshot(req).await.expect("the upstream never fails");
        let status = response.status();
        let out = response.into_body().collect().await.unwrap().to_bytes();
        if status.is_success() {
            assert_eq!(out, input, "the stream passes unchanged");
        } else {
            assert!(
                [429, 500, 503].contains(&status.as_u16()),
                "only a first-frame exception becomes an error: {status}"
            );
            assert!(input.starts_with(&out), "the exception frame as it came");
        }
    });
}

/// A body that yields its chunks one per poll, as a server flushes frames.
struct Chunks(std::collections::VecDeque<Bytes>);

impl http_body::Body for Chunks {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        std::task::Poll::Ready(self.0.pop_front().map(|c| Ok(http_body::Frame::data(c))))
    }
}
