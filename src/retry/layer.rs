use std::sync::Arc;

use tower_layer::Layer;

use super::Retry;
use crate::{config::Shared, ThrottleConfig};

/// Applies [`Retry`] to a service. See the [module docs](super).
#[derive(Clone, Debug)]
pub struct RetryLayer {
    shared: Arc<Shared>,
}

impl RetryLayer {
    /// A retry layer with `cfg`'s attempts, delays and retry budget.
    pub fn new(cfg: ThrottleConfig) -> Self {
        Self { shared: cfg.shared }
    }
}

impl<S> Layer<S> for RetryLayer {
    type Service = Retry<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Retry::from_shared(inner, self.shared.clone())
    }
}
