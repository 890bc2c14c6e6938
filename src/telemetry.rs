//! What the layers report: one `tracing` span per request, `metrics` per quota key, and the
//! counters behind [`ThrottleConfig::stats`](crate::ThrottleConfig::stats).
//!
//! Nothing here ever sees a request or response body or a header: the span and the events
//! carry only the quota key, token counts, durations, attempt counts, statuses and outcome
//! names.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering::Relaxed},
        Arc, Mutex, OnceLock, PoisonError,
    },
    time::Duration,
};

use http::{Request, StatusCode};
use metrics::{Counter, Gauge, Histogram, SharedString};
use tokio::time::Instant;
use tracing::{field::Empty, Span};

use crate::{
    estimate::EstimateMethod,
    ledger::KeyLedger,
    tenant::{Priority, Tenant},
    BoxError, QuotaKey, ThrottleError, ThrottleKind,
};

/// A class's index in [`ThrottleKind::ALL`].
fn kind_index(kind: ThrottleKind) -> usize {
    ThrottleKind::ALL
        .iter()
        .position(|k| *k == kind)
        .unwrap_or(ThrottleKind::ALL.len() - 1)
}

/// Names of the metrics, all labelled `model` and `region` (and `tier="reserved"` for a
/// reserved-tier key), the throttle counter also `kind` (see the README's table).
pub(crate) mod names {
    pub(crate) const ADMITTED: &str = "bedrock_throttle_admitted_total";
    pub(crate) const WAITED: &str = "bedrock_throttle_waited_total";
    pub(crate) const THROTTLED: &str = "bedrock_throttle_upstream_throttled_total";
    pub(crate) const RETRIED: &str = "bedrock_throttle_retried_total";
    pub(crate) const SHED: &str = "bedrock_throttle_shed_total";
    pub(crate) const TIMED_OUT: &str = "bedrock_throttle_timed_out_total";
    pub(crate) const TOKENS_RESERVED: &str = "bedrock_throttle_tokens_reserved_total";
    pub(crate) const TOKENS_SETTLED: &str = "bedrock_throttle_tokens_settled_total";
    pub(crate) const INPUT_ESTIMATED: &str = "bedrock_throttle_input_tokens_estimated_total";
    pub(crate) const INPUT_ACTUAL: &str = "bedrock_throttle_input_tokens_actual_total";
    pub(crate) const WAIT_SECONDS: &str = "bedrock_throttle_wait_seconds";
    pub(crate) const QUEUE_DEPTH: &str = "bedrock_throttle_queue_depth";
    pub(crate) const EFFECTIVE_TPM: &str = "bedrock_throttle_effective_tokens_per_minute";
    pub(crate) const EFFECTIVE_RPM: &str = "bedrock_throttle_effective_requests_per_minute";
    pub(crate) const USAGE_CLAMPED: &str = "bedrock_throttle_usage_clamped_total";
}

/// The span of one request, in the request's extensions so every layer finds it.
#[derive(Clone, Debug)]
pub(crate) struct RequestTrace {
    span: Span,
    shared: Arc<TraceState>,
    /// A retry layer is above: it records the outcome, not the gate.
    retry_above: bool,
}

/// What the layers of one request accumulate across attempts.
#[derive(Debug, Default)]
struct TraceState {
    /// Time waited in the gate over all attempts, in microseconds.
    waited_us: AtomicU64,
    /// The quota key and estimate have been recorded (once per request).
    described: AtomicBool,
    /// The reservation has been recorded.
    reserved: AtomicBool,
    /// The tenant and priority have been recorded.
    tenant: AtomicBool,
}

/// A layer's hold on the request span. The layer that made it (the outermost) enters it
/// while polled; the layer that knows the final result records the outcome.
///
/// Each field is recorded once: `tracing-subscriber`'s `fmt` layer appends every
/// `record` to the span's fields, so a field recorded per attempt would repeat.
#[derive(Debug)]
pub(crate) struct Trace {
    pub(crate) span: Span,
    shared: Arc<TraceState>,
    owned: bool,
    retry_above: bool,
}

