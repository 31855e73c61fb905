//! Resolving `[runtime]` and the `--shards` / `--cpus` flags against the host's CPUs into a [`RuntimePlan`].

use std::fmt::Display;
use std::ops::RangeInclusive;
use std::path::PathBuf;
use std::time::Duration;

use super::error::{COMMAND_LINE, ConfigError, Origin};
use super::raw::{Field, Section};
use super::units::format_size;
use super::{HostFacts, Overrides, ResolverPlan, RuntimePlan, SpliceMode};
use crate::dns::Prefer;

const KEYS: [&str; 19] = [
    "shards",
    "cpus",
    "buffer_size",
    "buffers_per_shard",
    "buffers_per_direction",
    "ring_entries",
    "drain_timeout",
    "stats_interval",
    "max_datagram",
    "udp_buffers_per_shard",
    "busy_poll",
    "splice",
    "max_pipes",
    "pipe_size",
    "pid_file",
    "resolver",
    "resolver_timeout",
    "resolver_attempts",
    "resolver_prefer",
];

pub(super) const MAX_SHARDS: usize = 1024;
const BUFFER_SIZE: RangeInclusive<u64> = (1 << 10)..=(1 << 20);
const DEFAULT_BUFFER_SIZE: u32 = 16 << 10;
/// 32768 is the most entries the kernel accepts for one provided-buffer ring.
const BUFFERS_PER_SHARD: RangeInclusive<u32> = 8..=32768;
/// 1024 (16 MiB of 16 KiB buffers): as fast as 4096 in every workload measured, for 12 MiB less
/// RSS per shard under request/response load and 48 MiB less for bulk relayed through buffers
/// (tuning.md, "Buffer size and count"; bench-results/2026-12-01-vm/knobs).
const DEFAULT_BUFFERS_PER_SHARD: u32 = 1024;
const BUFFERS_PER_DIRECTION: RangeInclusive<u32> = 1..=1024;
const DEFAULT_BUFFERS_PER_DIRECTION: u32 = 16;
const RING_ENTRIES: RangeInclusive<u32> = 64..=8192;
const DEFAULT_RING_ENTRIES: u32 = 2048;
/// Receive buffers are allocated up front per shard; past this a typo is more likely than intent.
const MAX_BUFFER_MEMORY: u64 = 2 << 30;
const MAX_DRAIN: Duration = Duration::from_secs(3600);
const DEFAULT_DRAIN: Duration = Duration::from_secs(30);
/// Faster than this, the stats log costs more than it tells.
const MIN_STATS_INTERVAL: Duration = Duration::from_millis(100);
const DEFAULT_STATS_INTERVAL: Duration = Duration::from_secs(10);
/// 65507 is the largest IPv4 UDP payload (65535 - 20 - 8); IPv6 allows 65527 without jumbograms.
const MAX_DATAGRAM: RangeInclusive<u64> = 512..=65527;
const DEFAULT_MAX_DATAGRAM: u32 = 65507;
const UDP_BUFFERS_PER_SHARD: RangeInclusive<u32> = 8..=32768;
const DEFAULT_UDP_BUFFERS_PER_SHARD: u32 = 512;
/// Longer spins than this only burn CPU: a wakeup costs ~150 µs here.
const MAX_BUSY_POLL: Duration = Duration::from_millis(10);
/// Each pipe is two descriptors, and each spliced direction may hold an
/// io-wq kernel thread while it waits: thousands per shard would be a typo.
const MAX_PIPES: RangeInclusive<u32> = 1..=4096;
/// Pipes lent at once per shard: enough for every bulk transfer a shard
/// keeps busy (its CPU saturates well before; see tuning.md, "Bulk: splice"),
/// few enough that all of them blocked in io-wq stay cheap (64 kernel threads
/// and 128 descriptors per shard).
const DEFAULT_MAX_PIPES: u32 = 64;
/// 4 KiB is one page, the smallest pipe; beyond 64 MiB a pipe only pins memory.
const PIPE_SIZE: RangeInclusive<u64> = (4 << 10)..=(64 << 20);
/// 1 MiB: the most an unprivileged process may ask (fs.pipe-max-size's
/// default), and the fastest size measured (tuning.md, "Bulk: splice").
const DEFAULT_PIPE_SIZE: u32 = 1 << 20;

