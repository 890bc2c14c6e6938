//! The waiters of one key in service order: start-time fair queueing across tenants,
//! critical before interactive before batch within a tenant.
//!
//! Each tenant with waiters has one candidate, its *head*, tagged with a virtual start time
//! `S = max(V, F)`: `V` the start tag of the last admitted request of the key, `F` the
//! tenant's finish tag, which grows by `cost / weight` with each of its admissions (`cost`
//! the request's share of the key's quota period, in tokens or in requests, whichever is
//! larger). The key serves the head with the smallest tag, ties in arrival order. So a
//! tenant that has waited nothing starts at `V` (right behind the request being served), a
//! busy tenant's tags run ahead of `V` at the pace of its weight, and a tenant with no
//! waiters lends its share to the others until it comes back. With one tenant this is plain
//! FIFO.
//!
//! Within a tenant, critical requests go before interactive ones and both before batch
//! ones, except that while batch requests wait, every [`BATCH_EVERY`]th admission of the
//! tenant goes to its oldest batch request: batch gets at least one admission in
//! `BATCH_EVERY` and is never starved, by either.

use std::collections::{BTreeSet, HashMap};

use crate::tenant::{Priority, Tenant};

/// While batch requests wait, one admission in this many of a tenant goes to batch.
pub(crate) const BATCH_EVERY: u32 = 4;

/// Idle tenants whose finish tags are still ahead of the virtual time are remembered up to
/// this many; past it those closest to the virtual time are forgotten first (they gain the
/// least by starting anew at `V`), so a stream of one-off tenant names cannot grow memory.
pub(crate) const MAX_IDLE_TENANTS: usize = 1_024;

/// A non-negative virtual time, ordered by its bits (which order like the value).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Tag(u64);

impl Tag {
    fn new(t: f64) -> Self {
        Self(t.max(0.0).to_bits())
    }

    fn value(self) -> f64 {
        f64::from_bits(self.0)
    }
}

#[derive(Debug, Default)]
struct TenantQueue {
    weight: f64,
    /// Finish tag of the tenant's last admission.
    finish: f64,
    /// Waiter ids, growing with arrival (their costs are in `WaitQueue::places`).
    critical: BTreeSet<u64>,
    interactive: BTreeSet<u64>,
    batch: BTreeSet<u64>,
    /// Admissions of other requests since the last batch one, while batch waited.
    since_batch: u32,
    /// The candidate and its start tag, while the tenant has waiters.
    head: Option<(Tag, u64)>,
}

impl TenantQueue {
    fn is_empty(&self) -> bool {
        self.critical.is_empty() && self.interactive.is_empty() && self.batch.is_empty()
    }

    fn len(&self) -> usize {
        self.interactive.len() + self.batch.len()
    }

    /// The waiter the tenant puts forward next.
    fn pick(&self) -> Option<u64> {
        // Critical before interactive; batch takes its turns against either.
        let i = self.critical.first().or(self.interactive.first());
        let b = self.batch.first();
        match (i, b) {
            (Some(&i), Some(&b)) => Some(if self.since_batch + 1 >= BATCH_EVERY {
                b
            } else {
                i
            }),
            (i, b) => i.or(b).copied(),
        }
    }
}

/// Where a waiter is.
#[derive(Debug)]
struct Place {
    tenant: Option<Tenant>,
    priority: Priority,
    cost: f64,
}

/// The waiters of one key. See the module docs.
#[derive(Debug, Default)]
pub(crate) struct WaitQueue {
    /// The tenants with waiters.
    tenants: HashMap<Option<Tenant>, TenantQueue>,
    /// The finish tags of tenants without waiters that are still ahead of the virtual time
    /// (at most `2 × MAX_IDLE_TENANTS`): they start there when they come back.
    idle: HashMap<Option<Tenant>, f64>,
    /// The heads of the tenants with waiters: (start tag, waiter id).
    heads: BTreeSet<(Tag, u64)>,
    places: HashMap<u64, Place>,
    /// Start tag of the last admission.
    virtual_time: f64,
    /// Sum of the waiters' costs, in quota periods.
    queued_cost: f64,
    /// Idle entries looked at by trims, to show the amortised cost in tests.
    #[cfg(test)]
    trim_visits: usize,
}

