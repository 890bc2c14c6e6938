//! An emulated Bedrock runtime HTTP server that enforces quotas as Bedrock does, for tests and
//! load demos that need no AWS account.
//!
//! ```
//! use std::time::Duration;
//! use bedrock_throttle::emulator::{Emulator, EmulatedQuota, LatencyModel, OutputLength};
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> std::io::Result<()> {
//! let emu = Emulator::builder()
//!     .default_quota(EmulatedQuota {
//!         rpm: Some(50),
//!         tpm: 400_000,
//!         tpd: None,
//!         period: Duration::from_secs(60),
//!     })
//!     .latency(LatencyModel {
//!         first_token: Duration::from_millis(300),
//!         per_output_token: Duration::from_millis(10),
//!     })
//!     .chars_per_token(3.6)
//!     .output_tokens(OutputLength::Uniform { min: 50, max: 400 })
//!     .seed(42)
//!     .spawn()
//!     .await?;
//! // Point an AWS SDK client (or any HTTP client) at it:
//! let url = emu.endpoint_url(); // "http://127.0.0.1:PORT"
//! assert!(url.starts_with("http://127.0.0.1:"));
//! let stats = emu.stats();
//! assert_eq!(stats.total().admitted, 0);
//! emu.shutdown().await;
//! # Ok(())
//! # }
//! ```
//!
//! # What it speaks
//! bedrock-runtime's restJson1 over HTTP/1.1: `POST /model/{modelId}/invoke`,
//! `/invoke-with-response-stream`, `/converse`, `/converse-stream` and `/count-tokens`, with
//! the model id percent-decoded; and OpenAI-compatible Chat Completions at
//! `/openai/v1/chat/completions` and `/v1/chat/completions` (the model in the body, OpenAI's
//! `chat.completion` answer with `usage.prompt_tokens` and `completion_tokens`, or with
//! `"stream": true` `chat.completion.chunk` server-sent events ending in `data: [DONE]`, the
//! last chunk carrying `usage` when `stream_options.include_usage` is set), charged to the
//! model's quota as InvokeModel and Converse are; the faults below apply to the native
//! routes only. Service tiers: InvokeModel's `X-Amzn-Bedrock-Service-Tier` header and
//! Converse's `"serviceTier": {"type": …}` are read (an unknown tier is a
//! `ValidationException`) and echoed (the response header; Converse's `serviceTier`, the
//! ConverseStream `metadata` event's); `priority`, `default` and `flex` share the model's
//! quota, `reserved` spends [`reserved_quota`](EmulatorBuilder::reserved_quota). It reads
//! `Authorization` as AWS does: a SigV4 signature or a Bedrock API key
//! (`Authorization: Bearer …`, as the AWS SDK sends one set with `bearer_token`), neither
//! verified; unsigned requests work too unless
//! [`require_authorization`](EmulatorBuilder::require_authorization) is on, and any other
//! `Authorization` is refused with 403 `UnrecognizedClientException`.
//!
//! # How it charges
//! Each quota key (the model id as given: `us.anthropic...` cross-Region profiles are keys of
//! their own) has a token bucket per limit that holds at most the limit and refills
//! continuously at `limit / period`. At admission a request reserves 1 request and
//! `input + max_tokens × burndown` tokens (the model's maximum output when it sets no
//! `max_tokens`); a request that does not fit is refused at once with Bedrock's 429
//! `ThrottlingException`. When the emulated latency has passed it is charged
//! `input + output × burndown` and the rest of the reservation returns to the buckets.
//! Burndown is 5 for Claude 4 or later, 1 otherwise
//! ([`crate::default_burndown`]); [`EmulatorBuilder::burndown`] overrides it per model.
//!
//! Input tokens are `ceil(text characters / chars_per_token)` plus
//! [`tokens_per_message`](EmulatorBuilder::tokens_per_message) for each message (none by
//! default), where the text is taken from the body's shape: Anthropic Messages, Converse,
//! Titan, Llama/Mistral `prompt`, Cohere, or every string of any other JSON; image blocks
//! count 1,600 tokens.
//!
//! # Service Quotas
//! The same port answers the Service Quotas call `ListServiceQuotas` (awsJson1_1,
//! `X-Amz-Target: ServiceQuotasV20190624.ListServiceQuotas`, paginated with `NextToken`
//! and `MaxResults`) for the service code `bedrock`: each
//! [`model_quota`](EmulatorBuilder::model_quota) is listed under the names real accounts
//! list, `On-demand model inference tokens per minute for {model}` (or `Cross-region model
//! inference … for {model} V1` for a geographic profile, `Global cross-region model
//! inference … for {model} V1` for a `global.` one), `… requests per minute …` when it has
//! an RPM and `… tokens per day …` when it has a daily limit, `{model}` set by
//! [`quota_display_name`](EmulatorBuilder::quota_display_name); two account-wide quotas
//! (`Cross-Model Account-Level Tokens Per Day`, `Batch inference job size (in GB)`) come
//! with them. Per-minute quotas are adjustable, daily ones not. A request without
//! `MaxResults` gets a page of 8, as the real API's default page is small. Point an
//! `aws-sdk-servicequotas` client's `endpoint_url` at it.
//!
//! # Time and randomness
//! Only tokio's clock is used, so under `#[tokio::test(start_paused = true)]` the emulator
//! runs in virtual time. Output lengths and faults come from random numbers seeded by
//! [`EmulatorBuilder::seed`], the request's content and how many identical requests came
//! before it, so the same requests give the same answers whatever order they arrive in.
//!
//! # What differs from Bedrock
//! - InvokeModel answers in the Anthropic Messages shape, except Titan and `prompt` bodies,
//!   which get Titan and Llama shapes. InvokeModelWithResponseStream always streams
//!   Anthropic events, each ending with `amazon-bedrock-invocationMetrics`.
//! - The model's text is filler; only its token count means anything.
//! - Quotas are exact buckets; real Bedrock's are coarser and vary by account.

mod auth;
mod config;
mod openai;
mod quota;
mod request;
mod server;
mod service_quotas;
mod tiers;
mod wire;

#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use config::{EmulatedQuota, Faults, LatencyModel, OutputLength};
pub use quota::{EmulatorStats, ModelStats, QuotaSnapshot};

use quota::Ledger;
use server::Shared;

/// The emulated Bedrock runtime. Start one with [`Emulator::builder`]; see the
/// [module example](crate::emulator).
#[derive(Debug, Clone, Copy)]
pub struct Emulator {
    _private: (),
}

impl Emulator {
    /// A builder with the defaults: [`EmulatedQuota::default`] for every model,
    /// [`LatencyModel::default`], 3.6 characters per token, [`OutputLength::default`], no
    /// faults, a random seed, a 200,000-token context window, bound to `127.0.0.1:0`.
    pub fn builder() -> EmulatorBuilder {
        EmulatorBuilder::default()
    }
}

/// Configures and starts an [`Emulator`]; see the [module example](crate::emulator).
#[derive(Debug, Clone)]
pub struct EmulatorBuilder {
    default_quota: EmulatedQuota,
    model_quotas: HashMap<String, EmulatedQuota>,
    reserved_quotas: HashMap<String, EmulatedQuota>,
    display_names: HashMap<String, String>,
    latency: LatencyModel,
    chars_per_token: f64,
    tokens_per_message: u64,
    output: OutputLength,
    faults: Faults,
    slow_delay: Duration,
    seed: Option<u64>,
    burndown: HashMap<String, u64>,
    max_output: HashMap<String, u64>,
    context_window: u64,
    model_context_windows: HashMap<String, u64>,
    stream_chunk_tokens: u64,
    admission_delay: Duration,
    require_authorization: bool,
    clock_offset: Duration,
    addr: SocketAddr,
}

impl Default for EmulatorBuilder {
    fn default() -> Self {
        EmulatorBuilder {
            default_quota: EmulatedQuota::default(),
            model_quotas: HashMap::new(),
            reserved_quotas: HashMap::new(),
            display_names: HashMap::new(),
            latency: LatencyModel::default(),
            chars_per_token: 3.6,
            tokens_per_message: 0,
            output: OutputLength::default(),
            faults: Faults::NONE,
            slow_delay: Duration::from_secs(5),
            seed: None,
            burndown: HashMap::new(),
            max_output: HashMap::new(),
            context_window: 200_000,
            model_context_windows: HashMap::new(),
            stream_chunk_tokens: 5,
            admission_delay: Duration::ZERO,
            require_authorization: false,
            clock_offset: Duration::ZERO,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
        }
    }
}

impl EmulatorBuilder {
    /// The quota of every model id without a [`model_quota`](Self::model_quota).
    pub fn default_quota(mut self, quota: EmulatedQuota) -> Self {
        self.default_quota = quota;
        self
    }

    /// The name a [`model_quota`](Self::model_quota)'s model has in its Service Quotas quota
    /// names (`On-demand InvokeModel tokens per minute for Anthropic Claude 3.5 Sonnet`);
    /// unset, the model id without its cross-Region prefix. See "Service Quotas" in the
    /// [module docs](crate::emulator).
    pub fn quota_display_name(
        mut self,
        model_id: impl Into<String>,
        name: impl Into<String>,
    ) -> Self {
        self.display_names.insert(model_id.into(), name.into());
        self
    }

    /// The quota of one quota key, matched exactly against the (percent-decoded) model id of
    /// the request path.
    pub fn model_quota(mut self, model_id: impl Into<String>, quota: EmulatedQuota) -> Self {
        self.model_quotas.insert(model_id.into(), quota);
        self
    }

    /// The quota of one model id's 1M-token context variant, listed in Service Quotas with
    /// the suffix `1M Context Length`. Requests with Anthropic's `context-1m` beta flag, or
    /// over 200,000 input tokens, spend from the quota key `{model_id} (1M context)` (its
    /// statistics are under that name); without this quota that key gets the model's.
    pub fn long_context_quota(mut self, model_id: impl AsRef<str>, quota: EmulatedQuota) -> Self {
        self.model_quotas
            .insert(long_context_key(model_id.as_ref()), quota);
        self
    }

    /// The quota of one model's `reserved` service tier capacity: requests that ask for that
    /// tier (InvokeModel's `X-Amzn-Bedrock-Service-Tier` header, Converse's
    /// `serviceTier.type`) are charged to it and counted in [`EmulatorStats`] under
    /// `"{model} (reserved)"`. Without one that key has the default quota.
    pub fn reserved_quota(mut self, model_id: impl Into<String>, quota: EmulatedQuota) -> Self {
        self.reserved_quotas.insert(model_id.into(), quota);
        self
    }

    /// Refuses requests without an `Authorization` header (SigV4 or a Bedrock API key's
    /// `Bearer …`) with 403 `MissingAuthenticationTokenException`, as AWS does. Off by
    /// default, so unsigned requests work; a malformed header is refused either way.
    pub fn require_authorization(mut self, required: bool) -> Self {
        self.require_authorization = required;
        self
    }

    /// How long requests take.
    pub fn latency(mut self, latency: LatencyModel) -> Self {
        self.latency = latency;
        self
    }

    /// The emulator's tokenizer: input tokens are `ceil(text characters / ratio)`.
    pub fn chars_per_token(mut self, ratio: f64) -> Self {
        self.chars_per_token = ratio;
        self
    }

    /// Input tokens the emulator's tokenizer adds for each message of the conversation
    /// (default 0), as chat templates do for roles and separators: with
    /// `.chars_per_token(3.6).tokens_per_message(3)` a request is counted as upstreams
    /// that wrap each turn in a few template tokens count it, which a client's estimate
    /// from the text alone falls short of. A message is an entry of `messages` (Anthropic
    /// Messages, Converse, Nova), Cohere's `chat_history` entries plus its `message`, and
    /// the single text of a Titan or `prompt` body; a body of unknown shape has none.
    pub fn tokens_per_message(mut self, tokens: u64) -> Self {
        self.tokens_per_message = tokens;
        self
    }

    /// How many output tokens the model writes (always capped at the request's limit).
    pub fn output_tokens(mut self, output: OutputLength) -> Self {
        self.output = output;
        self
    }

    /// Injected failures.
    pub fn faults(mut self, faults: Faults) -> Self {
        self.faults = faults;
        self
    }

    /// The extra latency of a [`Faults::slow`] response (default 5 s).
    pub fn slow_delay(mut self, delay: Duration) -> Self {
        self.slow_delay = delay;
        self
    }

    /// The seed of the random numbers for output lengths and faults (default: random).
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }

    /// The burndown rate (quota tokens per output token) of one model id, instead of
    /// [`crate::default_burndown`].
    pub fn burndown(mut self, model_id: impl Into<String>, rate: u64) -> Self {
        self.burndown.insert(model_id.into(), rate);
        self
    }

    /// The maximum output of one model id, reserved when a request sets no output limit,
    /// instead of [`crate::estimate::default_output_limit`], the table the estimator uses.
    pub fn max_output_tokens(mut self, model_id: impl Into<String>, tokens: u64) -> Self {
        self.max_output.insert(model_id.into(), tokens);
        self
    }

    /// The context window of every model (default 200,000 input tokens): longer inputs get
    /// `400 ValidationException`.
    pub fn context_window(mut self, tokens: u64) -> Self {
        self.context_window = tokens;
        self
    }

    /// The context window of one model id.
    pub fn model_context_window(mut self, model_id: impl Into<String>, tokens: u64) -> Self {
        self.model_context_windows.insert(model_id.into(), tokens);
        self
    }

    /// Output tokens per streamed delta event (default 5).
    pub fn stream_chunk_tokens(mut self, tokens: u64) -> Self {
        self.stream_chunk_tokens = tokens;
        self
    }

    /// How long after a request arrives the quota check counts it (default none): the
    /// window in which a client's gate has admitted a request that upstream has not
    /// counted yet (network, load balancers, queues in front of the model). The refusal
    /// of a request that does not fit comes after this delay too.
    pub fn admission_delay(mut self, delay: Duration) -> Self {
        self.admission_delay = delay;
        self
    }

    /// How far the quota buckets' clock runs behind the clients' (default none): each
    /// key's buckets start full but refill nothing for `offset` after their first use, so
    /// until they are next full they hold `offset` of refill less than a client's bucket
    /// that started full at the same moment, as an upstream whose quota period began
    /// before the client's (or that another client drew from first) does.
    pub fn clock_offset(mut self, offset: Duration) -> Self {
        self.clock_offset = offset;
        self
    }

    /// The address to listen on (default `127.0.0.1:0`, a free port).
    pub fn bind(mut self, addr: SocketAddr) -> Self {
        self.addr = addr;
        self
    }

    /// Binds the listener and starts serving on the current tokio runtime.
    ///
    /// A model's 1M-context key without a quota of its own gets the model's.
    ///
    /// # Errors
    /// When the address cannot be bound.
    pub async fn spawn(self) -> io::Result<EmulatorHandle> {
        let listener = TcpListener::bind(self.addr).await?;
        let addr = listener.local_addr()?;
        let mut quotas = self.model_quotas.clone();
        for (model, quota) in &self.reserved_quotas {
            quotas.insert(tiers::reserved_key(model), *quota);
        }
        let service_quotas = service_quotas::listing(&self.model_quotas, &self.display_names);
        let ledger = Arc::new(Ledger::new(self.default_quota, quotas, self.clock_offset));
        let shared = Arc::new(Shared {
            ledger: Arc::clone(&ledger),
            latency: self.latency,
            chars_per_token: self.chars_per_token,
            tokens_per_message: self.tokens_per_message,
            output: self.output,
            faults: self.faults,
            slow_delay: self.slow_delay,
            seed: self.seed.unwrap_or_else(|| fastrand::u64(..)),
            burndown: self.burndown,
            max_output: self.max_output,
            context_window: self.context_window,
            model_context_windows: self.model_context_windows,
            stream_chunk_tokens: self.stream_chunk_tokens,
            admission_delay: self.admission_delay,
            require_authorization: self.require_authorization,
            seen: Mutex::new(HashMap::new()),
            service_quotas,
        });
        let (shutdown, rx) = watch::channel(false);
        let task = tokio::spawn(server::serve(listener, shared, rx));
        tracing::debug!(%addr, "bedrock emulator listening");
        Ok(EmulatorHandle {
            addr,
            ledger,
            shutdown,
            task: Some(task),
        })
    }
}

/// A running [`Emulator`]. Dropping it stops the server too (without waiting);
/// see the [module example](crate::emulator).
#[derive(Debug)]
pub struct EmulatorHandle {
    addr: SocketAddr,
    ledger: Arc<Ledger>,
    shutdown: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl EmulatorHandle {
    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, for an AWS SDK client's `endpoint_url`.
    pub fn endpoint_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A snapshot of the statistics of every quota key seen so far.
    pub fn stats(&self) -> EmulatorStats {
        self.ledger.stats()
    }

    /// What is left now in one quota key's buckets.
    pub fn quota(&self, model_id: &str) -> QuotaSnapshot {
        self.ledger.snapshot(model_id)
    }

    /// Stops accepting connections, closes the open ones and waits for the server task.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for EmulatorHandle {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// The emulator's quota key for the 1M-context variant of `model`.
pub(crate) fn long_context_key(model: &str) -> String {
    format!("{model}{LONG_CONTEXT_SUFFIX}")
}

/// What [`long_context_key`] appends.
pub(crate) const LONG_CONTEXT_SUFFIX: &str = " (1M context)";
