//! Per-model learned ratio between the tokens upstream reports and the estimate.
//!
//! The heuristic (or cl100k) count differs from each model's real tokenizer by a roughly
//! constant factor (Claude's tokenizer, for instance, yields more tokens than cl100k for the
//! same English text). [`Calibration`] learns that factor per model from the usage in
//! responses and scales later estimates by it.
//!
//! How the ratio moves, per [base model id](crate::estimate::limits::base_model_id) (so a
//! cross-Region profile and its foundation model share a ratio: same tokenizer):
//! 1. Each observation gives a sample `actual / estimated`. Observations with an estimate
//!    of 0 are ignored.
//! 2. The sample is clamped to `[ratio / 2, ratio × 2]` (one wild outlier moves the ratio
//!    by a bounded step) and to the bounds `[MIN_RATIO, MAX_RATIO]` = `[0.25, 4]`.
//! 3. The ratio is an exponentially weighted moving average with weight
//!    `max(1 / n, ALPHA)` for the n-th observation, `ALPHA` = 0.2: the first observation is
//!    taken as it is (clamped), the first few are averaged evenly, then older observations
//!    fade with a factor 0.8 each.
//! 4. Beside the ratio, the mean absolute deviation of the samples from it is averaged the
//!    same way. [`Calibration::apply`] scales by `ratio + 2 × deviation`: the gate would
//!    rather over-reserve input, which settlement gives back at once, than under-reserve,
//!    which Bedrock refuses with a throttle. A purely systematic bias has no deviation, so
//!    it disappears entirely.
//! 5. Before a model's first observation its estimates are scaled by the prior,
//!    [`INITIAL_RATIO`] = 1.5 unless set with [`Calibration::with_prior`]: the first burst of
//!    requests is admitted before any response can teach anything, and Claude's tokenizer
//!    counts English and code well above cl100k. The first observation replaces the prior.
//!
//! ```
//! use bedrock_throttle::estimate::Calibration;
//! let calibration = Calibration::new();
//! assert_eq!(calibration.ratio("anthropic.claude-3-haiku-20240307-v1:0"), 1.5); // the prior
//! calibration.observe("us.anthropic.claude-3-haiku-20240307-v1:0", 1_000, 1_200);
//! assert!((calibration.ratio("anthropic.claude-3-haiku-20240307-v1:0") - 1.2).abs() < 1e-9);
//! assert_eq!(calibration.apply("anthropic.claude-3-haiku-20240307-v1:0", 100), 120);
//! ```

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use crate::estimate::limits::base_model_id;

/// The ratio of a model that has no observation yet.
pub const INITIAL_RATIO: f64 = 1.5;
/// Smallest ratio a model can learn.
pub const MIN_RATIO: f64 = 0.25;
/// Largest ratio a model can learn.
pub const MAX_RATIO: f64 = 4.0;
/// Smallest weight of a new observation in the moving average.
pub const ALPHA: f64 = 0.2;
/// Largest factor one observation's sample may differ from the current ratio.
pub const MAX_STEP: f64 = 2.0;

#[derive(Clone, Copy, Debug)]
struct Entry {
    ratio: f64,
    deviation: f64,
    observations: u64,
}

/// Per-model calibration of input token estimates.
///
/// Cheap to call from many tasks: one `std::sync::Mutex` around a small map, held for a
/// lookup or an update only. Share it behind an `Arc`. See the [module docs](self) for how
/// the ratio is learned.
#[derive(Debug)]
pub struct Calibration {
    models: Mutex<HashMap<String, Entry>>,
    prior: f64,
}

impl Default for Calibration {
    fn default() -> Self {
        Self::new()
    }
}

impl Calibration {
    /// An empty calibration: every model starts at [`INITIAL_RATIO`].
    pub fn new() -> Self {
        Self::with_prior(INITIAL_RATIO)
    }

