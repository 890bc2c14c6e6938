//! The Service Quotas side: `ListServiceQuotas` (awsJson1_1) with the emulated quotas under
//! the names Bedrock's quotas carry in an AWS account.

use std::collections::{BTreeMap, HashMap};

use http::{header, HeaderMap, HeaderValue, Response, StatusCode};
use serde_json::{json, Value};

use super::{config::EmulatedQuota, wire::EmulatorBody};
use crate::Scope;

/// The `X-Amz-Target` prefix of the Service Quotas API.
const TARGET_PREFIX: &str = "ServiceQuotasV20190624.";
/// The page size when the request sets no `MaxResults`: small, as the real API's default
/// page is (AWS documents only the maximum, 100), so a loader that does not ask for a page
/// size makes many calls.
const DEFAULT_PAGE: usize = 8;
/// The account id in quota ARNs.
const ACCOUNT: &str = "123456789012";

/// One listed quota.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct ListedQuota {
    pub(crate) name: String,
    pub(crate) value: f64,
    pub(crate) adjustable: bool,
}

/// The words a real account's quota names start with for a model id's scope, and whether
/// they end the model's display name with ` V1` (accounts list cross-Region and global
/// quotas as `… for Anthropic Claude Sonnet 4 V1`).
fn scope_words(id: &str) -> (&'static str, &'static str) {
    match Scope::of_model(id) {
        Scope::Global => ("Global cross-region model inference", " V1"),
        Scope::CrossRegion => ("Cross-region model inference", " V1"),
        _ => ("On-demand model inference", ""),
    }
}

/// The Bedrock quotas of an account with these model quotas, sorted by name, named as real
/// accounts list them: per model id, its tokens per minute, its requests per minute when
/// limited and its tokens per day when limited (`On-demand model inference … for
/// ${model}`, `Cross-region model inference … for ${model} V1`, `Global cross-region model
/// inference … for ${model} V1`), named after `display_names` (the id without its
/// geography prefix by default); then two account-wide quotas real accounts list too
/// (`Cross-Model Account-Level Tokens Per Day` and a batch quota). Per-minute quotas are
/// adjustable, daily ones not.
pub(crate) fn listing(
    model_quotas: &HashMap<String, EmulatedQuota>,
    display_names: &HashMap<String, String>,
) -> Vec<ListedQuota> {
    let mut out = BTreeMap::new();
    let mut put = |name: String, value: f64, adjustable: bool| {
        out.entry(name.clone()).or_insert(ListedQuota {
            name,
            value,
            adjustable,
        });
    };
    for (key, q) in model_quotas {
        let (id, context) = match key.strip_suffix(super::LONG_CONTEXT_SUFFIX) {
            Some(id) => (id.to_owned(), " 1M Context Length"),
            None => (key.clone(), ""),
        };
        let id = &id;
        let display = display_names
            .get(id)
            .cloned()
            .unwrap_or_else(|| match Scope::of_model(id) {
                Scope::OnDemand => id.clone(),
                _ => id
                    .split_once('.')
                    .map_or(id.clone(), |(_, rest)| rest.to_owned()),
            });
        let (scope, v1) = scope_words(id);
        put(
            format!("{scope} tokens per minute for {display}{v1}{context}"),
            q.tpm as f64,
            true,
        );
        if let Some(rpm) = q.rpm {
            put(
                format!("{scope} requests per minute for {display}{v1}{context}"),
                rpm as f64,
                true,
            );
        }
        if let Some(tpd) = q.tpd {
            put(
                format!("{scope} tokens per day for {display}{v1}{context}"),
                tpd as f64,
                false,
            );
        }
    }
    put(
        "Cross-Model Account-Level Tokens Per Day".to_owned(),
        10_000_000_000.0,
        false,
    );
    put("Batch inference job size (in GB)".to_owned(), 5.0, false);
    out.into_values().collect()
}

/// The target operation when the request is a Service Quotas call.
pub(crate) fn target(headers: &HeaderMap) -> Option<String> {
    let t = headers.get("x-amz-target")?.to_str().ok()?;
    t.starts_with(TARGET_PREFIX).then(|| t.to_owned())
}

/// The Region of a SigV4 `Authorization` header's credential scope.
pub(crate) fn region(headers: &HeaderMap) -> String {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|a| a.split("Credential=").nth(1))
        .and_then(|c| c.split('/').nth(2))
        .filter(|r| !r.is_empty())
        .unwrap_or("us-east-1")
        .to_owned()
}

fn response(status: StatusCode, body: &Value) -> Response<EmulatorBody> {
    let mut resp = Response::new(EmulatorBody::full(body.to_string()));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-amz-json-1.1"),
    );
    resp
}

fn error(status: StatusCode, kind: &str, message: &str) -> Response<EmulatorBody> {
    response(status, &json!({"__type": kind, "message": message}))
}

