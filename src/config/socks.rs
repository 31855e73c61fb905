//! `[[socks5]]` and `[[http_connect]]` sections, and the keys they share
//! with a `transparent` `[[tcp]]` listener: the destination policy
//! (`destinations_allow`, `destinations_deny`, `ports`) and `mptcp` /
//! `upstream_mptcp`. A proxy listener becomes a [`TcpListenerPlan`] with no
//! upstreams, so limits, counters, reload and admin treat it like any other.

use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::cidr::Cidr;
use super::error::ConfigError;
use super::file::{TextFile, read_text};
use super::forward::{DestinationPolicy, Mptcp, ProxyPlan, TcpKind, Users};
use super::keys::{Timeout, cidr_list, timeout};
use super::raw::{Field, Section};
use super::section::{self, Claim};
use super::{Proto, SendProxy, TcpListenerPlan, bandwidth, limits};
use crate::front::Credentials;

/// Which proxy a section configures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ProxyKind {
    Socks5,
    HttpConnect,
}

impl ProxyKind {
    /// The section's name, as in `[[socks5]]`.
    pub(super) fn section(self) -> &'static str {
        match self {
            ProxyKind::Socks5 => "socks5",
            ProxyKind::HttpConnect => "http_connect",
        }
    }

    /// `ports` when the key is absent: SOCKS5 clients go anywhere, CONNECT
    /// is for TLS (a CONNECT proxy open on every port is a spam relay).
    fn default_ports(self) -> Vec<RangeInclusive<u16>> {
        match self {
            ProxyKind::Socks5 => Vec::new(),
            ProxyKind::HttpConnect => vec![443..=443],
        }
    }

    fn keys(self) -> Vec<&'static str> {
        let own: &[&str] = match self {
            ProxyKind::Socks5 => &["udp", "udp_idle_timeout"],
            ProxyKind::HttpConnect => &[],
        };
        PROXY_KEYS
            .iter()
            .chain(&POLICY_KEYS)
            .chain(&MPTCP_KEYS)
            .chain(&limits::TCP_KEYS)
            .chain(own)
            .copied()
            .collect()
    }
}

/// The keys of both proxy sections (besides the policy, MPTCP and client keys).
const PROXY_KEYS: [&str; 11] = [
    "name",
    "listen",
    "users",
    "users_file",
    "open",
    "header_timeout",
    "connect_timeout",
    "idle_timeout",
    "half_close_timeout",
    "max_connections",
    "bandwidth_limit",
];

/// Where clients of a proxy or transparent listener may go.
pub(super) const POLICY_KEYS: [&str; 3] = ["destinations_allow", "destinations_deny", "ports"];
pub(super) const MPTCP_KEYS: [&str; 2] = ["mptcp", "upstream_mptcp"];

/// Loopback and link-local: the host's own services and the cloud metadata
/// endpoint (169.254.169.254), which a proxy must not hand to its clients.
pub(super) const DEFAULT_DESTINATIONS_DENY: [&str; 4] =
    ["127.0.0.0/8", "169.254.0.0/16", "::1/128", "fe80::/10"];

/// The time to finish a SOCKS5 greeting, authentication and request, or a
/// CONNECT head: a few packets, so seconds are generous.
const HEADER_TIMEOUT: Timeout = Timeout {
    key: "header_timeout",
    default: Duration::from_secs(10),
    max: Duration::from_secs(600),
};
/// As `[[udp]] idle_timeout`.
const UDP_IDLE_TIMEOUT: Timeout = Timeout {
    key: "udp_idle_timeout",
    default: Duration::from_secs(60),
    max: section::DAY,
};

/// RFC 1929: a user name and a password are each 1 to 255 bytes.
const CREDENTIAL_BYTES: RangeInclusive<usize> = 1..=255;
/// Every user is compared on each authentication (in constant time), so the
/// list is bounded.
const MAX_USERS: usize = 10_000;
const MAX_USERS_FILE_BYTES: u64 = 4 << 20;
const MAX_PORT_ENTRIES: usize = 1024;

