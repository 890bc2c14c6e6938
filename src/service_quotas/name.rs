//! Bedrock's quota names in Service Quotas, read as scope, limit, model and context window.

use crate::scope::{ContextWindow, Scope};

/// What a quota limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[non_exhaustive]
pub enum Limit {
    /// Tokens per minute.
    TokensPerMinute,
    /// Requests per minute.
    RequestsPerMinute,
    /// Tokens per day.
    TokensPerDay,
}

/// A Bedrock quota name read as scope, limit, model display name and context window.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct QuotaName {
    /// The requests it counts; `None` for a daily quota named without a scope
    /// (`Model invocation max tokens per day for …`, the account-wide one), which counts
    /// every scope.
    pub scope: Option<Scope>,
    /// What it limits.
    pub limit: Limit,
    /// The model's display name as Service Quotas spells it, without a trailing ` V1`
    /// (real accounts list `… for Anthropic Claude Sonnet 4 V1` beside `… for Anthropic
    /// Claude Sonnet 4`; a later version such as ` V2` is another model and stays); `None`
    /// for the account-wide `Cross-Model …` quota.
    pub model: Option<String>,
    /// The context window it counts.
    pub context: ContextWindow,
}

impl QuotaName {
    /// Reads a Bedrock inference quota name; `None` for any other name. Matching ignores
    /// case. The names read, with `${model}` a display name (AWS, "Quotas for the
    /// bedrock-runtime endpoint",
    /// <https://docs.aws.amazon.com/bedrock/latest/userguide/quotas-runtime.html>, and
    /// names real accounts list):
    ///
    /// | name | scope | limit |
    /// |---|---|---|
    /// | `On-demand InvokeModel {tokens,requests} per minute for ${model}` | on-demand | TPM, RPM |
    /// | `On-demand model inference {tokens,requests} per minute for ${model}` | on-demand | TPM, RPM |
    /// | `On-demand model inference tokens per day for ${model}` | on-demand | tokens per day |
    /// | `Cross-Region InvokeModel … for ${model}`, `Cross-region model inference … for ${model}` | cross-Region | as above |
    /// | `Global cross-region model inference … for ${model}` | global | as above |
    /// | `Model invocation max tokens per day for ${model}` | every scope | tokens per day |
    /// | `Cross-Model Account-Level Tokens Per Day`, `Cross-Model Max Tokens Per Day` | every scope, every model | tokens per day |
    ///
    /// A model name ending in `1M Context Length` is the model's 1M-context variant; a
    /// trailing ` V1` is dropped from the model name.
    ///
    /// ```
    /// use bedrock_throttle::service_quotas::{ContextWindow, Limit, QuotaName, Scope};
    ///
    /// let n = QuotaName::parse(
    ///     "Global cross-region model inference tokens per minute for Anthropic Claude Sonnet 4 V1 1M Context Length",
    /// )
    /// .unwrap();
    /// assert_eq!(n.scope, Some(Scope::Global));
    /// assert_eq!(n.limit, Limit::TokensPerMinute);
    /// assert_eq!(n.model.as_deref(), Some("Anthropic Claude Sonnet 4"));
    /// assert_eq!(n.context, ContextWindow::OneMillion);
    /// let account = QuotaName::parse("Cross-Model Account-Level Tokens Per Day").unwrap();
    /// assert_eq!((account.scope, account.limit, account.model), (None, Limit::TokensPerDay, None));
    /// assert!(QuotaName::parse("Batch inference job size (in GB)").is_none());
    /// ```
    pub fn parse(name: &str) -> Option<Self> {
        let name = name.trim();
        if [
            "Cross-Model Account-Level Tokens Per Day",
            "Cross-Model Max Tokens Per Day",
        ]
        .iter()
        .any(|n| n.eq_ignore_ascii_case(name))
        {
            return Some(Self {
                scope: None,
                limit: Limit::TokensPerDay,
                model: None,
                context: ContextWindow::Standard,
            });
        }
        if let Some(model) = strip_prefix_ci(name, "Model invocation max tokens per day for ") {
            return Self::with_model(None, Limit::TokensPerDay, model);
        }
        // Longest first: "Global cross-region" before "Cross-region" cannot clash, since
        // each is matched at the start.
        let (scope, rest) = [
            ("Global cross-region ", Scope::Global),
            ("Cross-region ", Scope::CrossRegion),
            ("On-demand ", Scope::OnDemand),
        ]
        .iter()
        .find_map(|(p, s)| strip_prefix_ci(name, p).map(|rest| (*s, rest)))?;
        let rest = strip_prefix_ci(rest, "InvokeModel ")
            .or_else(|| strip_prefix_ci(rest, "model inference "))?;
        let (limit, model) = [
            ("tokens per minute for ", Limit::TokensPerMinute),
            ("requests per minute for ", Limit::RequestsPerMinute),
            ("tokens per day for ", Limit::TokensPerDay),
        ]
        .iter()
        .find_map(|(p, l)| strip_prefix_ci(rest, p).map(|m| (*l, m)))?;
        Self::with_model(Some(scope), limit, model)
    }

