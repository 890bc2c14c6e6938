//! Which key a request's state is filed under, so that inventing model ids never multiplies
//! quota, memory or metric series.
//!
//! A model with a quota of its own (a [`model_quota`](crate::ThrottleConfigBuilder::model_quota)
//! named exactly) and the default key of non-Bedrock requests always hold state of their
//! own: their number is fixed by the configuration. Every other model id comes from the
//! request path, so from whoever sends requests, and is filed here:
//!
//! - **Canonical ids.** The ARN of a foundation model or of a system inference profile is
//!   filed as the id it names: one quota at Bedrock, one key here.
//! - **Unproven models.** Until upstream has answered a request for a model with a 2xx (it
//!   names a real model), its requests also pass one stage shared by every unproven model
//!   of its Region, with the quota the model would get (the default one). Bedrock refuses
//!   invented ids before running them (400, 404: refunded), so invented ids never leave that
//!   stage: together they spend no more than one quota, however many there are.
//! - **A bounded table.** At most `max_keys` such keys hold state (a ledger, a telemetry
//!   entry with its metric series, a diagnosis record) at once. A new one past the bound
//!   evicts idle ones: a key is idle when it is at rest (nothing waits at it or holds a
//!   reservation of it, its buckets are full and its rates back at the quota) and has not
//!   been used for [`IDLE`]. At rest a key is exactly what a new one would be, so evicting it
//!   loses nothing (no debt is forgiven) and gains nothing. When none can be evicted, the
//!   request spends from its Region's overflow key, labelled `model="(other)"`.
//! - **A bounded set of names.** An unproven model gets state of its own only while fewer
//!   than `max_keys` unproven models ever had some; after that only proven models (at most
//!   `max_keys` of them are remembered) get keys of their own. So the metric label values
//!   ever reported stay below the own-quota models + 2 × `max_keys` + the fixed names, even
//!   with an exporter that keeps every series it has seen.

use std::{
    borrow::Cow,
    collections::{HashMap, HashSet},
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::Duration,
};

use tokio::time::Instant;

use crate::{
    bedrock::model_id::quota_model_id,
    config::{QuotaName, Shared},
    QuotaKey,
};

/// How long a key must go unused before it may be evicted.
pub(crate) const IDLE: Duration = Duration::from_secs(600);
/// Eviction is tried at most this often, so a flood of new ids costs O(1) amortised.
const SWEEP_EVERY: Duration = Duration::from_secs(1);
/// Bedrock's longest model id; a longer one is invented and gets no state of its own.
const MAX_MODEL_ID: usize = 2_048;
/// The model name of a Region's overflow key.
pub(crate) const OTHER: &str = "(other)";
/// The model name of a Region's stage of unproven models.
pub(crate) const UNPROVEN: &str = "(unproven)";

/// `key` with its model spelled as its quota (see [`quota_model_id`]).
pub(crate) fn canonical(key: &QuotaKey) -> Cow<'_, QuotaKey> {
    match key.model() {
        Some(m) if quota_model_id(m).len() != m.len() => {
            let canonical =
                QuotaKey::new(Some(quota_model_id(m)), key.region()).with_context(key.context());
            Cow::Owned(if key.is_reserved() {
                canonical.reserved()
            } else {
                canonical
            })
        }
        _ => Cow::Borrowed(key),
    }
}

/// Where a request's state is filed.
#[derive(Debug)]
pub(crate) struct Filed {
    /// The key whose ledger, telemetry and record the request uses.
    pub(crate) key: QuotaKey,
    /// The shared stage the request passes first, while its model is unproven.
    pub(crate) unproven: Option<QuotaKey>,
}

/// Files a metered request of `key` (canonical): see the module docs.
pub(crate) fn file(shared: &Shared, key: &QuotaKey) -> Filed {
    // Only a configured `reserved_quota` meters a reserved key: as fixed as `model_quota`.
    let quota = key
        .model()
        .filter(|_| !key.is_reserved())
        .map(|m| shared.settings.quota_name(m));
    let tail = match quota {
        // Non-Bedrock requests, and models with a quota of their own.
        None | Some(QuotaName::Own) => {
            return Filed {
                key: key.clone(),
                unproven: None,
            }
        }
        Some(QuotaName::Tail(t)) => Some(t),
        Some(QuotaName::Default) => None,
    };
    shared.keys.file(key, tail, Instant::now(), |k| {
        if !shared.ledger.evict(k) {
            return false;
        }
        shared.telemetry.remove(k);
        shared.diagnosis.remove(k);
        true
    })
}