/// Nameservers a shard asks: each is one socket per shard, and a lookup
/// that three could not answer will not be saved by a fourth (glibc reads
/// at most three).
const MAX_NAMESERVERS: usize = 8;
const DEFAULT_RESOLVER_TIMEOUT: Duration = Duration::from_secs(2);
const RESOLVER_TIMEOUT: RangeInclusive<Duration> =
    Duration::from_millis(10)..=Duration::from_secs(60);
const RESOLVER_ATTEMPTS: RangeInclusive<u32> = 1..=10;
const DEFAULT_RESOLVER_ATTEMPTS: u32 = 2;

const WIDEN: &str = "widen the CPU set (taskset / cgroup cpuset)";

pub(super) fn resolve(
    section: Option<&Section<'_>>,
    overrides: &Overrides,
    host: &HostFacts,
) -> Result<RuntimePlan, ConfigError> {
    if let Some(section) = section {
        section.deny_unknown(&KEYS, "in [runtime]")?;
    }
    let get = |name: &str| section.and_then(|section| section.get(name));
    let mut available = host.available_cpus.clone();
    available.sort_unstable();
    available.dedup();

    let (shards, cpus) = placement(get("shards"), get("cpus"), overrides, &available)?;
    let buffer_size = buffer_size(get("buffer_size"))?;
    let buffers_per_shard = count(
        get("buffers_per_shard"),
        BUFFERS_PER_SHARD,
        DEFAULT_BUFFERS_PER_SHARD,
        "buffers_per_shard = 4096",
    )?;
    let buffer_memory = u64::from(buffer_size) * u64::from(buffers_per_shard);
    if buffer_memory > MAX_BUFFER_MEMORY {
        let blame = get("buffers_per_shard").or_else(|| get("buffer_size"));
        return Err(blame_or_default(blame).error(format!(
            "runtime.buffer_size ({}) * runtime.buffers_per_shard ({buffers_per_shard}) = {} of \
             receive buffers per shard, over the {} limit; lower buffer_size or buffers_per_shard",
            format_size(buffer_size.into()),
            format_size(buffer_memory),
            format_size(MAX_BUFFER_MEMORY),
        )));
    }
    let direction_field = get("buffers_per_direction");
    let direction_given = direction_field.is_some();
    let buffers_per_direction = count(
        direction_field,
        BUFFERS_PER_DIRECTION,
        DEFAULT_BUFFERS_PER_DIRECTION,
        "buffers_per_direction = 16",
    )?;
    if buffers_per_direction > buffers_per_shard / 2 {
        let blame = get("buffers_per_direction").or_else(|| get("buffers_per_shard"));
        let note = if direction_given {
            ""
        } else {
            " (the default)"
        };
        return Err(blame_or_default(blame).error(format!(
            "runtime.buffers_per_direction = {buffers_per_direction}{note} is more than half of \
             runtime.buffers_per_shard = {buffers_per_shard}; lower buffers_per_direction to at \
             most {} or raise buffers_per_shard to at least {}",
            buffers_per_shard / 2,
            buffers_per_direction.saturating_mul(2)
        )));
    }
    Ok(RuntimePlan {
        shards,
        cpus,
        buffer_size,
        buffers_per_shard,
        buffers_per_direction,
        ring_entries: ring_entries(get("ring_entries"))?,
        drain_timeout: drain_timeout(get("drain_timeout"))?,
        stats_interval: stats_interval(get("stats_interval"))?,
        max_datagram: max_datagram(get("max_datagram"))?,
        udp_buffers_per_shard: count(
            get("udp_buffers_per_shard"),
            UDP_BUFFERS_PER_SHARD,
            DEFAULT_UDP_BUFFERS_PER_SHARD,
            "udp_buffers_per_shard = 512",
        )?,
        busy_poll: busy_poll(get("busy_poll"), overrides)?,
        splice: splice_mode(get("splice"))?,
        max_pipes: count(
            get("max_pipes"),
            MAX_PIPES,
            DEFAULT_MAX_PIPES,
            "max_pipes = 64 (or splice = \"off\" for none)",
        )?,
        pipe_size: pipe_size(get("pipe_size"))?,
        pid_file: pid_file(get("pid_file"))?,
        resolver: ResolverPlan {
            nameservers: nameservers(get("resolver"))?,
            timeout: resolver_timeout(get("resolver_timeout"))?,
            attempts: count(
                get("resolver_attempts"),
                RESOLVER_ATTEMPTS,
                DEFAULT_RESOLVER_ATTEMPTS,
                "resolver_attempts = 2",
            )?,
            prefer: resolver_prefer(get("resolver_prefer"))?,
        },
    })
}

