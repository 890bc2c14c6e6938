//! The account's applied Bedrock quotas, read from AWS Service Quotas, as [`Quota`] values.
//!
//! Bedrock lists its per-model inference quotas under the service code `bedrock`, one
//! quota per model, scope and limit, named
//!
//! | name | scope | limit |
//! |---|---|---|
//! | `On-demand InvokeModel tokens per minute for ${model}` | on-demand | TPM |
//! | `On-demand InvokeModel requests per minute for ${model}` | on-demand | RPM |
//! | `Cross-Region InvokeModel tokens per minute for ${model}` | cross-Region profile | TPM |
//! | `Cross-Region InvokeModel requests per minute for ${model}` | cross-Region profile | RPM |
//! | `Model invocation max tokens per day for ${model}` | both | tokens per day |
//!
//! (older accounts also show `On-demand model inference …` and `Cross-region model
//! inference …`, which are read the same way). `${model}` is a display name such as
//! `Anthropic Claude 3.5 Sonnet`, not a model id, and AWS does not publish a mapping, so the
//! caller names the display name of each model id it uses; the scope comes from the id
//! (`us.`, `eu.`, `apac.`, `global.` prefixes and `inference-profile/` ARNs are cross-Region
//! profiles). Names the loader cannot read as one of the patterns above, and models no id was
//! given for, are listed in [`AppliedQuotas::unmapped`], never guessed.
//!
//! With a client built the usual way
//! (`aws_sdk_servicequotas::Client::new(&aws_config::load_from_env().await)`):
//!
//! ```no_run
//! use bedrock_throttle::{service_quotas::AppliedQuotas, ThrottleConfig};
//!
//! # async fn example(client: aws_sdk_servicequotas::Client) -> Result<(), bedrock_throttle::BoxError> {
//! let applied = AppliedQuotas::load(&client).await?;
//! let builder = applied.configure(
//!     ThrottleConfig::builder(),
//!     &[
//!         ("us.anthropic.claude-sonnet-4-20250514-v1:0", "Anthropic Claude Sonnet 4"),
//!         ("anthropic.claude-3-5-sonnet-20240620-v1:0", "Anthropic Claude 3.5 Sonnet"),
//!     ],
//! );
//! for u in applied.unmapped() {
//!     eprintln!("not used: {} = {} ({})", u.name, u.value, u.reason);
//! }
//! let cfg = builder.build()?;
//! # let _ = cfg;
//! # Ok(()) }
//! ```

use std::collections::BTreeMap;

use crate::{Quota, ThrottleConfigBuilder};

/// The Service Quotas service code of Amazon Bedrock.
pub const BEDROCK_SERVICE_CODE: &str = "bedrock";

/// Which requests a quota counts: single-Region on-demand calls, or calls through a
/// cross-Region inference profile.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Scope {
    /// On-demand calls to the model in one Region.
    OnDemand,
    /// Calls through a cross-Region inference profile (`us.`, `eu.`, `apac.`, `global.`).
    CrossRegion,
}

impl Scope {
    /// The scope of a model id as it appears in a request path.
    ///
    /// ```
    /// use bedrock_throttle::service_quotas::Scope;
    ///
    /// assert_eq!(Scope::of_model("us.anthropic.claude-sonnet-4-20250514-v1:0"), Scope::CrossRegion);
    /// assert_eq!(Scope::of_model("anthropic.claude-3-5-sonnet-20240620-v1:0"), Scope::OnDemand);
    /// ```
    pub fn of_model(model: &str) -> Self {
        let tail = model.rsplit_once('/').map_or(model, |(_, t)| t);
        let profile = model.contains(":inference-profile/")
            || [
                "us.", "eu.", "apac.", "global.", "us-gov.", "jp.", "au.", "ca.",
            ]
            .iter()
            .any(|p| tail.starts_with(p));
        if profile {
            Scope::CrossRegion
        } else {
            Scope::OnDemand
        }
    }
}

/// What a quota limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Limit {
    /// Tokens per minute.
    TokensPerMinute,
    /// Requests per minute.
    RequestsPerMinute,
    /// Tokens per day (for both scopes).
    TokensPerDay,
}

/// A Bedrock quota name read as scope, limit and model display name.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct QuotaName {
    /// `None` for a daily quota, which counts both scopes.
    pub scope: Option<Scope>,
    /// What it limits.
    pub limit: Limit,
    /// The model's display name, as Service Quotas spells it.
    pub model: String,
}

