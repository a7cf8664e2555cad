//! Whether a slot range is free on this host: two pools with overlapping ranges (or a range
//! overlapping one of the host's networks) would route each other's addresses, so starting a
//! pool on a range that an interface not of its own instance already uses is refused.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};

use futures::TryStreamExt;
use rtnetlink::RouteMessageBuilder;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::LinkAttribute;
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteType};

use super::NetError;
use super::addr::Ipv4Net;
use super::slot::{block_on, connect};

/// An IPv4 network the host uses on an interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct HostNet {
    /// The interface's name (or `#<index>` when it has none we could read).
    pub interface: String,
    /// The network: an address's subnet, or a route's destination.
    pub net: Ipv4Net,
    /// The address itself (for a route, the destination's network address).
    pub ip: Ipv4Addr,
    /// Whether it is an address (else a route).
    pub address: bool,
}

/// The first entry of `host` that overlaps `range` and is on an interface `ours` does not
/// claim. An address conflicts when its subnet and the range overlap at all (the host's own
/// network inside or around the range); a route only when it lies inside the range (a default
/// route, or a VPN's `0.0.0.0/1`, contains every range and is no conflict).
pub(crate) fn first_conflict(
    range: Ipv4Net,
    host: &[HostNet],
    ours: impl Fn(&str) -> bool,
) -> Option<&HostNet> {
    host.iter().filter(|h| !ours(&h.interface)).find(|h| {
        let inside = h.net.prefix_len() >= range.prefix_len() && range.contains(h.net.network());
        let around = h.net.prefix_len() <= range.prefix_len() && h.net.contains(range.network());
        inside || (h.address && around)
    })
}

/// Fails with [`NetError::RangeOverlap`] when an interface `ours` does not claim has an
/// address or route overlapping `range`. Blocking: call it on a thread in the host namespace.
pub(crate) fn check_range_free(
    range: Ipv4Net,
    ours: impl Fn(&str) -> bool,
) -> Result<(), NetError> {
    let host = block_on(host_networks())?;
    match first_conflict(range, &host, ours) {
        None => Ok(()),
        Some(h) => Err(NetError::RangeOverlap {
            range: range.to_string(),
            interface: h.interface.clone(),
            what: format!(
                "{} {}/{}",
                if h.address { "address" } else { "route" },
                h.ip,
                h.net.prefix_len()
            ),
        }),
    }
}

fn dump_err(step: &'static str) -> impl Fn(rtnetlink::Error) -> NetError {
    move |source| NetError::Netlink {
        step,
        interface: "all interfaces".into(),
        netns: None,
        source: Box::new(source),
    }
}

/// The host namespace's IPv4 addresses and unicast routes (any table), by interface name.
async fn host_networks() -> Result<Vec<HostNet>, NetError> {
    let handle = connect(None)?;
    let mut names = HashMap::new();
    let mut links = handle.link().get().execute();
    while let Some(link) = links.try_next().await.map_err(dump_err("list links of"))? {
        for attr in link.attributes {
            if let LinkAttribute::IfName(name) = attr {
                names.insert(link.header.index, name);
            }
        }
    }
    let name = |index: u32| {
        names
            .get(&index)
            .cloned()
            .unwrap_or_else(|| format!("#{index}"))
    };
    let mut out = Vec::new();
    let mut addresses = handle.address().get().execute();
    while let Some(msg) = addresses
        .try_next()
        .await
        .map_err(dump_err("list addresses of"))?
    {
        if msg.header.family != AddressFamily::Inet {
            continue;
        }
        let local = msg.attributes.iter().find_map(|a| match a {
            AddressAttribute::Local(IpAddr::V4(ip)) => Some(*ip),
            _ => None,
        });
        let address = local.or_else(|| {
            msg.attributes.iter().find_map(|a| match a {
                AddressAttribute::Address(IpAddr::V4(ip)) => Some(*ip),
                _ => None,
            })
        });
        if let Some(ip) = address
            && let Some(net) = network_of(ip, msg.header.prefix_len)
        {
            out.push(HostNet {
                interface: name(msg.header.index),
                net,
                ip,
                address: true,
            });
        }
    }
    let mut routes = handle
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute();
    while let Some(msg) = routes
        .try_next()
        .await
        .map_err(dump_err("list routes of"))?
    {
        if msg.header.address_family != AddressFamily::Inet || msg.header.kind != RouteType::Unicast
        {
            continue;
        }
        let mut destination = Ipv4Addr::UNSPECIFIED;
        let mut oif = None;
        for attr in &msg.attributes {
            match attr {
                RouteAttribute::Destination(RouteAddress::Inet(ip)) => destination = *ip,
                RouteAttribute::Oif(index) => oif = Some(*index),
                _ => {}
            }
        }
        // Routes through no single interface (multipath, say) are left to the addresses.
        if let Some(oif) = oif
            && let Some(net) = network_of(destination, msg.header.destination_prefix_length)
        {
            out.push(HostNet {
                interface: name(oif),
                ip: net.network(),
                net,
                address: false,
            });
        }
    }
    Ok(out)
}

