//! What Bedrock's wire says: the only place that knows its paths, errors and usage.
//!
//! Everything else asks here (tower-http's `classify/`):
//! - [`path`]: a request's model, operation and Region;
//! - [`model_id`]: the foundation model behind a profile or ARN.

pub(crate) mod model_id;
pub(crate) mod path;
