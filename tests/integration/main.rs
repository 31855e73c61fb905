//! Integration tests: they run the real `ringfwd` binary (forwarder and echo
//! upstream) on loopback and check what a client and an upstream observe, and
//! what the process reports.

mod access;
mod admin;
mod balance;
mod bandwidth;
mod bench;
mod bench_payload;
mod capacity;
mod check;
mod config;
mod dns;
mod dnsd;
mod docs;
mod echo_modes;
mod forward_proxy;
mod front;
mod harness;
mod health;
mod known;
mod lifecycle;
mod limits;
mod mptcp;
mod netns;
mod peers;
mod relay;
mod reload;
mod reload_udp;
mod shipping;
mod signals;
mod socks_udp;
mod splice;
mod udp;
mod udp_abuse;
mod upgrade;
