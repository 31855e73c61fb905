//! Hierarchical timing wheel: owns every pending timeout of one shard (idle,
//! half-close, UDP session expiry) and hands back the ones that are due.
//!
//! Time is a plain `u64` of milliseconds since the shard started, supplied by
//! the caller; the wheel never reads a clock, so it is deterministic.
//!
//! # Layout
//!
//! Six levels of 64 slots; a slot on level `L` covers `64^L` ms, so the wheel
//! spans `64^6` ms (about 795 days). An entry lives on the level chosen by the
//! highest bit in which its deadline differs from the current time (the scheme
//! tokio's timer wheel uses), in the slot given by its deadline's bits on that
//! level. Every level keeps an `occupied` bitmap, so finding the next slot to
//! process costs a rotate and a `trailing_zeros` per level, whatever the number
//! of timers. Processing a slot fires the entries that are due and moves the
//! rest down to lower levels ("cascade"); every entry is touched at most once
//! per level on its way down, so the cost of [`TimerWheel::advance`] grows with
//! the number of entries that fire or cascade, never with the number of timers
//! held.
//!
//! Deadlines more than the wheel's span ahead are held on the top level in the
//! slot of their deadline bits. Top-level slots remember the smallest deadline
//! they hold and are processed at the start of that deadline's top-level
//! period, so such an entry is re-examined only when time actually gets near
//! it (never early, and without spinning through empty 795-day cycles when the
//! caller jumps far ahead).
//!
//! # Cancellation
//!
//! There is none: the caller keeps `(key, deadline)` in its own state and ignores
//! fires that no longer match ("lazy deletion"). Insert and fire are therefore a
//! `Vec::push` each.
//!
//! # Memory
//!
//! Slot vectors are recycled, never shrunk: a slot emptied by processing gives
//! its vector (length 0, capacity kept) to a spare list of its level, and the
//! next slot of that level to be filled takes it from there. In steady state
//! insert, cascade and fire therefore allocate nothing. Recycling per level
//! (rather than every slot keeping its own buffer) bounds the retained capacity
//! by what a level has needed at once, instead of by 64 times the biggest slot
//! the level ever saw.

use std::fmt;
use std::mem;

/// Bits of time handled by one level.
const SLOT_BITS: u32 = 6;
/// Slots per level.
const SLOTS: usize = 1 << SLOT_BITS;
/// Mask selecting a slot index.
const SLOT_MASK: u64 = (SLOTS as u64) - 1;
/// Number of levels.
const LEVELS: usize = 6;
/// Index of the top level, which also holds deadlines beyond the wheel's span.
const TOP: usize = LEVELS - 1;
/// Shift of the top level's slot index (a top-level slot covers `1 << TOP_SHIFT` ms).
const TOP_SHIFT: u32 = TOP as u32 * SLOT_BITS;

/// One timer: its deadline and the caller's item.
type Entry<T> = (u64, T);

/// One level of the wheel.
struct Level<T> {
    /// Bit `i` is set iff `slots[i]` is non-empty.
    occupied: u64,
    /// Pending entries; a slot that is empty holds a `Vec` without capacity.
    slots: [Vec<Entry<T>>; SLOTS],
    /// Emptied slot vectors of this level (length 0, capacity kept), for reuse.
    spare: Vec<Vec<Entry<T>>>,
}

impl<T> Level<T> {
    fn new() -> Self {
        Level {
            occupied: 0,
            slots: std::array::from_fn(|_| Vec::new()),
            // One per slot plus the one being processed: never reallocates.
            spare: Vec::with_capacity(SLOTS + 1),
        }
    }
}

/// The next slot that needs processing, and when.
#[derive(Clone, Copy, Debug)]
struct Expiration {
    level: usize,
    slot: usize,
    /// Start of the slot's period: no entry in it has an earlier deadline.
    time: u64,
}

