//! The account's applied Bedrock quotas, read from AWS Service Quotas, as [`Quota`] values.
//!
//! Bedrock lists its per-model inference quotas under the service code `bedrock`, one quota
//! per model, scope, context window and limit. [`QuotaName::parse`] reads every spelling
//! accounts list (the documented `On-demand InvokeModel tokens per minute for ${model}`,
//! the newer `Cross-region model inference tokens per minute for ${model} V1`,
//! `Global cross-region …`, `… per day for …`, `… 1M Context Length`, the account-wide
//! `Cross-Model Account-Level Tokens Per Day`). `${model}` is a display name such as
//! `Anthropic Claude Sonnet 4`, not a model id, and AWS does not publish a mapping, so the
//! caller names the display name of each model id it uses; the scope comes from the id
//! ([`Scope::of_model`]: a bare id is on-demand, `us.`, `eu.`, `apac.`, `jp.`, `au.`, `ca.`
//! profiles are cross-Region, `global.` profiles global). Names the loader cannot read, and
//! models no id was given for, are listed in [`AppliedQuotas::unmapped`], never guessed.
//!
//! [`AppliedQuotas::load`] asks `ListServiceQuotas` for pages of 100 (`MaxResults`, the
//! API's maximum; its default page is much smaller) and follows `NextToken`. Each quota's
//! `Adjustable` flag is kept ([`AppliedQuotas::listed`]). Tokens-per-day quotas, per model
//! and account-wide, are read, and [`AppliedQuotas::configure`] hands them to the gate,
//! which enforces them (see [`Quota::with_tokens_per_day`] and
//! [`ThrottleConfigBuilder::account_tokens_per_day`]).
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

mod name;

pub use crate::scope::{ContextWindow, Scope};
use name::display_name;
pub use name::{Limit, QuotaName};

/// The Service Quotas service code of Amazon Bedrock.
pub const BEDROCK_SERVICE_CODE: &str = "bedrock";

/// One model's applied quotas in one scope and context window.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct AppliedQuota {
    /// The model's display name, without a trailing ` V1`.
    pub model: String,
    /// On-demand, cross-Region or global.
    pub scope: Scope,
    /// Standard or 1M-token context.
    pub context: ContextWindow,
    /// Requests per minute, when the account lists one (some models enforce only TPM).
    pub requests_per_minute: Option<u64>,
    /// Tokens per minute, when the account lists one.
    pub tokens_per_minute: Option<u64>,
    /// Tokens per day, when listed: the scope's own daily quota, else the model's.
    /// [`quota`](Self::quota) carries it as [`Quota::with_tokens_per_day`], which the gate
    /// enforces.
    pub tokens_per_day: Option<u64>,
}

impl AppliedQuota {
    /// As a [`Quota`], with its daily limit where one is listed: `None` without a
    /// tokens-per-minute quota.
    pub fn quota(&self) -> Option<Quota> {
        let tpm = self.tokens_per_minute.filter(|t| *t > 0)?;
        let rpm = self
            .requests_per_minute
            .and_then(|r| u32::try_from(r).ok())
            .filter(|r| *r > 0);
        let quota = Quota::new(rpm, tpm);
        Some(match self.tokens_per_day.filter(|d| *d > 0) {
            Some(daily) => quota.with_tokens_per_day(daily),
            None => quota,
        })
    }
}

/// One quota as Service Quotas listed it.
#[derive(Clone, Debug, PartialEq)]
#[non_exhaustive]
pub struct ListedQuota {
    /// Its name.
    pub name: String,
    /// Its applied value.
    pub value: f64,
    /// Whether the account may ask to raise it (`Adjustable`); `None` when not known.
    pub adjustable: Option<bool>,
    /// The name read, when it is a Bedrock inference quota name.
    pub parsed: Option<QuotaName>,
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
    /// (model display name, scope, context window) → quota.
    models: BTreeMap<(String, Scope, ContextWindow), AppliedQuota>,
    /// The account-wide tokens per day, when listed.
    account_tokens_per_day: Option<u64>,
    /// Every inference quota read, for `listed` and `unmapped`.
    listed: Vec<ListedQuota>,
    /// Quotas that do not limit per-model inference (batch jobs, agents, …): not reported.
    ignored: usize,
}