    /// An empty calibration whose models start at `prior` (clamped to
    /// `[MIN_RATIO, MAX_RATIO]`; 1.0 trusts the estimator as it is).
    pub fn with_prior(prior: f64) -> Self {
        let prior = if prior.is_finite() {
            prior.clamp(MIN_RATIO, MAX_RATIO)
        } else {
            INITIAL_RATIO
        };
        Self {
            models: Mutex::default(),
            prior,
        }
    }

    /// Learns from one response: `estimated_input` is what the estimator said before
    /// calibration, `actual_input` what upstream reported (including cache reads and writes).
    pub fn observe(&self, model: &str, estimated_input: u64, actual_input: u64) {
        if estimated_input == 0 {
            return;
        }
        let key = base_model_id(model);
        let sample = actual_input as f64 / estimated_input as f64;
        let mut models = self.models.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = match models.get_mut(key.as_ref()) {
            Some(e) => e,
            None => models.entry(key.into_owned()).or_insert(Entry {
                ratio: self.prior,
                deviation: 0.0,
                observations: 0,
            }),
        };
        let sample = sample
            .clamp(entry.ratio / MAX_STEP, entry.ratio * MAX_STEP)
            .clamp(MIN_RATIO, MAX_RATIO);
        let previous = entry.ratio;
        entry.observations = entry.observations.saturating_add(1);
        let weight = (1.0 / entry.observations as f64).max(ALPHA);
        entry.ratio = (entry.ratio + weight * (sample - entry.ratio)).clamp(MIN_RATIO, MAX_RATIO);
        entry.deviation += weight * ((sample - entry.ratio).abs() - entry.deviation);
        tracing::debug!(
            model,
            sample,
            previous,
            ratio = entry.ratio,
            "calibration updated"
        );
    }

    /// The model's entry, if it has learned anything.
    fn entry(&self, model: &str) -> Option<Entry> {
        let key = base_model_id(model);
        self.models
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(key.as_ref())
            .copied()
    }

    /// Current ratio actual / estimated for the model; the prior when nothing was learned yet.
    pub fn ratio(&self, model: &str) -> f64 {
        self.entry(model).map_or(self.prior, |e| e.ratio)
    }

    /// Mean absolute deviation of the model's samples from its ratio; 0.0 when nothing was
    /// learned yet.
    pub fn deviation(&self, model: &str) -> f64 {
        self.entry(model).map_or(0.0, |e| e.deviation)
    }

    /// How many observations the model's ratio is built on.
    pub fn observations(&self, model: &str) -> u64 {
        self.entry(model).map_or(0, |e| e.observations)
    }