impl Trace {
    /// The span of `request`: the one an outer layer attached, or a new one attached now.
    pub(crate) fn attach<B>(request: &mut Request<B>) -> Self {
        if let Some(t) = request.extensions().get::<RequestTrace>() {
            return Self {
                span: t.span.clone(),
                shared: t.shared.clone(),
                owned: false,
                retry_above: t.retry_above,
            };
        }
        let span = tracing::debug_span!(
            target: "bedrock_throttle",
            "bedrock_request",
            quota_key = Empty,
            tenant = Empty,
            priority = Empty,
            input_tokens = Empty,
            output_limit = Empty,
            estimate = Empty,
            reserved_tokens = Empty,
            wait_ms = Empty,
            attempts = Empty,
            settled_tokens = Empty,
            status = Empty,
            outcome = Empty,
        );
        let shared = Arc::new(TraceState::default());
        request.extensions_mut().insert(RequestTrace {
            span: span.clone(),
            shared: shared.clone(),
            retry_above: false,
        });
        Self {
            span,
            shared,
            owned: true,
            retry_above: false,
        }
    }

    /// The retry layer's hold: the layers below leave the outcome to it.
    pub(crate) fn attach_retry<B>(request: &mut Request<B>) -> Self {
        let trace = Self::attach(request);
        if let Some(t) = request.extensions_mut().get_mut::<RequestTrace>() {
            t.retry_above = true;
        }
        trace
    }

    /// The span to enter while polling: only the layer that made it enters it (the inner
    /// layers are polled inside).
    pub(crate) fn entered(&self) -> Option<tracing::span::Entered<'_>> {
        self.owned.then(|| self.span.enter())
    }

    /// Records the quota key and the estimate, the first time any layer knows them.
    pub(crate) fn describe(
        &self,
        key: &QuotaKey,
        input: u64,
        output_limit: u64,
        method: Option<EstimateMethod>,
    ) {
        if self.shared.described.swap(true, Relaxed) {
            return;
        }
        self.span.record("quota_key", tracing::field::display(key));
        self.span.record("input_tokens", input);
        self.span.record("output_limit", output_limit);
        if let Some(m) = method {
            self.span.record("estimate", tracing::field::debug(m));
        }
    }

    /// Records the request's tenant (when it has one) and priority, at the first attempt.
    pub(crate) fn tenant(&self, tenant: Option<&Tenant>, priority: Priority) {
        if self.shared.tenant.swap(true, Relaxed) {
            return;
        }
        if let Some(t) = tenant {
            self.span.record("tenant", t.as_str());
        }
        self.span
            .record("priority", tracing::field::debug(priority));
    }

    /// Records the tokens the gate reserves, at the first attempt.
    pub(crate) fn reserved(&self, tokens: u64) {
        if !self.shared.reserved.swap(true, Relaxed) {
            self.span.record("reserved_tokens", tokens);
        }
    }

    /// Adds one attempt's wait in the gate's queue to the request's total.
    pub(crate) fn waited(&self, wait: Duration) {
        let us = u64::try_from(wait.as_micros()).unwrap_or(u64::MAX);
        self.shared.waited_us.fetch_add(us, Relaxed);
    }

    /// Whether this layer records the outcome: the gate does only without a retry layer
    /// above it.
    pub(crate) fn is_final(&self) -> bool {
        !self.retry_above
    }

    fn finish(&self, outcome: &'static str) {
        let waited = self.shared.waited_us.load(Relaxed);
        self.span.record("wait_ms", waited / 1_000);
        self.span.record("outcome", outcome);
    }

    /// The request's final response head.
    pub(crate) fn response(&self, status: StatusCode) {
        if !self.is_final() {
            return;
        }
        self.span.record("status", status.as_u16());
        let outcome = if status.is_success() {
            "success"
        } else if status == StatusCode::TOO_MANY_REQUESTS {
            "throttled"
        } else {
            "error_response"
        };
        self.finish(outcome);
    }

    /// The request's final error.
    pub(crate) fn error(&self, error: &BoxError) {
        if !self.is_final() {
            return;
        }
        let outcome = match error.downcast_ref::<ThrottleError>() {
            Some(ThrottleError::BodyTooLarge { .. }) => "body_too_large",
            Some(ThrottleError::Body(_)) => "body_error",
            Some(ThrottleError::BodyTimeout { .. }) => "body_timeout",
            Some(ThrottleError::NeverFits { .. }) => "never_fits",
            Some(ThrottleError::DailyQuotaExhausted { .. }) => "daily_quota_exhausted",
            Some(ThrottleError::MaxWaitExceeded { .. }) => "max_wait_exceeded",
            Some(ThrottleError::SendDeadlinePassed { .. }) => "send_deadline_passed",
            Some(ThrottleError::Overloaded { .. }) => "overloaded",
            Some(ThrottleError::LedgerUnavailable { .. }) => "ledger_unavailable",
            Some(ThrottleError::Upstream { .. }) => "upstream_error",
            None => "inner_error",
        };
        self.finish(outcome);
    }
}