/// A hierarchical timing wheel of items of type `T` (usually a connection or
/// session key), keyed by deadline in milliseconds.
///
/// Invariants (with `now` the current time):
/// * every entry in the levels has `deadline > now`; entries inserted with a
///   deadline `<= now` wait in a separate `due` list until the next `advance`;
/// * an entry on a level `L < TOP` shares all time bits above level `L` with
///   `now`, and its slot lies strictly after `now`'s slot on that level, so the
///   slot's start time is `> now` and `<= deadline`; the same holds on the top
///   level for deadlines within the wheel's span;
/// * every entry on level `L` is due after every entry on the levels below it.
pub struct TimerWheel<T> {
    now: u64,
    len: usize,
    levels: Box<[Level<T>; LEVELS]>,
    /// Smallest deadline held by each top-level slot (`u64::MAX` when empty).
    top_min: [u64; SLOTS],
    /// Entries inserted with `deadline <= now`; they fire on the next `advance`.
    due: Vec<Entry<T>>,
    /// Smallest deadline in `due` (`u64::MAX` when empty).
    due_min: u64,
}

/// The level an entry with `deadline > now` belongs on.
fn level_for(now: u64, deadline: u64) -> usize {
    // `| SLOT_MASK` makes deadlines within the same 64 ms as `now` land on level 0.
    let masked = (now ^ deadline) | SLOT_MASK;
    // `masked >= 63`, so `leading_zeros() <= 58` and this cannot underflow.
    let significant = 63 - masked.leading_zeros();
    ((significant / SLOT_BITS) as usize).min(TOP)
}

/// Shift of level `level`'s slot index within a time value.
fn shift_of(level: usize) -> u32 {
    level.min(TOP) as u32 * SLOT_BITS
}

/// The slot on `level` that `time` falls in.
fn slot_for(level: usize, time: u64) -> usize {
    ((time >> shift_of(level)) & SLOT_MASK) as usize
}

impl<T> TimerWheel<T> {
    /// A wheel whose current time is `now`.
    pub fn new(now: u64) -> Self {
        TimerWheel {
            now,
            len: 0,
            levels: Box::new(std::array::from_fn(|_| Level::new())),
            top_min: [u64::MAX; SLOTS],
            due: Vec::new(),
            due_min: u64::MAX,
        }
    }

    /// Current time of the wheel (the last `advance` target, or `new`'s `now`).
    pub fn now(&self) -> u64 {
        self.now
    }

    /// Schedule `item` to fire at `deadline`. A deadline <= now fires on the
    /// next `advance` (even `advance(now)`).
    ///
    /// Deadlines beyond the wheel's range (about 795 days ahead) are held at the
    /// top level and cascade down until due; they never fire early. Any `u64`
    /// is accepted. Allocation-free once the wheel has warmed up.
    pub fn insert(&mut self, deadline: u64, item: T) {
        self.len += 1;
        if deadline <= self.now {
            self.due_min = self.due_min.min(deadline);
            self.due.push((deadline, item));
        } else {
            self.place(deadline, item);
        }
    }

    /// Move time forward to `now` (a `now` earlier than the current time is
    /// treated as the current time), appending to `fired` every item whose
    /// deadline <= `now`. Items never fire before their deadline, and each
    /// item fires exactly once, in the first `advance` whose target reaches
    /// its deadline.
    ///
    /// Order: the items appended by one call are in nondecreasing deadline
    /// order, and items with equal deadlines come out in the order they were
    /// inserted. (Items inserted with a deadline already <= the current time
    /// come first; they are stably sorted by deadline, which costs one pass
    /// when they were inserted in order, as they are when they all share a
    /// deadline; only an out-of-order batch pays for a real sort.)
    ///
    /// Cost: proportional to the number of items that fire or cascade plus a
    /// few bit operations per processed slot, independent of [`len`](Self::len).
    pub fn advance(&mut self, now: u64, fired: &mut Vec<T>) {
        let target = now.max(self.now);
        if !self.due.is_empty() {
            // Everything here is <= the current time < every deadline in the
            // levels, so these go first.
            if !self.due.is_sorted_by_key(|e| e.0) {
                self.due.sort_by_key(|e| e.0);
            }
            self.len = self.len.saturating_sub(self.due.len());
            fired.extend(self.due.drain(..).map(|(_, item)| item));
            self.due_min = u64::MAX;
        }
        while let Some(exp) = self.next_expiration() {
            if exp.time > target {
                break;
            }
            debug_assert!(
                exp.time >= self.now,
                "wheel invariant: {exp:?} < {}",
                self.now
            );
            self.now = exp.time.max(self.now);
            self.process(exp, fired);
        }
        self.now = target;
    }