/// A quota code like Service Quotas': `L-` and eight hex digits, stable per name.
fn quota_code(name: &str) -> String {
    let mut h: u32 = 0x811c_9dc5;
    for b in name.bytes() {
        h = (h ^ u32::from(b)).wrapping_mul(0x0100_0193);
    }
    format!("L-{h:08X}")
}

/// Answers one Service Quotas call.
pub(crate) fn handle(
    quotas: &[ListedQuota],
    target: &str,
    region: &str,
    body: &[u8],
) -> Response<EmulatorBody> {
    let op = &target[TARGET_PREFIX.len()..];
    if op != "ListServiceQuotas" {
        return error(
            StatusCode::BAD_REQUEST,
            "UnknownOperationException",
            &format!("The emulator answers ListServiceQuotas only, not {op}."),
        );
    }
    let Ok(input) = serde_json::from_slice::<Value>(body) else {
        return error(
            StatusCode::BAD_REQUEST,
            "SerializationException",
            "The request body is not JSON.",
        );
    };
    let Some(service) = input.get("ServiceCode").and_then(Value::as_str) else {
        return error(
            StatusCode::BAD_REQUEST,
            "ValidationException",
            "ServiceCode is required.",
        );
    };
    if service != "bedrock" {
        return error(
            StatusCode::BAD_REQUEST,
            "NoSuchResourceException",
            &format!("The emulator lists the quotas of bedrock only, not {service}."),
        );
    }
    let page = input
        .get("MaxResults")
        .and_then(Value::as_u64)
        .map_or(DEFAULT_PAGE, |n| n.clamp(1, 100) as usize);
    let start = match input.get("NextToken").and_then(Value::as_str) {
        None => 0,
        Some(t) => match t
            .strip_prefix("page-")
            .and_then(|n| n.parse::<usize>().ok())
        {
            Some(n) if n <= quotas.len() => n,
            _ => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "InvalidPaginationTokenException",
                    "Invalid pagination token.",
                )
            }
        },
    };
    let end = (start + page).min(quotas.len());
    let items: Vec<Value> = quotas[start..end]
        .iter()
        .map(|q| {
            let code = quota_code(&q.name);
            json!({
                "ServiceCode": "bedrock",
                "ServiceName": "Amazon Bedrock",
                "QuotaArn": format!("arn:aws:servicequotas:{region}:{ACCOUNT}:bedrock/{code}"),
                "QuotaCode": code,
                "QuotaName": q.name,
                "Value": q.value,
                "Unit": "None",
                "Adjustable": q.adjustable,
                "GlobalQuota": false,
                "QuotaAppliedAtLevel": "ACCOUNT",
            })
        })
        .collect();
    let mut out = json!({ "Quotas": items });
    if end < quotas.len() {
        out["NextToken"] = json!(format!("page-{end}"));
    }
    response(StatusCode::OK, &out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn models_are_listed_under_bedrock_quota_names() {
        let q = |rpm, tpm, tpd| EmulatedQuota {
            rpm,
            tpm,
            tpd,
            period: Duration::from_secs(60),
        };
        let mut models = HashMap::new();
        models.insert(
            "anthropic.claude-3-5-sonnet-20240620-v1:0".to_owned(),
            q(Some(50), 400_000, None),
        );
        models.insert(
            "us.anthropic.claude-sonnet-4-20250514-v1:0".to_owned(),
            q(None, 200_000, Some(288_000_000)),
        );
        let mut names = HashMap::new();
        names.insert(
            "anthropic.claude-3-5-sonnet-20240620-v1:0".to_owned(),
            "Anthropic Claude 3.5 Sonnet".to_owned(),
        );
        let list: Vec<_> = listing(&models, &names)
            .into_iter()
            .map(|q| (q.name, q.value))
            .collect();
        let s4 = "anthropic.claude-sonnet-4-20250514-v1:0";
        assert_eq!(
            list,
            [
                ("Batch inference job size (in GB)".to_owned(), 5.0),
                ("Cross-Model Account-Level Tokens Per Day".to_owned(), 1e10),
                (
                    format!("Cross-region model inference tokens per day for {s4} V1"),
                    288_000_000.0
                ),
                (
                    format!("Cross-region model inference tokens per minute for {s4} V1"),
                    200_000.0
                ),
                (
                    "On-demand model inference requests per minute for Anthropic Claude 3.5 Sonnet"
                        .to_owned(),
                    50.0
                ),
                (
                    "On-demand model inference tokens per minute for Anthropic Claude 3.5 Sonnet"
                        .to_owned(),
                    400_000.0
                ),
            ]
        );
        // Every name is one the loader reads.
        #[cfg(feature = "service-quotas")]
        for q in listing(&models, &names) {
            let read = crate::service_quotas::QuotaName::parse(&q.name);
            assert_eq!(read.is_some(), !q.name.starts_with("Batch"), "{}", q.name);
            assert_eq!(q.adjustable, q.name.contains("per minute"), "{}", q.name);
        }
    }
}
