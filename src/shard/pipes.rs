//! The shard's bounded pipe budget for splice (HAProxy's `maxpipes`):
//! pipes are lent to spliced directions and come back when they stop
//! splicing; one given back with data in it is replaced by the event loop.

use super::ops::PipeFds;
use crate::tcp::splice::PipeId;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum PipeSlot {
    Free(PipeFds),
    Lent(PipeFds),
    /// Discarded; the event loop is making a replacement.
    Replacing,
    /// Discarded and could not be replaced: the budget is one smaller.
    Gone,
}

/// The shard's bounded pipe budget (HAProxy's `maxpipes`): pipes are lent
/// to spliced directions and come back when they stop splicing.
#[derive(Debug, Default)]
pub(crate) struct PipePool {
    slots: Vec<PipeSlot>,
    free: Vec<u16>,
}

impl PipePool {
    pub(crate) fn new(pipes: &[PipeFds]) -> PipePool {
        let n = pipes.len().min(usize::from(u16::MAX));
        PipePool {
            slots: pipes.iter().take(n).map(|&f| PipeSlot::Free(f)).collect(),
            // Lend low ids first (pop from the end).
            free: (0..n as u16).rev().collect(),
        }
    }

    pub(crate) fn take(&mut self) -> Option<PipeId> {
        let id = self.free.pop()?;
        let slot = self.slots.get_mut(usize::from(id))?;
        match *slot {
            PipeSlot::Free(f) => {
                *slot = PipeSlot::Lent(f);
                Some(PipeId(id))
            }
            _ => None,
        }
    }

    /// The ends of a lent pipe.
    pub(crate) fn lent(&self, id: PipeId) -> Option<PipeFds> {
        match self.slots.get(usize::from(id.0))? {
            PipeSlot::Lent(f) => Some(*f),
            _ => None,
        }
    }

    /// Takes a lent pipe back: `Some(fds)` when it must be replaced.
    pub(crate) fn give_back(&mut self, id: PipeId, clean: bool) -> Option<PipeFds> {
        let slot = self.slots.get_mut(usize::from(id.0))?;
        let PipeSlot::Lent(f) = *slot else {
            return None;
        };
        if clean {
            *slot = PipeSlot::Free(f);
            self.free.push(id.0);
            None
        } else {
            *slot = PipeSlot::Replacing;
            Some(f)
        }
    }

    pub(crate) fn restore(&mut self, id: u16, fds: Option<PipeFds>) {
        if let Some(slot) = self.slots.get_mut(usize::from(id))
            && *slot == PipeSlot::Replacing
        {
            match fds {
                Some(f) => {
                    *slot = PipeSlot::Free(f);
                    self.free.push(id);
                }
                None => *slot = PipeSlot::Gone,
            }
        }
    }

    /// Pipes in the pool, whatever their state.
    pub(crate) fn len(&self) -> usize {
        self.slots.len()
    }

    pub(crate) fn count(&self, pred: impl Fn(&PipeSlot) -> bool) -> usize {
        self.slots.iter().filter(|s| pred(s)).count()
    }
}
