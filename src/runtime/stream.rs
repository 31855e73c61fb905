//! How a `[[tcp]]` listener's sockets and its upstream sockets are made:
//! `mptcp`, `upstream_mptcp` and `transparent = "tproxy"` resolved against
//! what this kernel can do, once per start and per reload, so shards only
//! ever get a protocol the kernel makes. A fallback to TCP is one warning
//! and one `mptcp_fallback`.

use std::net::SocketAddr;

use tracing::warn;

use crate::config::TcpListenerPlan;
use crate::config::forward::{Mptcp, TcpKind, TransparentMode};
use crate::sys::host::HostError;
use crate::sys::mptcp::{self, StreamProto};
use crate::sys::socket::{Capture, StreamListen};

/// Fallbacks to TCP counted while resolving (the `mptcp_fallback` counter).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Fallbacks(pub u64);

/// How listener `t`'s sockets are made. `mptcp = "preferred"` on a kernel
/// without MPTCP falls back to TCP (warned, counted); `"required"` refuses
/// to start, naming the listener, the key and the sysctl.
pub(super) fn listen_socket(
    t: &TcpListenerPlan,
    fallbacks: &mut Fallbacks,
) -> Result<StreamListen, HostError> {
    listen_socket_probed(t, fallbacks, mptcp::probe)
}

/// [`listen_socket`] with `probe` telling whether the kernel makes MPTCP sockets.
fn listen_socket_probed<E: std::fmt::Display>(
    t: &TcpListenerPlan,
    fallbacks: &mut Fallbacks,
    probe: impl Fn(SocketAddr) -> Result<(), E>,
) -> Result<StreamListen, HostError> {
    let capture = match &t.kind {
        TcpKind::Transparent(p) if p.mode == TransparentMode::Tproxy => Capture::Tproxy,
        _ => Capture::Own,
    };
    let proto = match t.mptcp {
        Mptcp::Off => StreamProto::Tcp,
        want => match probe(t.listen) {
            Ok(()) => StreamProto::Mptcp,
            Err(why) if want == Mptcp::Required => {
                return Err(HostError::Bind {
                    what: format!("tcp listener '{}'", t.name),
                    addr: t.listen,
                    error: format!(
                        "mptcp = \"required\" but this kernel makes no MPTCP socket: {why}; or set mptcp = \"preferred\" to fall back to TCP"
                    ),
                });
            }
            Err(why) => {
                fallbacks.0 += 1;
                warn!(
                    "tcp listener '{}' on {}: mptcp = \"preferred\" but this kernel makes no MPTCP socket: {why}; listening with plain TCP (counted in mptcp_fallback)",
                    t.name, t.listen
                );
                StreamProto::Tcp
            }
        },
    };
    Ok(StreamListen { proto, capture })
}

/// The protocol of listener `t`'s upstream sockets: MPTCP for
/// `upstream_mptcp = true` when the kernel makes MPTCP sockets of every
/// family its upstreams have, else TCP (warned, counted).
pub(super) fn upstream_proto(t: &TcpListenerPlan, fallbacks: &mut Fallbacks) -> StreamProto {
    upstream_proto_probed(t, fallbacks, mptcp::probe)
}

/// [`upstream_proto`] with `probe` telling whether the kernel makes MPTCP sockets.
fn upstream_proto_probed<E: std::fmt::Display>(
    t: &TcpListenerPlan,
    fallbacks: &mut Fallbacks,
    probe: impl Fn(SocketAddr) -> Result<(), E>,
) -> StreamProto {
    if !t.upstream_mptcp {
        return StreamProto::Tcp;
    }
    match families(&t.upstreams).into_iter().try_for_each(probe) {
        Ok(()) => StreamProto::Mptcp,
        Err(why) => {
            fallbacks.0 += 1;
            warn!(
                "tcp listener '{}': upstream_mptcp = true but this kernel makes no MPTCP socket: {why}; connecting to upstreams with plain TCP (counted in mptcp_fallback)",
                t.name
            );
            StreamProto::Tcp
        }
    }
}