/// `resolver = ["192.0.2.53:53", "[2001:db8::53]:53"]`: the nameservers
/// shards ask, in order, instead of those of /etc/resolv.conf.
fn nameservers(field: Option<Field<'_>>) -> Result<Option<Vec<std::net::SocketAddr>>, ConfigError> {
    let Some(field) = field else {
        return Ok(None);
    };
    let example = "resolver = [\"192.0.2.53:53\"]";
    let items = field.array(example)?;
    if items.len() > MAX_NAMESERVERS {
        return Err(field.error(format!(
            "{} names {} nameservers, more than the {MAX_NAMESERVERS} a shard asks (each is a socket per shard); keep the first few",
            field.shown(),
            items.len()
        )));
    }
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        let text = item.string(example)?;
        let addr = text.trim().parse::<std::net::SocketAddr>().map_err(|_| {
            item.error(format!(
                "{} is not a nameserver address; write IP:port (IPv6 in brackets), like {example}",
                item.shown()
            ))
        })?;
        if addr.port() == 0 || addr.ip().is_unspecified() {
            return Err(item.error(format!(
                "{} cannot be asked (port 0 or an unspecified address); write the nameserver's IP:port, like {example}",
                item.shown()
            )));
        }
        out.push(addr);
    }
    Ok(Some(out))
}

fn resolver_timeout(field: Option<Field<'_>>) -> Result<Duration, ConfigError> {
    let Some(field) = field else {
        return Ok(DEFAULT_RESOLVER_TIMEOUT);
    };
    let example = "resolver_timeout = \"2s\"";
    let d = field.duration(example)?;
    if !RESOLVER_TIMEOUT.contains(&d) {
        return Err(field.error(format!(
            "{} is out of range; use 10ms to 60s per try, like {example}",
            field.shown()
        )));
    }
    Ok(d)
}

fn resolver_prefer(field: Option<Field<'_>>) -> Result<Prefer, ConfigError> {
    let Some(field) = field else {
        return Ok(Prefer::Ipv4);
    };
    let example = "resolver_prefer = \"ipv4\"";
    let text = field.string(example)?;
    Prefer::parse(text.trim()).ok_or_else(|| {
        field.error(format!(
            "{} is not an address preference; use one of {}, like {example}",
            field.shown(),
            Prefer::NAMES.map(|n| format!("\"{n}\"")).join(", ")
        ))
    })
}

/// `pid_file = "/run/ringfwd.pid"`: where the serving process writes its
/// PID (rewritten by the new process of a SIGUSR2 upgrade once it serves).
fn pid_file(field: Option<Field<'_>>) -> Result<Option<PathBuf>, ConfigError> {
    let Some(field) = field else {
        return Ok(None);
    };
    let example = "pid_file = \"/run/ringfwd.pid\"";
    let text = field.string(example)?;
    let refuse = |why: &str| {
        Err(field.error(format!(
            "{} {why}; give a file path, like {example}",
            field.shown()
        )))
    };
    if text.is_empty() || text.contains('\0') {
        return refuse("is not a file path (empty, or with a NUL byte)");
    }
    if text.ends_with('/') || matches!(text.rsplit('/').next(), Some("." | "..")) {
        return refuse("names a directory");
    }
    Ok(Some(PathBuf::from(text)))
}

fn splice_mode(field: Option<Field<'_>>) -> Result<SpliceMode, ConfigError> {
    let Some(field) = field else {
        return Ok(SpliceMode::Auto);
    };
    let example = "splice = \"auto\" (or \"off\", \"always\")";
    let text = field.string(example)?;
    match text.trim().to_ascii_lowercase().as_str() {
        "auto" => Ok(SpliceMode::Auto),
        "off" => Ok(SpliceMode::Off),
        "always" => Ok(SpliceMode::Always),
        _ => Err(field.error(format!(
            "{} is not a splice mode; use \"auto\" (bulk transfers splice), \"off\" (never) or \"always\" (every direction), like {example}",
            field.shown()
        ))),
    }
}

