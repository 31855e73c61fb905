//! A writer into a fixed buffer for the front's builders (PROXY headers,
//! SOCKS5 replies): a write past the end is refused, never a panic.

use std::fmt;

/// Appends to a buffer its caller sized for what it writes.
pub(crate) struct Put<'a> {
    out: &'a mut [u8],
    len: usize,
}

impl<'a> Put<'a> {
    pub(crate) fn new(out: &'a mut [u8]) -> Put<'a> {
        Put { out, len: 0 }
    }

    /// Bytes written so far.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn try_put(&mut self, bytes: &[u8]) -> Result<(), fmt::Error> {
        let end = self.len + bytes.len();
        let dest = self.out.get_mut(self.len..end).ok_or(fmt::Error)?;
        dest.copy_from_slice(bytes);
        self.len = end;
        Ok(())
    }

    /// For writes whose size the buffer's type fixes: one that does not fit
    /// is dropped (the caller's array is sized so it cannot happen).
    pub(crate) fn put(&mut self, bytes: &[u8]) {
        let _ = self.try_put(bytes);
    }
}

impl fmt::Write for Put<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.try_put(s.as_bytes())
    }
}