/// The page size asked of `ListServiceQuotas`: its maximum.
const PAGE_SIZE: i32 = 100;

impl AppliedQuotas {
    /// Lists every `bedrock` quota of the client's account and Region, 100 to a page
    /// (following `NextToken` through all pages).
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
            .max_results(PAGE_SIZE)
            .into_paginator()
            .items()
            .send()
            .try_collect()
            .await?;
        Ok(Self::from_listing(quotas.iter().filter_map(|q| {
            Some((q.quota_name()?.to_owned(), q.value()?, Some(q.adjustable())))
        })))
    }

    /// Reads (quota name, applied value) pairs, adjustability unknown.
    ///
    /// ```
    /// use bedrock_throttle::service_quotas::{AppliedQuotas, Scope};
    ///
    /// let applied = AppliedQuotas::from_entries([
    ///     ("On-demand model inference tokens per minute for Anthropic Claude 3.5 Sonnet".to_owned(), 400_000.0),
    ///     ("On-demand InvokeModel requests per minute for Anthropic Claude 3.5 Sonnet".to_owned(), 50.0),
    ///     ("Cross-Model Account-Level Tokens Per Day".to_owned(), 1e9),
    ///     ("Bedrock Guardrails text units per second".to_owned(), 25.0),
    /// ]);
    /// let q = applied.get("Anthropic Claude 3.5 Sonnet", Scope::OnDemand).unwrap().quota().unwrap();
    /// assert_eq!((q.requests(), q.tokens()), (Some(50), 400_000));
    /// assert_eq!(applied.account_tokens_per_day(), Some(1_000_000_000));
    /// ```
    pub fn from_entries(entries: impl IntoIterator<Item = (String, f64)>) -> Self {
        Self::from_listing(entries.into_iter().map(|(n, v)| (n, v, None)))
    }

    /// Reads (quota name, applied value, adjustable) triples, as `load` gets them.
    pub fn from_listing(entries: impl IntoIterator<Item = (String, f64, Option<bool>)>) -> Self {
        let mut out = Self::default();
        // Model-wide daily quotas, applied once every scope is known.
        let mut model_daily = BTreeMap::new();
        for (name, value, adjustable) in entries {
            let parsed = QuotaName::parse(&name);
            let v = value.max(0.0).round() as u64;
            match &parsed {
                Some(QuotaName { model: None, .. }) => out.account_tokens_per_day = Some(v),
                Some(QuotaName {
                    scope: None,
                    model: Some(model),
                    context,
                    ..
                }) => {
                    model_daily.insert((model.clone(), *context), v);
                }
                Some(QuotaName {
                    scope: Some(scope),
                    model: Some(model),
                    context,
                    limit,
                }) => {
                    let q = out.entry(model, *scope, *context);
                    match limit {
                        Limit::TokensPerMinute => q.tokens_per_minute = Some(v),
                        Limit::RequestsPerMinute => q.requests_per_minute = Some(v),
                        Limit::TokensPerDay => q.tokens_per_day = Some(v),
                    }
                }
                None if !is_inference_quota(&name) => {
                    out.ignored += 1;
                    continue;
                }
                None => {}
            }
            out.listed.push(ListedQuota {
                name,
                value,
                adjustable,
                parsed,
            });
        }
        for q in out.models.values_mut() {
            if q.tokens_per_day.is_none() {
                q.tokens_per_day = model_daily.get(&(q.model.clone(), q.context)).copied();
            }
        }
        out
    }

    fn entry(&mut self, model: &str, scope: Scope, context: ContextWindow) -> &mut AppliedQuota {
        self.models
            .entry((model.to_owned(), scope, context))
            .or_insert_with(|| AppliedQuota {
                model: model.to_owned(),
                scope,
                context,
                requests_per_minute: None,
                tokens_per_minute: None,
                tokens_per_day: None,
            })
    }

    /// One model's standard-context quotas in one scope, by display name (a trailing ` V1`
    /// does not matter).
    pub fn get(&self, model: &str, scope: Scope) -> Option<&AppliedQuota> {
        self.get_context(model, scope, ContextWindow::Standard)
    }

    /// One model's quotas in one scope and context window, by display name.
    pub fn get_context(
        &self,
        model: &str,
        scope: Scope,
        context: ContextWindow,
    ) -> Option<&AppliedQuota> {
        self.models
            .get(&(display_name(model).to_owned(), scope, context))
    }

    /// Every model, scope and context window read, ordered by display name.
    pub fn iter(&self) -> impl Iterator<Item = &AppliedQuota> {
        self.models.values()
    }

    /// Every inference quota listed (Bedrock's other quotas left aside), with its
    /// adjustability and how its name was read.
    pub fn listed(&self) -> &[ListedQuota] {
        &self.listed
    }

    /// The account-wide tokens per day across models (`Cross-Model Account-Level Tokens Per
    /// Day`), when listed; [`configure`](Self::configure) sets it as
    /// [`account_tokens_per_day`](ThrottleConfigBuilder::account_tokens_per_day).
    pub fn account_tokens_per_day(&self) -> Option<u64> {
        self.account_tokens_per_day
    }

    /// The standard-context quota of a model id, given its display name: the scope follows
    /// the id ([`Scope::of_model`]).
    pub fn quota_for(&self, model_id: &str, display_name: &str) -> Option<Quota> {
        self.get(display_name, Scope::of_model(model_id))?.quota()
    }

    /// Adds a [`model_quota`](ThrottleConfigBuilder::model_quota) for each (model id, display
    /// name) that has an applied tokens-per-minute quota in the id's scope, with its
    /// requests per minute where the account lists one, and a
    /// [`long_context_quota`](ThrottleConfigBuilder::long_context_quota) where the account
    /// lists the scope's `… 1M Context Length` quota; ids without one are left out (see
    /// [`unmapped`](Self::unmapped) and [`missing`](Self::missing)). Each quota carries its
    /// tokens per day where the account lists them, and the account-wide daily quota
    /// becomes [`account_tokens_per_day`](ThrottleConfigBuilder::account_tokens_per_day).
    pub fn configure(
        &self,
        mut builder: ThrottleConfigBuilder,
        models: &[(&str, &str)],
    ) -> ThrottleConfigBuilder {
        if let Some(daily) = self.account_tokens_per_day.filter(|d| *d > 0) {
            builder = builder.account_tokens_per_day(daily);
        }
        for (id, name) in models {
            if let Some(q) = self.quota_for(id, name) {
                builder = builder.model_quota(*id, q);
            }
            let long = self.get_context(name, Scope::of_model(id), ContextWindow::OneMillion);
            if let Some(q) = long.and_then(AppliedQuota::quota) {
                builder = builder.long_context_quota(*id, q);
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
    /// that were not read as a model's quota: names in no known pattern, a model's
    /// requests-per-minute or daily quota without a tokens-per-minute one in its scope and
    /// context window. Quotas of other Bedrock features (batch jobs, agents, knowledge
    /// bases) are not listed; the account-wide daily quota is read
    /// ([`account_tokens_per_day`](Self::account_tokens_per_day)).
    pub fn unmapped(&self) -> Vec<UnmappedQuota> {
        self.listed
            .iter()
            .filter_map(|l| {
                let reason = match &l.parsed {
                    None => "not a per-model quota name this crate knows".to_owned(),
                    Some(QuotaName {
                        scope: Some(scope),
                        model: Some(model),
                        context,
                        ..
                    }) if self
                        .get_context(model, *scope, *context)
                        .is_none_or(|q| q.tokens_per_minute.is_none()) =>
                    {
                        "the model has no tokens-per-minute quota in this scope".to_owned()
                    }
                    Some(QuotaName {
                        scope: None,
                        model: Some(model),
                        ..
                    }) if !self.models.keys().any(|(m, _, _)| m == model) => {
                        "a daily quota of a model with no per-minute quota".to_owned()
                    }
                    Some(_) => return None,
                };
                Some(UnmappedQuota {
                    name: l.name.clone(),
                    value: l.value,
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

    const S4: &str = "Anthropic Claude Sonnet 4";

    #[test]
    fn names_map_onto_models_scopes_and_context_windows_and_the_rest_is_reported() {
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
                "Cross-region model inference tokens per minute for Anthropic Claude Sonnet 4 V1",
                200_000.0,
            ),
            (
                "Cross-region model inference requests per minute for Anthropic Claude Sonnet 4 V1",
                200.0,
            ),
            (
                "Global cross-region model inference tokens per minute for Anthropic Claude Sonnet 4 V1",
                300_000.0,
            ),
            (
                "Cross-region model inference tokens per minute for Anthropic Claude Sonnet 4 V1 1M Context Length",
                100_000.0,
            ),
            (
                "Global cross-region model inference tokens per day for Anthropic Claude Sonnet 4 V1",
                7e8,
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
            ("Cross-Model Account-Level Tokens Per Day", 5e9),
            ("Model invocation tokens per fortnight per minute for X", 1.0),
            ("Batch inference job size (in GB)", 5.0),
        ]);
        let q = a.quota_for(
            "anthropic.claude-3-5-sonnet-20240620-v1:0",
            "Anthropic Claude 3.5 Sonnet",
        );
        assert_eq!(q, Some(Quota::new(50, 400_000)));
        let us = "us.anthropic.claude-sonnet-4-20250514-v1:0";
        // The display name may carry the `V1` the account lists, or not.
        // The model's daily quota comes along, for the gate to enforce.
        let us_quota = Quota::new(200, 200_000).with_tokens_per_day(288_000_000);
        assert_eq!(a.quota_for(us, S4), Some(us_quota));
        assert_eq!(
            a.quota_for(us, "Anthropic Claude Sonnet 4 V1"),
            Some(us_quota)
        );
        // Global profiles have their own quota, with no RPM listed.
        let global = "global.anthropic.claude-sonnet-4-20250514-v1:0";
        assert_eq!(
            a.quota_for(global, S4),
            Some(Quota::tokens_per_minute(300_000).with_tokens_per_day(700_000_000))
        );
        // The 1M-context variant is its own quota.
        let long = a
            .get_context(S4, Scope::CrossRegion, ContextWindow::OneMillion)
            .unwrap();
        assert_eq!(long.quota(), Some(Quota::tokens_per_minute(100_000)));
        // A scope's own daily quota goes before the model's.
        assert_eq!(
            a.get(S4, Scope::Global).unwrap().tokens_per_day,
            Some(700_000_000)
        );
        assert_eq!(
            a.get(S4, Scope::CrossRegion).unwrap().tokens_per_day,
            Some(288_000_000)
        );
        assert_eq!(a.account_tokens_per_day(), Some(5_000_000_000));
        // The on-demand scope of a cross-Region-only model is not guessed from the other.
        assert_eq!(
            a.quota_for("anthropic.claude-sonnet-4-20250514-v1:0", S4),
            None
        );
        let unmapped: Vec<_> = a.unmapped().into_iter().map(|u| u.name).collect();
        assert_eq!(
            unmapped,
            [
                "On-demand InvokeModel requests per minute for Meta Llama 3 70B Instruct",
                "Model invocation max tokens per day for Amazon Nova Pro",
                "Model invocation tokens per fortnight per minute for X",
            ]
        );
        assert_eq!(a.ignored(), 1);
        assert_eq!(a.listed().len(), 12);
        assert!(a.listed().iter().all(|l| l.adjustable.is_none()));
        let models = [(us, S4), ("x", "Unknown Model")];
        assert_eq!(a.missing(&models), ["x"]);
        let cfg = a
            .configure(crate::ThrottleConfig::builder(), &models)
            .build()
            .unwrap();
        let _ = cfg;
    }
}