impl QuotaName {
    /// Reads one of the name patterns in the [module docs](self); `None` for any other name.
    ///
    /// ```
    /// use bedrock_throttle::service_quotas::{Limit, QuotaName, Scope};
    ///
    /// let n = QuotaName::parse("Cross-Region InvokeModel tokens per minute for Anthropic Claude Sonnet 4").unwrap();
    /// assert_eq!((n.scope, n.limit, n.model.as_str()),
    ///            (Some(Scope::CrossRegion), Limit::TokensPerMinute, "Anthropic Claude Sonnet 4"));
    /// assert!(QuotaName::parse("Cross-Model Max Tokens Per Day").is_none());
    /// ```
    pub fn parse(name: &str) -> Option<Self> {
        let name = name.trim();
        if let Some(model) = strip_prefix_ci(name, "Model invocation max tokens per day for ") {
            return Self::new(None, Limit::TokensPerDay, model);
        }
        let (scope, rest) = [
            ("On-demand InvokeModel ", Scope::OnDemand),
            ("On-demand model inference ", Scope::OnDemand),
            ("Cross-Region InvokeModel ", Scope::CrossRegion),
            ("Cross-Region model inference ", Scope::CrossRegion),
        ]
        .iter()
        .find_map(|(p, s)| strip_prefix_ci(name, p).map(|rest| (*s, rest)))?;
        let (limit, model) = [
            ("tokens per minute for ", Limit::TokensPerMinute),
            ("requests per minute for ", Limit::RequestsPerMinute),
        ]
        .iter()
        .find_map(|(p, l)| strip_prefix_ci(rest, p).map(|m| (*l, m)))?;
        Self::new(Some(scope), limit, model)
    }

    fn new(scope: Option<Scope>, limit: Limit, model: &str) -> Option<Self> {
        let model = model.trim();
        (!model.is_empty()).then(|| Self {
            scope,
            limit,
            model: model.to_owned(),
        })
    }
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

/// One model's applied quotas in one scope.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct AppliedQuota {
    /// The model's display name.
    pub model: String,
    /// On-demand or cross-Region.
    pub scope: Scope,
    /// Requests per minute, when the account lists one.
    pub requests_per_minute: Option<u64>,
    /// Tokens per minute, when the account lists one.
    pub tokens_per_minute: Option<u64>,
    /// Tokens per day (the model's, shared by both scopes), when listed. The gate does not
    /// enforce it; a "Too many tokens per day" throttle shows in the capacity report.
    pub tokens_per_day: Option<u64>,
}

impl AppliedQuota {
    /// As a [`Quota`]: `None` without a tokens-per-minute quota.
    pub fn quota(&self) -> Option<Quota> {
        let tpm = self.tokens_per_minute.filter(|t| *t > 0)?;
        let rpm = self
            .requests_per_minute
            .and_then(|r| u32::try_from(r).ok())
            .filter(|r| *r > 0);
        Some(Quota::new(rpm, tpm))
    }
}

/// A listed quota the loader did not turn into a [`Quota`], and why.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct UnmappedQuota {
    /// The quota's name in Service Quotas.
    pub name: String,
    /// Its applied value.
    pub value: f64,
    /// Why it was not used.
    pub reason: String,
}

/// The applied Bedrock quotas of an account in one Region; see the [module docs](self).
#[derive(Clone, Debug, Default)]
pub struct AppliedQuotas {
    /// (model display name, scope) → quota.
    models: BTreeMap<(String, Scope), AppliedQuota>,
    /// Display name → tokens per day.
    daily: BTreeMap<String, u64>,
    /// Raw (name, value) of every inference quota read, for `unmapped`.
    names: Vec<(String, f64, Option<QuotaName>)>,
    /// Quotas that do not limit per-model inference (batch jobs, agents, …): not reported.
    ignored: usize,
}

impl AppliedQuotas {
    /// Lists every `bedrock` quota of the client's account and Region (following
    /// `NextToken` through all pages).
    ///
    /// # Errors
    /// The Service Quotas call's error (no credentials, no permission
    /// `servicequotas:ListServiceQuotas`, a network failure).
    pub async fn load(
        client: &aws_sdk_servicequotas::Client,
    ) -> Result<Self, aws_sdk_servicequotas::Error> {
        let quotas = client
            .list_service_quotas()
            .service_code(BEDROCK_SERVICE_CODE)
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await?;
        Ok(Self::from_entries(quotas.iter().filter_map(|q| {
            Some((q.quota_name()?.to_owned(), q.value()?))
        })))
    }

