//! Generational slab: stable indices for per-shard state (connections,
//! sessions), with a generation bumped on every removal so a stale id never
//! reaches a new owner. Each kind of state has its own id type, so a
//! connection's id cannot name a session.

use std::marker::PhantomData;

use super::token::{GEN_MASK, MAX_INDEX, SlotId};

/// An id type of one kind of slab entry (a `SlotId` underneath, as the token carries it).
pub trait SlotKey: Copy {
    fn from_slot(slot: SlotId) -> Self;
    fn slot(self) -> SlotId;
}

impl SlotKey for SlotId {
    fn from_slot(slot: SlotId) -> Self {
        slot
    }

    fn slot(self) -> SlotId {
        self
    }
}

/// Declares an id type for one kind of slab entry.
macro_rules! slot_id {
    ($(#[doc = $doc:literal])* $name:ident) => {
        $(#[doc = $doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub struct $name(pub SlotId);

        impl SlotKey for $name {
            fn from_slot(slot: SlotId) -> Self {
                $name(slot)
            }

            fn slot(self) -> SlotId {
                self.0
            }
        }
    };
}

slot_id! {
    /// A TCP connection of the shard.
    ConnId
}
slot_id! {
    /// A UDP session of the shard.
    SessionId
}
slot_id! {
    /// A SOCKS5 UDP association of the shard.
    AssocId
}

struct Slot<T> {
    generation: u32,
    value: Option<T>,
}

/// Free-list slab whose ids carry a generation (glommio's `free_list.rs`, with
/// generations so completions can be matched to the exact owner that issued them).
pub struct Slab<T, I: SlotKey = SlotId> {
    slots: Vec<Slot<T>>,
    free: Vec<u32>,
    len: usize,
    ids: PhantomData<I>,
}

impl<T, I: SlotKey> Default for Slab<T, I> {
    fn default() -> Self {
        Slab {
            slots: Vec::new(),
            free: Vec::new(),
            len: 0,
            ids: PhantomData,
        }
    }
}

impl<T, I: SlotKey> Slab<T, I> {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Stores `value`; `None` when the index space (24 bits) is exhausted.
    pub fn insert(&mut self, value: T) -> Option<I> {
        let index = match self.free.pop() {
            Some(i) => i,
            None => {
                let i = u32::try_from(self.slots.len())
                    .ok()
                    .filter(|i| *i <= MAX_INDEX)?;
                self.slots.push(Slot {
                    generation: 0,
                    value: None,
                });
                i
            }
        };
        let slot = self.slots.get_mut(index as usize)?;
        slot.value = Some(value);
        self.len += 1;
        Some(I::from_slot(SlotId {
            index,
            generation: slot.generation,
        }))
    }

    /// The value at `id` if it is still the same occupant.
    pub fn get_mut(&mut self, id: I) -> Option<&mut T> {
        let id = id.slot();
        let slot = self.slots.get_mut(id.index as usize)?;
        if slot.generation != id.generation {
            return None;
        }
        slot.value.as_mut()
    }

    pub fn get(&self, id: I) -> Option<&T> {
        let id = id.slot();
        let slot = self.slots.get(id.index as usize)?;
        if slot.generation != id.generation {
            return None;
        }
        slot.value.as_ref()
    }

    /// Removes the occupant of `id` and retires its generation.
    pub fn remove(&mut self, id: I) -> Option<T> {
        let id = id.slot();
        let slot = self.slots.get_mut(id.index as usize)?;
        if slot.generation != id.generation {
            return None;
        }
        let value = slot.value.take()?;
        slot.generation = (slot.generation + 1) & GEN_MASK;
        self.free.push(id.index);
        self.len -= 1;
        Some(value)
    }

    /// Ids of every occupied slot (allocates; used only on drain/stop).
    pub fn ids(&self) -> Vec<I> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.value.is_some())
            .map(|(i, s)| {
                I::from_slot(SlotId {
                    index: i as u32,
                    generation: s.generation,
                })
            })
            .collect()
    }

    /// Every occupant (for snapshots and diagnostics).
    pub fn values(&self) -> impl Iterator<Item = &T> {
        self.slots.iter().filter_map(|s| s.value.as_ref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stale_id_does_not_reach_new_occupant() {
        let mut s: Slab<&str> = Slab::default();
        let a = s.insert("a").expect("insert");
        assert_eq!(s.remove(a), Some("a"));
        let b = s.insert("b").expect("insert");
        assert_eq!(a.index, b.index, "slot is reused");
        assert_ne!(a.generation, b.generation);
        assert_eq!(s.get_mut(a), None);
        assert_eq!(s.remove(a), None);
        assert_eq!(s.get(b), Some(&"b"));
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn ids_lists_occupants() {
        let mut s: Slab<i32> = Slab::default();
        let a = s.insert(1).expect("insert");
        let b = s.insert(2).expect("insert");
        s.remove(a);
        assert_eq!(s.ids(), vec![b]);
    }
}
