//! Which quota a request spends from: the model (or inference profile), its context window and
//! the Region.

use std::{fmt, sync::Arc};

use http::Request;

use crate::{bedrock::path, estimate::Operation, ContextWindow, Scope};

/// The quota a request is charged to.
///
/// Bedrock's quotas are per model (or inference profile), per scope, per context window and
/// per Region. The model is the percent-decoded `{modelId}` of `/model/{modelId}/<operation>`,
/// so the scope ([`Scope::of_model`]) follows from it: an on-demand id, a geographic
/// cross-Region profile such as `us.anthropic.claude-sonnet-4-20250514-v1:0` and a `global.`
/// profile are keys of their own, as they are quotas of their own at AWS ("Quotas for the
/// bedrock-runtime endpoint",
/// <https://docs.aws.amazon.com/bedrock/latest/userguide/quotas-runtime.html>). The context
/// window is [`ContextWindow::Standard`] unless the estimate layer finds the request uses the
/// model's 1M-token context (over 200,000 input tokens, or Anthropic's `context-1m` beta):
/// that variant has quotas of its own (`… 1M Context Length` in Service Quotas). The Region comes from the host of an absolute URI,
/// `bedrock-runtime.{region}.amazonaws.com` (as a client such as hyper or the AWS SDK sends
/// it); never from a `Host` header, which in a server is the client's to choose: a Region
/// invented there would be a fresh copy of the model's quota. An OpenAI-compatible Chat
/// Completions request names its model in the body, where the estimate layer reads it; a
/// request on the `reserved` service tier is its model's [reserved](Self::reserved) key.
/// Requests that are not Bedrock model calls share the default key, whose `model` is `None`.
///
/// ```
/// use bedrock_throttle::QuotaKey;
///
/// let req = http::Request::post(
///     "https://bedrock-runtime.us-east-1.amazonaws.com/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/invoke",
/// )
/// .body(())
/// .unwrap();
/// let (key, _) = QuotaKey::from_request(&req);
/// assert_eq!(key.model(), Some("anthropic.claude-3-5-sonnet-20240620-v1:0"));
/// assert_eq!(key.region(), Some("us-east-1"));
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct QuotaKey {
    model: Option<Arc<str>>,
    region: Option<Arc<str>>,
    context: ContextWindow,
    reserved: bool,
}

impl QuotaKey {
    /// A key for `model` in `region`, standard context; `None` for either leaves it unknown.
    pub fn new(model: Option<&str>, region: Option<&str>) -> Self {
        Self {
            model: model.map(Arc::from),
            region: region.map(Arc::from),
            context: ContextWindow::Standard,
            reserved: false,
        }
    }

    /// The same key in context window `context`.
    ///
    /// ```
    /// use bedrock_throttle::{ContextWindow, QuotaKey};
    ///
    /// let standard = QuotaKey::new(Some("us.anthropic.claude-sonnet-4-20250514-v1:0"), None);
    /// let long = standard.clone().with_context(ContextWindow::OneMillion);
    /// assert_ne!(standard, long);
    /// assert_eq!(long.to_string(), "us.anthropic.claude-sonnet-4-20250514-v1:0 (1M context)");
    /// ```
    pub fn with_context(mut self, context: ContextWindow) -> Self {
        self.context = context;
        self
    }

    /// The context window whose quota the request spends.
    pub fn context(&self) -> ContextWindow {
        self.context
    }

    /// The scope of the model's quota ([`Scope::of_model`]); on-demand for the default key.
    pub fn scope(&self) -> Scope {
        self.model().map_or(Scope::OnDemand, Scope::of_model)
    }

    /// The same model and Region on Bedrock's `reserved` [service tier](crate::service_tier),
    /// whose capacity is bought apart from the on-demand quota: a key of its own.
    pub fn reserved(mut self) -> Self {
        self.reserved = true;
        self
    }

    /// Whether this is a [reserved-tier](Self::reserved) key.
    pub fn is_reserved(&self) -> bool {
        self.reserved
    }

    /// The model id or inference profile, percent-decoded.
    pub fn model(&self) -> Option<&str> {
        self.model.as_deref()
    }

    /// The AWS Region, when the request's host names one.
    pub fn region(&self) -> Option<&str> {
        self.region.as_deref()
    }

