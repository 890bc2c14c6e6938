//! The gateway's configuration file (JSON): where it listens, how it reaches Bedrock, the
//! quotas of the account, and the tenants with their API keys.
//!
//! ```json
//! {
//!   "listen": "0.0.0.0:8443",
//!   "tls": { "cert": "/etc/gateway/tls.crt", "key": "/etc/gateway/tls.key" },
//!   "region": "us-east-1",
//!   "upstream_auth": "sigv4",
//!   "redis_url": "redis://redis.internal:6379/",
//!   "replicas": 3,
//!   "max_queued": 64,
//!   "max_wait_ms": 20000,
//!   "default_quota": { "rpm": 50, "tpm": 400000 },
//!   "models": {
//!     "anthropic.claude-3-haiku-20240307-v1:0": { "rpm": 100, "tpm": 200000 }
//!   },
//!   "tenants": {
//!     "search":  { "weight": 3,
//!                  "keys": ["sha256:2f43ddc4c3afccf6cc2b470d7cbca33a83db1e09dce89fa9c54d6677ce1de01e"] },
//!     "support": { "weight": 1, "cap": 0.2, "keys": ["gw-support-91c4"] },
//!     "reports": { "weight": 1, "priority": "batch",
//!                  "keys": ["gw-reports-2b8e", { "key": "gw-reports-oncall-5d10", "priority": "critical" }] }
//!   }
//! }
//! ```
//!
//! Every field but `tenants` and one quota may be left out; see [`GatewayConfig`].

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::{Path, PathBuf},
    time::Duration,
};

use bedrock_throttle::{
    BoxError, OutagePolicy, Overload, Priority, Quota, Tenant, TenantPolicy, ThrottleConfig,
};
use serde::Deserialize;

/// The whole file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    /// The address to listen on (`127.0.0.1:8080` when absent; `--listen` overrides it).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// A certificate chain and its key (PEM files) to serve HTTPS with; plain HTTP when
    /// absent (behind a load balancer that terminates TLS).
    pub tls: Option<TlsFiles>,
    /// The AWS Region of bedrock-runtime (`us-east-1` when absent).
    #[serde(default = "default_region")]
    pub region: String,
    /// The upstream endpoint; `https://bedrock-runtime.{region}.amazonaws.com` when absent.
    pub endpoint: Option<String>,
    /// How the gateway authenticates to Bedrock.
    #[serde(default)]
    pub upstream_auth: UpstreamAuth,
    /// A Redis URL: every replica with the same one spends from one quota per model.
    pub redis_url: Option<String>,
    /// How many replicas share the Redis quota; while Redis is down each spends
    /// `1 / replicas` of it on its own (1 when absent).
    #[serde(default = "one")]
    pub replicas: u32,
    /// Requests that may wait per model before more are refused (64 when absent).
    #[serde(default = "default_max_queued")]
    pub max_queued: usize,
    /// The longest a request waits for room before it is refused with a 429 (20 s when
    /// absent).
    #[serde(default = "default_max_wait_ms")]
    pub max_wait_ms: u64,
    /// The quota of every model without one of its own.
    pub default_quota: Option<QuotaConfig>,
    /// Quotas by model id, inference profile or ARN, as clients write it in the path.
    #[serde(default)]
    pub models: BTreeMap<String, QuotaConfig>,
    /// The tenants by name.
    pub tenants: BTreeMap<String, TenantConfig>,
}

/// The PEM files of the gateway's HTTPS listener.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// The certificate chain, the server's first.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
}

impl TlsFiles {
    /// The TLS configuration these files give.
    pub fn acceptor(&self) -> Result<tokio_rustls::TlsAcceptor, BoxError> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
        };
        crate::tls::acceptor(&read(&self.cert)?, &read(&self.key)?)
    }
}

/// How the gateway signs its requests to Bedrock.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum UpstreamAuth {
    /// SigV4 with the default AWS credential chain (environment, profile, SSO, web
    /// identity, ECS, EC2 instance metadata).
    #[default]
    Sigv4,
    /// A Bedrock API key from `AWS_BEARER_TOKEN_BEDROCK`, sent as `Authorization: Bearer`.
    ApiKey,
}