fn pipe_size(field: Option<Field<'_>>) -> Result<u32, ConfigError> {
    let Some(field) = field else {
        return Ok(DEFAULT_PIPE_SIZE);
    };
    let example = "pipe_size = \"1MiB\"";
    let bytes = field.size(example)?;
    let Some(size) = PIPE_SIZE
        .contains(&bytes)
        .then(|| u32::try_from(bytes).ok())
        .flatten()
    else {
        return Err(field.error(format!(
            "{} is out of range; use a power of two from {} to {}, like {example}",
            field.shown(),
            format_size(*PIPE_SIZE.start()),
            format_size(*PIPE_SIZE.end())
        )));
    };
    if !size.is_power_of_two() {
        return Err(field.error(format!(
            "{} is not a power of two (the kernel sizes pipes in powers of two of pages); use {} or {}, like {example}",
            field.shown(),
            format_size(u64::from(size.next_power_of_two() / 2)),
            format_size(u64::from(size.next_power_of_two()))
        )));
    }
    Ok(size)
}

/// `busy_poll = "50us"` (or `--busy-poll`): how long a shard spins on its
/// completion queue before it sleeps; `"off"` (the default) never spins.
fn busy_poll(
    field: Option<Field<'_>>,
    overrides: &Overrides,
) -> Result<Option<Duration>, ConfigError> {
    let example = "busy_poll = \"50us\" (or \"off\")";
    let (spin, origin, shown) = match (&overrides.busy_poll, field) {
        (Some(text), _) => {
            let origin = Origin::new(COMMAND_LINE, "--busy-poll");
            if text.trim().eq_ignore_ascii_case("off") {
                return Ok(None);
            }
            let d = super::units::parse_duration(text).map_err(|e| {
                origin.error(format!("{text:?}: {e}; use a duration like 50us, or off"))
            })?;
            (d, origin, format!("{text:?}"))
        }
        (None, Some(field)) => {
            if field
                .as_str()
                .is_some_and(|s| s.trim().eq_ignore_ascii_case("off"))
            {
                return Ok(None);
            }
            (
                field.duration(example)?,
                field.origin.clone(),
                field.shown(),
            )
        }
        (None, None) => return Ok(None),
    };
    if spin.is_zero() {
        return Ok(None);
    }
    if spin > MAX_BUSY_POLL {
        return Err(origin.error(format!(
            "{shown} is longer than the 10ms maximum (longer spins only burn CPU); use 1us to 10ms, like {example}"
        )));
    }
    Ok(Some(spin))
}

fn max_datagram(field: Option<Field<'_>>) -> Result<u32, ConfigError> {
    let Some(field) = field else {
        return Ok(DEFAULT_MAX_DATAGRAM);
    };
    let example = "max_datagram = 65507 (or \"4KiB\" for DNS-sized traffic)";
    let bytes = field.size(example)?;
    MAX_DATAGRAM
        .contains(&bytes)
        .then(|| u32::try_from(bytes).ok())
        .flatten()
        .ok_or_else(|| {
            field.error(format!(
                "{} is out of range; use {} to {} bytes, like {example}",
                field.shown(),
                MAX_DATAGRAM.start(),
                MAX_DATAGRAM.end()
            ))
        })
}

/// A cross-key check can only fail when at least one of its keys was written; the fallback
/// keeps that assumption from turning into a panic.
fn blame_or_default(field: Option<Field<'_>>) -> Origin {
    field.map_or_else(|| Origin::new("", "runtime"), |field| field.origin)
}

/// A value and where it was given.
struct Given<T> {
    value: T,
    origin: Origin,
}

/// Shard count and the CPU each shard pins to.
fn placement(
    shards_field: Option<Field<'_>>,
    cpus_field: Option<Field<'_>>,
    overrides: &Overrides,
    available: &[usize],
) -> Result<(usize, Vec<usize>), ConfigError> {
    let shards = given_shards(shards_field, overrides)?;
    if let Some(shards) = &shards {
        check_enough_cpus(shards, available)?;
    }
    let cpus = given_cpus(cpus_field, overrides, available)?;
    match (shards, cpus) {
        (Some(shards), Some(cpus)) if shards.value != cpus.value.len() => {
            Err(shard_cpu_mismatch(&shards, &cpus))
        }
        (_, Some(cpus)) => Ok((cpus.value.len(), cpus.value)),
        (Some(shards), None) => {
            let cpus = available.iter().take(shards.value).copied().collect();
            Ok((shards.value, cpus))
        }
        (None, None) => default_placement(available),
    }
}