    /// The earliest time at which `advance` may have work: the deadline of the
    /// soonest due item, or an earlier cascade point; never later than the
    /// soonest deadline. `None` when empty.
    ///
    /// If an item was inserted with a deadline <= `now()`, this is the smallest
    /// such deadline (so it is <= `now()`: wait zero). Otherwise it is `> now()`.
    pub fn next_deadline(&self) -> Option<u64> {
        if self.due.is_empty() {
            self.next_expiration().map(|e| e.time)
        } else {
            Some(self.due_min)
        }
    }

    /// Number of pending items.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no item is pending.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Put an entry with `deadline > self.now` on its level and slot.
    fn place(&mut self, deadline: u64, item: T) {
        let level = level_for(self.now, deadline);
        let slot = slot_for(level, deadline);
        let bit = 1u64 << slot;
        let lvl = &mut self.levels[level];
        let entries = &mut lvl.slots[slot];
        if lvl.occupied & bit == 0 {
            lvl.occupied |= bit;
            if let Some(spare) = lvl.spare.pop() {
                *entries = spare;
            }
        }
        entries.push((deadline, item));
        if level == TOP {
            let min = &mut self.top_min[slot];
            *min = (*min).min(deadline);
        }
    }

    /// The slot to process next, if any: the first occupied slot (from the
    /// current time on) of the lowest non-empty level, since every entry on a
    /// level is due after every entry below it.
    fn next_expiration(&self) -> Option<Expiration> {
        let (level, lvl) = self
            .levels
            .iter()
            .enumerate()
            .find(|(_, lvl)| lvl.occupied != 0)?;
        if level == TOP {
            return self.top_expiration(lvl.occupied);
        }
        let shift = shift_of(level);
        let now_slot = (self.now >> shift) & SLOT_MASK;
        // Rotate so that bit 0 is the current slot; `occupied != 0`, so the
        // distance is < 64.
        let distance = u64::from(lvl.occupied.rotate_right(now_slot as u32).trailing_zeros());
        let slot = (now_slot + distance) & SLOT_MASK;
        // Entries below the top share all bits above their level with `now`
        // (their slot is after `now`'s, no wrap-around), so the slot starts in
        // `now`'s block of this level.
        let level_start = self.now & !((1u64 << (shift + SLOT_BITS)) - 1);
        Some(Expiration {
            level,
            slot: slot as usize,
            time: level_start | (slot << shift),
        })
    }

    /// The top-level slot to process next: the one whose smallest deadline has
    /// the earliest top-level period start. A top-level slot may hold deadlines
    /// from different 795-day cycles, so slot order is not time order here.
    fn top_expiration(&self, occupied: u64) -> Option<Expiration> {
        let mut best: Option<Expiration> = None;
        let mut bits = occupied;
        while bits != 0 {
            let slot = (bits.trailing_zeros() as usize) & (SLOTS - 1);
            bits &= bits - 1;
            // Start of the top-level period holding the slot's soonest deadline:
            // `<=` every deadline in the slot, and `> now` (a deadline within
            // the span is in a later period than `now`; one beyond it is at
            // least a whole span ahead).
            let time = self.top_min[slot] & !((1u64 << TOP_SHIFT) - 1);
            if best.is_none_or(|b| time < b.time) {
                best = Some(Expiration {
                    level: TOP,
                    slot,
                    time,
                });
            }
        }
        best
    }

    /// Process one slot at `self.now == exp.time`: fire what is due, cascade the rest.
    fn process(&mut self, exp: Expiration, fired: &mut Vec<T>) {
        let lvl = &mut self.levels[exp.level];
        lvl.occupied &= !(1u64 << exp.slot);
        let mut entries = mem::take(&mut lvl.slots[exp.slot]);
        if exp.level == TOP {
            self.top_min[exp.slot] = u64::MAX;
        }
        // Entries keep their relative order, which keeps equal deadlines FIFO.
        for (deadline, item) in entries.drain(..) {
            if deadline <= self.now {
                self.len = self.len.saturating_sub(1);
                fired.push(item);
            } else {
                // Lands on a lower level, or (a deadline beyond the span) back
                // on this top-level slot, which then takes another spare vector.
                self.place(deadline, item);
            }
        }
        self.levels[exp.level].spare.push(entries);
    }
}

