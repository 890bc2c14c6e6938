//! The layer that answers a service's errors as responses.

use tower_layer::Layer;

use super::ErrorResponse;

/// Applies [`ErrorResponse`] to a service. See the [module docs](super).
#[derive(Clone, Copy, Debug, Default)]
pub struct ErrorResponseLayer {
    _private: (),
}

impl ErrorResponseLayer {
    /// The layer; it has nothing to configure.
    pub fn new() -> Self {
        Self::default()
    }
}

impl<S> Layer<S> for ErrorResponseLayer {
    type Service = ErrorResponse<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ErrorResponse::new(inner)
    }
}