const USERS_EXAMPLE: &str = "users = [{ name = \"alice\", password = \"secret\" }]";
const PORTS_EXAMPLE: &str = "ports = [80, 443, \"1024-65535\"]";

/// One `[[socks5]]` or `[[http_connect]]` section.
pub(super) fn proxy_listener(
    section: &Section<'_>,
    kind: ProxyKind,
    shards: usize,
) -> Result<(TcpListenerPlan, Claim), ConfigError> {
    let name = kind.section();
    if let Some(field) = section.get("upstreams") {
        return Err(field.error(format!(
            "a [[{name}]] listener has no upstreams: each client names its destination; remove \
             upstreams, and bound where clients may go with destinations_allow, \
             destinations_deny and ports"
        )));
    }
    section.deny_unknown(&kind.keys(), &format!("in [[{name}]]"))?;
    if !limits::port_tables(section)?.is_empty() {
        return Err(section.origin("listen").error(format!(
            "a [[{name}]] listener takes one port, not a range; write one address like listen = \
             \"127.0.0.1:1080\", and another [[{name}]] section for each further port"
        )));
    }
    let claim = section::section_claim(section, Proto::Tcp)?;
    let plan = ProxyPlan {
        users: users(section)?,
        policy: destination_policy(section, kind.default_ports())?,
        udp_idle: udp_idle(section, kind)?,
        header_timeout: timeout(section, &HEADER_TIMEOUT)?,
    };
    let limits = limits::tcp_limits(section, shards)?;
    reject_open_proxy(section, kind, &claim, &plan.users, &limits.access.allow)?;
    let max_connections = section.get("max_connections");
    let plan = TcpListenerPlan {
        name: claim.name.clone(),
        listen: claim.listen,
        upstreams: Vec::new(),
        weights: Vec::new(),
        balance: super::Balance::default(),
        passive: super::PassiveHealth::default(),
        connect_timeout: timeout(section, &section::CONNECT_TIMEOUT)?,
        idle_timeout: timeout(section, &section::IDLE_TIMEOUT)?,
        half_close_timeout: timeout(section, &section::HALF_CLOSE_TIMEOUT)?,
        max_connections_given: super::LimitSource::of(&max_connections),
        max_connections: section::max_connections(max_connections, shards)?,
        send_proxy: SendProxy::Off,
        accept_proxy: None,
        sni: None,
        limits,
        bandwidth_limit: bandwidth::bandwidth_limit(section)?,
        health_check: None,
        kind: match kind {
            ProxyKind::Socks5 => TcpKind::Socks5(plan),
            ProxyKind::HttpConnect => TcpKind::HttpConnect(plan),
        },
        mptcp: mptcp(section)?,
        upstream_mptcp: upstream_mptcp(section)?,
    };
    Ok((plan, claim))
}

/// A proxy anyone can reach and use is an open relay (abuse, and a way into
/// the networks behind it); it has to be asked for by name.
fn reject_open_proxy(
    section: &Section<'_>,
    kind: ProxyKind,
    claim: &Claim,
    users: &Users,
    allow: &[Cidr],
) -> Result<(), ConfigError> {
    let open = match section.get("open") {
        Some(field) => field.boolean("open = true")?,
        None => false,
    };
    if open || claim.listen.ip().is_loopback() || !users.is_empty() || !allow.is_empty() {
        return Ok(());
    }
    Err(section.origin("listen").error(format!(
        "[[{}]] listener {:?} on {} would be an open proxy: it is not a loopback address, and \
         there are neither users nor a client allow list, so anyone who reaches it could connect \
         anywhere through it; set users (or users_file) to require a password, allow to list \
         the clients that may use it, or open = true if an open proxy is what you want",
        kind.section(),
        claim.name,
        claim.listen
    )))
}