/// The models without a quota of their own that hold state, and those proven real.
#[derive(Debug)]
pub(crate) struct KeyTable {
    max_keys: usize,
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// Keys holding state, and when each was last used.
    held: HashMap<QuotaKey, Instant>,
    /// Keys upstream answered with a 2xx.
    proven: HashSet<QuotaKey>,
    /// Unproven keys that ever held state (and so have a metric label).
    named: HashSet<QuotaKey>,
    last_sweep: Option<Instant>,
}

impl KeyTable {
    pub(crate) fn new(max_keys: usize) -> Self {
        Self {
            max_keys,
            inner: Mutex::default(),
        }
    }

    fn inner(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Files `key`, which has the default quota or (`tail`) the quota of its ARN's tail, at
    /// `now`; `evict` removes an idle key's state if it is at rest (true when it did).
    fn file(
        &self,
        key: &QuotaKey,
        tail: Option<&str>,
        now: Instant,
        evict: impl FnMut(&QuotaKey) -> bool,
    ) -> Filed {
        let mut t = self.inner();
        let proven = t.proven.contains(key);
        let unproven = (!proven).then(|| stage_key(UNPROVEN, tail, key));
        if let Some(used) = t.held.get_mut(key) {
            *used = now;
            return Filed {
                key: key.clone(),
                unproven,
            };
        }
        let model = key.model().unwrap_or_default();
        let may_hold = model.len() <= MAX_MODEL_ID
            && !model.starts_with(OTHER)
            && !model.starts_with(UNPROVEN)
            && (proven || t.named.contains(key) || t.named.len() < self.max_keys);
        if may_hold && t.held.len() >= self.max_keys {
            t.sweep(now, evict);
        }
        if !may_hold || t.held.len() >= self.max_keys {
            return Filed {
                key: stage_key(OTHER, tail, key),
                unproven,
            };
        }
        if !proven {
            t.named.insert(key.clone());
        }
        t.held.insert(key.clone(), now);
        Filed {
            key: key.clone(),
            unproven,
        }
    }

    /// Upstream answered a request of `key` with a 2xx: it names a real model.
    pub(crate) fn prove(&self, key: &QuotaKey) {
        let mut t = self.inner();
        if t.proven.len() < self.max_keys && !t.proven.contains(key) {
            t.proven.insert(key.clone());
        }
    }

    /// How many keys hold state (for tests).
    #[cfg(test)]
    fn held(&self) -> usize {
        self.inner().held.len()
    }
}

impl Inner {
    /// Evicts the keys idle for [`IDLE`] that `evict` finds at rest, at most once per
    /// [`SWEEP_EVERY`].
    fn sweep(&mut self, now: Instant, mut evict: impl FnMut(&QuotaKey) -> bool) {
        if self
            .last_sweep
            .is_some_and(|t| now.saturating_duration_since(t) < SWEEP_EVERY)
        {
            return;
        }
        self.last_sweep = Some(now);
        self.held
            .retain(|k, used| now.saturating_duration_since(*used) < IDLE || !evict(k));
    }
}

/// The Region's shared key named `name` for the models with the quota `key` has: the
/// default one, or that of the ARN tail `tail` (`name/tail`, which resolves to it).
fn stage_key(name: &str, tail: Option<&str>, key: &QuotaKey) -> QuotaKey {
    let stage = match tail {
        Some(t) => QuotaKey::new(Some(&format!("{name}/{t}")), key.region()),
        None => QuotaKey::new(Some(name), key.region()),
    };
    stage.with_context(key.context())
}

/// Marks a model proven when upstream answers its request with a 2xx.
#[derive(Debug)]
pub(crate) struct Proof {
    pub(crate) shared: Arc<Shared>,
    pub(crate) key: QuotaKey,
}

impl Proof {
    pub(crate) fn proven(&self) {
        self.shared.keys.prove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(model: &str) -> QuotaKey {
        QuotaKey::new(Some(model), Some("us-east-1"))
    }

    #[test]
    fn arns_of_one_quota_file_as_its_id() {
        let arn = QuotaKey::new(
            Some("arn:aws:bedrock:us-east-1::foundation-model/amazon.nova-pro-v1:0"),
            Some("us-east-1"),
        );
        assert_eq!(*canonical(&arn), key("amazon.nova-pro-v1:0"));
        let plain = key("amazon.nova-pro-v1:0");
        assert!(matches!(canonical(&plain), Cow::Borrowed(_)));
    }

    #[test]
    fn past_the_bound_new_keys_overflow_until_an_idle_one_is_at_rest() {
        let table = KeyTable::new(2);
        // A real model: past the bound, unproven ids would get no state of their own.
        table.prove(&key("c"));
        let t0 = Instant::now();
        let never = |_: &QuotaKey| -> bool { panic!("nothing is idle yet") };
        assert_eq!(table.file(&key("a"), None, t0, never).key, key("a"));
        assert_eq!(table.file(&key("b"), None, t0, never).key, key("b"));
        // Full, and nothing idle: the third spends from the overflow key.
        let f = table.file(&key("c"), None, t0 + Duration::from_secs(1), |_| true);
        assert_eq!((f.key, f.unproven), (key(OTHER), None));
        // Known keys are still their own.
        assert_eq!(table.file(&key("a"), None, t0 + IDLE, never).key, key("a"));
        // `b` is idle now; at rest it is evicted, `a` (used since) is not.
        let later = t0 + IDLE + Duration::from_secs(2);
        let mut asked = Vec::new();
        let f = table.file(&key("c"), None, later, |k| {
            asked.push(k.clone());
            true
        });
        assert_eq!(asked, [key("b")]);
        assert_eq!(f.key, key("c"));
        assert_eq!(table.held(), 2);
    }

    #[test]
    fn a_key_not_at_rest_is_kept_and_sweeps_are_rate_limited() {
        let table = KeyTable::new(2);
        table.prove(&key("b"));
        table.prove(&key("c"));
        let t0 = Instant::now();
        table.file(&key("a"), None, t0, |_| unreachable!());
        table.file(&key("x"), None, t0, |_| unreachable!());
        let late = t0 + IDLE;
        let mut asked = 0;
        // Not at rest (a waiter, a reservation in flight, a debt): kept.
        assert_eq!(
            table
                .file(&key("b"), None, late, |_| {
                    asked += 1;
                    false
                })
                .key,
            key(OTHER)
        );
        // Within the next second nobody sweeps again.
        table.file(&key("c"), None, late + Duration::from_millis(500), |_| {
            asked += 1;
            true
        });
        assert_eq!(asked, 2);
        let f = table.file(&key("c"), None, late + SWEEP_EVERY, |_| true);
        assert_eq!(f.key, key("c"));
    }

    #[test]
    fn proven_keys_skip_the_unproven_stage_and_unproven_names_are_bounded() {
        let table = KeyTable::new(2);
        let t0 = Instant::now();
        let evict = |_: &QuotaKey| true;
        let f = table.file(&key("real"), None, t0, evict);
        assert_eq!((f.key, f.unproven), (key("real"), Some(key(UNPROVEN))));
        table.prove(&key("real"));
        assert_eq!(table.file(&key("real"), None, t0, evict).unproven, None);
        table.file(&key("x1"), None, t0, evict);
        // Two unproven names given out: a third unproven id never gets one, even with
        // room after eviction.
        let later = t0 + IDLE + SWEEP_EVERY;
        assert_eq!(table.file(&key("x2"), None, later, evict).key, key(OTHER));
        // Invented ids spelled like the fixed names or too long get none either.
        assert_eq!(table.file(&key(OTHER), None, later, evict).key, key(OTHER));
        let long = "m".repeat(MAX_MODEL_ID + 1);
        assert_eq!(table.file(&key(&long), None, later, evict).key, key(OTHER));
        // A proven model does, once there is room.
        table.prove(&key("real2"));
        assert_eq!(
            table.file(&key("real2"), None, later, evict).key,
            key("real2")
        );
    }

    #[test]
    fn tail_matched_arns_share_stages_of_their_own_quota() {
        let k = key("arn:aws:bedrock:us-east-1:1:application-inference-profile/m");
        assert_eq!(stage_key(UNPROVEN, Some("m"), &k), key("(unproven)/m"));
        assert_eq!(stage_key(OTHER, Some("m"), &k), key("(other)/m"));
        // An invented path whose tail has no quota of its own shares the default stages.
        let invented = key("x/anything");
        assert_eq!(stage_key(UNPROVEN, None, &invented), key(UNPROVEN));
    }
}
