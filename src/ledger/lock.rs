//! Poison-tolerant locking of the ledger's plain-number state.

use std::sync::{Mutex, MutexGuard};

/// A poisoned lock only means another thread panicked mid-update of plain numbers; the
/// numbers are still usable, so carry on rather than spread the panic.
pub(super) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
