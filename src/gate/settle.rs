//! Settlement: what a reservation becomes once upstream has answered.
//!
//! The rules are the table under [Charging](super#charging). The response future and the
//! body both settle through [`Charge`]; this module knows nothing of either.

use std::sync::Arc;

use http::{header::CONTENT_TYPE, HeaderMap, Response};

use crate::{
    bedrock::{
        classify::{settlement, StatusSettlement},
        usage,
    },
    config::Shared,
    diagnosis::KeyRecord,
    ledger::{DailyHolds, Reservation},
    telemetry::ChargeTrace,
    QuotaKey, ThrottleKind,
};

/// The reservations of the stages before the key (a tenant's cap, the unproven models'
/// stage), settled with the key's.
#[derive(Debug)]
pub(crate) struct Holds(Vec<Reservation>);

impl Holds {
    pub(crate) fn new(reservations: Vec<Reservation>) -> Self {
        Self(reservations)
    }

    /// Settles every stage's reservation to `actual`, as the key's.
    pub(crate) fn settle(self, actual: u64) {
        for r in self.0 {
            r.settle(actual);
        }
    }
}

/// How reported usage turns into a charge, and what the estimator may learn from it.
#[derive(Debug)]
pub(crate) struct Terms {
    pub(super) burndown: f64,
    /// Output quota tokens reserved: the output limit times the burndown.
    pub(super) reserved_output: u64,
    /// The key's token quota per period, which bounds a plausible charge.
    pub(super) quota_tokens: u64,
    /// Where demand, grant and throttles of the key are counted.
    pub(super) record: Arc<KeyRecord>,
    pub(super) learn: Option<Learn>,
    /// Marks an unproven model proven on a 2xx (see [`crate::keys`]).
    pub(super) proof: Option<crate::keys::Proof>,
    pub(super) trace: ChargeTrace,
}

/// The estimator's raw input count for a model, to compare with the reported one.
#[derive(Debug)]
pub(crate) struct Learn {
    pub(super) shared: Arc<Shared>,
    pub(super) model: QuotaKey,
    pub(super) raw_input: u64,
}

/// A reservation (and those of the stages before the key, if any) and the terms of its
/// settlement.
#[derive(Debug)]
pub(crate) struct Charge {
    reservation: Reservation,
    cap: Option<Holds>,
    /// The daily quotas' bookings: settled as the key's, and (dropped) kept charged when
    /// the outcome is unknown.
    daily: Option<DailyHolds>,
    terms: Terms,
}

impl Charge {
    pub(super) fn new(
        reservation: Reservation,
        cap: Option<Holds>,
        daily: Option<DailyHolds>,
        terms: Terms,
    ) -> Self {
        terms.record.granted(reservation.tokens());
        Self {
            reservation,
            cap,
            daily,
            terms,
        }
    }

    /// Upstream ran the request and reported its usage: the charge becomes that usage, up to
    /// [`Charge::most_plausible`]; a report beyond it is clamped (and logged and counted),
    /// and teaches the estimator nothing.
    pub(super) fn settle_usage(self, usage: usage::Usage) {
        let reported = usage.charge(self.terms.burndown);
        let actual_input = usage.input_total();
        let most = self.most_plausible();
        let plausible = reported <= most && actual_input <= most;
        if !plausible {
            tracing::warn!(
                parent: &self.terms.trace.span,
                quota_key = %self.reservation.ledger().key(),
                reserved = self.reservation.tokens(),
                reported,
                actual_input,
                clamped_to = most,
                "upstream reported usage no request can have: charged at most the clamp"
            );
            self.terms.trace.key.usage_clamped();
        }
        if let (Some(l), true) = (&self.terms.learn, plausible) {
            if let Some(model) = l.model.model() {
                l.shared
                    .calibration
                    .observe(model, l.raw_input, actual_input);
            }
        }
        let used_output = (usage.output_tokens as f64 * self.terms.burndown).ceil() as u64;
        self.terms
            .record
            .output(self.terms.reserved_output, used_output);
        let actual = reported.min(most);
        let actual_input = actual_input.min(most);
        tracing::trace!(
            parent: &self.terms.trace.span,
            quota_key = %self.reservation.ledger().key(),
            reserved = self.reservation.tokens(),
            actual,
            input_estimated = self.terms.trace.input_estimate,
            input_actual = actual_input,
            "settled"
        );
        self.terms.trace.settled(actual, actual_input);
        self.reservation.settle(actual);
        if let Some(cap) = self.cap {
            cap.settle(actual);
        }
        if let Some(daily) = self.daily {
            daily.settle(actual);
        }
    }

