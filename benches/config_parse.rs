//! Configuration parsing and validation: `Plan::resolve` of TOML text into a
//! validated `Plan` (TOML parse, every key checked, defaults filled in,
//! addresses, sizes, durations and CIDRs parsed, names and listen addresses
//! checked for uniqueness), against fixed host facts (2 CPUs), so no system
//! call is made.
//!
//! * `resolve/realistic`: a `[runtime]` section, 3 `[[tcp]]` listeners with 2
//!   upstreams each and 2 `[[udp]]` listeners with allow lists (1.1 KiB).
//! * `resolve/generated_200`: a generated file of 200 listeners (160 TCP with
//!   2 upstreams each, 40 UDP with a 2-range allow list), 33 KiB.
//!
//! One iteration is one whole `Plan::resolve` of the text; throughput = configs.
//! This runs at start, on `ringfwd check` and on reload, never per connection.

use std::fmt::Write as _;
use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ringfwd::config::{HostFacts, Overrides, Plan};

const REALISTIC: &str = r#"
[runtime]
shards = 2
cpus = [0, 1]
buffer_size = "16KiB"
buffers_per_shard = 4096
buffers_per_direction = 16
ring_entries = 2048
drain_timeout = "30s"
stats_interval = "10s"
max_datagram = 65507
udp_buffers_per_shard = 512

[[tcp]]
name = "web"
listen = "0.0.0.0:8080"
upstreams = ["10.0.0.5:80", "10.0.0.6:80"]
connect_timeout = "5s"
idle_timeout = "10m"
half_close_timeout = "1m"
max_connections = 10000

[[tcp]]
name = "tls"
listen = "[::]:8443"
upstreams = ["10.0.0.7:443", "[2001:db8::7]:443"]
connect_timeout = "2s"
idle_timeout = "1h"
max_connections = 50000

[[tcp]]
name = "db"
listen = "127.0.0.1:15432"
upstreams = ["10.0.1.10:5432", "10.0.1.11:5432"]
connect_timeout = "500ms"
idle_timeout = "1h30m"
half_close_timeout = "30s"

[[udp]]
name = "dns"
listen = "0.0.0.0:53"
upstreams = ["10.0.0.53:53", "10.0.0.54:53"]
idle_timeout = "60s"
max_responses = 1
max_sessions = 100000
new_sessions_per_second_per_source = 50
allow = ["10.0.0.0/8", "192.168.0.0/16", "2001:db8::/32"]
rcvbuf = "4MiB"

[[udp]]
name = "syslog"
listen = "[::]:5514"
upstreams = ["[2001:db8::514]:514"]
idle_timeout = "5m"
allow = ["2001:db8:1::/48", "fd00::/8"]
"#;

const TCP_LISTENERS: usize = 160;
const UDP_LISTENERS: usize = 40;

fn generated() -> String {
    let mut s = String::from(
        "[runtime]\nshards = 2\ncpus = [0, 1]\nbuffer_size = \"16KiB\"\nbuffers_per_shard = 4096\n",
    );
    for i in 0..TCP_LISTENERS {
        let (a, b) = (i / 200, i % 200);
        let _ = write!(
            s,
            "\n[[tcp]]\nname = \"tcp-{i}\"\nlisten = \"0.0.0.0:{port}\"\n\
             upstreams = [\"10.{a}.{b}.1:80\", \"10.{a}.{b}.2:80\"]\n\
             connect_timeout = \"2s\"\nidle_timeout = \"10m\"\nmax_connections = 20000\n",
            port = 10_000 + i,
        );
    }
    for i in 0..UDP_LISTENERS {
        let _ = write!(
            s,
            "\n[[udp]]\nname = \"udp-{i}\"\nlisten = \"0.0.0.0:{port}\"\n\
             upstreams = [\"10.200.{i}.53:53\", \"10.201.{i}.53:53\"]\n\
             idle_timeout = \"30s\"\nmax_responses = 1\n\
             allow = [\"10.{i}.0.0/16\", \"2001:db8:{i:x}::/48\"]\n",
            port = 20_000 + i,
        );
    }
    s
}

fn host() -> HostFacts {
    HostFacts {
        available_cpus: vec![0, 1],
    }
}

fn resolve(c: &mut Criterion) {
    let mut group = c.benchmark_group("config_parse/resolve");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(2));
    group.throughput(Throughput::Elements(1));
    let big = generated();
    let overrides = Overrides::default();
    let host = host();
    let cases: [(&str, &str, usize, usize); 2] = [
        ("realistic", REALISTIC, 3, 2),
        ("generated_200", &big, TCP_LISTENERS, UDP_LISTENERS),
    ];
    for (name, text, tcp, udp) in cases {
        let plan = Plan::resolve(Some(("bench.toml", text)), &overrides, &host)
            .unwrap_or_else(|e| panic!("{name}: the bench config is invalid: {e}"));
        assert_eq!((plan.tcp.len(), plan.udp.len()), (tcp, udp), "{name}");
        assert_eq!(plan.runtime.shards, 2);
        eprintln!("config_parse/{name}: {} bytes of TOML", text.len());
        group.bench_function(name, |b| {
            b.iter(|| {
                black_box(Plan::resolve(
                    Some(("bench.toml", black_box(text))),
                    &overrides,
                    &host,
                ))
            });
        });
    }
    group.finish();
}

criterion_group!(benches, resolve);
criterion_main!(benches);