    /// Every model learned so far with its ratio and observation count, sorted by model.
    pub fn snapshot(&self) -> Vec<(String, f64, u64)> {
        let models = self.models.lock().unwrap_or_else(PoisonError::into_inner);
        let mut all: Vec<_> = models
            .iter()
            .map(|(k, e)| (k.clone(), e.ratio, e.observations))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// `raw_input × (ratio + 2 × deviation)` for the model, rounded up (saturating), never
    /// above `raw_input × MAX_RATIO`.
    pub fn apply(&self, model: &str, raw_input: u64) -> u64 {
        let scale = self
            .entry(model)
            .map_or(self.prior, |e| (e.ratio + 2.0 * e.deviation).min(MAX_RATIO));
        let exact = raw_input as f64 * scale;
        // Shave float noise so that 100 × 1.2 gives 120, not 121.
        let scaled = (exact - exact * 1e-12).ceil();
        if scaled >= u64::MAX as f64 {
            u64::MAX
        } else {
            scaled as u64
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const M: &str = "anthropic.claude-sonnet-4-20250514-v1:0";

    #[test]
    fn converges_to_true_ratio() {
        let c = Calibration::new();
        let truth = 4.0 / 3.6;
        // Start from a different state to make convergence meaningful.
        c.observe(M, 1_000, 800);
        for i in 0..10u64 {
            let est = 900 + i * 37;
            c.observe(M, est, (est as f64 * truth).round() as u64);
        }
        let r = c.ratio(M);
        assert!((r - truth).abs() / truth < 0.02, "ratio {r}");
        assert_eq!(c.observations(M), 11);
        // The noisy start leaves a deviation: apply errs high, by twice the deviation.
        let corrected = c.apply(M, 3_600);
        let bound = (3_600.0 * (r + 2.0 * c.deviation(M))).ceil() as u64;
        assert!(
            corrected >= 3_920 && corrected <= bound,
            "{corrected} > {bound}"
        );
    }

    #[test]
    fn a_systematic_bias_disappears_after_a_few_responses() {
        let c = Calibration::new();
        assert_eq!(c.apply(M, 1_000), 1_500, "the prior before any response");
        for est in [900u64, 1_200, 1_500, 2_000] {
            c.observe(M, est, est * 10 / 9);
        }
        assert!(c.deviation(M) < 0.001);
        let corrected = c.apply(M, 3_600);
        assert!((3_999..=4_010).contains(&corrected), "{corrected}");
    }

    #[test]
    fn noise_raises_the_estimate_above_most_samples() {
        let c = Calibration::new();
        let samples: Vec<f64> = (0..50)
            .map(|i| 1.2 + 0.1 * ((i * 7 % 11) as f64 / 10.0 - 0.5))
            .collect();
        for s in &samples {
            c.observe(M, 10_000, (10_000.0 * s) as u64);
        }
        let applied = c.apply(M, 10_000) as f64 / 10_000.0;
        let covered = samples
            .iter()
            .rev()
            .take(10)
            .filter(|s| **s <= applied)
            .count();
        assert!(
            covered >= 9,
            "apply {applied} covers {covered}/10 recent samples"
        );
    }

    #[test]
    fn outlier_is_bounded() {
        let c = Calibration::new();
        for _ in 0..10 {
            c.observe(M, 1_000, 1_111);
        }
        c.observe(M, 1_000, 111_100);
        let r = c.ratio(M);
        assert!(r <= MAX_RATIO);
        assert!(r < 1.111 * 1.25, "one outlier moved the ratio to {r}");
        c.observe(M, 1, u64::MAX);
        assert!(c.ratio(M) <= MAX_RATIO);
        let c = Calibration::new();
        c.observe(M, 1_000, 0);
        assert!(c.ratio(M) >= MIN_RATIO);
        for _ in 0..100 {
            c.observe(M, 1, 1_000_000);
        }
        assert!((c.ratio(M) - MAX_RATIO).abs() < 1e-6);
    }

    #[test]
    fn per_model_and_normalised() {
        let c = Calibration::new();
        c.observe("us.meta.llama3-1-8b-instruct-v1:0", 100, 150);
        c.observe("amazon.nova-micro-v1:0", 100, 80);
        c.observe("amazon.nova-micro-v1:0", 0, 80);
        assert!((c.ratio("meta.llama3-1-8b-instruct-v1:0") - 1.5).abs() < 1e-9);
        assert!((c.ratio("eu.amazon.nova-micro-v1:0") - 0.8).abs() < 1e-9);
        assert_eq!(c.ratio(M), INITIAL_RATIO);
        assert_eq!(c.apply(M, 8), 12);
        assert_eq!(Calibration::with_prior(1.0).apply(M, 7), 7);
        assert_eq!(c.apply("amazon.nova-micro-v1:0", 10), 8);
        assert_eq!(c.apply("amazon.nova-micro-v1:0", 0), 0);
        let snap = c.snapshot();
        assert_eq!(snap.len(), 2);
        assert_eq!(snap[0].0, "amazon.nova-micro-v1:0");
    }

    #[test]
    fn shared_across_threads() {
        let c = std::sync::Arc::new(Calibration::new());
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let c = c.clone();
                std::thread::spawn(move || {
                    for _ in 0..100 {
                        c.observe(M, 100, 120);
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert!((c.ratio(M) - 1.2).abs() < 1e-9);
        assert_eq!(c.apply(M, u64::MAX), u64::MAX);
    }
}