fn given_shards(
    field: Option<Field<'_>>,
    overrides: &Overrides,
) -> Result<Option<Given<usize>>, ConfigError> {
    let (value, shown, origin) = match (overrides.shards, field) {
        (Some(n), _) => (
            Some(n),
            n.to_string(),
            Origin::new(COMMAND_LINE, "--shards"),
        ),
        (None, Some(field)) => {
            let n = field.integer("shards = 2")?;
            (usize::try_from(n).ok(), n.to_string(), field.origin)
        }
        (None, None) => return Ok(None),
    };
    match value.filter(|n| (1..=MAX_SHARDS).contains(n)) {
        Some(value) => Ok(Some(Given { value, origin })),
        None => Err(origin.error(format!(
            "{shown} is out of range; use 1 to {MAX_SHARDS} shards, like shards = 2"
        ))),
    }
}

fn check_enough_cpus(shards: &Given<usize>, available: &[usize]) -> Result<(), ConfigError> {
    if shards.value <= available.len() {
        return Ok(());
    }
    let only = match available.len() {
        1 => "only 1 CPU is".to_owned(),
        n => format!("only {n} CPUs are"),
    };
    Err(shards.origin.error(format!(
        "{} = {} but {only} available to this process ({}); lower shards or {WIDEN}",
        shards.origin.key,
        shards.value,
        format_id_list(available)
    )))
}

/// One `cpus` entry before checking: `None` when it cannot be a CPU id at all (negative).
struct CpuEntry {
    cpu: Option<usize>,
    shown: String,
    origin: Origin,
}

fn given_cpus(
    field: Option<Field<'_>>,
    overrides: &Overrides,
    available: &[usize],
) -> Result<Option<Given<Vec<usize>>>, ConfigError> {
    if let Some(list) = &overrides.cpus {
        let origin = Origin::new(COMMAND_LINE, "--cpus");
        let entries = list
            .iter()
            .map(|&cpu| CpuEntry {
                cpu: Some(cpu),
                shown: cpu.to_string(),
                origin: origin.clone(),
            })
            .collect();
        let shown = format!("{list:?}");
        return check_cpus(entries, origin, &shown, available).map(Some);
    }
    let Some(field) = field else {
        return Ok(None);
    };
    let example = "cpus = [0, 1]";
    let entries = field
        .array(example)?
        .into_iter()
        .map(|item| {
            let n = item.integer(example)?;
            Ok(CpuEntry {
                cpu: usize::try_from(n).ok(),
                shown: n.to_string(),
                origin: item.origin,
            })
        })
        .collect::<Result<Vec<_>, ConfigError>>()?;
    check_cpus(entries, field.origin.clone(), &field.shown(), available).map(Some)
}

fn check_cpus(
    entries: Vec<CpuEntry>,
    origin: Origin,
    shown: &str,
    available: &[usize],
) -> Result<Given<Vec<usize>>, ConfigError> {
    if entries.is_empty() {
        return Err(origin.error(format!(
            "{shown} is empty; list one CPU per shard, like cpus = [0, 1], or leave cpus out to \
             use the first available CPUs"
        )));
    }
    if entries.len() > MAX_SHARDS {
        return Err(origin.error(format!(
            "{} CPUs are listed, but at most {MAX_SHARDS} shards are supported; list at most {MAX_SHARDS}",
            entries.len()
        )));
    }
    let mut cpus = Vec::with_capacity(entries.len());
    for entry in entries {
        let Some(cpu) = entry.cpu.filter(|cpu| available.contains(cpu)) else {
            return Err(entry.origin.error(format!(
                "CPU {} is not available to this process (available: {}); pick from those or {WIDEN}",
                entry.shown,
                format_id_list(available)
            )));
        };
        if cpus.contains(&cpu) {
            return Err(entry.origin.error(format!(
                "CPU {cpu} is listed more than once; each shard needs a CPU of its own"
            )));
        }
        cpus.push(cpu);
    }
    Ok(Given {
        value: cpus,
        origin,
    })
}

/// Blames the flag when a flag contradicts the file (the flag is what changed), else `cpus`.
fn shard_cpu_mismatch(shards: &Given<usize>, cpus: &Given<Vec<usize>>) -> ConfigError {
    let blame = if shards.origin.is_command_line() && !cpus.origin.is_command_line() {
        &shards.origin
    } else {
        &cpus.origin
    };
    let name = |origin: &Origin| origin.describe_from(blame);
    blame.error(format!(
        "{} = {} but {} lists {} CPUs ({:?}); give one CPU per shard, or leave out {} \
         (it defaults to the number of CPUs listed)",
        name(&shards.origin),
        shards.value,
        name(&cpus.origin),
        cpus.value.len(),
        cpus.value,
        shards.origin.key
    ))
}