/// One quota: requests and tokens per minute (or per `period_secs`).
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaConfig {
    /// Requests per period; none when absent.
    pub rpm: Option<u32>,
    /// Tokens per period.
    pub tpm: u64,
    /// The quota period in seconds (60, Bedrock's minute, when absent).
    #[serde(default = "sixty")]
    pub period_secs: u64,
}

impl QuotaConfig {
    /// The crate's quota.
    pub fn quota(&self) -> Quota {
        Quota::new(self.rpm, self.tpm).with_period(Duration::from_secs(self.period_secs))
    }
}

/// A tenant: its share when tenants compete, an optional hard cap, and its API keys.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantConfig {
    /// Its weight in the fair order (1 when absent).
    #[serde(default = "one_f64")]
    pub weight: f64,
    /// The most it may take of each model's quota, a share in `(0, 1]`.
    pub cap: Option<f64>,
    /// The priority of its requests: `critical`, `interactive` (when absent) or `batch`.
    #[serde(default)]
    pub priority: PriorityName,
    /// The API keys its callers send as `Authorization: Bearer …`, each in clear or as
    /// `sha256:<hex>` of the key (see [`digest`]).
    pub keys: Vec<KeyConfig>,
}

/// One API key, with its own priority or the tenant's.
#[derive(Clone, Debug, Deserialize)]
#[serde(untagged)]
pub enum KeyConfig {
    /// A key with the tenant's priority.
    Key(String),
    /// A key with a priority of its own (e.g. an on-call key of a batch tenant).
    WithPriority {
        /// The key.
        key: String,
        /// Its priority.
        priority: PriorityName,
    },
}

/// A priority as the file writes it.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum PriorityName {
    /// [`Priority::Critical`].
    Critical,
    /// [`Priority::Interactive`].
    #[default]
    Interactive,
    /// [`Priority::Batch`].
    Batch,
}

impl From<PriorityName> for Priority {
    fn from(name: PriorityName) -> Self {
        match name {
            PriorityName::Critical => Priority::Critical,
            PriorityName::Interactive => Priority::Interactive,
            PriorityName::Batch => Priority::Batch,
        }
    }
}

/// Whom a key belongs to: what the gateway attaches to each of its requests.
#[derive(Clone, Debug)]
pub struct Caller {
    /// The tenant charged.
    pub tenant: Tenant,
    /// How urgent its requests are within the tenant.
    pub priority: Priority,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_region() -> String {
    "us-east-1".into()
}
fn default_max_queued() -> usize {
    64
}
fn default_max_wait_ms() -> u64 {
    20_000
}
fn one() -> u32 {
    1
}
fn one_f64() -> f64 {
    1.0
}
fn sixty() -> u64 {
    60
}

/// The SHA-256 of an API key, in lowercase hex: what the gateway looks a caller's key up
/// by, and what the file may list instead of the key (`"sha256:<hex>"`), so that it holds
/// no key in clear (`printf %s KEY | sha256sum`).
pub fn digest(key: &str) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(key.as_bytes()))
}

