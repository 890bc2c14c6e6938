//! [`BedrockThrottleLayer`]: estimate → retry → gate, in one layer.

use tower_layer::Layer;

use crate::{
    estimate::{Estimate, EstimateLayer},
    gate::{Gate, GateLayer},
    retry::{Retry, RetryLayer},
    ThrottleConfig,
};

/// The service [`BedrockThrottleLayer`] makes of `S`: the type to name in a struct field or
/// a function's return type, instead of `<BedrockThrottleLayer as Layer<S>>::Service`.
///
/// ```
/// use bedrock_throttle::{BedrockThrottle, BedrockThrottleLayer, Quota, ThrottleConfig};
/// use tower::Layer;
///
/// /// A client of one team, over any upstream `S`.
/// struct TeamClient<S> {
///     bedrock: BedrockThrottle<S>,
/// }
///
/// fn team_client<S>(upstream: S, cfg: &ThrottleConfig) -> TeamClient<S> {
///     TeamClient {
///         bedrock: BedrockThrottleLayer::new(cfg.clone()).layer(upstream),
///     }
/// }
/// # let cfg = ThrottleConfig::builder().quota(Quota::tokens_per_minute(1_000)).build().unwrap();
/// # let _ = team_client((), &cfg).bedrock;
/// ```
pub type BedrockThrottle<S> = Estimate<Retry<Gate<S>>>;

/// The whole throttle: estimate each request once, retry it with backoff, and pass every
/// attempt through the dual-limit gate.
///
/// `BedrockThrottleLayer::new(cfg).layer(svc)` is the same as
/// `ServiceBuilder::new().layer(EstimateLayer::new(cfg.clone())).layer(RetryLayer::new(cfg.clone())).layer(GateLayer::new(cfg)).service(svc)`.
/// Layers built from one [`ThrottleConfig`] (and their clones) share its budget. See the
/// [crate docs](crate) for an example.
#[derive(Clone, Debug)]
pub struct BedrockThrottleLayer {
    estimate: EstimateLayer,
    retry: RetryLayer,
    gate: GateLayer,
}

impl BedrockThrottleLayer {
    /// The layer for `cfg`.
    pub fn new(cfg: ThrottleConfig) -> Self {
        Self {
            estimate: EstimateLayer::new(cfg.clone()),
            retry: RetryLayer::new(cfg.clone()),
            gate: GateLayer::new(cfg),
        }
    }
}

impl<S> Layer<S> for BedrockThrottleLayer {
    type Service = BedrockThrottle<S>;

    fn layer(&self, inner: S) -> Self::Service {
        self.estimate
            .layer(self.retry.layer(self.gate.layer(inner)))
    }
}