    /// The largest charge a usage report may set: four times the reservation, or the
    /// reservation plus a whole period of the key's quota, whichever is larger. Bedrock
    /// refuses a request larger than its quota before running it, and input estimates are
    /// not off by more than the calibration's range (4×), so a larger report is a broken
    /// upstream (or a hostile one); trusting it would leave the key a debt of years.
    fn most_plausible(&self) -> u64 {
        let reserved = self.reservation.tokens();
        reserved
            .saturating_mul(4)
            .max(reserved.saturating_add(self.terms.quota_tokens))
    }

    /// Upstream refused the request before running it for a reason that is not a throttle:
    /// everything comes back at once.
    pub(super) fn refund(self) {
        self.reservation.settle(0);
        if let Some(cap) = self.cap {
            cap.settle(0);
        }
        if let Some(daily) = self.daily {
            daily.settle(0);
        }
    }

    /// Upstream refused the request before running it (a 429): everything comes back at
    /// once, and the key slows down.
    pub(super) fn refused(self, kind: ThrottleKind) {
        self.terms.record.throttled(kind);
        self.terms.trace.throttled(false, kind);
        let ledger = self.reservation.ledger().clone();
        self.reservation.throttled(true, kind);
        if let Some(cap) = self.cap {
            cap.settle(0);
        }
        // Refused before running: Bedrock charged nothing to the day either.
        if let Some(daily) = self.daily {
            daily.settle(0);
        }
        self.terms.trace.rates(&ledger);
    }

    /// Upstream throttled after it had started: the reservation is kept (Bedrock charges
    /// what was generated, and the throttle empties the key's buckets anyway), and the key
    /// slows down.
    pub(super) fn throttled(self, kind: ThrottleKind) {
        self.terms.record.throttled(kind);
        self.terms.trace.throttled(true, kind);
        let _span = self.terms.trace.span.enter();
        let ledger = self.reservation.ledger().clone();
        self.reservation.throttled(false, kind);
        self.terms.trace.rates(&ledger);
    }
}

/// Where a response body that must tell its usage carries it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BodyUsage {
    /// At the end of a JSON body (Converse, InvokeModel bodies, Chat Completions).
    Json,
    /// In the last chunk of a `text/event-stream` (streamed Chat Completions).
    ServerSentEvents,
}

/// Settles what the response head tells; hands the charge on when the body must tell.
pub(super) fn settle_head<B>(
    charge: Charge,
    response: &Response<B>,
) -> Option<(Charge, BodyUsage)> {
    let status = response.status();
    if status.is_success() {
        if let Some(p) = &charge.terms.proof {
            p.proven();
        }
        if let Some(u) = usage::from_headers(response.headers()) {
            charge.settle_usage(u);
            return None;
        }
        // Event streams are read elsewhere; unknown bodies keep the whole reservation.
        return body_usage(response.headers()).map(|kind| (charge, kind));
    }
    match settlement(status, response.headers()) {
        // Refused before running, its body unread: the reservation comes back at once, and
        // both budgets slow. (The response future reads a throttle's body to tell which.)
        StatusSettlement::Refused => charge.refused(ThrottleKind::Unknown),
        StatusSettlement::Refund => charge.refund(),
        StatusSettlement::Keep => {}
    }
    None
}

/// Settles an error response whose body was read and found no throttle: what its status
/// says, and a refund where the head alone would have read a throttle (the body's error
/// code said otherwise: the request did not run).
pub(super) fn settle_not_throttled(charge: Charge, status: http::StatusCode, headers: &HeaderMap) {
    match settlement(status, headers) {
        StatusSettlement::Refused | StatusSettlement::Refund => charge.refund(),
        StatusSettlement::Keep => {}
    }
}

/// Where a 2xx answer without usage headers carries its usage, by its content type.
fn body_usage(headers: &HeaderMap) -> Option<BodyUsage> {
    let ct = headers.get(CONTENT_TYPE)?.to_str().ok()?;
    if ct.starts_with("application/json") {
        Some(BodyUsage::Json)
    } else if ct.starts_with("text/event-stream") {
        Some(BodyUsage::ServerSentEvents)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_usage_is_told_by_its_content_type() {
        let mut headers = HeaderMap::new();
        assert_eq!(body_usage(&headers), None);
        for (ct, kind) in [
            ("application/json; charset=utf-8", Some(BodyUsage::Json)),
            (
                "text/event-stream; charset=utf-8",
                Some(BodyUsage::ServerSentEvents),
            ),
            ("application/vnd.amazon.eventstream", None),
            ("text/plain", None),
        ] {
            headers.insert(CONTENT_TYPE, ct.parse().unwrap());
            assert_eq!(body_usage(&headers), kind, "{ct}");
        }
    }
}
