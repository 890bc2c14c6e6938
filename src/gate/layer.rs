//! The layer that puts a [`Gate`] in front of a service.

use std::sync::Arc;

use tower_layer::Layer;

use super::Gate;
use crate::{config::Shared, ThrottleConfig};

/// Applies the dual-limit [`Gate`] to a service. See the [module docs](super).
#[derive(Clone, Debug)]
pub struct GateLayer {
    shared: Arc<Shared>,
}

impl GateLayer {
    /// A gate spending from `cfg`'s quotas.
    pub fn new(cfg: ThrottleConfig) -> Self {
        Self { shared: cfg.shared }
    }
}

impl<S> Layer<S> for GateLayer {
    type Service = Gate<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Gate::from_shared(inner, self.shared.clone())
    }
}
