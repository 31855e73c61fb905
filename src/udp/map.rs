//! Client address → session. The key is chosen by the peer (any source
//! address can be spoofed), so the map uses std's SipHash with per-process
//! random keys: an attacker cannot aim datagrams at one hash bucket.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};

/// What identifies a session: the client's address and, on a wildcard
/// listener, the local address it wrote to (replies must leave from that one,
/// so a client talking to two of the host's addresses has two sessions).
/// On a `transparent = "tproxy"` listener, the address and port the client
/// wrote to (IP_RECVORIGDSTADDR): that is where the session goes and where
/// its replies come from, so one client talking to two destinations has
/// two sessions.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SessionKey {
    pub client: SocketAddr,
    pub local: Option<IpAddr>,
    pub orig_dst: Option<SocketAddr>,
}

impl From<SocketAddr> for SessionKey {
    fn from(client: SocketAddr) -> SessionKey {
        SessionKey {
            client,
            local: None,
            orig_dst: None,
        }
    }
}

/// Client → its session's id (whatever id type the shard gives sessions).
#[derive(Debug)]
pub struct SessionMap<I> {
    map: HashMap<SessionKey, I>,
}

impl<I> Default for SessionMap<I> {
    fn default() -> Self {
        SessionMap {
            map: HashMap::new(),
        }
    }
}

impl<I: Copy + PartialEq> SessionMap<I> {
    pub fn get(&self, key: &SessionKey) -> Option<I> {
        self.map.get(key).copied()
    }

    pub fn insert(&mut self, key: SessionKey, slot: I) {
        self.map.insert(key, slot);
    }

    /// Removes `key` only if it still maps to `slot` (a newer session for
    /// the same client must not be unmapped by an old one ending).
    pub fn remove(&mut self, client: &SessionKey, slot: I) -> bool {
        if self.map.get(client) == Some(&slot) {
            self.map.remove(client);
            true
        } else {
            false
        }
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Any id type will do: a slot index with its generation.
    fn slot(index: u32, generation: u32) -> (u32, u32) {
        (index, generation)
    }

    #[test]
    fn an_old_session_does_not_unmap_a_newer_one() {
        let mut m = SessionMap::default();
        let c: SessionKey = "10.0.0.1:5000".parse::<SocketAddr>().expect("addr").into();
        m.insert(c, slot(1, 0));
        m.insert(c, slot(2, 0));
        assert!(!m.remove(&c, slot(1, 0)));
        assert_eq!(m.get(&c), Some(slot(2, 0)));
        assert!(m.remove(&c, slot(2, 0)));
        assert!(m.is_empty());
    }

    #[test]
    fn v4_and_v6_clients_are_distinct_keys() {
        let mut m = SessionMap::default();
        let a: SocketAddr = "127.0.0.1:1".parse().expect("addr");
        let b: SocketAddr = "[::ffff:127.0.0.1]:1".parse().expect("addr");
        m.insert(a.into(), slot(1, 0));
        m.insert(b.into(), slot(2, 0));
        assert_eq!(m.len(), 2);
        assert_eq!(m.get(&a.into()), Some(slot(1, 0)));
    }

    #[test]
    fn one_client_writing_to_two_local_addresses_has_two_sessions() {
        let mut m = SessionMap::default();
        let client: SocketAddr = "10.0.0.1:5000".parse().expect("addr");
        let to = |ip: &str| SessionKey {
            client,
            local: Some(ip.parse().expect("ip")),
            orig_dst: None,
        };
        m.insert(to("192.0.2.1"), slot(1, 0));
        m.insert(to("192.0.2.2"), slot(2, 0));
        assert_eq!(m.get(&to("192.0.2.1")), Some(slot(1, 0)));
        assert_eq!(m.get(&to("192.0.2.2")), Some(slot(2, 0)));
        assert_eq!(m.get(&client.into()), None);
    }

    #[test]
    fn one_client_writing_to_two_original_destinations_has_two_sessions() {
        let mut m = SessionMap::default();
        let client: SocketAddr = "10.231.1.2:5000".parse().expect("addr");
        let to = |dst: &str| SessionKey {
            client,
            local: None,
            orig_dst: Some(dst.parse().expect("addr")),
        };
        m.insert(to("10.231.2.2:53"), slot(1, 0));
        m.insert(to("10.231.2.2:54"), slot(2, 0));
        m.insert(to("10.231.2.3:53"), slot(3, 0));
        assert_eq!(m.len(), 3);
        assert_eq!(m.get(&to("10.231.2.2:53")), Some(slot(1, 0)));
        assert_eq!(m.get(&to("10.231.2.2:54")), Some(slot(2, 0)));
        assert_eq!(m.get(&to("10.231.2.3:53")), Some(slot(3, 0)));
        assert_eq!(m.get(&client.into()), None);
    }
}