    /// Reads (quota name, applied value) pairs, as `load` gets them from Service Quotas.
    ///
    /// ```
    /// use bedrock_throttle::service_quotas::{AppliedQuotas, Scope};
    ///
    /// let applied = AppliedQuotas::from_entries([
    ///     ("On-demand InvokeModel tokens per minute for Anthropic Claude 3.5 Sonnet".to_owned(), 400_000.0),
    ///     ("On-demand InvokeModel requests per minute for Anthropic Claude 3.5 Sonnet".to_owned(), 50.0),
    ///     ("Cross-Model Max Tokens Per Day".to_owned(), 1e9),
    /// ]);
    /// let q = applied.get("Anthropic Claude 3.5 Sonnet", Scope::OnDemand).unwrap().quota().unwrap();
    /// assert_eq!((q.requests(), q.tokens()), (Some(50), 400_000));
    /// assert_eq!(applied.unmapped()[0].name, "Cross-Model Max Tokens Per Day");
    /// ```
    pub fn from_entries(entries: impl IntoIterator<Item = (String, f64)>) -> Self {
        let mut out = Self::default();
        for (name, value) in entries {
            let parsed = QuotaName::parse(&name);
            match &parsed {
                Some(n) => {
                    let v = value.max(0.0).round() as u64;
                    match n.scope {
                        None => {
                            out.daily.insert(n.model.clone(), v);
                        }
                        Some(scope) => {
                            let q = out.entry(&n.model, scope);
                            match n.limit {
                                Limit::TokensPerMinute => q.tokens_per_minute = Some(v),
                                Limit::RequestsPerMinute => q.requests_per_minute = Some(v),
                                Limit::TokensPerDay => {}
                            }
                        }
                    }
                }
                None if !is_inference_quota(&name) => {
                    out.ignored += 1;
                    continue;
                }
                None => {}
            }
            out.names.push((name, value, parsed));
        }
        let daily = out.daily.clone();
        for q in out.models.values_mut() {
            q.tokens_per_day = daily.get(&q.model).copied();
        }
        out
    }

    fn entry(&mut self, model: &str, scope: Scope) -> &mut AppliedQuota {
        self.models
            .entry((model.to_owned(), scope))
            .or_insert_with(|| AppliedQuota {
                model: model.to_owned(),
                scope,
                requests_per_minute: None,
                tokens_per_minute: None,
                tokens_per_day: None,
            })
    }

    /// One model's quotas in one scope, by display name.
    pub fn get(&self, model: &str, scope: Scope) -> Option<&AppliedQuota> {
        self.models.get(&(model.to_owned(), scope))
    }

    /// Every model and scope read, ordered by display name.
    pub fn iter(&self) -> impl Iterator<Item = &AppliedQuota> {
        self.models.values()
    }

    /// The quota of a model id, given its display name: the scope follows the id
    /// ([`Scope::of_model`]).
    pub fn quota_for(&self, model_id: &str, display_name: &str) -> Option<Quota> {
        self.get(display_name, Scope::of_model(model_id))?.quota()
    }

    /// Adds a [`model_quota`](ThrottleConfigBuilder::model_quota) for each (model id, display
    /// name) that has an applied tokens-per-minute quota in the id's scope; ids without one
    /// are left out (see [`unmapped`](Self::unmapped) and [`missing`](Self::missing)).
    pub fn configure(
        &self,
        mut builder: ThrottleConfigBuilder,
        models: &[(&str, &str)],
    ) -> ThrottleConfigBuilder {
        for (id, name) in models {
            if let Some(q) = self.quota_for(id, name) {
                builder = builder.model_quota(*id, q);
            }
        }
        builder
    }

