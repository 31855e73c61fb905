//! Readers for value shapes that several sections share (upstream lists,
//! address ranges, bounded timeouts), kept apart from the sections so the
//! section readers (`listeners`, `udp`, `proxy`, `routes`) depend on them
//! and not on each other.

use std::time::Duration;

use super::cidr::Cidr;
use super::error::ConfigError;
use super::raw::{Field, Section};
use super::units::format_duration;

pub(super) const MAX_UPSTREAMS: usize = 256;
/// Address ranges per list; a longer list belongs in a firewall, where it is
/// matched without a linear scan.
const MAX_RANGES: usize = 1024;
const MIN_TIMEOUT: Duration = Duration::from_millis(1);

/// A timeout key with its default and upper bound (all have a 1ms lower bound).
pub(super) struct Timeout {
    pub key: &'static str,
    pub default: Duration,
    pub max: Duration,
}

/// A list of address ranges (`allow`, `trusted_proxies`). `empty_why` says
/// what an empty list would do and what to list; `or_else` the alternative.
pub(super) fn cidr_list(
    field: &Field<'_>,
    example: &str,
    empty_why: &str,
    or_else: &str,
) -> Result<Vec<Cidr>, ConfigError> {
    let items = field.array(example)?;
    if items.is_empty() {
        return Err(field.error(format!(
            "{} is empty, {empty_why}, like {example}, {or_else}",
            field.shown()
        )));
    }
    if items.len() > MAX_RANGES {
        return Err(field.error(format!(
            "{} ranges are listed; at most {MAX_RANGES} are allowed (use a firewall for more)",
            items.len()
        )));
    }
    items
        .iter()
        .map(|item| Cidr::parse(item.string(example)?).map_err(|why| item.error(why)))
        .collect()
}

pub(super) fn timeout(section: &Section<'_>, spec: &Timeout) -> Result<Duration, ConfigError> {
    let Some(field) = section.get(spec.key) else {
        return Ok(spec.default);
    };
    let example = format!("{} = \"{}\"", spec.key, format_duration(spec.default));
    let timeout = field.duration(&example)?;
    if (MIN_TIMEOUT..=spec.max).contains(&timeout) {
        return Ok(timeout);
    }
    Err(field.error(format!(
        "{} is out of range; use {} to {}, like {example}",
        field.shown(),
        format_duration(MIN_TIMEOUT),
        format_duration(spec.max)
    )))
}
