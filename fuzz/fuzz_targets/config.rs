//! `ringfwd::config::Plan::resolve` on arbitrary text as a `--config` file:
//! every input is either a plan or a `ConfigError`, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ringfwd::config::{HostFacts, Overrides, Plan};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let host = HostFacts {
        available_cpus: vec![0, 1],
    };
    let Ok(plan) = Plan::resolve(Some(("fuzz.toml", text)), &Overrides::default(), &host) else {
        return;
    };
    let _ = format!("{plan:?}");
});
