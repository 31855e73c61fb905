//! Resolving `[[udp]]` sections and `--udp` specs into [`UdpListenerPlan`]s: session timeout,
//! response count, session and rate limits, and the client allow list.

use std::ops::RangeInclusive;
use std::time::Duration;

use super::balance;
use super::cidr::Cidr;
use super::error::{ConfigError, Origin};
use super::forward::DestinationPolicy;
use super::keys::{Timeout, cidr_list, timeout};
use super::proxy::udp_send_proxy;
use super::raw::{Field, Section};
use super::section::{Claim, DAY, count, limit, required, section_claim, split_spec};
use super::{Proto, UdpListenerPlan, UdpSendProxy};

const KEYS: [&str; 21] = [
    "name",
    "transparent",
    "destinations_allow",
    "destinations_deny",
    "ports",
    "tproxy_reply_sockets",
    "balance",
    "max_fails",
    "fail_timeout",
    "listen",
    "upstreams",
    "idle_timeout",
    "max_responses",
    "max_sessions",
    "new_sessions_per_second_per_source",
    "allow",
    "deny",
    "rcvbuf",
    "sndbuf",
    "session_rcvbuf",
    "send_proxy",
];

pub(super) const IDLE_TIMEOUT: Timeout = Timeout {
    key: "idle_timeout",
    default: Duration::from_secs(60),
    max: DAY,
};
/// Each session holds one ephemeral port and one descriptor; the port range caps it anyway.
const MAX_SESSIONS: RangeInclusive<u32> = 1..=10_000_000;
pub(super) const DEFAULT_MAX_SESSIONS: u32 = 100_000;
const MAX_RESPONSES: RangeInclusive<u32> = 1..=1_000_000;
const RATE: RangeInclusive<u32> = 1..=1_000_000;
const UDP_SOURCE: &str = "--udp";
/// SO_RCVBUF / SO_SNDBUF requests; the kernel caps them at net.core.rmem_max / wmem_max.
const SOCKET_BUFFER: RangeInclusive<u64> = (4 << 10)..=(512 << 20);

pub(super) fn file_udp_listener(
    section: &Section<'_>,
    shards: usize,
) -> Result<(UdpListenerPlan, Claim), ConfigError> {
    section.deny_unknown(&KEYS, "in [[udp]]")?;
    let claim = section_claim(section, Proto::Udp)?;
    let transparent = udp_transparent(section)?;
    let (upstreams, weights) = match transparent {
        Some(_) => (Vec::new(), Vec::new()),
        None => {
            let upstreams_example = "upstreams = [\"10.0.0.53:53\"] (or transparent = \"tproxy\" \
                 to forward each datagram where its client sent it)";
            let pool = balance::pool(&required(
                section,
                Proto::Udp,
                "upstreams",
                upstreams_example,
            )?)?;
            (pool.upstreams, pool.weights)
        }
    };
    let plan = UdpListenerPlan {
        name: claim.name.clone(),
        listen: claim.listen,
        upstreams,
        weights,
        balance: balance::balance(section)?,
        passive: balance::passive(section)?,
        idle_timeout: timeout(section, &IDLE_TIMEOUT)?,
        max_responses: section
            .get("max_responses")
            .map(|f| count(&f, MAX_RESPONSES, 1))
            .transpose()?,
        max_sessions: limit(
            section.get("max_sessions"),
            MAX_SESSIONS,
            DEFAULT_MAX_SESSIONS,
            shards,
        )?,
        max_sessions_given: super::LimitSource::of(&section.get("max_sessions")),
        new_sessions_per_second_per_source: section
            .get("new_sessions_per_second_per_source")
            .map(|f| count(&f, RATE, 50))
            .transpose()?,
        allow: section
            .get("allow")
            .map(|f| allow(&f))
            .transpose()?
            .unwrap_or_default(),
        deny: super::limits::deny(section.get("deny"))?,
        rcvbuf: socket_buffer(section.get("rcvbuf"))?,
        sndbuf: socket_buffer(section.get("sndbuf"))?,
        session_rcvbuf: socket_buffer(section.get("session_rcvbuf"))?,
        send_proxy: udp_send_proxy(section.get("send_proxy"))?,
        transparent,
    };
    Ok((plan, claim))
}

/// `transparent = "tproxy"` on a `[[udp]]` listener: each datagram goes to
/// the address its client sent it to (IP_RECVORIGDSTADDR), within the
/// destination policy, and the replies leave from that address.
#[derive(Debug, Clone, PartialEq)]
pub struct UdpTransparent {
    pub policy: DestinationPolicy,
    /// Reply sockets (one per session, bound to its original destination)
    /// each shard may hold for this listener; a new session beyond it is
    /// refused (`udp_drop_reply_sockets`).
    pub reply_sockets: u32,
}

