//! Service tiers as the emulated bedrock-runtime reads them: InvokeModel's
//! `X-Amzn-Bedrock-Service-Tier` header, Converse's `serviceTier.type`. `priority`,
//! `default` and `flex` share the model's quota; `reserved` is charged to a quota of its
//! own, the key `{model} (reserved)`. An unknown tier is refused with a
//! `ValidationException`, as an enum value Bedrock does not have would be.

use http::HeaderMap;
use serde_json::Value;

use super::request::Operation;

/// The request (and response) header of InvokeModel's tier.
pub(crate) const HEADER: &str = "x-amzn-bedrock-service-tier";

/// The message of a refused tier.
pub(crate) const MSG_BAD_TIER: &str =
    "The provided service tier is not valid. Valid values are priority, default, flex and reserved.";

const TIERS: [&str; 4] = ["priority", "default", "flex", "reserved"];

/// The tier a request names, if any; `Err` for one Bedrock does not have.
pub(crate) fn of_request(
    op: Operation,
    headers: &HeaderMap,
    body: &Value,
) -> Result<Option<&'static str>, ()> {
    let named = match op {
        Operation::Converse | Operation::ConverseStream => match body.get("serviceTier") {
            None | Some(Value::Null) => None,
            Some(tier) => Some(tier.get("type").and_then(Value::as_str).ok_or(())?),
        },
        _ => match headers.get(HEADER) {
            None => None,
            Some(v) => Some(v.to_str().map_err(|_| ())?),
        },
    };
    match named {
        None => Ok(None),
        Some(t) => TIERS
            .iter()
            .find(|known| **known == t)
            .copied()
            .map(Some)
            .ok_or(()),
    }
}

/// The quota a request of `model` at `tier` is charged to.
pub(crate) fn quota_key(model: &str, tier: Option<&str>) -> String {
    match tier {
        Some("reserved") => reserved_key(model),
        _ => model.to_owned(),
    }
}

/// The key of `model`'s reserved capacity.
pub(crate) fn reserved_key(model: &str) -> String {
    format!("{model} (reserved)")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn header_for_invoke_body_for_converse() {
        let mut headers = HeaderMap::new();
        headers.insert(HEADER, "flex".parse().unwrap());
        let body = json!({"serviceTier": {"type": "reserved"}});
        assert_eq!(
            of_request(Operation::Invoke, &headers, &body),
            Ok(Some("flex"))
        );
        assert_eq!(
            of_request(Operation::Converse, &headers, &body),
            Ok(Some("reserved"))
        );
        assert_eq!(
            of_request(Operation::Converse, &headers, &json!({})),
            Ok(None)
        );
        assert_eq!(
            of_request(
                Operation::Converse,
                &headers,
                &json!({"serviceTier": {"type": "gold"}})
            ),
            Err(())
        );
        headers.insert(HEADER, "Priority".parse().unwrap());
        assert_eq!(
            of_request(Operation::InvokeStream, &headers, &body),
            Err(())
        );
        assert_eq!(quota_key("m", Some("reserved")), "m (reserved)");
        assert_eq!(quota_key("m", Some("flex")), "m");
    }
}
