//! Which of a model's quotas a request spends from: its scope and its context window.

use std::fmt;

/// Which requests a quota counts: single-Region on-demand calls, calls through a
/// geographic cross-Region inference profile, or calls through a global one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Scope {
    /// On-demand calls to the model in one Region (a bare model id or foundation-model ARN).
    OnDemand,
    /// Calls through a geographic cross-Region inference profile (`us.`, `eu.`, `apac.`,
    /// `jp.`, `au.`, `ca.`, `us-gov.`).
    CrossRegion,
    /// Calls through a global cross-Region inference profile (`global.`).
    Global,
}

/// Geographic cross-Region profile prefixes (AWS, "Supported Regions and models for inference
/// profiles", <https://docs.aws.amazon.com/bedrock/latest/userguide/inference-profiles-support.html>).
const GEO_PREFIXES: [&str; 7] = ["us.", "eu.", "apac.", "jp.", "au.", "ca.", "us-gov."];

impl Scope {
    /// The scope of a model id as it appears in a request path: a `global.` profile is
    /// [`Global`](Self::Global), a geographic profile (or an `inference-profile/` ARN of one)
    /// [`CrossRegion`](Self::CrossRegion), anything else [`OnDemand`](Self::OnDemand).
    ///
    /// ```
    /// use bedrock_throttle::Scope;
    ///
    /// assert_eq!(Scope::of_model("us.anthropic.claude-sonnet-4-20250514-v1:0"), Scope::CrossRegion);
    /// assert_eq!(Scope::of_model("global.anthropic.claude-sonnet-4-20250514-v1:0"), Scope::Global);
    /// assert_eq!(Scope::of_model("anthropic.claude-3-5-sonnet-20240620-v1:0"), Scope::OnDemand);
    /// ```
    pub fn of_model(model: &str) -> Self {
        let tail = model.rsplit_once('/').map_or(model, |(_, t)| t);
        if tail.starts_with("global.") {
            Scope::Global
        } else if model.contains(":inference-profile/")
            || GEO_PREFIXES.iter().any(|p| tail.starts_with(p))
        {
            Scope::CrossRegion
        } else {
            Scope::OnDemand
        }
    }

    /// A short name: `on-demand`, `cross-region`, `global`.
    pub fn as_str(&self) -> &'static str {
        match self {
            Scope::OnDemand => "on-demand",
            Scope::CrossRegion => "cross-region",
            Scope::Global => "global",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which context window a quota counts: a model's 1M-token context variant (requests over
/// 200K input tokens, or with Anthropic's 1M-context beta) has quotas of its own, listed
/// with the suffix `1M Context Length`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum ContextWindow {
    /// The model's standard context window.
    #[default]
    Standard,
    /// The 1M-token context variant.
    OneMillion,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_follow_the_profile_prefix() {
        for (id, scope) in [
            ("anthropic.claude-sonnet-4-20250514-v1:0", Scope::OnDemand),
            ("arn:aws:bedrock:us-east-1::foundation-model/amazon.nova-pro-v1:0", Scope::OnDemand),
            ("us.anthropic.claude-sonnet-4-20250514-v1:0", Scope::CrossRegion),
            ("jp.anthropic.claude-sonnet-4-5-20250929-v1:0", Scope::CrossRegion),
            ("au.anthropic.claude-sonnet-4-5-20250929-v1:0", Scope::CrossRegion),
            ("global.anthropic.claude-sonnet-4-5-20250929-v1:0", Scope::Global),
            ("arn:aws:bedrock:us-east-1:1:inference-profile/global.anthropic.claude-opus-4-5-20251101-v1:0", Scope::Global),
            ("arn:aws:bedrock:us-east-1:1:inference-profile/eu.amazon.nova-pro-v1:0", Scope::CrossRegion),
        ] {
            assert_eq!(Scope::of_model(id), scope, "{id}");
        }
    }
}
