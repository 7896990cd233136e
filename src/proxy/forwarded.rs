//! The caller's address, as Flowise is told it (`X-Forwarded-For`): the connection's peer, or,
//! when the peer is a proxy flowgate trusts (`FLOWGATE_TRUSTED_PROXIES`: an ingress, a load
//! balancer), the address that proxy says it forwarded for. Flowise keys its own per-chatflow
//! rate limit and its logs by this address; behind an ingress every caller would otherwise be the
//! ingress.

use std::net::{IpAddr, SocketAddr};

use hyper::HeaderMap;
use ipnet::IpNet;

/// The address `peer`'s request came from: `X-Forwarded-For` read from the right, past every
/// address in `trusted`, when the peer itself is trusted. What a caller writes into the header
/// itself is left of its first untrusted hop and never read; an entry that is no address ends
/// the walk at the peer.
pub fn client(peer: SocketAddr, headers: &HeaderMap, trusted: &[IpNet]) -> SocketAddr {
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(&canonical(*ip)));
    if !is_trusted(&peer.ip()) {
        return peer;
    }
    // Several headers are one list, in order (RFC 9110 §5.3). Split as bytes: an entry that is
    // not text (a caller's, left of the proxy's) spoils only itself, and only if it is reached.
    let hops: Vec<&[u8]> = headers
        .get_all("x-forwarded-for")
        .iter()
        .flat_map(|value| value.as_bytes().split(|&b| b == b','))
        .map(<[u8]>::trim_ascii)
        .collect();
    let mut client = peer.ip();
    for hop in hops.iter().rev() {
        let Some(ip) = address(hop) else {
            return peer;
        };
        client = ip;
        if !is_trusted(&ip) {
            break;
        }
    }
    SocketAddr::new(canonical(client), peer.port())
}

/// An IPv4 address as a dual-stack listener reports it (`::ffff:10.0.0.1`) is the IPv4 address.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// One `X-Forwarded-For` entry: an address, maybe with a port (`1.2.3.4:5678`, `[::1]:80`).
fn address(hop: &[u8]) -> Option<IpAddr> {
    let hop = std::str::from_utf8(hop).ok()?;
    hop.parse::<IpAddr>()
        .ok()
        .or_else(|| hop.parse::<SocketAddr>().ok().map(|s| s.ip()))
}

/// `FLOWGATE_TRUSTED_PROXIES`: addresses and networks, comma-separated (`10.0.0.0/8,
/// 192.168.1.7`); a bare address is a network of one. Every address (`0.0.0.0/0`) is refused:
/// it would let every caller tell Flowise any address.
pub fn parse_trusted(list: &str) -> Result<Vec<IpNet>, String> {
    list.split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .map(|entry| {
            let net = entry
                .parse::<IpNet>()
                .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| {
                    format!("'{entry}' is neither an address nor a network (10.0.0.0/8)")
                })?;
            if net.prefix_len() == 0 {
                return Err(format!(
                    "'{entry}' trusts every address: every caller could name its own; name the \
                     proxies in front of flowgate"
                ));
            }
            Ok(net)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append("x-forwarded-for", value.parse().expect("a header value"));
        }
        headers
    }

    fn peer(ip: &str) -> SocketAddr {
        SocketAddr::new(ip.parse().expect("ip"), 40_000)
    }

    fn from(peer_ip: &str, values: &[&str], trusted: &str) -> String {
        let trusted = parse_trusted(trusted).expect("trusted");
        client(peer(peer_ip), &headers(values), &trusted)
            .ip()
            .to_string()
    }

    #[test]
    fn an_untrusted_peer_is_the_caller_whatever_it_says() {
        assert_eq!(from("203.0.113.9", &["1.1.1.1"], ""), "203.0.113.9");
        assert_eq!(
            from("203.0.113.9", &["1.1.1.1"], "10.0.0.0/8"),
            "203.0.113.9"
        );
    }

    #[test]
    fn a_trusted_peer_is_passed_for_the_first_untrusted_hop_from_the_right() {
        let trusted = "10.0.0.0/8, 192.168.1.7";
        assert_eq!(from("10.1.2.3", &["198.51.100.4"], trusted), "198.51.100.4");
        // What the caller wrote itself is left of its own address: never read.
        assert_eq!(
            from("10.1.2.3", &["6.6.6.6, 198.51.100.4, 192.168.1.7"], trusted),
            "198.51.100.4"
        );
        // Several headers are one list.
        assert_eq!(
            from("10.1.2.3", &["6.6.6.6", "198.51.100.4:5555"], trusted),
            "198.51.100.4"
        );
        // A dual-stack listener's form of an IPv4 peer.
        assert_eq!(
            from("::ffff:10.1.2.3", &["2001:db8::1"], trusted),
            "2001:db8::1"
        );
        // Only trusted hops: the farthest.
        assert_eq!(from("10.1.2.3", &["10.9.9.9"], trusted), "10.9.9.9");
        // No header: the proxy itself.
        assert_eq!(from("10.1.2.3", &[], trusted), "10.1.2.3");
        // An entry that is no address: the peer.
        assert_eq!(from("10.1.2.3", &["unknown"], trusted), "10.1.2.3");
        // One that is not text, left of the proxy's own entry, is never reached.
        let mut spoiled = HeaderMap::new();
        spoiled.append(
            "x-forwarded-for",
            hyper::header::HeaderValue::from_bytes(b"\xff, 198.51.100.4").expect("obs-text"),
        );
        let trusted = parse_trusted(trusted).expect("trusted");
        assert_eq!(
            client(peer("10.1.2.3"), &spoiled, &trusted)
                .ip()
                .to_string(),
            "198.51.100.4"
        );
    }

    #[test]
    fn the_list_takes_networks_and_addresses() {
        assert_eq!(parse_trusted("").expect("empty").len(), 0);
        assert_eq!(parse_trusted(" 10.0.0.0/8 ,::1").expect("two").len(), 2);
        let error = parse_trusted("10.0.0.0/33").expect_err("no such network");
        assert!(error.contains("10.0.0.0/33"), "{error}");
        for everyone in ["0.0.0.0/0", "::/0"] {
            let error = parse_trusted(everyone).expect_err("every address");
            assert!(error.contains("every address"), "{error}");
        }
    }
}