    /// The key and the Bedrock operation of a request, read from its path and its URI's host.
    pub fn from_request<B>(request: &Request<B>) -> (Self, Operation) {
        Self::from_uri(request.uri())
    }

    pub(crate) fn from_uri(uri: &http::Uri) -> (Self, Operation) {
        let (model, operation) = match path::model_and_operation(uri) {
            Some((model, operation)) => (model.map(Arc::from), operation),
            None => (None, Operation::Other),
        };
        let key = Self {
            model,
            region: path::region(uri).map(Arc::from),
            context: ContextWindow::Standard,
            reserved: false,
        };
        (key, operation)
    }
}

impl fmt::Display for QuotaKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.model, &self.region) {
            (Some(m), Some(r)) => write!(f, "{m} in {r}")?,
            (Some(m), None) => write!(f, "{m}")?,
            (None, Some(r)) => write!(f, "the default quota in {r}")?,
            (None, None) => write!(f, "the default quota")?,
        }
        if self.context == ContextWindow::OneMillion {
            f.write_str(" (1M context)")?;
        }
        if self.reserved {
            f.write_str(" (reserved tier)")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::HOST;

    fn key(uri: &str) -> (QuotaKey, Operation) {
        QuotaKey::from_request(&Request::post(uri).body(()).unwrap())
    }

    #[test]
    fn model_id_is_percent_decoded() {
        let (k, op) = key("/model/anthropic.claude-3-5-sonnet-20240620-v1%3A0/invoke");
        assert_eq!(k.model(), Some("anthropic.claude-3-5-sonnet-20240620-v1:0"));
        assert_eq!(op, Operation::Invoke);
        let (k, op) = key("/model/arn%3Aaws%3Abedrock%3Aus-east-1%3A123456789012%3Ainference-profile%2Fus.anthropic.claude-sonnet-4-20250514-v1%3A0/converse-stream");
        assert_eq!(
            k.model(),
            Some("arn:aws:bedrock:us-east-1:123456789012:inference-profile/us.anthropic.claude-sonnet-4-20250514-v1:0")
        );
        assert_eq!(op, Operation::ConverseStream);
    }

    #[test]
    fn every_operation_is_recognised() {
        for (suffix, op) in [
            ("invoke", Operation::Invoke),
            ("invoke-with-response-stream", Operation::InvokeStream),
            ("converse", Operation::Converse),
            ("converse-stream", Operation::ConverseStream),
            ("count-tokens", Operation::CountTokens),
        ] {
            let (k, got) = key(&format!("/model/m/{suffix}"));
            assert_eq!((k.model(), got), (Some("m"), op));
        }
    }

    #[test]
    fn other_paths_use_the_default_key() {
        for uri in [
            "/v1/chat/completions",
            "/model//invoke",
            "/model/m/delete",
            "/model/m",
            "/",
        ] {
            let (k, op) = key(uri);
            assert_eq!((k, op), (QuotaKey::default(), Operation::Other), "{uri}");
        }
    }

    #[test]
    fn region_comes_from_the_uri_host_never_the_host_header() {
        let (k, _) = key("https://bedrock-runtime.eu-west-3.amazonaws.com/model/m/invoke");
        assert_eq!(k.region(), Some("eu-west-3"));
        let (k, _) = key("https://bedrock-runtime-fips.us-gov-west-1.amazonaws.com/model/m/invoke");
        assert_eq!(k.region(), Some("us-gov-west-1"));
        let req = Request::post("/model/m/converse")
            .header(HOST, "bedrock-runtime.ap-northeast-1.amazonaws.com:443")
            .body(())
            .unwrap();
        // An origin-form request is a server's: its Host is the client's to choose, and a
        // Region invented there would be a fresh copy of the model's quota.
        assert_eq!(QuotaKey::from_request(&req).0.region(), None);
        let (k, _) = key("http://127.0.0.1:8080/model/m/invoke");
        assert_eq!(k.region(), None);
        let (k, _) = key("https://bedrock-runtime.example.org/model/m/invoke");
        assert_eq!(k.region(), None);
    }

    #[test]
    fn display_names_model_and_region() {
        assert_eq!(
            QuotaKey::new(Some("m"), Some("us-east-1")).to_string(),
            "m in us-east-1"
        );
        assert_eq!(QuotaKey::default().to_string(), "the default quota");
    }
}