/// SOCKS5 `udp` and `udp_idle_timeout`: `Some(idle)` when UDP ASSOCIATE is allowed.
fn udp_idle(section: &Section<'_>, kind: ProxyKind) -> Result<Option<Duration>, ConfigError> {
    if kind != ProxyKind::Socks5 {
        return Ok(None);
    }
    let udp = match section.get("udp") {
        Some(field) => field.boolean("udp = true")?,
        None => false,
    };
    if udp {
        return timeout(section, &UDP_IDLE_TIMEOUT).map(Some);
    }
    match section.get("udp_idle_timeout") {
        Some(field) => Err(field.error(
            "applies only to UDP associations, which are off; set udp = true to allow UDP \
             ASSOCIATE, or remove udp_idle_timeout",
        )),
        None => Ok(None),
    }
}

/// `mptcp = true | false | "required"`.
pub(super) fn mptcp(section: &Section<'_>) -> Result<Mptcp, ConfigError> {
    let Some(field) = section.get("mptcp") else {
        return Ok(Mptcp::Off);
    };
    let example = "mptcp = true (or false, or \"required\")";
    if let Some(text) = field.as_str() {
        return match text.trim() {
            "required" => Ok(Mptcp::Required),
            _ => Err(field.error(format!(
                "{} is not an MPTCP mode; use true (MPTCP when the kernel has it, else TCP with \
                 a warning), false, or \"required\" (refuse to start without MPTCP), like \
                 {example}",
                field.shown()
            ))),
        };
    }
    Ok(match field.boolean(example)? {
        true => Mptcp::Preferred,
        false => Mptcp::Off,
    })
}

pub(super) fn upstream_mptcp(section: &Section<'_>) -> Result<bool, ConfigError> {
    section
        .get("upstream_mptcp")
        .map_or(Ok(false), |f| f.boolean("upstream_mptcp = true"))
}

/// `destinations_allow`, `destinations_deny` (default
/// [`DEFAULT_DESTINATIONS_DENY`]; written, it replaces the default, and may
/// be `[]`) and `ports` (default `default_ports`).
pub(super) fn destination_policy(
    section: &Section<'_>,
    default_ports: Vec<RangeInclusive<u16>>,
) -> Result<DestinationPolicy, ConfigError> {
    let allow = match section.get("destinations_allow") {
        Some(field) => cidr_list(
            &field,
            "destinations_allow = [\"10.0.0.0/8\", \"2001:db8::/32\"]",
            "which would refuse every destination; list the ranges clients may connect to",
            "or remove the key to allow every destination not in destinations_deny",
        )?,
        None => Vec::new(),
    };
    let deny = match section.get("destinations_deny") {
        Some(field) if field.array("").is_ok_and(|items| items.is_empty()) => Vec::new(),
        Some(field) => cidr_list(
            &field,
            "destinations_deny = [\"127.0.0.0/8\", \"169.254.0.0/16\"]",
            "",
            "",
        )?,
        None => default_destinations_deny(),
    };
    let ports = match section.get("ports") {
        Some(field) => ports(&field)?,
        None => default_ports,
    };
    Ok(DestinationPolicy { allow, deny, ports })
}

pub(super) fn default_destinations_deny() -> Vec<Cidr> {
    DEFAULT_DESTINATIONS_DENY
        .iter()
        .filter_map(|c| Cidr::parse(c).ok())
        .collect()
}

/// `ports = [80, 443, "1024-65535"]`.
fn ports(field: &Field<'_>) -> Result<Vec<RangeInclusive<u16>>, ConfigError> {
    let items = field.array(PORTS_EXAMPLE)?;
    if items.is_empty() {
        return Err(field.error(format!(
            "[] is empty, which would refuse every destination; list the ports clients may \
             connect to, like {PORTS_EXAMPLE}, or write \"1-65535\" for every port"
        )));
    }
    if items.len() > MAX_PORT_ENTRIES {
        return Err(field.error(format!(
            "{} entries are listed; at most {MAX_PORT_ENTRIES} are allowed (use ranges)",
            items.len()
        )));
    }
    items.iter().map(port_entry).collect()
}