    /// The model ids of `models` (id, display name) with no applied tokens-per-minute
    /// quota in their scope.
    pub fn missing<'a>(&self, models: &[(&'a str, &str)]) -> Vec<&'a str> {
        models
            .iter()
            .filter(|(id, name)| self.quota_for(id, name).is_none())
            .map(|(id, _)| *id)
            .collect()
    }

    /// Inference quotas (their names speak of tokens or requests per minute or per day)
    /// that were not read as a model's quota: names in no known pattern, account-wide
    /// quotas, and a model's requests-per-minute quota without a tokens-per-minute one.
    /// Quotas of other Bedrock features (batch jobs, agents, knowledge bases) are not
    /// listed.
    pub fn unmapped(&self) -> Vec<UnmappedQuota> {
        self.names
            .iter()
            .filter_map(|(name, value, parsed)| {
                let reason = match parsed {
                    None => "not a per-model quota name this crate knows".to_owned(),
                    Some(QuotaName {
                        scope: Some(scope),
                        model,
                        ..
                    }) if self
                        .get(model, *scope)
                        .is_none_or(|q| q.tokens_per_minute.is_none()) =>
                    {
                        "the model has no tokens-per-minute quota in this scope".to_owned()
                    }
                    Some(QuotaName {
                        scope: None, model, ..
                    }) if !self.models.keys().any(|(m, _)| m == model) => {
                        "a daily quota of a model with no per-minute quota".to_owned()
                    }
                    Some(_) => return None,
                };
                Some(UnmappedQuota {
                    name: name.clone(),
                    value: *value,
                    reason,
                })
            })
            .collect()
    }

    /// How many listed quotas were not about inference rates and were left aside.
    pub fn ignored(&self) -> usize {
        self.ignored
    }
}

/// Whether a name speaks of an inference rate at all.
fn is_inference_quota(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    ["per minute", "per day"].iter().any(|p| n.contains(p))
        && ["token", "request"].iter().any(|p| n.contains(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(list: &[(&str, f64)]) -> AppliedQuotas {
        AppliedQuotas::from_entries(list.iter().map(|(n, v)| (n.to_string(), *v)))
    }

    #[test]
    fn names_map_onto_models_and_scopes_and_the_rest_is_reported() {
        let a = entries(&[
            (
                "On-demand InvokeModel tokens per minute for Anthropic Claude 3.5 Sonnet",
                400_000.0,
            ),
            (
                "On-demand InvokeModel requests per minute for Anthropic Claude 3.5 Sonnet",
                50.0,
            ),
            (
                "Cross-Region InvokeModel tokens per minute for Anthropic Claude Sonnet 4",
                200_000.0,
            ),
            (
                "Cross-region model inference requests per minute for Anthropic Claude Sonnet 4",
                200.0,
            ),
            (
                "Model invocation max tokens per day for Anthropic Claude Sonnet 4",
                288_000_000.0,
            ),
            (
                "On-demand InvokeModel requests per minute for Meta Llama 3 70B Instruct",
                400.0,
            ),
            (
                "Model invocation max tokens per day for Amazon Nova Pro",
                1e9,
            ),
            ("Cross-Model Max Tokens Per Day", 5e9),
            ("Batch inference job size (in GB)", 5.0),
        ]);
        let q = a.quota_for(
            "anthropic.claude-3-5-sonnet-20240620-v1:0",
            "Anthropic Claude 3.5 Sonnet",
        );
        assert_eq!(q, Some(Quota::new(50, 400_000)));
        let s4 = "us.anthropic.claude-sonnet-4-20250514-v1:0";
        assert_eq!(
            a.quota_for(s4, "Anthropic Claude Sonnet 4"),
            Some(Quota::new(200, 200_000))
        );
        assert_eq!(
            a.get("Anthropic Claude Sonnet 4", Scope::CrossRegion)
                .unwrap()
                .tokens_per_day,
            Some(288_000_000)
        );
        // The on-demand scope of a cross-Region-only model is not guessed from the other.
        assert_eq!(
            a.quota_for(
                "anthropic.claude-sonnet-4-20250514-v1:0",
                "Anthropic Claude Sonnet 4"
            ),
            None
        );
        let unmapped: Vec<_> = a.unmapped().into_iter().map(|u| u.name).collect();
        assert_eq!(
            unmapped,
            [
                "On-demand InvokeModel requests per minute for Meta Llama 3 70B Instruct",
                "Model invocation max tokens per day for Amazon Nova Pro",
                "Cross-Model Max Tokens Per Day",
            ]
        );
        assert_eq!(a.ignored(), 1);
        let models = [(s4, "Anthropic Claude Sonnet 4"), ("x", "Unknown Model")];
        assert_eq!(a.missing(&models), ["x"]);
        let cfg = a
            .configure(crate::ThrottleConfig::builder(), &models)
            .build()
            .unwrap();
        let _ = cfg;
    }
}