/// One shard per available CPU, capped at the shard limit so a big host still starts.
fn default_placement(available: &[usize]) -> Result<(usize, Vec<usize>), ConfigError> {
    if available.is_empty() {
        return Err(Origin::new("host", "runtime.shards")
            .error(format!("no CPUs are available to this process; {WIDEN}")));
    }
    let cpus: Vec<usize> = available.iter().take(MAX_SHARDS).copied().collect();
    Ok((cpus.len(), cpus))
}

/// `0,1,2,3,8` -> `0-3,8`, as `taskset` and cpusets write CPU lists.
pub(super) fn format_id_list(ids: &[usize]) -> String {
    if ids.is_empty() {
        return "none".to_owned();
    }
    let mut runs: Vec<(usize, usize)> = Vec::new();
    for &id in ids {
        match runs.last_mut() {
            Some((_, end)) if end.checked_add(1) == Some(id) => *end = id,
            _ => runs.push((id, id)),
        }
    }
    runs.iter()
        .map(|&(start, end)| {
            if start == end {
                start.to_string()
            } else {
                format!("{start}-{end}")
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn buffer_size(field: Option<Field<'_>>) -> Result<u32, ConfigError> {
    let Some(field) = field else {
        return Ok(DEFAULT_BUFFER_SIZE);
    };
    let example = "buffer_size = \"16KiB\"";
    let bytes = field.size(example)?;
    BUFFER_SIZE
        .contains(&bytes)
        .then(|| u32::try_from(bytes).ok())
        .flatten()
        .ok_or_else(|| {
            field.error(format!(
                "{} is out of range; use a size from {} to {}, like {example}",
                field.shown(),
                format_size(*BUFFER_SIZE.start()),
                format_size(*BUFFER_SIZE.end())
            ))
        })
}

fn count(
    field: Option<Field<'_>>,
    range: RangeInclusive<u32>,
    default: u32,
    example: &str,
) -> Result<u32, ConfigError> {
    let Some(field) = field else {
        return Ok(default);
    };
    let n = field.integer(example)?;
    u32::try_from(n)
        .ok()
        .filter(|n| range.contains(n))
        .ok_or_else(|| out_of_range(&field, n, &range, example))
}

fn out_of_range(
    field: &Field<'_>,
    shown: impl Display,
    range: &RangeInclusive<u32>,
    example: &str,
) -> ConfigError {
    field.error(format!(
        "{shown} is out of range; use {} to {}, like {example}",
        range.start(),
        range.end()
    ))
}

fn ring_entries(field: Option<Field<'_>>) -> Result<u32, ConfigError> {
    let Some(field) = field else {
        return Ok(DEFAULT_RING_ENTRIES);
    };
    let example = "ring_entries = 2048";
    let n = field.integer(example)?;
    u32::try_from(n)
        .ok()
        .filter(|n| RING_ENTRIES.contains(n) && n.is_power_of_two())
        .ok_or_else(|| {
            field.error(format!(
                "{n} is not allowed; io_uring needs a power of two, so use one of 64, 128, 256, \
                 512, 1024, 2048, 4096 or 8192, like {example}"
            ))
        })
}

fn drain_timeout(field: Option<Field<'_>>) -> Result<Duration, ConfigError> {
    let Some(field) = field else {
        return Ok(DEFAULT_DRAIN);
    };
    let example = "drain_timeout = \"30s\"";
    let drain = field.duration(example)?;
    if drain > MAX_DRAIN {
        return Err(field.error(format!(
            "{} is longer than the 1h maximum; use 0s (close at once) to 1h, like {example}",
            field.shown()
        )));
    }
    Ok(drain)
}

fn stats_interval(field: Option<Field<'_>>) -> Result<Option<Duration>, ConfigError> {
    let Some(field) = field else {
        return Ok(Some(DEFAULT_STATS_INTERVAL));
    };
    if field
        .as_str()
        .is_some_and(|s| s.trim().eq_ignore_ascii_case("off"))
    {
        return Ok(None);
    }
    let interval = field.duration("stats_interval = \"10s\" (or \"off\")")?;
    if interval.is_zero() {
        return Ok(None);
    }
    if interval < MIN_STATS_INTERVAL {
        return Err(field.error(format!(
            "{} is too frequent; use at least 100ms, or \"off\" to turn the stats log off",
            field.shown()
        )));
    }
    Ok(Some(interval))
}