/// One address of each family among `upstreams` (IPv4 when there are
/// none: a listener whose clients name the destination).
fn families(upstreams: &[SocketAddr]) -> Vec<SocketAddr> {
    let v4: SocketAddr = SocketAddr::from(([0, 0, 0, 0], 0));
    let v6: SocketAddr = SocketAddr::from(([0u16; 8], 0));
    let mut out = Vec::with_capacity(2);
    if upstreams.is_empty() || upstreams.iter().any(SocketAddr::is_ipv4) {
        out.push(v4);
    }
    if upstreams.iter().any(SocketAddr::is_ipv6) {
        out.push(v6);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::forward::{DestinationPolicy, TransparentPlan};
    use crate::config::{HostFacts, Overrides, Plan};

    fn listener() -> TcpListenerPlan {
        let toml = "[[tcp]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\nupstreams = [\"127.0.0.1:9\", \"[::1]:9\"]\n";
        let host = HostFacts {
            available_cpus: vec![0],
        };
        let plan = Plan::resolve(Some(("t.toml", toml)), &Overrides::default(), &host).unwrap();
        plan.tcp.into_iter().next().unwrap()
    }

    fn kernel_without_mptcp(_: SocketAddr) -> Result<(), &'static str> {
        Err(
            "socket(IPPROTO_MPTCP) failed: Protocol not available (net.mptcp.enabled = 0: enable it with `sysctl -w net.mptcp.enabled=1`)",
        )
    }

    fn kernel_with_mptcp(_: SocketAddr) -> Result<(), &'static str> {
        Ok(())
    }

    #[test]
    fn mptcp_listeners_use_mptcp_when_the_kernel_has_it() {
        let mut t = listener();
        let mut n = Fallbacks::default();
        for (mptcp, want) in [
            (Mptcp::Off, StreamProto::Tcp),
            (Mptcp::Preferred, StreamProto::Mptcp),
            (Mptcp::Required, StreamProto::Mptcp),
        ] {
            t.mptcp = mptcp;
            let how = listen_socket_probed(&t, &mut n, kernel_with_mptcp).unwrap();
            assert_eq!(how.proto, want, "{mptcp:?}");
            assert_eq!(how.capture, Capture::Own);
        }
        assert_eq!(n, Fallbacks(0));
    }

    #[test]
    fn preferred_falls_back_to_tcp_and_counts() {
        let mut t = listener();
        t.mptcp = Mptcp::Preferred;
        let mut n = Fallbacks::default();
        let how = listen_socket_probed(&t, &mut n, kernel_without_mptcp).unwrap();
        assert_eq!(how.proto, StreamProto::Tcp);
        assert_eq!(n, Fallbacks(1));
        // Off never probes, never counts.
        t.mptcp = Mptcp::Off;
        listen_socket_probed(&t, &mut n, kernel_without_mptcp).unwrap();
        assert_eq!(n, Fallbacks(1));
    }

    #[test]
    fn required_refuses_naming_listener_key_and_sysctl() {
        let mut t = listener();
        t.mptcp = Mptcp::Required;
        let mut n = Fallbacks::default();
        let e = listen_socket_probed(&t, &mut n, kernel_without_mptcp)
            .unwrap_err()
            .to_string();
        for part in [
            "'web'",
            "mptcp = \"required\"",
            "net.mptcp.enabled",
            "preferred",
        ] {
            assert!(e.contains(part), "{part} missing from: {e}");
        }
        assert_eq!(n, Fallbacks(0));
    }

    #[test]
    fn upstream_mptcp_falls_back_to_tcp_and_counts() {
        let mut t = listener();
        let mut n = Fallbacks::default();
        assert_eq!(
            upstream_proto_probed(&t, &mut n, kernel_with_mptcp),
            StreamProto::Tcp
        );
        t.upstream_mptcp = true;
        assert_eq!(
            upstream_proto_probed(&t, &mut n, kernel_with_mptcp),
            StreamProto::Mptcp
        );
        assert_eq!(n, Fallbacks(0));
        assert_eq!(
            upstream_proto_probed(&t, &mut n, kernel_without_mptcp),
            StreamProto::Tcp
        );
        assert_eq!(n, Fallbacks(1));
    }

    #[test]
    fn tproxy_listeners_capture() {
        let mut t = listener();
        let policy = DestinationPolicy {
            allow: Vec::new(),
            deny: Vec::new(),
            ports: Vec::new(),
        };
        for (mode, want) in [
            (TransparentMode::Tproxy, Capture::Tproxy),
            (TransparentMode::Redirect, Capture::Own),
        ] {
            t.kind = TcpKind::Transparent(TransparentPlan {
                mode,
                policy: policy.clone(),
            });
            let how = listen_socket_probed(&t, &mut Fallbacks::default(), kernel_with_mptcp);
            assert_eq!(how.unwrap().capture, want, "{mode:?}");
        }
    }

    /// The whole start in a network namespace whose kernel makes no MPTCP
    /// socket (net.mptcp.enabled = 0 there): `"preferred"` and
    /// `upstream_mptcp` start on TCP, each counted once in
    /// `mptcp_fallback`; `"required"` refuses to start, naming the
    /// listener, the key and the sysctl.
    #[test]
    fn a_kernel_without_mptcp_falls_back_or_refuses() {
        use crate::runtime::Runtime;
        use crate::stats::Counter;
        let got = crate::sys::testns::in_own_netns(
            &[&["sysctl", "-qw", "net.mptcp.enabled=0"]],
            || {
                let mut t = listener();
                t.upstreams.truncate(1);
                let toml = "[runtime]\nshards = 1\n[[tcp]]\nname = \"web\"\nlisten = \"127.0.0.1:0\"\nupstreams = [\"127.0.0.1:9\"]\nmax_connections = 16\n";
                let host = HostFacts {
                    available_cpus: vec![0],
                };
                let mut plan =
                    Plan::resolve(Some(("t.toml", toml)), &Overrides::default(), &host).unwrap();
                plan.tcp[0].mptcp = Mptcp::Preferred;
                plan.tcp[0].upstream_mptcp = true;
                let rt = Runtime::start(&plan).map_err(|e| e.to_string());
                let fallbacks = rt.map(|rt| rt.shutdown().get(Counter::MptcpFallback));
                plan.tcp[0].mptcp = Mptcp::Required;
                let refused = Runtime::start(&plan).err().map(|e| e.to_string());
                (fallbacks, refused)
            },
        );
        let Some((fallbacks, refused)) = got else {
            return;
        };
        assert_eq!(
            fallbacks,
            Ok(2),
            "one for the listener, one for its upstreams"
        );
        let refused = refused.expect("mptcp = \"required\" started without MPTCP");
        for part in ["'web'", "mptcp = \"required\"", "net.mptcp.enabled"] {
            assert!(refused.contains(part), "{part} missing from: {refused}");
        }
    }

    #[test]
    fn families_probe_each_family_once() {
        let a: SocketAddr = "10.0.0.1:80".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:80".parse().unwrap();
        let c: SocketAddr = "[::1]:80".parse().unwrap();
        assert_eq!(families(&[]).len(), 1);
        assert_eq!(families(&[a, b]).len(), 1);
        assert!(families(&[c]).iter().all(SocketAddr::is_ipv6));
        assert_eq!(families(&[a, c]).len(), 2);
    }
}
