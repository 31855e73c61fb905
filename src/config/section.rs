//! What every listener section shares: its claim on an address and a name
//! (`listen`, `name`), the limits each shard enforces a share of, bounded
//! counts, the relay timeouts' bounds, and the `LISTEN=UPSTREAM` flag form.
//! `[[tcp]]`, `[[udp]]`, `[[socks5]]` and `[[http_connect]]` all read them here.

use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::time::Duration;

use super::Proto;
use super::addr::{parse_listen, parse_upstream};
use super::error::{ConfigError, Origin};
use super::keys::{MAX_UPSTREAMS, Timeout};
use super::raw::{Field, Section, clip};

pub(super) const MAX_NAME_CHARS: usize = 64;
pub(super) const MAX_CONNECTIONS: RangeInclusive<u32> = 1..=10_000_000;
pub(super) const DEFAULT_MAX_CONNECTIONS: u32 = 10_000;
pub(super) const DAY: Duration = Duration::from_secs(86_400);

pub(super) const CONNECT_TIMEOUT: Timeout = Timeout {
    key: "connect_timeout",
    default: Duration::from_secs(5),
    max: Duration::from_secs(600),
};
pub(super) const IDLE_TIMEOUT: Timeout = Timeout {
    key: "idle_timeout",
    default: Duration::from_secs(600),
    max: DAY.saturating_mul(7),
};
pub(super) const HALF_CLOSE_TIMEOUT: Timeout = Timeout {
    key: "half_close_timeout",
    default: Duration::from_secs(60),
    max: DAY.saturating_mul(7),
};

pub(super) const SPEC_FORM: &str =
    "expected LISTEN=UPSTREAM[,UPSTREAM...], like 127.0.0.1:8080=127.0.0.1:9000";

/// `max_connections` of a `[[tcp]]`, `[[socks5]]` or `[[http_connect]]` listener.
/// A transparent listener's traffic goes where its client sent it: the
/// first of `keys` (those of a listener with upstreams) in `section` is
/// refused, saying so (`goes`: where each connection or datagram goes).
pub(super) fn refuse_upstream_keys(
    section: &Section<'_>,
    keys: &[&str],
    goes: &str,
) -> Result<(), ConfigError> {
    let Some(key) = keys.iter().find_map(|k| section.get(k)) else {
        return Ok(());
    };
    let name = key.origin.key.rsplit('.').next().unwrap_or_default();
    let why = match name {
        "upstreams" => format!("a transparent listener has no upstreams: {goes}"),
        _ => format!("{name} does not apply to a transparent listener: {goes}, not to upstreams"),
    };
    Err(key.error(format!(
        "{why}; remove {name}, or transparent to forward to upstreams"
    )))
}

pub(super) fn max_connections(field: Option<Field<'_>>, shards: usize) -> Result<u32, ConfigError> {
    limit(field, MAX_CONNECTIONS, DEFAULT_MAX_CONNECTIONS, shards)
}

/// The section's `listen` and optional `name`, checked.
pub(super) fn section_claim(section: &Section<'_>, proto: Proto) -> Result<Claim, ConfigError> {
    let listen_example = "listen = \"0.0.0.0:8080\"";
    let listen_field = required(section, proto, "listen", listen_example)?;
    let listen_text = listen_field.string(listen_example)?;
    let listen = parse_listen(listen_text).map_err(|why| listen_field.error(why))?;
    Ok(match section.get("name") {
        Some(field) => {
            let name = field.string("name = \"web\"")?;
            check_name(name).map_err(|why| field.error(why))?;
            Claim {
                proto,
                listen,
                listen_at: listen_field.origin,
                name: name.to_owned(),
                name_at: field.origin,
                name_given: true,
            }
        }
        None => Claim::unnamed(proto, listen, listen_text.trim(), listen_field.origin),
    })
}

