//! Bedrock's service tiers, and how the gate orders the requests that name one.
//!
//! A request may ask Bedrock for a service tier: InvokeModel and
//! InvokeModelWithResponseStream with the `X-Amzn-Bedrock-Service-Tier` header, Converse and
//! ConverseStream with `"serviceTier": {"type": …}` in the body (both as
//! aws-sdk-bedrockruntime 1.153 writes them: `ser_invoke_model_headers`,
//! `ser_service_tier`), OpenAI-compatible Chat Completions with `"service_tier"`. AWS:
//! "Your on-demand quota for a model is shared across all service tiers"
//! (<https://docs.aws.amazon.com/bedrock/latest/userguide/service-tiers-inference.html>), so
//! `priority`, `default` and `flex` spend the same key; the tier only orders the requests
//! that wait there, unless the caller set a [`Priority`] itself:
//!
//! | tier | waits as |
//! |---|---|
//! | `priority` | [`Priority::Critical`]: before everything else of its tenant |
//! | `default`, none | [`Priority::Interactive`] |
//! | `flex` | [`Priority::Batch`]: after the rest, with at least one admission in four while it waits |
//!
//! `reserved` capacity is bought apart from the on-demand quota, with its own tokens per
//! minute: such a request is charged to its model's [reserved key](crate::QuotaKey::reserved),
//! whose quota is
//! [`reserved_quota`](crate::ThrottleConfigBuilder::reserved_quota); without one it is not
//! gated (the crate cannot know what was bought), only retried.
//!
//! ```
//! use bedrock_throttle::{Priority, ServiceTier};
//!
//! assert_eq!(ServiceTier::from_wire("flex"), Some(ServiceTier::Flex));
//! assert_eq!(ServiceTier::Flex.priority(), Priority::Batch);
//! assert_eq!(ServiceTier::Priority.priority(), Priority::Critical);
//! ```

use crate::Priority;

/// A Bedrock service tier, as a request names it. See the [module docs](self).
///
/// The estimate layer puts the tier it reads in the request's extensions; a caller may set
/// one there too.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum ServiceTier {
    /// `priority`: served first by Bedrock, at a premium.
    Priority,
    /// `default`: standard on-demand inference.
    Default,
    /// `flex`: best effort, at a discount.
    Flex,
    /// `reserved`: capacity bought in advance, with its own tokens-per-minute limits.
    Reserved,
}

impl ServiceTier {
    /// The tier named `value` exactly as Bedrock spells it (`priority`, `default`, `flex`,
    /// `reserved`); `None` for anything else.
    pub fn from_wire(value: &str) -> Option<Self> {
        Some(match value {
            "priority" => ServiceTier::Priority,
            "default" => ServiceTier::Default,
            "flex" => ServiceTier::Flex,
            "reserved" => ServiceTier::Reserved,
            _ => return None,
        })
    }

    /// The tier as Bedrock spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceTier::Priority => "priority",
            ServiceTier::Default => "default",
            ServiceTier::Flex => "flex",
            ServiceTier::Reserved => "reserved",
        }
    }

    /// How a request of this tier waits, when it carries no [`Priority`] of its own.
    pub fn priority(self) -> Priority {
        match self {
            ServiceTier::Priority => Priority::Critical,
            ServiceTier::Default | ServiceTier::Reserved => Priority::Interactive,
            ServiceTier::Flex => Priority::Batch,
        }
    }
}

impl std::fmt::Display for ServiceTier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
