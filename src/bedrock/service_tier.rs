//! Where a request names its service tier: a header for InvokeModel, the body for Converse
//! and Chat Completions (see [`ServiceTier`] for the sources).

use http::HeaderMap;

use crate::{estimate::scan, estimate::Operation, QuotaKey, ServiceTier};

/// The header InvokeModel and InvokeModelWithResponseStream carry the tier in (and Bedrock
/// echoes in the response).
pub(crate) const HEADER: &str = "x-amzn-bedrock-service-tier";

/// The tier in a request's header; an unknown value is no tier.
pub(crate) fn from_header(headers: &HeaderMap) -> Option<ServiceTier> {
    ServiceTier::from_wire(headers.get(HEADER)?.to_str().ok()?.trim())
}

/// The tier a request names: Converse and ConverseStream in the body's
/// `serviceTier.type`, Chat Completions in its `service_tier`, every other operation in the
/// header.
pub(crate) fn of_request(
    headers: &HeaderMap,
    operation: Operation,
    body: &[u8],
) -> Option<ServiceTier> {
    let in_body = |path: &[&str]| {
        let doc = scan::validate(body).ok()?;
        let mut v = doc.root();
        for key in path {
            if !v.is_object() {
                return None;
            }
            v = v.get(key)?;
        }
        ServiceTier::from_wire(&v.as_str()?)
    };
    match operation {
        Operation::Converse | Operation::ConverseStream => in_body(&["serviceTier", "type"]),
        Operation::ChatCompletions => in_body(&["service_tier"]),
        _ => from_header(headers),
    }
}

/// The quota key and operation of a request whose body is not read: its path and host, on
/// the reserved tier when a [`ServiceTier`] extension or the header says so.
pub(crate) fn key_of_head(
    uri: &http::Uri,
    headers: &HeaderMap,
    extensions: &http::Extensions,
) -> (QuotaKey, Operation) {
    let (key, operation) = QuotaKey::from_uri(uri);
    let tier = extensions
        .get::<ServiceTier>()
        .copied()
        .or_else(|| from_header(headers));
    match tier {
        Some(ServiceTier::Reserved) => (key.reserved(), operation),
        _ => (key, operation),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_operation_reads_its_own_place() {
        let mut headers = HeaderMap::new();
        headers.insert(HEADER, "flex".parse().unwrap());
        let converse = br#"{"messages":[],"serviceTier":{"type":"priority"}}"#;
        let chat = br#"{"model":"m","messages":[],"service_tier":"reserved"}"#;
        assert_eq!(
            of_request(&headers, Operation::Invoke, converse),
            Some(ServiceTier::Flex)
        );
        assert_eq!(
            of_request(&headers, Operation::InvokeStream, b""),
            Some(ServiceTier::Flex)
        );
        assert_eq!(
            of_request(&headers, Operation::ConverseStream, converse),
            Some(ServiceTier::Priority)
        );
        assert_eq!(
            of_request(&HeaderMap::new(), Operation::ChatCompletions, chat),
            Some(ServiceTier::Reserved)
        );
        // The header does not speak for a Converse body, nor the body for InvokeModel.
        assert_eq!(of_request(&headers, Operation::Converse, b"{}"), None);
        assert_eq!(
            of_request(&HeaderMap::new(), Operation::Invoke, converse),
            None
        );
    }

    #[test]
    fn unknown_or_misshapen_tiers_are_none() {
        let mut headers = HeaderMap::new();
        for value in ["Flex", "premium", ""] {
            headers.insert(HEADER, value.parse().unwrap());
            assert_eq!(from_header(&headers), None, "{value}");
        }
        for body in [
            &br#"{"serviceTier":"flex"}"#[..],
            br#"{"serviceTier":{"type":"FLEX"}}"#,
            br#"{"serviceTier":{"type":1}}"#,
            br#"[{"serviceTier":{"type":"flex"}}]"#,
            b"not json",
        ] {
            assert_eq!(
                of_request(&HeaderMap::new(), Operation::Converse, body),
                None
            );
        }
    }
}
