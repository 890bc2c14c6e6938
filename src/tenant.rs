//! Tenants and priorities: whom a request is for, how much of a quota they may use, and
//! how urgent it is.
//!
//! A service that serves many tenants from one Bedrock quota tags each request with a
//! [`Tenant`] (in the request extensions, or in a header named with
//! [`ThrottleConfigBuilder::tenant_header`](crate::ThrottleConfigBuilder::tenant_header)) and
//! optionally a [`Priority`]. While a model's quota has room nothing changes: requests go
//! at once. When requests wait, the gate admits them in weighted fair order across tenants
//! (start-time fair queueing, each request costing its share of the quota in tokens or in
//! requests, whichever is larger), so a tenant that sends ten times its share only delays
//! itself. A tenant with nothing waiting lends its share to the others and gets it back as
//! soon as it sends again. Requests without a tenant belong to one default tenant of
//! weight 1.
//!
//! Within a tenant, [`Priority::Critical`] requests go before [`Priority::Interactive`] ones,
//! and those before [`Priority::Batch`] ones, but while batch requests wait, at least one
//! admission in four of the tenant goes to its oldest batch request, so batch work slows
//! down but never stops. A request without a `Priority` waits as its Bedrock
//! [service tier](crate::service_tier) says (`priority`, `default`, `flex`).
//!
//! ```
//! use bedrock_throttle::{BedrockThrottleLayer, Priority, Quota, Tenant, TenantPolicy, ThrottleConfig};
//!
//! let cfg = ThrottleConfig::builder()
//!     .quota(Quota::new(50, 200_000))
//!     .tenant_header("x-tenant-id")
//!     // "acme" pays for three shares, and may never take more than half of a quota.
//!     .tenant("acme", TenantPolicy::weight(3.0).with_cap(0.5))
//!     .build()
//!     .unwrap();
//! let layer = BedrockThrottleLayer::new(cfg);
//!
//! // A request can also carry its tenant and priority as extensions.
//! let mut request = http::Request::new(String::new());
//! request.extensions_mut().insert(Tenant::new("globex"));
//! request.extensions_mut().insert(Priority::Batch);
//! # let _ = layer;
//! ```

use std::{fmt, sync::Arc};

/// The tenant a request is charged to, as a request extension. See the
/// [module docs](self).
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Tenant(Arc<str>);

impl Tenant {
    /// A tenant named `name`.
    pub fn new(name: impl AsRef<str>) -> Self {
        Self(Arc::from(name.as_ref()))
    }

    /// The tenant's name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Tenant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Tenant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for Tenant {
    fn from(name: &str) -> Self {
        Self::new(name)
    }
}

impl From<String> for Tenant {
    fn from(name: String) -> Self {
        Self(Arc::from(name))
    }
}

/// How urgent a request is within its tenant, as a request extension; without one a
/// request is [`Interactive`](Priority::Interactive). See the [module docs](self) for the
/// rule that keeps batch work from starving.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Priority {
    /// Latency-critical work (Bedrock's `priority` [service tier](crate::ServiceTier)): goes
    /// before the tenant's interactive and batch requests.
    Critical,
    /// Someone is waiting for the answer: goes before batch requests.
    #[default]
    Interactive,
    /// Background work: goes after the tenant's interactive requests, with at least one
    /// admission in four while it waits.
    Batch,
}

/// A tenant's weight in the fair order and its optional hard cap. See the
/// [module docs](self).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TenantPolicy {
    weight: f64,
    cap: Option<f64>,
}

impl Default for TenantPolicy {
    fn default() -> Self {
        Self {
            weight: 1.0,
            cap: None,
        }
    }
}

impl TenantPolicy {
    /// A tenant that gets `weight` shares when tenants compete (the default tenant policy
    /// has weight 1). A weight that is not a positive number is refused by
    /// [`build`](crate::ThrottleConfigBuilder::build).
    pub fn weight(weight: f64) -> Self {
        Self { weight, cap: None }
    }

    /// Caps the tenant at `share` (between 0 and 1) of each model's quota, in tokens and
    /// in requests, even when nobody else wants the rest. The cap is a share of the
    /// configured quota (of the starting guess for a discovered one); the tenant's requests
    /// wait for it, in their own order, before they join the fair queue.
    ///
    /// The cap is kept in process, also with a shared [`Ledger`](crate::Ledger): each of
    /// `n` processes that share a quota through Redis holds the tenant to `share` on its
    /// own, so the fleet may give the tenant up to `n × share`. Divide the share by the
    /// number of replicas when the cap must hold for the fleet.
    pub fn with_cap(mut self, share: f64) -> Self {
        self.cap = Some(share);
        self
    }

    /// The weight.
    pub fn weight_value(&self) -> f64 {
        self.weight
    }

    /// The cap, as a share of a quota.
    pub fn cap(&self) -> Option<f64> {
        self.cap
    }
}