fn port_entry(item: &Field<'_>) -> Result<RangeInclusive<u16>, ConfigError> {
    let bad = |why: &str| {
        item.error(format!(
            "{} {why}; write a port from 1 to 65535 or a range \"FIRST-LAST\", like \
             {PORTS_EXAMPLE}",
            item.shown()
        ))
    };
    let port = |text: &str| text.trim().parse::<u16>().ok().filter(|&p| p != 0);
    if let Some(text) = item.as_str() {
        let (first, last) = text.split_once('-').unwrap_or((text, text));
        let (Some(first), Some(last)) = (port(first), port(last)) else {
            return Err(bad("is not a port or a port range"));
        };
        if first > last {
            return Err(item.error(format!(
                "{} runs backwards; write the lower port first, like \"{last}-{first}\"",
                item.shown()
            )));
        }
        return Ok(first..=last);
    }
    let n = item.integer(PORTS_EXAMPLE)?;
    match u16::try_from(n).ok().filter(|&p| p != 0) {
        Some(p) => Ok(p..=p),
        None => Err(bad("is out of range")),
    }
}

/// `users = [...]` or `users_file = "PATH"`; neither: no authentication.
fn users(section: &Section<'_>) -> Result<Users, ConfigError> {
    match (section.get("users"), section.get("users_file")) {
        (Some(_), Some(file)) => Err(file.error(
            "is given with users; give the users in one place: users = [...] in the config, or \
             a users_file",
        )),
        (Some(field), None) => inline_users(&field).map(Users::new),
        (None, Some(field)) => users_file(&field),
        (None, None) => Ok(Users::default()),
    }
}

/// A wrong type under `users`, without quoting the value: it may hold a password.
fn secret_shape(field: &Field<'_>, expected: &str) -> ConfigError {
    field.error(format!(
        "expected {expected}, like {USERS_EXAMPLE} (the value is not shown: it may hold a \
         password)"
    ))
}

fn inline_users(field: &Field<'_>) -> Result<Vec<Credentials>, ConfigError> {
    let items = (field.array(USERS_EXAMPLE)).map_err(|_| secret_shape(field, "an array"))?;
    if items.is_empty() {
        return Err(field.error(format!(
            "[] is empty; list users, like {USERS_EXAMPLE}, or remove the key for no \
             authentication"
        )));
    }
    let mut list = Vec::with_capacity(items.len());
    for item in &items {
        let entry = (item.table(USERS_EXAMPLE)).map_err(|_| secret_shape(item, "a table"))?;
        entry.deny_unknown(&["name", "password"], "in a user")?;
        let text = |key: &str| {
            let field = entry.get(key).ok_or_else(|| {
                entry.origin(key).error(format!(
                    "missing; every user needs a name and a password, like {USERS_EXAMPLE}"
                ))
            })?;
            let text = (field.as_str())
                .ok_or_else(|| secret_shape(&field, "a string"))?
                .to_owned();
            Ok::<_, ConfigError>((field, text))
        };
        let (name_field, name) = text("name")?;
        check_name(&name).map_err(|why| name_field.error(why))?;
        let (password_field, password) = text("password")?;
        check_password(&password).map_err(|why| password_field.error(why))?;
        add_user(&mut list, name, password).map_err(|why| name_field.error(why))?;
    }
    Ok(list)
}

/// Appends a user, refusing a second one of the same name or one past [`MAX_USERS`].
fn add_user(list: &mut Vec<Credentials>, name: String, password: String) -> Result<(), String> {
    if list.iter().any(|u| u.user == name.as_bytes()) {
        return Err(format!(
            "user {name:?} is listed twice; give each user one entry"
        ));
    }
    if list.len() >= MAX_USERS {
        return Err(format!(
            "more than {MAX_USERS} users; every user is compared on each authentication, so \
             at most {MAX_USERS} are allowed"
        ));
    }
    list.push(Credentials {
        user: name.into_bytes(),
        password: password.into_bytes(),
    });
    Ok(())
}

fn check_name(name: &str) -> Result<(), String> {
    if !CREDENTIAL_BYTES.contains(&name.len()) {
        return Err(format!(
            "user name {:?} is {} bytes; SOCKS5 (RFC 1929) allows 1 to 255",
            super::raw::clip(name, 40),
            name.len()
        ));
    }
    if name.contains(':') {
        return Err(format!(
            "user name {name:?} contains ':', which separates the name from the password (in \
             users_file and in HTTP Basic credentials); choose a name without it"
        ));
    }
    Ok(())
}

