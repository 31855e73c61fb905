//! Integration tests: they run the real `ringfwd` binary (forwarder and echo
//! upstream) on loopback and check what a client and an upstream observe, and
//! what the process reports.

mod bench;
mod check;
mod config;
mod dns;
mod echo_modes;
mod harness;
mod lifecycle;
mod limits;
mod relay;
mod signals;
mod splice;
mod udp;
