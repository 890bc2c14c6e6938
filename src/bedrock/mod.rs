//! What Bedrock's wire says: the only place that knows its paths, errors and usage.
//!
//! Everything else asks here (tower-http's `classify/`):
//! - [`path`]: a request's model, operation and Region;
//! - [`chat`]: the model an OpenAI-compatible Chat Completions body names;
//! - [`model_id`]: the foundation model behind a profile or ARN;
//! - [`errors`]: a response's error type, the HTTP error of a stream exception;
//! - [`classify`]: what a status means for a retry and for a reservation;
//! - [`context`]: whether a request uses the model's 1M-token context window;
//! - [`service_tier`]: the service tier a request names, in its header or body;
//! - [`throttle`]: which limit a throttle message names;
//! - [`usage`]: the tokens a response reports, in every shape;
//! - [`sse`]: usage in a Chat Completions server-sent event stream as it passes;
//! - [`event_stream`]: usage and exceptions in an event stream's frames as they pass.

pub(crate) mod chat;
pub(crate) mod classify;
pub(crate) mod context;
pub(crate) mod errors;
pub(crate) mod event_stream;
pub(crate) mod model_id;
pub(crate) mod path;
pub(crate) mod service_tier;
pub(crate) mod sse;
pub(crate) mod throttle;
pub(crate) mod usage;