impl<T> fmt::Debug for TimerWheel<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TimerWheel")
            .field("now", &self.now)
            .field("len", &self.len)
            .field("next_deadline", &self.next_deadline())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
impl<T> TimerWheel<T> {
    /// Total capacity (in entries) held by slots and spare lists.
    fn retained_capacity(&self) -> usize {
        self.levels
            .iter()
            .map(|lvl| {
                lvl.slots.iter().map(Vec::capacity).sum::<usize>()
                    + lvl.spare.iter().map(Vec::capacity).sum::<usize>()
            })
            .sum::<usize>()
            + self.due.capacity()
    }

    /// Number of vectors (slots with capacity plus spares) per level.
    fn vectors_per_level(&self) -> [usize; LEVELS] {
        std::array::from_fn(|l| {
            self.levels[l]
                .slots
                .iter()
                .filter(|s| s.capacity() > 0)
                .count()
                + self.levels[l].spare.len()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    /// SplitMix64: tiny, deterministic, good enough for test inputs.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
        }

        /// Uniform-ish in `0..n` (`n > 0`).
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }

        fn chance(&mut self, percent: u64) -> bool {
            self.below(100) < percent
        }
    }

    /// The reference: deadline -> ids in insertion order.
    #[derive(Default)]
    struct Model {
        map: BTreeMap<u64, Vec<usize>>,
        len: usize,
    }

    impl Model {
        fn insert(&mut self, deadline: u64, id: usize) {
            self.map.entry(deadline).or_default().push(id);
            self.len += 1;
        }

        /// Everything with deadline <= `target`, by deadline, FIFO within one.
        fn advance(&mut self, target: u64) -> Vec<usize> {
            let later = match target.checked_add(1) {
                Some(t) => self.map.split_off(&t),
                None => BTreeMap::new(),
            };
            let due = mem::replace(&mut self.map, later);
            let fired: Vec<usize> = due.into_values().flatten().collect();
            self.len -= fired.len();
            fired
        }

        fn min(&self) -> Option<u64> {
            self.map.keys().next().copied()
        }
    }

    /// Checks `next_deadline`, `len` and `is_empty` of `wheel` against `model`.
    fn check_queries(wheel: &TimerWheel<usize>, model: &Model, ctx: &dyn fmt::Display) {
        assert_eq!(wheel.len(), model.len, "len: {ctx}");
        assert_eq!(wheel.is_empty(), model.len == 0, "is_empty: {ctx}");
        match (wheel.next_deadline(), model.min()) {
            (None, None) => {}
            (Some(x), Some(min)) => {
                assert!(
                    x <= min,
                    "next_deadline {x} > earliest deadline {min}: {ctx}"
                );
                if min > wheel.now() {
                    assert!(
                        x > wheel.now(),
                        "next_deadline {x} <= now {}: {ctx}",
                        wheel.now()
                    );
                }
            }
            (got, want) => panic!("next_deadline {got:?}, earliest deadline {want:?}: {ctx}"),
        }
    }

    /// Offsets that sit on and around every level boundary, plus far ones.
    fn interesting_offsets() -> Vec<u64> {
        let mut v = vec![0, 1, 2, 3, 62, 63, 64, 65, 127, 128, 129, 1000, 60_000];
        for k in 1..=7u32 {
            let p = 64u64.pow(k);
            v.extend([p - 2, p - 1, p, p + 1, 2 * p - 1, 2 * p, 63 * p, 64 * p - 1]);
        }
        v.extend([
            1 << 40,
            (1 << 40) + 12345,
            u64::MAX / 4,
            u64::MAX / 2 - 1,
            u64::MAX / 2,
            u64::MAX / 2 + 1,
            u64::MAX - (1 << 36),
            u64::MAX - (1 << 30) - 1,
            u64::MAX - 64,
            u64::MAX - 1,
            u64::MAX,
        ]);
        v
    }