/// The per-key counters and metric handles, shared by every layer of one configuration.
///
/// Only the gate creates entries, for the keys it files (bounded: see [`crate::keys`]).
#[derive(Debug, Default)]
pub(crate) struct Telemetry {
    keys: Mutex<HashMap<QuotaKey, Arc<KeyTelemetry>>>,
    /// Whether the per-tenant series carry a `tenant` label.
    tenant_label: bool,
}

impl Telemetry {
    /// Telemetry whose per-tenant series carry a `tenant` label when `tenant_label`.
    pub(crate) fn new(tenant_label: bool) -> Self {
        Self {
            keys: Mutex::default(),
            tenant_label,
        }
    }

    fn keys(&self) -> std::sync::MutexGuard<'_, HashMap<QuotaKey, Arc<KeyTelemetry>>> {
        self.keys.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The counters of `key`, which the gate filed, created (and its metrics registered) on
    /// first use.
    pub(crate) fn key(&self, key: &QuotaKey) -> Arc<KeyTelemetry> {
        let mut keys = self.keys();
        if let Some(k) = keys.get(key) {
            return k.clone();
        }
        let k = Arc::new(KeyTelemetry::new(key.clone(), self.tenant_label));
        keys.insert(key.clone(), k.clone());
        k
    }

    /// The counters of `key`, if the gate has metered it (under that spelling or its
    /// canonical one, see [`crate::keys::canonical`]).
    pub(crate) fn get(&self, key: &QuotaKey) -> Option<Arc<KeyTelemetry>> {
        self.keys().get(&*crate::keys::canonical(key)).cloned()
    }

    /// Forgets `key` (evicted at rest: see [`crate::keys`]).
    pub(crate) fn remove(&self, key: &QuotaKey) {
        self.keys().remove(key);
    }

    /// Every key seen so far.
    pub(crate) fn all(&self) -> Vec<Arc<KeyTelemetry>> {
        self.keys().values().cloned().collect()
    }
}

