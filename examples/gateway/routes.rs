//! The gateway's HTTP surface: Bedrock's own paths, forwarded for the tenant whose API key
//! the caller sends, and the operator's `/metrics`, `/capacity`, `/stats` and `/healthz`.

use std::{collections::HashMap, sync::Arc};

use axum::{
    body::Body,
    extract::{Request, State},
    http::{header, HeaderMap, HeaderName, StatusCode},
    response::{IntoResponse, Response},
    routing::{get, post},
    Router,
};
use bedrock_throttle::ThrottleConfig;
use metrics_exporter_prometheus::PrometheusHandle;
use tower::ServiceExt;

use crate::{
    config::{digest, Caller},
    upstream::Stack,
};

/// What every handler shares.
#[derive(Clone)]
pub struct App {
    /// The SHA-256 of each API key ([`digest`]) → its caller.
    pub keys: Arc<HashMap<String, Caller>>,
    /// Where forwarded requests go: `scheme://host[:port]`, no trailing slash.
    pub endpoint: Arc<str>,
    /// The throttle's stack over the upstream client.
    pub stack: Stack,
    /// The throttle's configuration, for `/capacity` and `/stats`.
    pub throttle: ThrottleConfig,
    /// The Prometheus recorder's handle, for `/metrics`.
    pub metrics: PrometheusHandle,
}

/// The router: the four bedrock-runtime operations that spend a model's quota, and the
/// operator's endpoints. Anything else is answered as Bedrock answers an unknown path.
pub fn router(app: App) -> Router {
    Router::new()
        .route("/model/{model_id}/invoke", post(forward))
        .route("/model/{model_id}/invoke-with-response-stream", post(forward))
        .route("/model/{model_id}/converse", post(forward))
        .route("/model/{model_id}/converse-stream", post(forward))
        .route("/metrics", get(metrics))
        .route("/capacity", get(capacity))
        .route("/stats", get(stats))
        .route("/healthz", get(|| async { "ok\n" }))
        .fallback(|| async {
            bedrock_error(
                StatusCode::NOT_FOUND,
                "UnknownOperationException",
                "this gateway serves InvokeModel, InvokeModelWithResponseStream, Converse and ConverseStream",
            )
        })
        .with_state(app)
}

/// Headers that belong to one hop (RFC 9110 §7.6.1), the client's own host and
/// credentials, and its SigV4 leftovers: none of them may reach Bedrock.
const DROPPED: [&str; 14] = [
    "host",
    "authorization",
    "connection",
    "keep-alive",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "content-length",
    "x-amz-date",
    "x-amz-security-token",
    "x-amz-content-sha256",
];

/// Forwards one Bedrock call: the caller's key names its tenant and priority, which ride
/// in the request's extensions down to the gate; the stack answers throttles and refusals
/// in Bedrock's format, and passes a response (an event stream too) through as it comes.
async fn forward(State(app): State<App>, request: Request) -> Response {
    let Some(caller) = caller(&app.keys, request.headers()) else {
        // What bedrock-runtime answers a key it does not know.
        return bedrock_error(
            StatusCode::FORBIDDEN,
            "AccessDeniedException",
            "send a key of this gateway as Authorization: Bearer <key>",
        );
    };
    let (mut parts, body) = request.into_parts();
    for name in DROPPED {
        parts.headers.remove(name);
    }
    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    parts.uri = match format!("{}{path}", app.endpoint).parse() {
        Ok(uri) => uri,
        Err(_) => return bedrock_error(StatusCode::BAD_REQUEST, "ValidationException", "bad path"),
    };
    parts.extensions.insert(caller.tenant.clone());
    parts.extensions.insert(caller.priority);
    let response = match app.stack.oneshot(Request::from_parts(parts, body)).await {
        Ok(response) => response,
        Err(never) => match never {},
    };
    response.map(Body::new)
}

/// The caller an `Authorization: Bearer <key>` header names, as boto3 and the AWS SDKs
/// send a Bedrock API key (`AWS_BEARER_TOKEN_BEDROCK`, `bearer_token`).
fn caller<'a>(keys: &'a HashMap<String, Caller>, headers: &HeaderMap) -> Option<&'a Caller> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, key) = value.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    keys.get(&digest(key.trim()))
}

/// An error as bedrock-runtime sends one: the status, `x-amzn-errortype` and a JSON
/// `{"message"}`. (The throttle's own refusals come from `ErrorResponseLayer` instead.)
fn bedrock_error(status: StatusCode, error_type: &'static str, message: &str) -> Response {
    let body = serde_json::json!({ "message": message }).to_string();
    (
        status,
        [
            (HeaderName::from_static("x-amzn-errortype"), error_type),
            (header::CONTENT_TYPE, "application/json"),
        ],
        body,
    )
        .into_response()
}

async fn metrics(State(app): State<App>) -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        app.metrics.render(),
    )
        .into_response()
}

/// The capacity report: per model, which limit binds and what to ask AWS for.
async fn capacity(State(app): State<App>) -> String {
    app.throttle.capacity_report().to_string()
}

/// The throttle's counters per model and tenant.
async fn stats(State(app): State<App>) -> String {
    app.throttle.stats().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_counts_only_as_a_bearer_token() {
        let search = Caller {
            tenant: bedrock_throttle::Tenant::new("search"),
            priority: bedrock_throttle::Priority::Batch,
        };
        let keys = HashMap::from([(digest("k-1"), search)]);
        let found = |value: Option<&str>| {
            let mut headers = HeaderMap::new();
            if let Some(value) = value {
                headers.insert(header::AUTHORIZATION, value.parse().unwrap());
            }
            caller(&keys, &headers).map(|c| c.tenant.to_string())
        };
        assert_eq!(found(Some("Bearer k-1")).as_deref(), Some("search"));
        assert_eq!(found(Some("bearer k-1")).as_deref(), Some("search"));
        assert_eq!(found(Some("Bearer k-2")), None);
        assert_eq!(found(Some("Basic k-1")), None);
        // A SigV4 header names an access key, never a gateway key.
        assert_eq!(
            found(Some(
                "AWS4-HMAC-SHA256 Credential=k-1/20240101/us-east-1/bedrock/aws4_request"
            )),
            None
        );
        assert_eq!(found(None), None);
    }
}