    /// Inserts `deadlines` (ids = indexes) at `start`, advances through
    /// `targets`, and checks each advance's output against the model.
    fn run_schedule(start: u64, deadlines: &[u64], targets: &[u64], what: &str) {
        let mut wheel = TimerWheel::new(start);
        let mut model = Model::default();
        for (id, &d) in deadlines.iter().enumerate() {
            wheel.insert(d, id);
            model.insert(d, id);
        }
        let ctx = |t: u64| format!("{what}: start {start}, target {t}");
        check_queries(&wheel, &model, &ctx(start));
        let mut fired = Vec::new();
        let mut now = start;
        for &t in targets {
            fired.clear();
            wheel.advance(t, &mut fired);
            now = now.max(t);
            let want = model.advance(now);
            assert_eq!(fired, want, "{}", ctx(t));
            assert_eq!(wheel.now(), now, "{}", ctx(t));
            check_queries(&wheel, &model, &ctx(t));
        }
    }

    fn starts() -> Vec<u64> {
        vec![
            0,
            1,
            63,
            64,
            100,
            4095,
            4096,
            (1 << 36) - 3,
            (1 << 36) + 5,
            u64::MAX / 2,
            u64::MAX - (1 << 37),
            u64::MAX - 70_000,
        ]
    }

    #[test]
    fn boundaries_step_by_one_vs_jumps() {
        for start in starts() {
            let mut deadlines: Vec<u64> = interesting_offsets()
                .into_iter()
                .map(|o| start.saturating_add(o))
                .collect();
            // Past deadlines and absolute far ones too.
            deadlines.extend([0, start.saturating_sub(1), start, u64::MAX / 2, u64::MAX]);

            // Step by one over the first 3 levels' worth (and a bit).
            let steps: Vec<u64> = (0..=(64 * 64 * 64 + 130))
                .map(|i| start.saturating_add(i))
                .collect();
            run_schedule(start, &deadlines, &steps, "step by 1");

            // Step by one around every deadline: pins the exact firing time.
            let mut around: Vec<u64> = deadlines
                .iter()
                .flat_map(|&d| {
                    [
                        d.saturating_sub(2),
                        d.saturating_sub(1),
                        d,
                        d.saturating_add(1),
                    ]
                })
                .filter(|&t| t >= start)
                .collect();
            around.sort_unstable();
            around.dedup();
            run_schedule(start, &deadlines, &around, "around each deadline");

            // Big jumps: powers of two, then everything at once.
            let jumps: Vec<u64> = (0..64).map(|k| start.saturating_add(1 << k)).collect();
            run_schedule(start, &deadlines, &jumps, "power-of-two jumps");
            run_schedule(start, &deadlines, &[u64::MAX], "one jump to u64::MAX");
            run_schedule(
                start,
                &deadlines,
                &[start, start, u64::MAX, 0],
                "repeat + backwards",
            );

            // Chasing next_deadline must also reach everything.
            let mut wheel = TimerWheel::new(start);
            let mut model = Model::default();
            for (id, &d) in deadlines.iter().enumerate() {
                wheel.insert(d, id);
                model.insert(d, id);
            }
            let mut fired = Vec::new();
            let mut wakeups = 0;
            while let Some(t) = wheel.next_deadline() {
                wakeups += 1;
                assert!(
                    wakeups <= 8 * deadlines.len(),
                    "start {start}: too many wakeups"
                );
                fired.clear();
                let now = wheel.now().max(t);
                wheel.advance(t, &mut fired);
                assert_eq!(fired, model.advance(now), "chase: start {start}, t {t}");
                check_queries(&wheel, &model, &format!("chase: start {start}, t {t}"));
            }
            assert!(wheel.is_empty() && model.len == 0, "start {start}");
        }
    }

    #[test]
    fn single_timer_fires_exactly_at_deadline() {
        for start in starts() {
            for off in interesting_offsets() {
                let d = start.saturating_add(off);
                let mut wheel = TimerWheel::new(start);
                wheel.insert(d, ());
                let mut fired = Vec::new();
                if d > start {
                    wheel.advance(d - 1, &mut fired);
                    assert!(fired.is_empty(), "start {start} deadline {d}: fired early");
                    assert_eq!(wheel.len(), 1);
                    // Nothing but the deadline itself is left to wake up for.
                    assert_eq!(wheel.next_deadline(), Some(d), "start {start} deadline {d}");
                }
                wheel.advance(d, &mut fired);
                assert_eq!(fired.len(), 1, "start {start} deadline {d}: did not fire");
                assert!(wheel.is_empty() && wheel.next_deadline().is_none());
            }
        }
    }