impl WaitQueue {
    pub(crate) fn len(&self) -> usize {
        self.places.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.places.is_empty()
    }

    /// The waiter to admit next.
    pub(crate) fn first(&self) -> Option<u64> {
        self.heads.first().map(|&(_, id)| id)
    }

    /// The waiters' total cost, in quota periods: roughly how long the queue takes to drain.
    pub(crate) fn queued_periods(&self) -> f64 {
        self.queued_cost.max(0.0)
    }

    /// Whether a newcomer of `tenant` at `weight` finds no place among `max`: the queue
    /// holds `max` waiters and the tenant already its weighted share of them
    /// (`max × weight / total weight` of the tenants waiting, itself included, rounded up),
    /// or the queue holds `2 × max`. So a full queue sheds the tenants above their share
    /// first, and a tenant that arrives late still finds its share of places: under
    /// overload every tenant keeps waiters, and admissions split by weight.
    pub(crate) fn sheds(&self, tenant: &Option<Tenant>, weight: f64, max: usize) -> bool {
        let len = self.len();
        if len < max {
            return false;
        }
        if len >= max.saturating_mul(2) {
            return true;
        }
        let others: f64 = (self.tenants.iter())
            .filter(|(t, _)| *t != tenant)
            .map(|(_, q)| q.weight)
            .sum();
        let held = self.tenants.get(tenant).map_or(0, TenantQueue::len);
        let share = (max as f64 * weight / (others + weight)).ceil() as usize;
        held >= share.max(1)
    }

    /// Adds waiter `id` (ids must grow with arrival) of `tenant` at `weight`; `cost` is its
    /// share of the key's quota period.
    pub(crate) fn push(
        &mut self,
        id: u64,
        tenant: Option<Tenant>,
        weight: f64,
        priority: Priority,
        cost: f64,
    ) {
        let v = self.virtual_time;
        let idle = &mut self.idle;
        let t = self
            .tenants
            .entry(tenant.clone())
            .or_insert_with(|| TenantQueue {
                finish: idle.remove(&tenant).unwrap_or(0.0),
                ..TenantQueue::default()
            });
        t.weight = weight;
        match priority {
            Priority::Critical => t.critical.insert(id),
            Priority::Interactive => t.interactive.insert(id),
            Priority::Batch => t.batch.insert(id),
        };
        self.places.insert(
            id,
            Place {
                tenant: tenant.clone(),
                priority,
                cost,
            },
        );
        self.queued_cost += cost;
        // A new waiter may change whom the tenant puts forward; the start tag stays.
        let start = t.head.map_or_else(|| Tag::new(v.max(t.finish)), |(s, _)| s);
        self.reseat(&tenant, start);
    }

    /// Admits the head; returns its id.
    pub(crate) fn pop_first(&mut self) -> Option<u64> {
        let id = self.first()?;
        self.remove_waiter(id, true);
        Some(id)
    }

    /// Removes waiter `id`, admitted or not; true if it was there.
    pub(crate) fn remove(&mut self, id: u64) -> bool {
        self.remove_waiter(id, false)
    }

