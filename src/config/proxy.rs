//! PROXY protocol keys: `send_proxy` on `[[tcp]]` and `[[udp]]`, and
//! `accept_proxy` with its `trusted_proxies` and `proxy_timeout` on `[[tcp]]`.
//!
//! A key that would do nothing (a trust list or a header timeout while no
//! header is read) is refused rather than ignored: the operator who wrote it
//! expected it to act.

use std::time::Duration;

use super::error::ConfigError;
use super::keys::{Timeout, cidr_list, timeout};
use super::raw::{Field, Section};
use super::{AcceptProxy, SendProxy, UdpSendProxy};

/// A PROXY header is one small packet sent right after connecting; seconds
/// are generous, and the bound keeps a silent client from holding a slot.
pub(super) const PROXY_TIMEOUT: Timeout = Timeout {
    key: "proxy_timeout",
    default: Duration::from_secs(5),
    max: Duration::from_secs(600),
};

const TRUSTED_EXAMPLE: &str = "trusted_proxies = [\"10.0.0.0/8\", \"2001:db8::/32\"]";

/// `[[tcp]] send_proxy`: `"off"` (default), `"v1"` or `"v2"`.
pub(super) fn send_proxy(field: Option<Field<'_>>) -> Result<SendProxy, ConfigError> {
    let Some(field) = field else {
        return Ok(SendProxy::Off);
    };
    let example = "send_proxy = \"v2\" (or \"v1\", \"off\")";
    match field.string(example)?.trim().to_ascii_lowercase().as_str() {
        "off" => Ok(SendProxy::Off),
        "v1" => Ok(SendProxy::V1),
        "v2" => Ok(SendProxy::V2),
        _ => Err(field.error(format!(
            "{} is not a PROXY protocol version; use \"off\" (no header), \"v1\" (the text line) \
             or \"v2\" (binary), like {example}",
            field.shown()
        ))),
    }
}

/// `[[udp]] send_proxy`: `"off"` (default) or `"v2"`.
pub(super) fn udp_send_proxy(field: Option<Field<'_>>) -> Result<UdpSendProxy, ConfigError> {
    let Some(field) = field else {
        return Ok(UdpSendProxy::Off);
    };
    let example = "send_proxy = \"v2\" (or \"off\")";
    match field.string(example)?.trim().to_ascii_lowercase().as_str() {
        "off" => Ok(UdpSendProxy::Off),
        "v2" => Ok(UdpSendProxy::V2),
        "v1" => Err(field.error(format!(
            "{} has no datagram form (PROXY v1 is a text line for streams); use v2, which heads \
             each datagram, like {example}",
            field.shown()
        ))),
        _ => Err(field.error(format!(
            "{} is not a PROXY protocol version for UDP; use \"off\" (no header) or \"v2\", like \
             {example}",
            field.shown()
        ))),
    }
}

/// `accept_proxy` (default false), with `trusted_proxies` required and
/// `proxy_timeout` allowed only when it is true.
pub(super) fn accept_proxy(section: &Section<'_>) -> Result<Option<AcceptProxy>, ConfigError> {
    let accept = section
        .get("accept_proxy")
        .map(|f| f.boolean("accept_proxy = true"))
        .transpose()?;
    let accept_key = section.origin("accept_proxy").key;
    if accept != Some(true) {
        let state = match accept {
            Some(_) => format!("{accept_key} is false"),
            None => format!("{accept_key} is not set (false by default)"),
        };
        for (key, what) in [
            ("trusted_proxies", "the list"),
            ("proxy_timeout", "the timeout"),
        ] {
            if let Some(field) = section.get(key) {
                return Err(field.error(format!(
                    "is set but {state}, so no PROXY header is read and {what} would do nothing; \
                     set accept_proxy = true to require a header from clients, or remove {key}"
                )));
            }
        }
        return Ok(None);
    }
    let Some(trusted) = section.get("trusted_proxies") else {
        return Err(section.origin("trusted_proxies").error(format!(
            "missing; {accept_key} = true needs trusted_proxies, the peers allowed to send a \
             PROXY header (anyone else could claim any client address), like {TRUSTED_EXAMPLE}"
        )));
    };
    Ok(Some(AcceptProxy {
        trusted: cidr_list(
            &trusted,
            TRUSTED_EXAMPLE,
            "which would refuse every client; list the proxies' addresses",
            "or set accept_proxy = false",
        )?,
        timeout: timeout(section, &PROXY_TIMEOUT)?,
    }))
}