    #[test]
    fn deadline_at_or_before_now_fires_on_next_advance() {
        let mut wheel = TimerWheel::new(1000);
        let mut fired = Vec::new();
        wheel.insert(1000, 'a');
        wheel.insert(5, 'b');
        wheel.insert(999, 'c');
        wheel.insert(1001, 'd');
        assert_eq!(wheel.next_deadline(), Some(5));
        wheel.advance(1000, &mut fired);
        assert_eq!(fired, ['b', 'c', 'a']);
        assert_eq!(wheel.next_deadline(), Some(1001));
        fired.clear();
        wheel.advance(0, &mut fired); // backwards: treated as now
        assert!(fired.is_empty());
        assert_eq!(wheel.now(), 1000);
        wheel.advance(1001, &mut fired);
        assert_eq!(fired, ['d']);
        assert!(wheel.is_empty());
    }

    #[test]
    fn equal_deadlines_fire_in_insertion_order() {
        let mut wheel = TimerWheel::new(0);
        let mut fired = Vec::new();
        // Same deadline inserted from different distances (different levels).
        let d = 5 * 4096;
        for step in 0..40u64 {
            wheel.insert(d, step);
            wheel.advance(step * 500, &mut fired);
        }
        wheel.advance(d, &mut fired);
        assert_eq!(fired, (0..40).collect::<Vec<_>>());
    }

    #[test]
    fn randomized_against_model() {
        for seed in 0..2000u64 {
            randomized_run(seed, 1500);
        }
    }

    #[test]
    fn randomized_against_model_long() {
        for seed in 10_000..10_020u64 {
            randomized_run(seed, 40_000);
        }
    }

    fn randomized_run(seed: u64, ops: usize) {
        let mut rng = Rng(seed);
        let start = match rng.below(6) {
            0 => 0,
            1 => rng.below(1 << 20),
            2 => rng.next(),
            3 => u64::MAX - rng.below(1 << 40),
            4 => (1u64 << 36) - rng.below(1 << 16),
            _ => rng.below(1 << 50),
        };
        let mut wheel = TimerWheel::new(start);
        let mut model = Model::default();
        let mut fired = Vec::new();
        let mut id = 0usize;
        for op in 0..ops {
            let now = wheel.now();
            let ctx = format!("seed {seed}, op {op}, now {now}");
            if rng.chance(55) {
                let deadline = match rng.below(12) {
                    0 => now.saturating_sub(rng.below(1000)),
                    1 => now,
                    2 => now.saturating_add(1 + rng.below(64)),
                    3 | 4 => now.saturating_add(rng.below(5000)),
                    5 => now.saturating_add(rng.below(300_000)),
                    6 => now.saturating_add(rng.below(1 << 30)),
                    7 => now.saturating_add(rng.below(1 << 40)),
                    8 => rng.next(),
                    9 => {
                        // Exactly on a level boundary.
                        let k = rng.below(7) as u32 * SLOT_BITS;
                        let p = 1u64.checked_shl(k).unwrap_or(1);
                        (now / p).saturating_add(1 + rng.below(3)).saturating_mul(p)
                    }
                    10 => now.saturating_add(60_000),
                    _ => u64::MAX - rng.below(3),
                };
                wheel.insert(deadline, id);
                model.insert(deadline, id);
                id += 1;
            } else {
                let target = match rng.below(20) {
                    0 => now.saturating_sub(rng.below(100)),
                    1..=6 => now.saturating_add(rng.below(10)),
                    7..=11 => now.saturating_add(rng.below(3000)),
                    12 | 13 => now.saturating_add(rng.below(1 << 20)),
                    14 | 15 => wheel.next_deadline().unwrap_or(now),
                    16 => model.min().unwrap_or(now),
                    17 => now.saturating_add(rng.below(1 << 40)),
                    18 if rng.chance(10) => now.saturating_add(rng.next() >> 2),
                    _ => now,
                };
                fired.clear();
                wheel.advance(target, &mut fired);
                let want = model.advance(target.max(now));
                assert_eq!(fired, want, "advance({target}): {ctx}");
                assert_eq!(wheel.now(), target.max(now), "now(): {ctx}");
            }
            check_queries(&wheel, &model, &ctx);
        }
        // Drain completely.
        fired.clear();
        wheel.advance(u64::MAX, &mut fired);
        assert_eq!(fired, model.advance(u64::MAX), "final drain: seed {seed}");
        assert!(wheel.is_empty(), "seed {seed}");
        assert_eq!(wheel.next_deadline(), None, "seed {seed}");
    }