pub(super) fn required<'a>(
    section: &Section<'a>,
    proto: Proto,
    name: &str,
    example: &str,
) -> Result<Field<'a>, ConfigError> {
    section.get(name).ok_or_else(|| {
        section.origin(name).error(format!(
            "missing; every [[{proto}]] section needs {name}, like {example}"
        ))
    })
}

fn check_name(name: &str) -> Result<(), String> {
    let example = "like name = \"web\"";
    let length = name.chars().count();
    if !(1..=MAX_NAME_CHARS).contains(&length) {
        return Err(format!(
            "{:?} is {length} characters long; use 1 to {MAX_NAME_CHARS}, {example}",
            clip(name, 80)
        ));
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || "._:-[]".contains(c);
    match name.chars().find(|&c| !allowed(c)) {
        Some(bad) => Err(format!(
            "{name:?} contains {bad:?}, which is not allowed in a name; use letters, digits and \
             . _ : - [ ], {example}"
        )),
        None => Ok(()),
    }
}

/// A whole-listener limit that each shard enforces a share of, so it must be at least `shards`.
pub(super) fn limit(
    field: Option<Field<'_>>,
    range: RangeInclusive<u32>,
    default: u32,
    shards: usize,
) -> Result<u32, ConfigError> {
    let Some(field) = field else {
        return Ok(default);
    };
    let max = count(&field, range, default)?;
    if usize::try_from(max).is_ok_and(|max| max < shards) {
        return Err(field.error(format!(
            "{} = {max} is less than the {shards} shards; each shard enforces its own share, so \
             allow at least {shards} or run fewer shards",
            field.origin.key
        )));
    }
    Ok(max)
}

/// An integer key within `range`; `like` is the value the example shows.
pub(super) fn count(
    field: &Field<'_>,
    range: RangeInclusive<u32>,
    like: u32,
) -> Result<u32, ConfigError> {
    let key = field.origin.key.rsplit('.').next().unwrap_or_default();
    let example = format!("{key} = {like}");
    let n = field.integer(&example)?;
    u32::try_from(n)
        .ok()
        .filter(|n| range.contains(n))
        .ok_or_else(|| {
            field.error(format!(
                "{n} is out of range; use {} to {}, like {example}",
                range.start(),
                range.end()
            ))
        })
}

/// Splits a `LISTEN=UP1[,UP2...]` flag into its listen address and upstreams.
pub(super) fn split_spec(
    spec: &str,
    origin: &Origin,
) -> Result<(SocketAddr, Vec<SocketAddr>, String), ConfigError> {
    let fail = |why: &str| origin.error(format!("{spec:?}: {why}; {SPEC_FORM}"));
    let Some((listen_text, upstream_text)) = spec.split_once('=') else {
        return Err(fail(
            "there is no \"=\" between the listen address and the upstreams",
        ));
    };
    let listen = parse_listen(listen_text).map_err(|why| fail(&format!("listen address {why}")))?;
    let parts: Vec<&str> = upstream_text.split(',').collect();
    if parts.len() > MAX_UPSTREAMS {
        return Err(fail(&format!(
            "{} upstreams are listed; at most {MAX_UPSTREAMS} are allowed per listener",
            parts.len()
        )));
    }
    let upstreams = parts
        .iter()
        .enumerate()
        .map(|(n, part)| {
            parse_upstream(part).map_err(|why| fail(&format!("upstream {}: {why}", n + 1)))
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok((listen, upstreams, listen_text.trim().to_owned()))
}

/// A listener's address and name, and where each was given.
pub(super) struct Claim {
    pub proto: Proto,
    pub listen: SocketAddr,
    pub listen_at: Origin,
    pub name: String,
    pub name_at: Origin,
    pub name_given: bool,
}

impl Claim {
    /// A listener named after its listen address, as written.
    pub(super) fn unnamed(proto: Proto, listen: SocketAddr, written: &str, at: Origin) -> Self {
        Self {
            proto,
            listen,
            listen_at: at.clone(),
            name: written.to_owned(),
            name_at: at,
            name_given: false,
        }
    }
}