/// The password itself is never quoted: messages go to logs.
fn check_password(password: &str) -> Result<(), String> {
    if CREDENTIAL_BYTES.contains(&password.len()) {
        return Ok(());
    }
    Err(format!(
        "the password is {} bytes; SOCKS5 (RFC 1929) allows 1 to 255",
        password.len()
    ))
}

const USERS_FILE: TextFile = TextFile {
    noun: "users file",
    shape: "a regular file with one name:password line per user",
    too_big: "check that users_file names the right file",
};

/// `users_file = "PATH"`: read now, so at start, by `check`, and on every
/// reload. Relative paths are from the working directory.
fn users_file(field: &Field<'_>) -> Result<Users, ConfigError> {
    let example = "users_file = \"/etc/ringfwd/users\"";
    let text = field.string(example)?;
    if text.trim().is_empty() {
        return Err(field.error(format!(
            "is empty; give the path of a file with one name:password per line, like {example}"
        )));
    }
    let path = PathBuf::from(text);
    let content = read_text(&path, MAX_USERS_FILE_BYTES, &USERS_FILE).map_err(|why| {
        field.error(format!(
            "{text:?} {why}; users_file is read at start and on every reload (a relative path is \
             from the working directory), so check the path and that ringfwd may read it"
        ))
    })?;
    let list = parse_users(&content).map_err(|why| field.error(format!("{text:?} {why}")))?;
    Ok(Users::from_file(path, list))
}

/// One `name:password` per line (the password is everything after the first
/// `:`); `#` comment lines and blank lines are skipped.
pub(super) fn parse_users(content: &str) -> Result<Vec<Credentials>, String> {
    let mut list = Vec::new();
    for (i, line) in content.lines().enumerate() {
        let at = format!("line {}", i + 1);
        if line.trim().is_empty() || line.trim_start().starts_with('#') {
            continue;
        }
        // The line is not quoted: without a ':' it may be a password.
        let Some((name, password)) = line.split_once(':') else {
            return Err(format!(
                "{at} has no ':'; write one name:password per line (# starts a comment)"
            ));
        };
        check_name(name).map_err(|why| format!("{at}: {why}"))?;
        check_password(password).map_err(|why| format!("{at}: {why}"))?;
        add_user(&mut list, name.to_owned(), password.to_owned())
            .map_err(|why| format!("{at}: {why}"))?;
    }
    if list.is_empty() {
        return Err(
            "lists no users; add name:password lines, or remove users_file for no \
             authentication"
                .to_owned(),
        );
    }
    Ok(list)
}

/// For `check`: a path as TOML reads it back.
pub(super) fn toml_path(path: &Path) -> String {
    toml::Value::String(path.display().to_string()).to_string()
}

/// The `users` line of `check`'s output: never a password.
pub(super) fn describe_users(users: &Users) -> String {
    let count = match users.len() {
        1 => "1 user".to_owned(),
        n => format!("{n} users"),
    };
    match users.file() {
        Some(path) => format!("users_file = {}  # {count}", toml_path(path)),
        None if users.is_empty() => "# users: none (no authentication)".to_owned(),
        None => format!(
            "# users = <{count}>  (given inline; passwords are not shown, so this line does not \
             read back)"
        ),
    }
}

/// `ports` as written: `[80, "1024-65535"]`.
pub(super) fn describe_ports(ports: &[RangeInclusive<u16>]) -> String {
    let shown: Vec<String> = ports
        .iter()
        .map(|r| match r.start() == r.end() {
            true => r.start().to_string(),
            false => format!("\"{}-{}\"", r.start(), r.end()),
        })
        .collect();
    format!("[{}]", shown.join(", "))
}

/// `mptcp` as written.
pub(super) fn describe_mptcp(mptcp: Mptcp) -> &'static str {
    match mptcp {
        Mptcp::Off => "false",
        Mptcp::Preferred => "true",
        Mptcp::Required => "\"required\"",
    }
}