/// What the gate does when a key already has `max_queued` requests waiting.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Overload {
    /// Fail the request at once with
    /// [`ThrottleError::Overloaded`](crate::ThrottleError::Overloaded), carrying a hint of
    /// how long the queue takes to drain. Nothing is sent upstream.
    #[default]
    Shed,
    /// Report not ready from `poll_ready` while `max_queued` requests of the budget wait
    /// (tower back-pressure). `poll_ready` comes before the request, so it cannot know the
    /// request's key: under this policy the bound counts the waiters of all keys together.
    ///
    /// Not for servers: hyper and axum clone the service per connection or request, and a
    /// caller held in `poll_ready` has no key, no tenant and no `max_wait`, so its wait is
    /// neither bounded nor in fair order. Servers keep [`Shed`](Self::Shed).
    Backpressure,
}

/// The tenant settings of a configuration.
#[derive(Clone, Debug, Default)]
pub(crate) struct TenantSettings {
    pub(crate) header: Option<http::HeaderName>,
    pub(crate) policies: std::collections::HashMap<Tenant, TenantPolicy>,
    pub(crate) default_policy: TenantPolicy,
    pub(crate) max_queued: Option<usize>,
    pub(crate) overload: Overload,
    /// Whether per-tenant metric series carry a `tenant` label.
    pub(crate) metrics_label: bool,
}

impl TenantSettings {
    /// The tenant and priority of a request: its extensions first, then the tenant header;
    /// the priority from a [`Priority`] extension, else the request's service tier.
    pub(crate) fn classify(
        &self,
        extensions: &http::Extensions,
        headers: &http::HeaderMap,
    ) -> (Option<Tenant>, Priority) {
        let tenant = extensions.get::<Tenant>().cloned().or_else(|| {
            let value = headers.get(self.header.as_ref()?)?.to_str().ok()?.trim();
            (!value.is_empty()).then(|| Tenant::new(value))
        });
        // The caller's own priority first, then the service tier the request names.
        let priority = extensions
            .get::<Priority>()
            .copied()
            .or_else(|| Some(extensions.get::<crate::ServiceTier>()?.priority()))
            .or_else(|| Some(crate::bedrock::service_tier::from_header(headers)?.priority()))
            .unwrap_or_default();
        (tenant, priority)
    }

    /// The policy of `tenant` (the default policy for unnamed and unlisted tenants).
    pub(crate) fn policy(&self, tenant: Option<&Tenant>) -> TenantPolicy {
        tenant
            .and_then(|t| self.policies.get(t))
            .copied()
            .unwrap_or(self.default_policy)
    }

    /// The cap a request of `tenant` waits for, if any: the share, and whose cap it is — the
    /// tenant's own when its policy has one, else `None`, the one cap that every tenant
    /// without a policy of its own (and every request without a tenant) shares, so a new
    /// name never brings a new budget.
    pub(crate) fn cap(&self, tenant: Option<&Tenant>) -> Option<(Option<Tenant>, f64)> {
        match tenant.and_then(|t| Some((t, self.policies.get(t)?))) {
            Some((t, policy)) => policy.cap.map(|share| (Some(t.clone()), share)),
            None => self.default_policy.cap.map(|share| (None, share)),
        }
    }

    /// Checks weights and caps.
    pub(crate) fn validate(&self) -> Result<(), crate::ConfigError> {
        let named = self.policies.iter().map(|(t, p)| (t.as_str(), p));
        for (name, p) in std::iter::once(("the default tenant", &self.default_policy)).chain(named)
        {
            if !(p.weight.is_finite() && p.weight > 0.0) {
                return Err(crate::ConfigError::new(format!(
                    "the weight of tenant {name} is {}; it must be a positive finite number",
                    p.weight
                )));
            }
            if let Some(cap) = p.cap {
                if !(cap > 0.0 && cap <= 1.0) {
                    return Err(crate::ConfigError::new(format!(
                        "the cap of tenant {name} is {cap}; it is a share of the quota, above 0 and at most 1"
                    )));
                }
            }
        }
        if self.max_queued == Some(0) && self.overload == Overload::Backpressure {
            return Err(crate::ConfigError::new(
                "max_queued is 0 with Overload::Backpressure, so poll_ready would never be ready",
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ServiceTier;

    #[test]
    fn a_caller_priority_wins_then_the_tier_extension_then_the_header() {
        let settings = TenantSettings::default();
        let priority = |extensions: &http::Extensions, headers: &http::HeaderMap| {
            settings.classify(extensions, headers).1
        };
        let mut headers = http::HeaderMap::new();
        let mut extensions = http::Extensions::new();
        assert_eq!(priority(&extensions, &headers), Priority::Interactive);
        headers.insert("x-amzn-bedrock-service-tier", "flex".parse().unwrap());
        assert_eq!(priority(&extensions, &headers), Priority::Batch);
        extensions.insert(ServiceTier::Priority);
        assert_eq!(priority(&extensions, &headers), Priority::Critical);
        extensions.insert(Priority::Batch);
        assert_eq!(priority(&extensions, &headers), Priority::Batch);
        // `default` and `reserved` wait as requests without a tier do.
        let mut extensions = http::Extensions::new();
        for tier in [ServiceTier::Default, ServiceTier::Reserved] {
            extensions.insert(tier);
            assert_eq!(priority(&extensions, &headers), Priority::Interactive);
        }
    }
}