/// Reply sockets per shard by default: each is a descriptor and a socket
/// beside the session's own, so a shard at the bound holds twice this many
/// descriptors for the listener; 4096 sessions per shard is far above what
/// a host's transparent UDP (DNS, QUIC, games) keeps open at once, and far
/// below the default `max_sessions` share, whose ceiling would be a
/// descriptor exhaustion first.
pub(super) const DEFAULT_REPLY_SOCKETS: u32 = 4096;
const REPLY_SOCKETS: RangeInclusive<u32> = 1..=1_000_000;

/// Keys about a pool of upstreams, which a transparent listener has none
/// of (as on `[[tcp]]`).
const NOT_TRANSPARENT: [&str; 4] = ["upstreams", "balance", "max_fails", "fail_timeout"];

/// `transparent = "tproxy"` and the keys it allows and forbids; without it,
/// the destination policy keys and `tproxy_reply_sockets` are refused.
fn udp_transparent(section: &Section<'_>) -> Result<Option<UdpTransparent>, ConfigError> {
    let example = "transparent = \"tproxy\"";
    let Some(field) = section.get("transparent") else {
        let only_transparent = super::socks::POLICY_KEYS
            .iter()
            .chain(&["tproxy_reply_sockets"])
            .find_map(|k| section.get(k));
        if let Some(key) = only_transparent {
            return Err(key.error(
                "applies to a transparent listener, and this [[udp]] listener is not \
                 transparent (its datagrams go to its upstreams); remove it, or set \
                 transparent = \"tproxy\"",
            ));
        }
        return Ok(None);
    };
    match field.string(example)?.trim() {
        "tproxy" => {}
        "redirect" => {
            return Err(field.error(
                "\"redirect\" cannot work for UDP: REDIRECT rewrites each datagram's \
                 destination, and conntrack's original destination (SO_ORIGINAL_DST) is \
                 readable per connected socket, not per datagram; use transparent = \"tproxy\" \
                 with an nftables tproxy rule (see tuning.md)",
            ));
        }
        _ => {
            return Err(field.error(format!(
                "{} is not a transparent mode of a [[udp]] listener; use \"tproxy\" \
                 (TPROXY: each datagram goes where its client sent it), like {example}",
                field.shown()
            )));
        }
    }
    super::section::refuse_upstream_keys(
        section,
        &NOT_TRANSPARENT,
        "each datagram goes to the address its client sent it to",
    )?;
    Ok(Some(UdpTransparent {
        policy: super::socks::destination_policy(section, Vec::new())?,
        reply_sockets: section
            .get("tproxy_reply_sockets")
            .map(|f| count(&f, REPLY_SOCKETS, DEFAULT_REPLY_SOCKETS))
            .transpose()?
            .unwrap_or(DEFAULT_REPLY_SOCKETS),
    }))
}

fn socket_buffer(field: Option<Field<'_>>) -> Result<Option<u32>, ConfigError> {
    let Some(field) = field else {
        return Ok(None);
    };
    let key = field.origin.key.rsplit('.').next().unwrap_or_default();
    let example = format!("{key} = \"4MiB\"");
    let bytes = field.size(&example)?;
    SOCKET_BUFFER
        .contains(&bytes)
        .then(|| u32::try_from(bytes).ok())
        .flatten()
        .map(Some)
        .ok_or_else(|| {
            field.error(format!(
                "{} is out of range; use 4KiB to 512MiB, like {example}",
                field.shown()
            ))
        })
}

fn allow(field: &Field<'_>) -> Result<Vec<Cidr>, ConfigError> {
    cidr_list(
        field,
        "allow = [\"10.0.0.0/8\", \"2001:db8::/32\"]",
        "which would drop every client; list the client ranges to let in",
        "or remove the key to allow all",
    )
}

/// `--udp LISTEN=UP1[,UP2...]`: a listener with default timeout and limits, named after LISTEN.
pub(super) fn flag_udp_listener(
    index: usize,
    spec: &str,
) -> Result<(UdpListenerPlan, Claim), ConfigError> {
    let origin = Origin::new(UDP_SOURCE, format!("{UDP_SOURCE}[{index}]"));
    let (listen, upstreams, listen_text) = split_spec(spec, &origin)?;
    let claim = Claim::unnamed(Proto::Udp, listen, &listen_text, origin);
    let plan = UdpListenerPlan {
        name: claim.name.clone(),
        listen,
        weights: vec![1; upstreams.len()],
        upstreams,
        balance: super::Balance::default(),
        passive: super::PassiveHealth::default(),
        idle_timeout: IDLE_TIMEOUT.default,
        max_responses: None,
        max_sessions: DEFAULT_MAX_SESSIONS,
        max_sessions_given: super::LimitSource::Default,
        new_sessions_per_second_per_source: None,
        allow: Vec::new(),
        deny: Vec::new(),
        rcvbuf: None,
        sndbuf: None,
        session_rcvbuf: None,
        send_proxy: UdpSendProxy::Off,
        transparent: None,
    };
    Ok((plan, claim))
}
