//! [`BedrockThrottleLayer`]: estimate → retry → gate, in one layer.

use tower_layer::Layer;

use crate::{
    estimate::{Estimate, EstimateLayer},
    gate::{Gate, GateLayer},
    retry::{Retry, RetryLayer},
    ThrottleConfig,
};

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
    type Service = Estimate<Retry<Gate<S>>>;

    fn layer(&self, inner: S) -> Self::Service {
        self.estimate
            .layer(self.retry.layer(self.gate.layer(inner)))
    }
}
