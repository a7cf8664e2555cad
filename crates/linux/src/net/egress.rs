//! Which destinations outside the host a slot with egress may reach: everything but the
//! private ranges, minus what the operator opts back in.
//!
//! Denied by default ([`PRIVATE_RANGES`]): RFC 1918 (`10.0.0.0/8`, `172.16.0.0/12`,
//! `192.168.0.0/16`) and carrier-grade NAT (`100.64.0.0/10`): a host's LAN, VPNs, cloud VPCs
//! and other tenants' services live there, and a sandbox running untrusted code has no
//! business scanning them. IPv6 (ULA `fc00::/7` and link-local `fe80::/10` included) is
//! refused as a whole, and link-local `169.254.0.0/16` (cloud metadata) can never be opted in.
//!
//! An operator opts ranges back in with [`super::NetConfig::egress_allow_private`] (`firkin
//! serve --egress-allow-private`): each must lie inside one of the private ranges (anything
//! else is reachable already, so naming it is a mistake worth an error). The host, the
//! instance's own slot range and other pools' slots stay refused even when an opted-in range
//! covers them: those rules come first in [`super::nft`].

use super::{Ipv4Net, NetError};

/// The ranges a slot never reaches unless opted in: RFC 1918 and carrier-grade NAT.
pub const PRIVATE_RANGES: [&str; 4] = [
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
];

/// The private ranges as networks.
pub fn private_ranges() -> Vec<Ipv4Net> {
    PRIVATE_RANGES
        .iter()
        .map(|r| r.parse().expect("the private ranges are valid networks"))
        .collect()
}

/// Whether `inner` lies wholly inside `outer`.
fn within(inner: Ipv4Net, outer: Ipv4Net) -> bool {
    inner.prefix_len() >= outer.prefix_len() && outer.contains(inner.network())
}

/// Checks one opt-in: it must lie inside a private range.
pub fn check_opt_in(net: Ipv4Net) -> Result<(), NetError> {
    if private_ranges().into_iter().any(|p| within(net, p)) {
        return Ok(());
    }
    Err(NetError::InvalidConfig {
        reason: format!(
            "egress-allow-private {net} is not inside a private range ({}): sandboxes with \
             internet access reach it already, and link-local 169.254.0.0/16 is never allowed",
            PRIVATE_RANGES.join(", ")
        ),
    })
}

/// Parses and checks one opt-in, as `a.b.c.d/len` (for the command line and config file).
pub fn parse_opt_in(text: &str) -> Result<Ipv4Net, NetError> {
    // Ipv4Net's own error speaks of the slot range; this one names the setting.
    let net: Ipv4Net = text.trim().parse().map_err(|e| match e {
        NetError::InvalidRange { reason, .. } => NetError::InvalidConfig {
            reason: format!("egress-allow-private {text}: {reason}"),
        },
        other => other,
    })?;
    check_opt_in(net)?;
    Ok(net)
}

/// The opt-ins without duplicates or ranges inside others, sorted: CIDR blocks either nest
/// or are disjoint, so the result has no overlaps (an nftables interval set refuses them).
pub fn normalize(opt_ins: &[Ipv4Net]) -> Vec<Ipv4Net> {
    let mut kept: Vec<Ipv4Net> = Vec::new();
    let mut sorted = opt_ins.to_vec();
    // Widest first, so a range is seen after any range that contains it.
    sorted.sort_by_key(|n| (n.prefix_len(), u32::from(n.network())));
    for net in sorted {
        if !kept.iter().any(|k| within(net, *k)) {
            kept.push(net);
        }
    }
    kept.sort_by_key(|n| (u32::from(n.network()), n.prefix_len()));
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> Ipv4Net {
        s.parse().unwrap()
    }

    #[test]
    fn opt_ins_must_be_private() {
        for ok in [
            "10.0.0.0/8",
            "10.123.0.0/16",
            "172.16.0.0/12",
            "172.31.255.0/24",
            "192.168.77.0/24",
            "100.64.0.0/10",
            "100.127.0.1/32",
        ] {
            assert_eq!(parse_opt_in(ok).unwrap(), net(ok), "{ok}");
        }
        for bad in [
            "8.8.8.0/24",
            "172.32.0.0/16",
            "169.254.0.0/16",
            "0.0.0.0/0",
            "10.0.0.0/7",
        ] {
            let msg = parse_opt_in(bad).unwrap_err().to_string();
            assert!(
                msg.contains(bad) && msg.contains("not inside a private range"),
                "{msg}"
            );
        }
        // Malformed input names itself too.
        for bad in ["10.1.2.3/16", "fc00::/7", "192.168.1.0", "nonsense"] {
            let msg = parse_opt_in(bad).unwrap_err().to_string();
            assert!(
                msg.contains(&format!("egress-allow-private {bad}:")),
                "{msg}"
            );
        }
    }

    #[test]
    fn normalize_drops_duplicates_and_nested_ranges() {
        let given = [
            net("192.168.77.0/24"),
            net("10.1.0.0/16"),
            net("10.0.0.0/8"),
            net("192.168.77.0/24"),
            net("192.168.78.0/24"),
        ];
        assert_eq!(
            normalize(&given),
            vec![
                net("10.0.0.0/8"),
                net("192.168.77.0/24"),
                net("192.168.78.0/24")
            ]
        );
        assert!(normalize(&[]).is_empty());
    }
}
