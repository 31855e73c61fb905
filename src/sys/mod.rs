//! The rest of the kernel layer (beside `ring`): sockets, startup checks of the
//! host, signals and the control eventfd. Every `unsafe` block of the program
//! lives here or in `ring`.

// The kernel layer: the one place `unsafe` is allowed (see Cargo.toml [lints]).
#![allow(unsafe_code)]

pub(crate) mod connect;
pub(crate) mod eventfd;
pub mod host;
pub(crate) mod inherit;
pub mod mptcp;
pub mod notify;
pub mod output;
pub(crate) mod pipe;
pub(crate) mod poll;
pub(crate) mod signals;
pub(crate) mod socket;
#[cfg(test)]
pub(crate) mod testns;
pub(crate) mod transparent;

pub use host::HostError;