/// Metric handles of one key, registered once with the recorder installed at that time.
#[derive(Debug)]
struct Handles {
    /// Per [`ThrottleKind`], in the order of [`ThrottleKind::ALL`], labelled `kind`.
    throttled: [Counter; 4],
    retried: Counter,
    input_estimated: Counter,
    input_actual: Counter,
    tpm: Gauge,
    /// Registered only for a key with a request quota.
    rpm: OnceLock<Gauge>,
    labels: Vec<(&'static str, SharedString)>,
}

/// The `tenant` label's value for the default tenant: requests without a tenant and
/// tenants without a policy of their own.
pub(crate) const DEFAULT_TENANT_LABEL: &str = "(default)";

/// Metric handles of what each attempt does at a key, registered per tenant: labelled
/// `tenant` with [`ThrottleConfigBuilder::tenant_metrics`](crate::ThrottleConfigBuilder::tenant_metrics),
/// else the same series for every tenant of the key.
#[derive(Debug)]
struct AttemptHandles {
    admitted: Counter,
    waited: Counter,
    shed: Counter,
    timed_out: Counter,
    tokens_reserved: Counter,
    tokens_settled: Counter,
    wait: Histogram,
    queue: Gauge,
}

impl AttemptHandles {
    fn new(labels: &[(&'static str, SharedString)]) -> Self {
        Self {
            admitted: metrics::counter!(names::ADMITTED, labels),
            waited: metrics::counter!(names::WAITED, labels),
            shed: metrics::counter!(names::SHED, labels),
            timed_out: metrics::counter!(names::TIMED_OUT, labels),
            tokens_reserved: metrics::counter!(names::TOKENS_RESERVED, labels),
            tokens_settled: metrics::counter!(names::TOKENS_SETTLED, labels),
            wait: metrics::histogram!(names::WAIT_SECONDS, labels),
            queue: metrics::gauge!(names::QUEUE_DEPTH, labels),
        }
    }
}

/// One key's counters: plain atomics for [`stats`](crate::ThrottleConfig::stats), mirrored
/// to the `metrics` recorder.
#[derive(Debug)]
pub(crate) struct KeyTelemetry {
    pub(crate) key: QuotaKey,
    pub(crate) admitted: AtomicU64,
    pub(crate) waited: AtomicU64,
    pub(crate) throttled: AtomicU64,
    /// `throttled` per [`ThrottleKind`], in the order of [`ThrottleKind::ALL`].
    pub(crate) throttled_by_kind: [AtomicU64; 4],
    pub(crate) retried: AtomicU64,
    pub(crate) shed: AtomicU64,
    pub(crate) timed_out: AtomicU64,
    pub(crate) tokens_reserved: AtomicU64,
    pub(crate) tokens_settled: AtomicU64,
    pub(crate) input_estimated: AtomicU64,
    pub(crate) input_actual: AtomicU64,
    pub(crate) queued: AtomicU64,
    /// The key's counters per tenant (see [`TenantTelemetry`]).
    tenants: Mutex<HashMap<Option<Tenant>, Arc<TenantTelemetry>>>,
    /// Whether the tenants' series carry a `tenant` label.
    tenant_label: bool,
    m: Handles,
}

/// One tenant's counters at one key, for [`stats`](crate::ThrottleConfig::stats).
///
/// Only tenants with a policy of their own have entries; every other tenant and every
/// request without a tenant count under `None`, as they share the default policy and its
/// cap ([`TenantSettings::cap`](crate::tenant::TenantSettings::cap)). So a header value
/// chosen by a caller never brings a new entry.
#[derive(Debug)]
pub(crate) struct TenantTelemetry {
    pub(crate) tenant: Option<Tenant>,
    pub(crate) admitted: AtomicU64,
    pub(crate) shed: AtomicU64,
    pub(crate) timed_out: AtomicU64,
    pub(crate) queued: AtomicU64,
    pub(crate) tokens_reserved: AtomicU64,
    pub(crate) tokens_settled: AtomicU64,
    m: AttemptHandles,
}

fn label(v: Option<&str>) -> SharedString {
    SharedString::from(v.unwrap_or("").to_owned())
}

impl KeyTelemetry {
    fn new(key: QuotaKey, tenant_label: bool) -> Self {
        let mut labels = vec![
            ("model", label(key.model())),
            ("region", label(key.region())),
        ];
        // The 1M-context variant is a quota of its own: its series are told apart.
        if key.context() == crate::ContextWindow::OneMillion {
            labels.push(("context", SharedString::const_str("1m")));
        }
        // A model's reserved capacity is a key of its own: its series must not be the
        // on-demand key's.
        if key.is_reserved() {
            labels.push(("tier", SharedString::const_str("reserved")));
        }
        let l = || {
            labels
                .iter()
                .map(|(k, v)| (*k, v.clone()))
                .collect::<Vec<_>>()
        };
        let m = Handles {
            throttled: ThrottleKind::ALL.map(|kind| {
                let mut labels = l();
                labels.push(("kind", SharedString::const_str(kind.as_str())));
                metrics::counter!(names::THROTTLED, &labels)
            }),
            retried: metrics::counter!(names::RETRIED, &l()),
            input_estimated: metrics::counter!(names::INPUT_ESTIMATED, &l()),
            input_actual: metrics::counter!(names::INPUT_ACTUAL, &l()),
            tpm: metrics::gauge!(names::EFFECTIVE_TPM, &l()),
            rpm: OnceLock::new(),
            labels: l(),
        };
        Self {
            key,
            admitted: AtomicU64::new(0),
            waited: AtomicU64::new(0),
            throttled: AtomicU64::new(0),
            throttled_by_kind: Default::default(),
            retried: AtomicU64::new(0),
            shed: AtomicU64::new(0),
            timed_out: AtomicU64::new(0),
            tokens_reserved: AtomicU64::new(0),
            tokens_settled: AtomicU64::new(0),
            input_estimated: AtomicU64::new(0),
            input_actual: AtomicU64::new(0),
            queued: AtomicU64::new(0),
            tenants: Mutex::default(),
            tenant_label,
            m,
        }
    }

    /// The counters of `tenant` at this key, created on first use. `tenant` must already be
    /// folded: a tenant with a policy of its own, else `None`.
    pub(crate) fn tenant(&self, tenant: Option<Tenant>) -> Arc<TenantTelemetry> {
        let mut tenants = self.tenants.lock().unwrap_or_else(PoisonError::into_inner);
        tenants
            .entry(tenant.clone())
            .or_insert_with(|| {
                let mut labels = self.m.labels.clone();
                if self.tenant_label {
                    let name = tenant.as_ref().map_or(DEFAULT_TENANT_LABEL, Tenant::as_str);
                    labels.push(("tenant", SharedString::from(name.to_owned())));
                }
                Arc::new(TenantTelemetry {
                    tenant,
                    admitted: AtomicU64::new(0),
                    shed: AtomicU64::new(0),
                    timed_out: AtomicU64::new(0),
                    queued: AtomicU64::new(0),
                    tokens_reserved: AtomicU64::new(0),
                    tokens_settled: AtomicU64::new(0),
                    m: AttemptHandles::new(&labels),
                })
            })
            .clone()
    }

    /// The tenants seen at this key.
    pub(crate) fn tenants(&self) -> Vec<Arc<TenantTelemetry>> {
        let tenants = self.tenants.lock().unwrap_or_else(PoisonError::into_inner);
        tenants.values().cloned().collect()
    }

    /// An attempt of `tenant` was admitted with `tokens` reserved after waiting `wait`.
    fn admitted(&self, tenant: &TenantTelemetry, tokens: u64, wait: Duration) {
        self.admitted.fetch_add(1, Relaxed);
        self.tokens_reserved.fetch_add(tokens, Relaxed);
        tenant.admitted.fetch_add(1, Relaxed);
        tenant.tokens_reserved.fetch_add(tokens, Relaxed);
        tenant.m.admitted.increment(1);
        tenant.m.tokens_reserved.increment(tokens);
        tenant.m.wait.record(wait.as_secs_f64());
    }

    /// The current rates per period of the key's quota, as per-minute gauges.
    pub(crate) fn rates(&self, rates: (f64, Option<f64>), period: Duration) {
        let per_minute = 60.0 / period.as_secs_f64();
        self.m.tpm.set(rates.0 * per_minute);
        if let Some(r) = rates.1 {
            let rpm =
                (self.m.rpm).get_or_init(|| metrics::gauge!(names::EFFECTIVE_RPM, &self.m.labels));
            rpm.set(r * per_minute);
        }
    }

    /// An attempt of `tenant` joined the key's queue; the guard leaves it.
    fn queued(self: &Arc<Self>, tenant: &Arc<TenantTelemetry>) -> QueueGuard {
        self.waited.fetch_add(1, Relaxed);
        self.queued.fetch_add(1, Relaxed);
        tenant.queued.fetch_add(1, Relaxed);
        tenant.m.waited.increment(1);
        tenant.m.queue.increment(1.0);
        QueueGuard {
            key: self.clone(),
            tenant: tenant.clone(),
            since: Instant::now(),
        }
    }

    /// Upstream refused an attempt for lack of quota.
    pub(crate) fn throttled(&self, kind: ThrottleKind) {
        let i = kind_index(kind);
        self.throttled.fetch_add(1, Relaxed);
        self.throttled_by_kind[i].fetch_add(1, Relaxed);
        self.m.throttled[i].increment(1);
    }

    /// The retry layer scheduled another attempt.
    pub(crate) fn retried(&self) {
        self.retried.fetch_add(1, Relaxed);
        self.m.retried.increment(1);
    }

    /// An attempt of `tenant` was shed: a queue was full.
    fn shed(&self, tenant: &TenantTelemetry) {
        self.shed.fetch_add(1, Relaxed);
        tenant.shed.fetch_add(1, Relaxed);
        tenant.m.shed.increment(1);
    }

    /// An attempt of `tenant` found no room by its deadline: `max_wait`, or its
    /// [`SendDeadline`](crate::SendDeadline).
    pub(crate) fn timed_out(&self, tenant: &TenantTelemetry) {
        self.timed_out.fetch_add(1, Relaxed);
        tenant.timed_out.fetch_add(1, Relaxed);
        tenant.m.timed_out.increment(1);
    }

    /// Upstream reported usage beyond any plausible charge, which was clamped. Rare, so its
    /// series is registered when it first happens.
    pub(crate) fn usage_clamped(&self) {
        metrics::counter!(names::USAGE_CLAMPED, &self.m.labels).increment(1);
    }

    /// A reservation of `tenant` settled to `charge` quota tokens from reported usage;
    /// `input` = (estimated, actual) input tokens when both are known.
    fn settled(&self, tenant: &TenantTelemetry, charge: u64, input: Option<(u64, u64)>) {
        self.tokens_settled.fetch_add(charge, Relaxed);
        tenant.tokens_settled.fetch_add(charge, Relaxed);
        tenant.m.tokens_settled.increment(charge);
        if let Some((estimated, actual)) = input {
            self.input_estimated.fetch_add(estimated, Relaxed);
            self.input_actual.fetch_add(actual, Relaxed);
            self.m.input_estimated.increment(estimated);
            self.m.input_actual.increment(actual);
        }
    }
}

/// A place in a key's queue, counted in the queue-depth gauge until dropped.
#[derive(Debug)]
pub(crate) struct QueueGuard {
    key: Arc<KeyTelemetry>,
    tenant: Arc<TenantTelemetry>,
    since: Instant,
}

impl QueueGuard {
    /// How long the attempt has waited.
    pub(crate) fn waited(&self) -> Duration {
        Instant::now().saturating_duration_since(self.since)
    }
}

impl Drop for QueueGuard {
    fn drop(&mut self) {
        self.key.queued.fetch_sub(1, Relaxed);
        self.tenant.queued.fetch_sub(1, Relaxed);
        self.tenant.m.queue.decrement(1.0);
    }
}

/// What a reservation reports when it settles: the request span, the key's counters, its
/// tenant's there and the estimated input.
#[derive(Debug)]
pub(crate) struct ChargeTrace {
    pub(crate) span: Span,
    pub(crate) key: Arc<KeyTelemetry>,
    pub(crate) tenant: Arc<TenantTelemetry>,
    pub(crate) input_estimate: Option<u64>,
    /// The period of the key's quota, to turn its rates into per-minute gauges.
    pub(crate) period: Duration,
}

impl ChargeTrace {
    /// Sets the effective-rate gauges from the key's ledger.
    pub(crate) fn rates(&self, ledger: &KeyLedger) {
        self.key.rates(ledger.rates(), self.period);
    }

    /// The attempt joined the key's queue (or its tenant's cap's); the guard leaves it.
    pub(crate) fn queued(&self) -> QueueGuard {
        self.key.queued(&self.tenant)
    }

    /// The attempt was admitted with `tokens` reserved after waiting `wait`.
    pub(crate) fn admitted(&self, tokens: u64, wait: Duration) {
        self.key.admitted(&self.tenant, tokens, wait);
    }

    /// The attempt was shed: a queue was full.
    pub(crate) fn shed(&self) {
        self.key.shed(&self.tenant);
    }

    /// The attempt found no room by its deadline: `max_wait`, or its send deadline.
    pub(crate) fn timed_out(&self) {
        self.key.timed_out(&self.tenant);
    }

    /// Settled from reported usage: `charge` quota tokens, `actual_input` input tokens.
    pub(crate) fn settled(&self, charge: u64, actual_input: u64) {
        self.span.record("settled_tokens", charge);
        let input = self.input_estimate.map(|e| (e, actual_input));
        self.key.settled(&self.tenant, charge, input);
    }

    /// Upstream throttled: with a 429 before running (`in_stream` false) or with a
    /// `throttlingException` inside a stream that had started.
    pub(crate) fn throttled(&self, in_stream: bool, kind: ThrottleKind) {
        self.key.throttled(kind);
        tracing::debug!(
            parent: &self.span,
            quota_key = %self.key.key,
            in_stream,
            kind = kind.as_str(),
            "upstream throttled"
        );
    }
}

#[cfg(test)]
mod tests {
    use std::{
        collections::HashMap,
        sync::atomic::{AtomicU32, Ordering},
    };

    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    use tower::{service_fn, Layer, ServiceExt};

    use super::{names, ThrottleKind};
    use crate::{estimate::TokenEstimate, BedrockThrottleLayer, Quota, QuotaKey, ThrottleConfig};

    fn request() -> http::Request<Full<Bytes>> {
        let mut req = http::Request::post(
            "https://bedrock-runtime.us-east-1.amazonaws.com/model/meta.llama3-70b-instruct-v1%3A0/invoke",
        )
        .body(Full::new(Bytes::from_static(b"{}")))
        .unwrap();
        req.extensions_mut().insert(TokenEstimate::new(300, 100));
        req
    }

    /// A model's reserved-tier key reports series of its own, told apart by `tier`.
    #[test]
    fn a_reserved_key_has_series_of_its_own() {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        metrics::with_local_recorder(&recorder, || {
            let on_demand = QuotaKey::new(Some("m"), Some("us-east-1"));
            (super::KeyTelemetry::new(on_demand.clone(), false).tenant(None))
                .m
                .admitted
                .increment(1);
            (super::KeyTelemetry::new(on_demand.reserved(), false).tenant(None))
                .m
                .admitted
                .increment(2);
        });
        let mut admitted: Vec<(Vec<String>, DebugValue)> = snapshotter
            .snapshot()
            .into_vec()
            .into_iter()
            .filter(|(k, ..)| k.key().name() == names::ADMITTED)
            .map(|(k, _, _, v)| {
                let labels = k
                    .key()
                    .labels()
                    .map(|l| format!("{}={}", l.key(), l.value()));
                (labels.collect(), v)
            })
            .collect();
        admitted.sort_by_key(|(labels, _)| labels.len());
        assert_eq!(
            admitted,
            [
                (
                    vec!["model=m".to_owned(), "region=us-east-1".to_owned()],
                    DebugValue::Counter(1)
                ),
                (
                    vec![
                        "model=m".to_owned(),
                        "region=us-east-1".to_owned(),
                        "tier=reserved".to_owned()
                    ],
                    DebugValue::Counter(2)
                ),
            ]
        );
    }

    /// One request meets an upstream 429, is retried, waits in the emptied bucket and
    /// succeeds; every metric of its key says so, with its labels, and agrees with stats().
    #[test]
    fn metrics_follow_a_throttled_retried_and_waiting_request() {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        let cfg = ThrottleConfig::builder()
            .quota(Quota::tokens_per_minute(1_000))
            .headroom(std::time::Duration::ZERO)
            .build()
            .unwrap();
        let calls = std::sync::Arc::new(AtomicU32::new(0));
        let upstream = {
            let calls = calls.clone();
            service_fn(move |_req: http::Request<Full<Bytes>>| {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                async move {
                    let resp = if n == 0 {
                        http::Response::builder()
                            .status(429)
                            .header("x-amzn-errortype", "ThrottlingException")
                            .body(Full::new(Bytes::new()))
                    } else {
                        http::Response::builder()
                            .header("x-amzn-bedrock-input-token-count", "250")
                            .header("x-amzn-bedrock-output-token-count", "50")
                            .body(Full::new(Bytes::new()))
                    };
                    Ok::<_, std::convert::Infallible>(resp.unwrap())
                }
            })
        };
        metrics::with_local_recorder(&recorder, || {
            rt.block_on(async {
                let svc = BedrockThrottleLayer::new(cfg.clone()).layer(upstream);
                let resp = svc.oneshot(request()).await.unwrap();
                assert_eq!(resp.status(), 200);
                resp.into_body().collect().await.unwrap();
            })
        });
        assert_eq!(calls.load(Ordering::SeqCst), 2);

        let mut values = HashMap::new();
        for (key, _, _, value) in snapshotter.snapshot().into_vec() {
            let mut labels: Vec<_> = key
                .key()
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect();
            let mut name = key.key().name().to_owned();
            // The throttle counter has a series per class.
            if name == names::THROTTLED {
                let (k, kind) = labels.pop().expect("the kind label");
                assert_eq!(k, "kind");
                name = format!("{name}/{kind}");
            }
            assert_eq!(
                labels,
                [
                    (
                        "model".to_owned(),
                        "meta.llama3-70b-instruct-v1:0".to_owned()
                    ),
                    ("region".to_owned(), "us-east-1".to_owned()),
                ]
            );
            values.insert(name, value);
        }
        let counter = |name: &str| match &values[name] {
            DebugValue::Counter(n) => *n,
            other => panic!("{name}: {other:?}"),
        };
        assert_eq!(counter(names::ADMITTED), 2);
        assert_eq!(
            counter(names::WAITED),
            1,
            "the retry waited for the emptied bucket"
        );
        let throttled: Vec<u64> = ThrottleKind::ALL
            .iter()
            .map(|k| counter(&format!("{}/{}", names::THROTTLED, k.as_str())))
            .collect();
        assert_eq!(throttled.iter().sum::<u64>(), 1, "{throttled:?}");
        assert_eq!(counter(names::RETRIED), 1);
        assert_eq!(counter(names::TOKENS_RESERVED), 800);
        assert_eq!(counter(names::TOKENS_SETTLED), 300);
        assert_eq!(counter(names::INPUT_ESTIMATED), 300);
        assert_eq!(counter(names::INPUT_ACTUAL), 250);
        match &values[names::WAIT_SECONDS] {
            DebugValue::Histogram(waits) => {
                assert_eq!(waits.len(), 2);
                assert_eq!(waits[0].into_inner(), 0.0);
                assert!(waits[1].into_inner() > 0.0, "{waits:?}");
            }
            other => panic!("{other:?}"),
        }
        match &values[names::QUEUE_DEPTH] {
            DebugValue::Gauge(depth) => assert_eq!(depth.into_inner(), 0.0),
            other => panic!("{other:?}"),
        }
        match &values[names::EFFECTIVE_TPM] {
            DebugValue::Gauge(tpm) => {
                let tpm = tpm.into_inner();
                // One refusal the gate's accounting did not expect empties the bucket and
                // keeps the rate; only a recurring one cuts it.
                assert_eq!(tpm, 1_000.0, "the rate is kept after one refusal");
            }
            other => panic!("{other:?}"),
        }
        assert!(
            !values.contains_key(names::EFFECTIVE_RPM),
            "no request quota, no request rate"
        );

        let stats = cfg.stats();
        let k = stats
            .key(&QuotaKey::new(
                Some("meta.llama3-70b-instruct-v1:0"),
                Some("us-east-1"),
            ))
            .unwrap();
        assert_eq!(
            (k.admitted, k.waited, k.throttled, k.retried, k.queue_depth),
            (2, 1, 1, 1, 0)
        );
        assert_eq!((k.tokens_reserved, k.tokens_settled), (800, 300));
        assert_eq!(
            (k.input_tokens_estimated, k.input_tokens_actual),
            (300, 250)
        );
        assert_eq!(
            k.quota,
            Some(Quota::tokens_per_minute(1_000).with_burndown(1.0))
        );
        assert_eq!(k.effective.unwrap().tokens(), 1_000);
    }

    /// A waiter that gives up leaves the queue-depth gauge and the stats as they were.
    #[tokio::test(start_paused = true)]
    async fn a_dropped_waiter_leaves_the_queue() {
        let cfg = ThrottleConfig::builder()
            .quota(Quota::tokens_per_minute(500))
            .build()
            .unwrap();
        let upstream = service_fn(|_req: http::Request<Full<Bytes>>| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::new())))
        });
        let svc = BedrockThrottleLayer::new(cfg.clone()).layer(upstream);
        svc.clone().oneshot(request()).await.unwrap(); // 400 of 500 taken, kept whole
        let mut waiting = tokio_test::task::spawn(svc.oneshot(request()));
        assert!(waiting.poll().is_pending());
        let key = QuotaKey::new(Some("meta.llama3-70b-instruct-v1:0"), Some("us-east-1"));
        assert_eq!(cfg.stats().key(&key).unwrap().queue_depth, 1);
        drop(waiting);
        let k = cfg.stats().key(&key).unwrap().clone();
        assert_eq!((k.queue_depth, k.waited, k.admitted), (0, 1, 1));
        assert_eq!(
            k.tokens_settled, 0,
            "no usage reported: kept whole, not settled"
        );
    }

    /// With `tenant_metrics`, the per-request series carry `tenant`: configured tenants by
    /// name, every other name and requests without a tenant as one `(default)` value.
    #[test]
    fn the_tenant_label_names_configured_tenants_and_folds_the_rest() {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap();
        let cfg = ThrottleConfig::builder()
            .quota(Quota::tokens_per_minute(100_000))
            .tenant("gold", crate::TenantPolicy::weight(3.0))
            .tenant_metrics(true)
            .build()
            .unwrap();
        let upstream = service_fn(|_req: http::Request<Full<Bytes>>| async {
            Ok::<_, std::convert::Infallible>(
                http::Response::builder()
                    .header("x-amzn-bedrock-input-token-count", "250")
                    .header("x-amzn-bedrock-output-token-count", "50")
                    .body(Full::new(Bytes::new()))
                    .unwrap(),
            )
        });
        metrics::with_local_recorder(&recorder, || {
            rt.block_on(async {
                let svc = BedrockThrottleLayer::new(cfg.clone()).layer(upstream);
                let tenants = [Some("gold"), Some("walk-in-1"), Some("walk-in-2"), None];
                for tenant in tenants {
                    let mut req = request();
                    if let Some(t) = tenant {
                        req.extensions_mut().insert(crate::Tenant::new(t));
                    }
                    let resp = svc.clone().oneshot(req).await.unwrap();
                    resp.into_body().collect().await.unwrap();
                }
            })
        });
        // One snapshot: the debugging recorder hands out counters' increments since the last.
        let snapshot = snapshotter.snapshot().into_vec();
        let series = |name: &str| {
            let mut found: Vec<(Option<String>, u64)> = (snapshot.iter())
                .filter(|(k, ..)| k.key().name() == name)
                .map(|(k, _, _, v)| {
                    let tenant = k.key().labels().find(|l| l.key() == "tenant");
                    let DebugValue::Counter(n) = v else {
                        panic!("{name} is a counter")
                    };
                    (tenant.map(|l| l.value().to_owned()), *n)
                })
                .collect();
            found.sort_by(|a, b| a.0.cmp(&b.0));
            found
        };
        assert_eq!(
            series(names::ADMITTED),
            [
                (Some("(default)".to_owned()), 3),
                (Some("gold".to_owned()), 1),
            ]
        );
        assert_eq!(
            series(names::TOKENS_SETTLED),
            [
                (Some("(default)".to_owned()), 900),
                (Some("gold".to_owned()), 300),
            ]
        );
        // The key's own series stay per key.
        assert_eq!(series(names::INPUT_ACTUAL), [(None, 1_000)]);
    }
}
