//! A bucket whose capacity and refill rate scale with a rate multiplier.

use std::time::Duration;

/// A bucket whose capacity and refill rate are its quota's times the controller's
/// multiplier.
#[derive(Clone, Debug)]
pub(super) struct Bucket {
    /// Capacity and refill per second at multiplier 1.
    pub(super) capacity: f64,
    pub(super) per_sec: f64,
    pub(super) level: f64,
    /// Refill time kept unused on top of each cost (see `ThrottleConfigBuilder::headroom`).
    pub(super) headroom: f64,
}

impl Bucket {
    pub(super) fn full(per_period: f64, period: Duration, headroom: Duration) -> Self {
        Self {
            capacity: per_period,
            per_sec: per_period / period.as_secs_f64(),
            level: per_period,
            headroom: headroom.as_secs_f64(),
        }
    }

    pub(super) fn capacity(&self, scale: f64) -> f64 {
        self.capacity * scale
    }

    /// The level at which `cost` may be taken (see [`need`]).
    pub(super) fn need(&self, cost: f64, scale: f64) -> f64 {
        need(
            cost,
            self.per_sec * scale * self.headroom,
            self.capacity(scale),
        )
    }

    pub(super) fn fill(&mut self, secs: f64, scale: f64) {
        self.level = (self.level + self.per_sec * scale * secs).min(self.capacity(scale));
    }
}

/// The level at which `cost` may be taken from a bucket of `capacity`: cost plus what the
/// bucket refills in its headroom, never above capacity (so a request larger than the
/// current capacity is admitted from a full bucket). Every bucket of the crate, local or
/// shared, admits by this rule; each computes `headroom_refill` in its own units.
pub(super) fn need(cost: f64, headroom_refill: f64, capacity: f64) -> f64 {
    (cost + headroom_refill).min(capacity)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refills_at_the_scaled_rate_up_to_the_scaled_capacity() {
        let mut b = Bucket::full(6_000.0, Duration::from_secs(60), Duration::ZERO);
        b.level = 0.0;
        b.fill(10.0, 0.5);
        assert!((b.level - 500.0).abs() < 1e-9, "{}", b.level);
        b.fill(600.0, 0.5);
        assert_eq!(b.level, 3_000.0);
    }

    #[test]
    fn headroom_adds_its_refill_to_the_cost_but_never_passes_capacity() {
        let b = Bucket::full(6_000.0, Duration::from_secs(60), Duration::from_secs(1));
        // 100 tokens a second, one second of headroom.
        assert!((b.need(50.0, 1.0) - 150.0).abs() < 1e-9);
        assert!((b.need(50.0, 0.5) - 100.0).abs() < 1e-9);
        // Larger than the capacity: admitted from a full bucket.
        assert_eq!(b.need(10_000.0, 0.5), 3_000.0);
    }
}
