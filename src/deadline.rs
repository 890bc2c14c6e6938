//! The latest instant at which a request may still be sent upstream.

use std::time::Duration;

use tokio::time::Instant;

/// The latest instant at which a request may still be sent upstream, carried in its
/// extensions.
///
/// A request signed with SigV4 is accepted by AWS for about five minutes after the time
/// stamp in its signature ("a request must reach AWS within five minutes of the time stamp in
/// the request", AWS IAM User Guide, "AWS Signature Version 4 for API requests"). A request
/// signed *above* the layer and then held in the gate's queue or in backoff would reach
/// Bedrock with an expired signature. With a `SendDeadline`:
/// - the retry layer starts no retry whose backoff would end after it: the caller gets the
///   last response as it came (the AWS SDK signs again when it retries);
/// - the gate admits no attempt after it: a request still waiting then fails with
///   [`ThrottleError::SendDeadlinePassed`](crate::ThrottleError).
///
/// [`aws::ThrottledHttpClient`](crate::aws) sets one on every SigV4-signed request, at
/// [`SendDeadline::SIGV4_WINDOW`] after the request reached it (the SDK signs just before).
/// Requests with a bearer-token API key (`Authorization: Bearer …`) carry no signature window
/// and get none. On a plain `http` stack, sign below the gate (each attempt anew;
/// `sigv4::SigV4Layer`, feature `sigv4`, does so and sets this on each signed attempt) or set
/// one by hand:
///
/// ```
/// use bedrock_throttle::SendDeadline;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// let mut request = http::Request::new(());
/// request.extensions_mut().insert(SendDeadline::after(SendDeadline::SIGV4_WINDOW));
/// # }
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SendDeadline(pub Instant);

impl SendDeadline {
    /// How long after signing a SigV4 request is sent at the latest: AWS's five minutes less
    /// 30 s for the trip and for clock skew.
    pub const SIGV4_WINDOW: Duration = Duration::from_secs(270);

    /// The deadline `window` from now (tokio's clock).
    pub fn after(window: Duration) -> Self {
        let now = Instant::now();
        Self(
            now.checked_add(window)
                .unwrap_or(now + Duration::from_secs(86_400 * 365)),
        )
    }

    /// Whether something that starts at `at` would start after the deadline.
    pub(crate) fn passed_at(self, at: Instant) -> bool {
        at > self.0
    }
}
