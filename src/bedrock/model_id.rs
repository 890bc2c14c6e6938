//! The foundation model a model id, inference profile id or ARN names, and the one spelling
//! of a Bedrock quota.

use std::borrow::Cow;

use super::path::decode_model_id;

/// Cross-Region inference profile prefixes: `us.anthropic.…` is `anthropic.…` served from
/// several Regions.
const GEO_PREFIXES: &[&str] = &["us", "eu", "apac", "global", "us-gov", "jp", "au", "ca"];

/// The foundation model id inside `model`, in any form a path or a caller may give it:
/// percent-decoded, trimmed, an ARN cut to the part after its last `/`, a cross-Region
/// prefix removed. Borrowed when nothing had to be decoded.
pub(crate) fn base_model_id(model: &str) -> Cow<'_, str> {
    match decode_model_id(model) {
        Cow::Borrowed(s) => Cow::Borrowed(foundation(s)),
        Cow::Owned(s) => Cow::Owned(foundation(&s).to_owned()),
    }
}

/// The foundation model part of a decoded id.
fn foundation(id: &str) -> &str {
    let mut id = id.trim();
    if id.starts_with("arn:") {
        if let Some(slash) = id.rfind('/') {
            id = &id[slash + 1..];
        }
    }
    match id.split_once('.') {
        Some((geo, rest)) if GEO_PREFIXES.contains(&geo) => rest,
        _ => id,
    }
}

/// The one spelling of the quota a decoded model id spends from: the ARN of a foundation
/// model (`arn:aws:bedrock:<region>:<account>:foundation-model/<id>`) or of a system
/// inference profile (`...:inference-profile/<profile-id>`) is the id it names, since Bedrock
/// counts both forms against one quota. Anything else is its own spelling: an application
/// inference profile, a provisioned or imported model is a resource of its own.
pub(crate) fn quota_model_id(id: &str) -> &str {
    let mut fields = id.splitn(6, ':');
    let (Some("arn"), Some(_partition), Some("bedrock"), Some(_region), Some(_account)) = (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    ) else {
        return id;
    };
    let resource = fields.next().unwrap_or("");
    let named = resource
        .strip_prefix("foundation-model/")
        .or_else(|| resource.strip_prefix("inference-profile/"));
    match named {
        Some(n) if !n.is_empty() && !n.contains('/') => n,
        _ => id,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn foundation_model_and_system_profile_arns_are_spelled_as_their_ids() {
        for (arn, id) in [
            (
                "arn:aws:bedrock:us-west-2::foundation-model/meta.llama3-8b-instruct-v1:0",
                "meta.llama3-8b-instruct-v1:0",
            ),
            (
                "arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-sonnet-4-20250514-v1:0",
                "us.anthropic.claude-sonnet-4-20250514-v1:0",
            ),
            (
                "arn:aws-us-gov:bedrock:us-gov-west-1:1:inference-profile/us-gov.x:0",
                "us-gov.x:0",
            ),
        ] {
            assert_eq!(quota_model_id(arn), id, "{arn}");
        }
        for own in [
            "anthropic.claude-3-haiku-20240307-v1:0",
            "us.anthropic.claude-sonnet-4-20250514-v1:0",
            "arn:aws:bedrock:us-east-1:1:application-inference-profile/abc123",
            "arn:aws:bedrock:us-east-1:1:provisioned-model/abc123",
            "arn:aws:bedrock:us-east-1:1:imported-model/abc123",
            "arn:aws:bedrock:us-east-1:1:inference-profile/",
            "arn:aws:bedrock:us-east-1:1:foundation-model/a/b",
            "arn:aws:s3:us-east-1:1:foundation-model/x",
            "arn:aws:bedrock:us-east-1",
            "",
        ] {
            assert_eq!(quota_model_id(own), own, "{own}");
        }
    }

    #[test]
    fn every_form_names_its_foundation_model() {
        let nova = "amazon.nova-lite-v1:0";
        for form in [
            "amazon.nova-lite-v1:0",
            "amazon.nova-lite-v1%3A0",
            "apac.amazon.nova-lite-v1:0",
            " apac.amazon.nova-lite-v1:0\n",
            "%20apac.amazon.nova-lite-v1%3a0",
            "amazon%2Enova-lite-v1%3A0",
            "arn:aws:bedrock:us-east-1:1:inference-profile/apac.amazon.nova-lite-v1:0",
            "arn%3Aaws%3Abedrock%3Aus-east-1%3A1%3Ainference-profile%2Fapac.amazon.nova-lite-v1%3A0",
            "arn:aws:bedrock:us-west-2::foundation-model/amazon.nova-lite-v1:0",
        ] {
            assert_eq!(base_model_id(form), nova, "{form:?}");
        }
    }

    #[test]
    fn what_is_not_a_profile_stays() {
        assert!(matches!(
            base_model_id("anthropic.claude"),
            Cow::Borrowed("anthropic.claude")
        ));
        assert_eq!(base_model_id("arn:aws:bedrock"), "arn:aws:bedrock");
        assert_eq!(base_model_id("usa.model"), "usa.model");
        assert_eq!(base_model_id("us-gov.meta.llama3"), "meta.llama3");
        // One prefix only.
        assert_eq!(base_model_id("us.eu.x"), "eu.x");
        assert_eq!(base_model_id(""), "");
    }
}
