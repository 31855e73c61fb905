//! `[[tcp.routes]]` and `sni_timeout`: SNI routing of a `[[tcp]]` listener.
//!
//! Each route lists server names and its own upstreams; the listener's
//! `upstreams` stay the default. A name in two routes is refused naming both,
//! since which of them would win is not something to leave to file order.

use std::collections::HashMap;
use std::time::Duration;

use super::balance;
use super::error::{ConfigError, Origin};
use super::keys::{Timeout, timeout};
use super::raw::{Field, Section};
use super::sni::fold_pattern;
use super::{RoutePlan, SniPlan};

/// A ClientHello is sent right after connecting; the bound keeps a client
/// that never sends one from holding a slot.
pub(super) const SNI_TIMEOUT: Timeout = Timeout {
    key: "sni_timeout",
    default: Duration::from_secs(5),
    max: Duration::from_secs(600),
};

const KEYS: [&str; 6] = [
    "sni",
    "upstreams",
    "health_check",
    "balance",
    "max_fails",
    "fail_timeout",
];
/// Bounds on the config, not on a measured cost: matching is by hash.
const MAX_ROUTES: usize = 1024;
const MAX_NAMES: usize = 1024;
const SNI_EXAMPLE: &str = "sni = [\"api.example.com\", \"*.example.org\"]";
const ROUTE_EXAMPLE: &str = "[[tcp.routes]] with sni = [\"api.example.com\"] and \
                             upstreams = [\"10.0.0.7:443\"]";

/// The listener's routes and `sni_timeout`; `None` without `routes`.
pub(super) fn sni(section: &Section<'_>) -> Result<Option<SniPlan>, ConfigError> {
    let Some(field) = section.get("routes") else {
        if let Some(stray) = section.get(SNI_TIMEOUT.key) {
            return Err(stray.error(
                "is set but this listener has no [[tcp.routes]], so no ClientHello is read and \
                 the timeout would do nothing; add routes, or remove sni_timeout",
            ));
        }
        return Ok(None);
    };
    let entries = field.array(ROUTE_EXAMPLE)?;
    if entries.is_empty() {
        return Err(field.error(format!(
            "{} is empty; add {ROUTE_EXAMPLE}, or remove routes",
            field.shown()
        )));
    }
    if entries.len() > MAX_ROUTES {
        return Err(field.error(format!(
            "{} routes are given; at most {MAX_ROUTES} are allowed per listener",
            entries.len()
        )));
    }
    let mut seen = Seen::new();
    let routes = entries
        .iter()
        .enumerate()
        .map(|(index, entry)| route(index, entry, &mut seen))
        .collect::<Result<_, _>>()?;
    Ok(Some(SniPlan {
        timeout: timeout(section, &SNI_TIMEOUT)?,
        routes,
    }))
}

/// Each folded name of the listener so far: the route that has it, and its key.
type Seen = HashMap<String, (usize, Origin)>;

/// Route `index` of the listener.
fn route(index: usize, entry: &Field<'_>, seen: &mut Seen) -> Result<RoutePlan, ConfigError> {
    let section = entry.table(ROUTE_EXAMPLE)?;
    section.deny_unknown(&KEYS, "in [[tcp.routes]]")?;
    let missing = |key: &str, what: &str, example: &str| {
        section.origin(key).error(format!(
            "missing; every [[tcp.routes]] section needs {key}, {what}, like {example}"
        ))
    };
    let Some(sni) = section.get("sni") else {
        return Err(missing("sni", "the server names it takes", SNI_EXAMPLE));
    };
    let Some(targets) = section.get("upstreams") else {
        return Err(missing(
            "upstreams",
            "where connections for its names go",
            "upstreams = [\"10.0.0.7:443\"]",
        ));
    };
    let pool = balance::pool(&targets)?;
    Ok(RoutePlan {
        names: names(index, &sni, seen)?,
        health_check: super::health::health_check(&section)?,
        upstreams: pool.upstreams,
        weights: pool.weights,
        balance: balance::balance(&section)?,
        passive: balance::passive(&section)?,
    })
}

fn names(route: usize, field: &Field<'_>, seen: &mut Seen) -> Result<Vec<String>, ConfigError> {
    let items = field.array(SNI_EXAMPLE)?;
    if items.is_empty() {
        return Err(field.error(format!(
            "{} is empty, so the route would never be taken; list its server names, like \
             {SNI_EXAMPLE}",
            field.shown()
        )));
    }
    if items.len() > MAX_NAMES {
        return Err(field.error(format!(
            "{} names are listed; at most {MAX_NAMES} are allowed per route",
            items.len()
        )));
    }
    let mut names = Vec::with_capacity(items.len());
    for item in items {
        let written = item.string(SNI_EXAMPLE)?;
        let name = fold_pattern(written).map_err(|why| item.error(why))?;
        if let Some((owner, previous)) = seen.get(&name) {
            let folded = if name == written {
                String::new()
            } else {
                format!(" (as {name:?}: names match without case)")
            };
            let rule = if *owner == route {
                "this route lists it twice, so remove one"
            } else {
                "a name may be in one route of a listener only, so remove one of them"
            };
            return Err(item.error(format!(
                "{}{folded} is already in {}; {rule}",
                item.shown(),
                previous.describe_from(&item.origin)
            )));
        }
        seen.insert(name.clone(), (route, item.origin.clone()));
        names.push(name);
    }
    Ok(names)
}
