//! A reservation of one request's tokens, settled to the actual charge.

use std::sync::Arc;

use tokio::time::Instant;

use super::{key::KeyLedger, remote::RemoteHold};
use crate::ThrottleKind;

/// Tokens taken from a key's bucket for one request. Settle it with the actual charge;
/// dropped unsettled, the whole reservation stays charged (the safe side when the outcome
/// is unknown).
#[derive(Debug)]
pub(crate) struct Reservation {
    ledger: Arc<KeyLedger>,
    tokens: u64,
    admitted_at: Instant,
    /// The hold in the shared ledger, settled along with the key's own buckets.
    remote: Option<RemoteHold>,
}

impl Reservation {
    pub(super) fn new(
        ledger: Arc<KeyLedger>,
        tokens: u64,
        admitted_at: Instant,
        remote: Option<RemoteHold>,
    ) -> Self {
        Self {
            ledger,
            tokens,
            admitted_at,
            remote,
        }
    }

    pub(crate) fn ledger(&self) -> &Arc<KeyLedger> {
        &self.ledger
    }

    pub(crate) fn tokens(&self) -> u64 {
        self.tokens
    }

    /// Charges `actual` tokens instead of the reservation: the difference goes back (or,
    /// when `actual` is larger, is taken as debt).
    pub(crate) fn settle(mut self, actual: u64) {
        if let Some(remote) = self.remote.take() {
            remote.settle(actual);
        }
        let diff = self.tokens as f64 - actual as f64;
        if diff == 0.0 {
            return;
        }
        self.ledger.state().give_back(diff);
    }

    /// Upstream refused this request for lack of quota. `refund`: it refused before running
    /// (a 429), so the whole reservation comes back at once; otherwise (a throttle inside a
    /// stream) it stays charged. Either way the key slows down (see
    /// [`KeyLedger::refused`] and [`KeyLedger::throttled`]).
    pub(crate) fn throttled(self, refund: bool, kind: ThrottleKind) {
        let ledger = self.ledger.clone();
        let (admitted_at, tokens) = (self.admitted_at, self.tokens);
        if refund {
            self.settle(0);
            ledger.refused(admitted_at, kind, tokens);
        } else {
            ledger.throttled(admitted_at, kind);
        }
    }
}