    fn with_model(scope: Option<Scope>, limit: Limit, model: &str) -> Option<Self> {
        let (model, context) = match strip_suffix_ci(model.trim(), " 1M Context Length") {
            Some(m) => (m, ContextWindow::OneMillion),
            None => (model.trim(), ContextWindow::Standard),
        };
        let model = display_name(model);
        (!model.is_empty()).then(|| Self {
            scope,
            limit,
            model: Some(model.to_owned()),
            context,
        })
    }
}

/// A model display name as quotas are filed under: trimmed, without a trailing ` V1`.
pub(crate) fn display_name(name: &str) -> &str {
    let name = name.trim();
    if name.eq_ignore_ascii_case("V1") {
        return "";
    }
    strip_suffix_ci(name, " V1").unwrap_or(name).trim_end()
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

fn strip_suffix_ci<'a>(s: &'a str, suffix: &str) -> Option<&'a str> {
    let cut = s.len().checked_sub(suffix.len())?;
    let tail = s.get(cut..)?;
    tail.eq_ignore_ascii_case(suffix).then(|| &s[..cut])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(name: &str) -> (Option<Scope>, Limit, Option<String>, ContextWindow) {
        let n = QuotaName::parse(name).unwrap_or_else(|| panic!("unread: {name}"));
        (n.scope, n.limit, n.model, n.context)
    }

    #[test]
    fn names_real_accounts_list_are_read() {
        use ContextWindow::*;
        use Limit::*;
        let s4 = || Some("Anthropic Claude Sonnet 4".to_owned());
        let cases = [
            ("Cross-region model inference tokens per minute for Anthropic Claude Sonnet 4 V1", (Some(Scope::CrossRegion), TokensPerMinute, s4(), Standard)),
            ("Global cross-region model inference tokens per minute for Anthropic Claude Sonnet 4 V1", (Some(Scope::Global), TokensPerMinute, s4(), Standard)),
            ("Global cross-region model inference requests per minute for Anthropic Claude Sonnet 4 V1", (Some(Scope::Global), RequestsPerMinute, s4(), Standard)),
            ("On-demand model inference tokens per day for Anthropic Claude Sonnet 4 V1", (Some(Scope::OnDemand), TokensPerDay, s4(), Standard)),
            ("Cross-region model inference tokens per day for Anthropic Claude Sonnet 4", (Some(Scope::CrossRegion), TokensPerDay, s4(), Standard)),
            ("Cross-region model inference tokens per minute for Anthropic Claude Sonnet 4 V1 1M Context Length", (Some(Scope::CrossRegion), TokensPerMinute, s4(), OneMillion)),
            ("On-demand InvokeModel tokens per minute for Anthropic Claude Sonnet 4", (Some(Scope::OnDemand), TokensPerMinute, s4(), Standard)),
            ("Cross-Region InvokeModel requests per minute for Anthropic Claude Sonnet 4", (Some(Scope::CrossRegion), RequestsPerMinute, s4(), Standard)),
            ("Model invocation max tokens per day for Anthropic Claude Sonnet 4", (None, TokensPerDay, s4(), Standard)),
            ("Cross-Model Account-Level Tokens Per Day", (None, TokensPerDay, None, Standard)),
            ("Cross-Model Max Tokens Per Day", (None, TokensPerDay, None, Standard)),
            // A later version is another model.
            ("On-demand InvokeModel tokens per minute for Anthropic Claude 3.5 Sonnet V2", (Some(Scope::OnDemand), TokensPerMinute, Some("Anthropic Claude 3.5 Sonnet V2".to_owned()), Standard)),
            ("on-demand model inference REQUESTS PER MINUTE for Amazon Nova Pro", (Some(Scope::OnDemand), RequestsPerMinute, Some("Amazon Nova Pro".to_owned()), Standard)),
        ];
        for (name, want) in cases {
            assert_eq!(read(name), want, "{name}");
        }
        for other in [
            "Batch inference job size (in GB)",
            "Cross-region model inference tokens per minute for ",
            "Cross-region model inference tokens per minute for  V1",
            "On-demand latency-optimized model inference tokens per minute for Anthropic Claude 3.5 Haiku",
            "Model units per provisioned model for Anthropic Claude",
        ] {
            assert_eq!(QuotaName::parse(other), None, "{other}");
        }
    }
}