    #[test]
    fn extreme_inputs_do_not_panic() {
        let mut fired = Vec::new();

        let mut wheel = TimerWheel::new(u64::MAX);
        wheel.insert(u64::MAX, 1);
        wheel.insert(0, 2);
        assert_eq!(wheel.next_deadline(), Some(0));
        wheel.advance(u64::MAX, &mut fired);
        wheel.advance(0, &mut fired);
        assert_eq!(fired, [2, 1]);
        assert!(wheel.is_empty());

        fired.clear();
        let mut wheel = TimerWheel::new(0);
        for d in [
            u64::MAX,
            u64::MAX - 1,
            u64::MAX / 2,
            1 << 63,
            (1 << 36) - 1,
            1 << 36,
        ] {
            wheel.insert(d, d);
        }
        wheel.advance(u64::MAX - 2, &mut fired);
        assert_eq!(fired, [(1 << 36) - 1, 1 << 36, u64::MAX / 2, 1 << 63]);
        fired.clear();
        wheel.advance(u64::MAX, &mut fired);
        assert_eq!(fired, [u64::MAX - 1, u64::MAX]);
        wheel.advance(u64::MAX, &mut fired);
        wheel.insert(u64::MAX, 7);
        wheel.advance(u64::MAX, &mut fired);
        assert_eq!(fired.last(), Some(&7));
        assert!(wheel.is_empty());
        assert_eq!(wheel.now(), u64::MAX);
    }

    #[test]
    fn far_future_jump_is_cheap() {
        // Many deadlines far beyond the span, in distinct 795-day cycles,
        // then one jump to the end of time: each cycle is visited once.
        let mut rng = Rng(42);
        let mut wheel = TimerWheel::new(0);
        let mut model = Model::default();
        for id in 0..20_000 {
            let d = rng.next();
            wheel.insert(d, id);
            model.insert(d, id);
        }
        let mut fired = Vec::new();
        let mut wakeups = 0;
        while let Some(t) = wheel.next_deadline() {
            wakeups += 1;
            fired.clear();
            wheel.advance(t, &mut fired);
            assert_eq!(fired, model.advance(t));
        }
        assert!(wakeups <= 8 * 20_000, "{wakeups} wakeups");
        assert_eq!(model.len, 0);
    }

    #[test]
    fn steady_state_reuses_capacity() {
        // 3 timers per ms, each re-armed 60 s ahead when it fires, stepping 1 ms.
        // Start shortly before a level-4 boundary so that the rare big slots
        // (on levels 3 and 4) get used during warm-up.
        let start = (1u64 << 24) - 70_000;
        let mut wheel = TimerWheel::new(start);
        for i in 0..180_000u64 {
            wheel.insert(start + 1 + i / 3, i);
        }
        let mut fired = Vec::new();
        let mut now = start;
        let mut run = |wheel: &mut TimerWheel<u64>, until: u64| {
            while now < until {
                now += 1;
                fired.clear();
                wheel.advance(now, &mut fired);
                assert_eq!(fired.len(), 3, "at {now}");
                for &id in &fired {
                    wheel.insert(now + 60_000, id);
                }
                assert_eq!(wheel.len(), 180_000);
            }
        };
        // Past the level-4 boundary and two level-3 boundaries.
        run(&mut wheel, (1 << 24) + 2 * (1 << 18) + 70_000);
        let warm = wheel.retained_capacity();
        let warm_vectors = wheel.vectors_per_level();
        // Two more level-3 boundaries.
        run(&mut wheel, (1 << 24) + 4 * (1 << 18) + 70_000);
        assert_eq!(
            wheel.retained_capacity(),
            warm,
            "capacity grew in steady state"
        );
        assert_eq!(wheel.vectors_per_level(), warm_vectors);
        // Memory stays within a small multiple of the live entries: about 1.5x
        // for the level-2 slots in use, plus one spare for the boundary
        // crossings on each of levels 3 and 4.
        assert!(
            warm <= 5 * 180_000,
            "retained {warm} entries for 180000 live"
        );
    }
}