impl GatewayConfig {
    /// Reads and checks the file at `path`.
    pub fn load(path: &Path) -> Result<Self, BoxError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()).into())
    }

    /// Parses and checks a configuration.
    pub fn parse(text: &str) -> Result<Self, BoxError> {
        let config: Self = serde_json::from_str(text)?;
        if config.default_quota.is_none() && config.models.is_empty() {
            return Err("no quota: set default_quota or models".into());
        }
        if config.replicas == 0 {
            return Err("replicas must be at least 1".into());
        }
        // A key names one caller; the same key under two tenants is a mistake to stop at.
        let mut seen = std::collections::HashSet::new();
        for (shown, digest, _) in config.callers() {
            let digest = digest.map_err(|e| format!("API key {shown:?}: {e}"))?;
            if shown.is_empty() || !seen.insert(digest) {
                return Err(format!("API key {shown:?} is empty or listed twice").into());
            }
        }
        Ok(config)
    }

    /// The upstream endpoint.
    pub fn endpoint(&self) -> String {
        self.endpoint
            .clone()
            .unwrap_or_else(|| format!("https://bedrock-runtime.{}.amazonaws.com", self.region))
    }

    /// Every API key as the file writes it, with its [`digest`] (the file may give the
    /// digest itself, as `sha256:<hex>`) and the caller it names.
    pub fn callers(&self) -> impl Iterator<Item = (&str, Result<String, String>, Caller)> + '_ {
        self.tenants.iter().flat_map(|(name, tenant)| {
            tenant.keys.iter().map(move |key| {
                let (key, priority) = match key {
                    KeyConfig::Key(key) => (key.as_str(), tenant.priority),
                    KeyConfig::WithPriority { key, priority } => (key.as_str(), *priority),
                };
                let digest = match key.strip_prefix("sha256:") {
                    Some(hex) if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) => {
                        Ok(hex.to_ascii_lowercase())
                    }
                    Some(_) => Err("a sha256: key needs 64 hex digits".to_owned()),
                    None => Ok(digest(key)),
                };
                let caller = Caller {
                    tenant: Tenant::new(name),
                    priority: priority.into(),
                };
                (key, digest, caller)
            })
        })
    }

    /// The throttle's configuration: the quotas, the tenants' weights and caps, shedding
    /// with a bounded queue (what servers want: see the README's "In a server"), and the
    /// Redis ledger when a URL is given.
    pub fn throttle(&self) -> Result<ThrottleConfig, BoxError> {
        let mut builder = ThrottleConfig::builder()
            .overload(Overload::Shed)
            .max_queued(self.max_queued)
            .max_wait(Duration::from_millis(self.max_wait_ms))
            // The tenants are the file's, so the label's values are bounded by it.
            .tenant_metrics(true);
        if let Some(quota) = &self.default_quota {
            builder = builder.quota(quota.quota());
        }
        for (model, quota) in &self.models {
            builder = builder.model_quota(model, quota.quota());
        }
        for (name, tenant) in &self.tenants {
            let mut policy = TenantPolicy::weight(tenant.weight);
            if let Some(cap) = tenant.cap {
                policy = policy.with_cap(cap);
            }
            builder = builder.tenant(name.as_str(), policy);
        }
        if let Some(url) = &self.redis_url {
            builder = builder
                .ledger(bedrock_throttle::RedisLedger::open(url)?)
                .outage(OutagePolicy::FailOpen {
                    share: 1.0 / f64::from(self.replicas),
                });
        }
        Ok(builder.build()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_example_parses() {
        let doc = include_str!("config.rs");
        let json: String = doc
            .lines()
            .skip_while(|l| !l.starts_with("//! ```json"))
            .skip(1)
            .take_while(|l| !l.starts_with("//! ```"))
            .map(|l| l.trim_start_matches("//!"))
            .collect::<Vec<_>>()
            .join("\n");
        let config = GatewayConfig::parse(&json).unwrap();
        assert_eq!(config.callers().count(), 4);
        // The search key is listed by its digest.
        let search: Vec<_> = config
            .callers()
            .filter(|(_, _, c)| c.tenant.as_str() == "search")
            .collect();
        assert_eq!(
            search[0].1.as_deref(),
            Ok(digest("gw-search-7f3a").as_str())
        );
        assert_eq!(config.upstream_auth, UpstreamAuth::Sigv4);
    }

    #[test]
    fn a_key_may_be_listed_by_its_digest() {
        let config = |keys: &str| {
            GatewayConfig::parse(&format!(
                r#"{{"default_quota": {{"tpm": 1000}}, "tenants": {{"a": {{"keys": {keys}}}}}}}"#
            ))
        };
        let listed = format!(r#"["sha256:{}"]"#, digest("k-1").to_uppercase());
        let (_, found, _) = config(&listed).unwrap().callers().next().unwrap();
        assert_eq!(found.unwrap(), digest("k-1"));
        // The same key twice, once by its digest: refused; so is a digest cut short.
        let twice = format!(r#"["k-1", "sha256:{}"]"#, digest("k-1"));
        assert!(config(&twice).is_err());
        assert!(config(r#"["sha256:abc"]"#).is_err());
    }
}
