use std::sync::Arc;

use tower_layer::Layer;

use super::Estimate;
use crate::{config::Shared, ThrottleConfig};

/// Applies [`Estimate`] to a service: reads each request body once and attaches a
/// [`TokenEstimate`](super::TokenEstimate). See the [module docs](super).
#[derive(Clone, Debug)]
pub struct EstimateLayer {
    shared: Arc<Shared>,
}

impl EstimateLayer {
    /// An estimate layer using `cfg`'s estimator and body limit.
    pub fn new(cfg: ThrottleConfig) -> Self {
        Self { shared: cfg.shared }
    }
}

impl<S> Layer<S> for EstimateLayer {
    type Service = Estimate<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Estimate::from_shared(inner, self.shared.clone())
    }
}