    fn remove_waiter(&mut self, id: u64, admitted: bool) -> bool {
        let Some(place) = self.places.remove(&id) else {
            return false;
        };
        self.queued_cost -= place.cost;
        if self.places.is_empty() {
            self.queued_cost = 0.0;
        }
        let t = self
            .tenants
            .get_mut(&place.tenant)
            .expect("a waiter's tenant has a queue");
        let had_batch = !t.batch.is_empty();
        match place.priority {
            Priority::Critical => t.critical.remove(&id),
            Priority::Interactive => t.interactive.remove(&id),
            Priority::Batch => t.batch.remove(&id),
        };
        let Some((start, head)) = t.head else {
            unreachable!("a tenant with waiters has a head")
        };
        if head != id {
            return true; // left from the middle: the tenant's head and tag stay
        }
        self.heads.remove(&(start, head));
        t.head = None;
        let mut next_start = start;
        if admitted {
            self.virtual_time = self.virtual_time.max(start.value());
            t.finish = start.value() + place.cost / t.weight;
            next_start = Tag::new(self.virtual_time.max(t.finish));
            match place.priority {
                Priority::Batch => t.since_batch = 0,
                Priority::Critical | Priority::Interactive if had_batch => t.since_batch += 1,
                Priority::Critical | Priority::Interactive => {}
            }
        }
        if t.is_empty() {
            // Idle from now on: the tenant's share goes to the others until it returns, and
            // only a finish tag ahead of the virtual time is worth remembering.
            let finish = t.finish;
            self.tenants.remove(&place.tenant);
            if finish > self.virtual_time {
                self.idle.insert(place.tenant, finish);
                if self.idle.len() > 2 * MAX_IDLE_TENANTS {
                    self.trim();
                }
            }
        } else {
            self.reseat(&place.tenant, next_start);
        }
        true
    }

    /// Puts `tenant`'s pick forward at `start`.
    fn reseat(&mut self, tenant: &Option<Tenant>, start: Tag) {
        let t = self.tenants.get_mut(tenant).expect("tenant queue");
        if let Some(old) = t.head.take() {
            self.heads.remove(&old);
        }
        if let Some(id) = t.pick() {
            t.head = Some((start, id));
            self.heads.insert((start, id));
        }
    }

    /// The cost of waiter `id`, in quota periods.
    #[cfg(test)]
    pub(crate) fn cost(&self, id: u64) -> f64 {
        self.places.get(&id).map_or(0.0, |p| p.cost)
    }