/// The network of `ip` at `prefix_len`.
fn network_of(ip: Ipv4Addr, prefix_len: u8) -> Option<Ipv4Net> {
    if prefix_len > 32 {
        return None;
    }
    let mask = if prefix_len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix_len))
    };
    Ipv4Net::new(Ipv4Addr::from(u32::from(ip) & mask), prefix_len).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(interface: &str, cidr: &str, address: bool) -> HostNet {
        let (ip, len) = cidr.split_once('/').unwrap();
        let ip = ip.parse().unwrap();
        HostNet {
            interface: interface.into(),
            net: network_of(ip, len.parse().unwrap()).unwrap(),
            ip,
            address,
        }
    }

    #[test]
    fn conflicts_are_overlaps_on_interfaces_not_ours() {
        let range: Ipv4Net = "10.200.0.0/16".parse().unwrap();
        let ours = |name: &str| name.starts_with("fkaaaaah");
        let host = [
            net("eth0", "192.0.2.2/24", true),
            net("eth0", "0.0.0.0/0", false),
            net("tun0", "0.0.0.0/1", false),
            net("fkaaaaah0", "10.200.0.1/30", true),
            net("fkaaaaah0", "10.200.0.0/30", false),
        ];
        assert_eq!(first_conflict(range, &host, ours), None);
        // Another pool's slot inside the range, by address or by route.
        let other = [net("fkbbbbbh3", "10.200.0.13/30", true)];
        assert_eq!(first_conflict(range, &other, ours), Some(&other[0]));
        let other = [net("fkbbbbbh3", "10.200.0.12/30", false)];
        assert_eq!(first_conflict(range, &other, ours), Some(&other[0]));
        // The host's own network around the range, or a /32 inside it.
        let lan = [net("eth1", "10.0.0.7/8", true)];
        assert_eq!(first_conflict(range, &lan, ours), Some(&lan[0]));
        let vip = [net("lo", "10.200.9.9/32", true)];
        assert_eq!(first_conflict(range, &vip, ours), Some(&vip[0]));
        // Beside the range: no conflict.
        let beside = [
            net("fkbbbbbh0", "10.201.0.1/30", true),
            net("eth1", "10.201.0.0/16", false),
        ];
        assert_eq!(first_conflict(range, &beside, ours), None);
    }

    #[test]
    fn networks_drop_host_bits() {
        assert_eq!(
            network_of("10.200.0.5".parse().unwrap(), 30)
                .unwrap()
                .to_string(),
            "10.200.0.4/30"
        );
        assert_eq!(
            network_of("1.2.3.4".parse().unwrap(), 0)
                .unwrap()
                .to_string(),
            "0.0.0.0/0"
        );
        assert!(network_of(Ipv4Addr::LOCALHOST, 33).is_none());
    }
}
