//! Configuration values of the emulator: quotas, latency, output length, faults, and the
//! per-model defaults (burndown rate, maximum output, context window).

use std::time::Duration;

/// The quota the emulator enforces for one quota key (a model id or inference profile, as
/// given in the request path).
///
/// Every limit is a token bucket that holds at most its limit and refills continuously at
/// `limit / period`; see the [module example](crate::emulator).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EmulatedQuota {
    /// Requests per period. `None` leaves requests unlimited (newer Bedrock quota tables
    /// list no RPM).
    pub rpm: Option<u64>,
    /// Tokens per period (input and output together, output weighted by the burndown rate).
    pub tpm: u64,
    /// Tokens per day. A "day" is `period × 1440`, so scaling `period` down for a test
    /// scales the day with it. `None` leaves it unlimited.
    pub tpd: Option<u64>,
    /// The quota period: one minute for real Bedrock quotas.
    pub period: Duration,
}

impl Default for EmulatedQuota {
    /// 400,000 tokens per minute, no request or daily limit.
    fn default() -> Self {
        EmulatedQuota {
            rpm: None,
            tpm: 400_000,
            tpd: None,
            period: Duration::from_secs(60),
        }
    }
}

/// How long the emulated model takes: `first_token + output_tokens × per_output_token`.
///
/// Streaming responses deliver their first event after `first_token` and then spread the
/// output tokens over the rest of that time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LatencyModel {
    /// Time until the first output token.
    pub first_token: Duration,
    /// Time for each further output token.
    pub per_output_token: Duration,
}

impl Default for LatencyModel {
    /// 300 ms to the first token, 10 ms per output token.
    fn default() -> Self {
        LatencyModel {
            first_token: Duration::from_millis(300),
            per_output_token: Duration::from_millis(10),
        }
    }
}

impl LatencyModel {
    /// No latency at all: every request finishes at once.
    pub const ZERO: LatencyModel = LatencyModel {
        first_token: Duration::ZERO,
        per_output_token: Duration::ZERO,
    };

    /// The total time to produce `output_tokens` tokens.
    pub fn total(&self, output_tokens: u64) -> Duration {
        let per = self
            .per_output_token
            .saturating_mul(u32::try_from(output_tokens).unwrap_or(u32::MAX));
        self.first_token.saturating_add(per)
    }
}

/// How many output tokens the emulated model writes. The result is always capped at the
/// request's output limit (its `max_tokens`, or the model maximum when the request sets none).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum OutputLength {
    /// Always this many tokens (capped at the limit).
    Fixed(u64),
    /// Uniformly drawn from `min..=max` with the emulator's seeded random numbers.
    Uniform {
        /// Smallest length.
        min: u64,
        /// Largest length.
        max: u64,
    },
    /// Always exactly the request's output limit, as a model that never stops early.
    MaxTokens,
    /// A percentage of the request's output limit, uniformly drawn from `min..=max`
    /// (`30..=100`: 30 % to all of its `max_tokens`), rounded to the nearest token.
    PercentOfLimit {
        /// Smallest percentage.
        min: u64,
        /// Largest percentage.
        max: u64,
    },
}

impl Default for OutputLength {
    /// `Uniform { min: 50, max: 400 }`.
    fn default() -> Self {
        OutputLength::Uniform { min: 50, max: 400 }
    }
}

/// Injected failures, each a probability in `0.0..=1.0` drawn per request from the seeded
/// random numbers.
///
/// - `http_503`: `503 ServiceUnavailableException` before admission (nothing charged).
/// - `http_500`: `500 InternalServerException` before admission (nothing charged).
/// - `stream_throttle`: for the two streaming operations, HTTP 200 and some events, then a
///   `throttlingException` exception frame and the end of the stream; the tokens generated
///   so far are charged.
/// - `stream_throttle_first`: for the two streaming operations, HTTP 200 whose first and only
///   frame is a `throttlingException` exception frame, sent at once, before the quota check:
///   nothing is admitted or charged, as for a 429 that arrives inside the stream.
/// - `drop_connection`: the request is admitted, the emulator waits for the first token,
///   charges the input tokens and closes the connection without writing a response.
/// - `slow`: the response takes
///   [`EmulatorBuilder::slow_delay`](crate::emulator::EmulatorBuilder::slow_delay) longer.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Faults {
    /// Rate of `503 ServiceUnavailableException`.
    pub http_503: f64,
    /// Rate of `500 InternalServerException`.
    pub http_500: f64,
    /// Rate of throttling exceptions inside an HTTP 200 event stream.
    pub stream_throttle: f64,
    /// Rate of throttling exceptions as the first frame of an HTTP 200 event stream.
    pub stream_throttle_first: f64,
    /// Rate of connections closed without a response.
    pub drop_connection: f64,
    /// Rate of slow responses.
    pub slow: f64,
}

impl Faults {
    /// No faults at all (the default).
    pub const NONE: Faults = Faults {
        http_503: 0.0,
        http_500: 0.0,
        stream_throttle: 0.0,
        stream_throttle_first: 0.0,
        drop_connection: 0.0,
        slow: 0.0,
    };
}