    /// Forgets idle tenants whose finish tags are behind the virtual time (they would start
    /// at `V` anyway), then past [`MAX_IDLE_TENANTS`] the idle ones closest to it. Runs when
    /// the idle entries double past the bound, so it costs O(1) per departure.
    fn trim(&mut self) {
        #[cfg(test)]
        {
            self.trim_visits += self.idle.len();
        }
        let v = self.virtual_time;
        self.idle.retain(|_, finish| *finish > v);
        if self.idle.len() > MAX_IDLE_TENANTS {
            let mut finishes: Vec<f64> = self.idle.values().copied().collect();
            let excess = self.idle.len() - MAX_IDLE_TENANTS;
            let (_, &mut cut, _) = finishes.select_nth_unstable_by(excess - 1, f64::total_cmp);
            self.idle.retain(|_, finish| *finish > cut);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(name: &str) -> Option<Tenant> {
        Some(Tenant::new(name))
    }

    fn drain(q: &mut WaitQueue) -> Vec<u64> {
        std::iter::from_fn(|| q.pop_first()).collect()
    }

    #[test]
    fn a_full_queue_sheds_the_tenants_above_their_weighted_share() {
        let mut q = WaitQueue::default();
        let (gold, bronze) = (tenant("gold"), tenant("bronze"));
        let mut id = 0;
        let mut push = |q: &mut WaitQueue, t: &Option<Tenant>, w: f64| {
            id += 1;
            q.push(id, t.clone(), w, Priority::Interactive, 0.01);
        };
        // Alone, gold takes every place.
        for _ in 0..8 {
            assert!(!q.sheds(&gold, 3.0, 8));
            push(&mut q, &gold, 3.0);
        }
        assert!(q.sheds(&gold, 3.0, 8), "full, and gold holds all of it");
        // Bronze's share of 8 places at weights 3 : 1 is 2: it still gets them.
        for _ in 0..2 {
            assert!(!q.sheds(&bronze, 1.0, 8));
            push(&mut q, &bronze, 1.0);
        }
        assert!(q.sheds(&bronze, 1.0, 8), "bronze holds its share");
        // A newcomer of weight 1 has a share of ceil(8 / 5) = 2; the queue never holds
        // more than 2 × 8.
        for _ in 0..2 {
            assert!(!q.sheds(&tenant("new"), 1.0, 8));
            push(&mut q, &tenant("new"), 1.0);
        }
        assert!(q.sheds(&tenant("new"), 1.0, 8));
        for i in 0..4 {
            let t = tenant(&format!("t{i}"));
            if !q.sheds(&t, 1.0, 8) {
                push(&mut q, &t, 1.0);
            }
        }
        assert_eq!(q.len(), 16);
        assert!(
            q.sheds(&tenant("late"), 100.0, 8),
            "2 × max is the hard bound"
        );
        // Below max anyone queues; max 0 sheds everyone.
        assert!(!WaitQueue::default().sheds(&gold, 1.0, 1));
        assert!(WaitQueue::default().sheds(&gold, 1.0, 0));
    }

    #[test]
    fn one_tenant_is_fifo() {
        let mut q = WaitQueue::default();
        for id in 0..5 {
            q.push(id, None, 1.0, Priority::Interactive, 0.1);
        }
        q.remove(2);
        assert_eq!(drain(&mut q), vec![0, 1, 3, 4]);
        assert!(q.is_empty());
    }

    #[test]
    fn equal_weights_alternate_and_a_late_tenant_is_served_next() {
        let mut q = WaitQueue::default();
        for id in 0..6 {
            q.push(id, tenant("busy"), 1.0, Priority::Interactive, 0.1);
        }
        assert_eq!(q.pop_first(), Some(0));
        assert_eq!(q.pop_first(), Some(1));
        // The quiet tenant arrives behind five busy waiters and goes next.
        q.push(100, tenant("quiet"), 1.0, Priority::Interactive, 0.1);
        q.push(101, tenant("quiet"), 1.0, Priority::Interactive, 0.1);
        assert_eq!(q.pop_first(), Some(100));
        assert_eq!(drain(&mut q), vec![2, 101, 3, 4, 5]);
    }

    #[test]
    fn weights_share_admissions_in_proportion() {
        let mut q = WaitQueue::default();
        let mut id = 0;
        for _ in 0..300 {
            q.push(id, tenant("a"), 3.0, Priority::Interactive, 0.01);
            q.push(id + 1, tenant("b"), 1.0, Priority::Interactive, 0.01);
            id += 2;
        }
        let first: Vec<u64> = (0..200).filter_map(|_| q.pop_first()).collect();
        let a = first.iter().filter(|id| *id % 2 == 0).count();
        // Three to one, give or take the order of equal tags at the cut.
        assert!((149..=151).contains(&a), "{a}");
    }

    #[test]
    fn cost_counts_not_just_requests() {
        let mut q = WaitQueue::default();
        // a sends requests ten times as large as b's: b gets ten admissions per a's one.
        let mut id = 0;
        for _ in 0..50 {
            q.push(id, tenant("a"), 1.0, Priority::Interactive, 0.1);
            id += 1;
        }
        for _ in 0..50 {
            q.push(id, tenant("b"), 1.0, Priority::Interactive, 0.01);
            id += 1;
        }
        let first: Vec<u64> = (0..22).filter_map(|_| q.pop_first()).collect();
        let a = first.iter().filter(|id| **id < 50).count();
        assert_eq!(a, 2);
    }

    #[test]
    fn interactive_goes_first_but_batch_gets_one_in_batch_every() {
        let mut q = WaitQueue::default();
        for id in 0..4 {
            q.push(id, None, 1.0, Priority::Batch, 0.1);
        }
        for id in 10..20 {
            q.push(id, None, 1.0, Priority::Interactive, 0.1);
        }
        let order = drain(&mut q);
        assert_eq!(&order[..5], &[10, 11, 12, 0, 13]);
        // Every window of BATCH_EVERY admissions holds a batch one while batch waits.
        let last_batch = order.iter().rposition(|id| *id < 10).unwrap();
        for w in order[..=last_batch].windows(BATCH_EVERY as usize) {
            assert!(w.iter().any(|id| *id < 10), "{order:?}");
        }
    }

    /// Bedrock's tiers: priority (critical) before default (interactive) before flex
    /// (batch), and flex still gets one admission in `BATCH_EVERY`.
    #[test]
    fn critical_goes_before_interactive_and_batch_is_never_starved() {
        let mut q = WaitQueue::default();
        for id in 0..3 {
            q.push(id, None, 1.0, Priority::Batch, 0.1);
        }
        for id in 10..14 {
            q.push(id, None, 1.0, Priority::Interactive, 0.1);
        }
        for id in 20..26 {
            q.push(id, None, 1.0, Priority::Critical, 0.1);
        }
        let order = drain(&mut q);
        assert_eq!(
            order,
            vec![20, 21, 22, 0, 23, 24, 25, 1, 10, 11, 12, 2, 13],
            "{order:?}"
        );
    }

    #[test]
    fn a_new_interactive_request_goes_before_a_waiting_batch_head() {
        let mut q = WaitQueue::default();
        q.push(0, None, 1.0, Priority::Batch, 0.1);
        assert_eq!(q.first(), Some(0));
        q.push(1, None, 1.0, Priority::Interactive, 0.1);
        assert_eq!(q.first(), Some(1));
        assert_eq!(drain(&mut q), vec![1, 0]);
    }

    #[test]
    fn one_off_tenants_cost_constant_work_per_push_and_bounded_memory() {
        let mut q = WaitQueue::default();
        let mut id = 0;
        // Three waves of 20,000 queued requests, each of a tenant never seen before.
        for wave in 0..3 {
            for _ in 0..20_000 {
                q.push(
                    id,
                    tenant(&format!("t{id}")),
                    1.0,
                    Priority::Interactive,
                    0.001,
                );
                id += 1;
            }
            assert_eq!(drain(&mut q).len(), 20_000, "wave {wave}");
            assert!(q.tenants.is_empty(), "wave {wave}");
            assert!(
                q.idle.len() <= 2 * MAX_IDLE_TENANTS,
                "wave {wave}: {} idle tenants remembered",
                q.idle.len()
            );
        }
        // Trims looked at a bounded number of entries per push, not every tenant ever seen.
        assert!(
            q.trim_visits <= 2 * id as usize,
            "{} visits for {id} pushes",
            q.trim_visits
        );
        // A recurring tenant keeps its place in the fair order across the waves.
        q.push(id, tenant("busy"), 1.0, Priority::Interactive, 0.5);
        q.push(id + 1, tenant("busy"), 1.0, Priority::Interactive, 0.5);
        q.push(id + 2, tenant("quiet"), 1.0, Priority::Interactive, 0.5);
        assert_eq!(drain(&mut q), vec![id, id + 2, id + 1]);
    }

    #[test]
    fn leaving_keeps_costs_and_tags_consistent() {
        let mut q = WaitQueue::default();
        q.push(0, tenant("a"), 1.0, Priority::Interactive, 0.25);
        q.push(1, tenant("a"), 1.0, Priority::Batch, 0.5);
        q.push(2, tenant("b"), 1.0, Priority::Interactive, 0.25);
        assert!((q.queued_periods() - 1.0).abs() < 1e-9);
        assert!((q.cost(1) - 0.5).abs() < 1e-9);
        assert!(q.remove(0));
        assert!(!q.remove(0));
        assert_eq!(q.len(), 2);
        assert_eq!(drain(&mut q), vec![1, 2]);
        assert_eq!(q.queued_periods(), 0.0);
        q.trim();
        assert!(q.tenants.len() + q.idle.len() <= 2);
    }
}
