//! The nftables layout of the slots: generated as text (pure, tested without root) and
//! applied atomically with `nft -f -`.
//!
//! One table, `inet firkin`, with three base chains, one helper chain and no per-slot rules:
//!
//! - `input` (filter, priority `filter - 10`): traffic from any `fkh*` veth to any address of
//!   the host (the slot's gateway, other slots' gateways, the host's own addresses, and so
//!   on) is rejected unless it belongs to a connection the host opened (`ct state
//!   established,related`): the daemon connects into sandboxes, sandboxes never connect out
//!   to the host. Loopback (`127.0.0.0/8`) is unreachable anyway: the kernel drops
//!   loopback destinations arriving on a non-loopback interface, and this rule covers the rest.
//! - `forward` (filter, priority `filter - 10`): replies into a slot pass; traffic *from* a
//!   slot to link-local `169.254.0.0/16` (cloud metadata) or to the slot range (other slots)
//!   is rejected, as is IPv6; anything else heading *into* a slot is dropped (the outside
//!   opening connections); what remains from a slot is accepted only when its host-side
//!   veth is in the link group [`EGRESS_GROUP`]; everything else from `fkh*` is rejected.
//! - `refuse` (a regular chain, where every rejection goes): a TCP reset for TCP, ICMP
//!   admin-prohibited otherwise, so a sandbox's connection attempt fails at once instead of
//!   hanging. TCP gets a reset because the kernel rate-limits ICMP errors per destination.
//! - `postrouting` (nat): traffic from the slot range leaving through a non-slot interface is
//!   masqueraded.
//!
//! # Why a link group, not per-slot rules
//!
//! A slot's egress switch is the *link group* of its host-side veth (`ip link set fkh<n>
//! group 0x66726b6e`), set over netlink with the other link attributes. The first design kept
//! a set of interface names in the table; adding an element cost ~1 ms (an `nft` run), but
//! deleting one cost 10–20 ms (the kernel waits for an RCU grace period on commit), on every
//! sandbox delete. With the group, the per-slot state lives on the interface and disappears
//! with it: nothing per slot to add, remove, reclaim or leak in nftables, and changing egress
//! is one netlink message. The sandbox cannot change the group: the host-side veth is in the
//! host's namespace, where it has no capabilities. Any interface not in the group is blocked
//! (fail closed).
//!
//! These chains only ever match `fkh*` interfaces or the slot range, so they leave the host's
//! other traffic alone; another table's `drop` (a Docker `FORWARD` policy, say) still applies
//! to forwarded slot traffic, since every base chain must accept a packet.

use std::io::Write;
use std::process::{Command, Stdio};

use super::NetError;
use super::addr::{HOST_IF_PREFIX, Ipv4Net};

/// The nftables table firkin owns (`inet` family).
pub const TABLE: &str = "firkin";

/// Link group of host-side veths whose slots may reach the outside ("frkn" in ASCII).
pub const EGRESS_GROUP: u32 = 0x6672_6b6e;

/// The metadata/link-local range that is always blocked.
pub const LINK_LOCAL: &str = "169.254.0.0/16";

/// The whole table for `range`: creates what is missing and rewrites the chains' rules.
/// Atomic, and harmless to live slots (their egress switch is on their interface).
pub fn table_ruleset(range: Ipv4Net) -> String {
    let t = format!("inet {TABLE}");
    let any = format!("\"{HOST_IF_PREFIX}*\"");
    let reject = "counter goto refuse";
    let mut s = String::new();
    let mut line = |l: String| {
        s.push_str(&l);
        s.push('\n');
    };
    line(format!("add table {t}"));
    // Rejections: a TCP reset for TCP (not rate-limited, unlike ICMP errors, which the kernel
    // limits to a burst of 6 per destination and second: a sandbox retrying would otherwise
    // see timeouts), ICMP admin-prohibited for the rest.
    line(format!("add chain {t} refuse"));
    line(format!("flush chain {t} refuse"));
    line(format!(
        "add rule {t} refuse meta l4proto tcp reject with tcp reset"
    ));
    line(format!(
        "add rule {t} refuse reject with icmpx admin-prohibited"
    ));
    for (chain, spec) in [
        (
            "input",
            "type filter hook input priority filter - 10; policy accept;",
        ),
        (
            "forward",
            "type filter hook forward priority filter - 10; policy accept;",
        ),
        (
            "postrouting",
            "type nat hook postrouting priority srcnat + 10; policy accept;",
        ),
    ] {
        line(format!("add chain {t} {chain} {{ {spec} }}"));
        line(format!("flush chain {t} {chain}"));
    }
    // Sandbox -> host: only replies to connections the host opened.
    line(format!(
        "add rule {t} input iifname {any} ct state established,related accept"
    ));
    line(format!(
        "add rule {t} input iifname {any} {reject} comment \"sandbox to host\""
    ));
    // Replies into a slot pass; new connections from a slot to blocked destinations are
    // rejected (fast failure for the sandbox, slot to slot included) before the silent drop
    // of anything else heading into a slot (the outside world opening connections).
    line(format!(
        "add rule {t} forward oifname {any} ct state established,related accept"
    ));
    line(format!(
        "add rule {t} forward iifname {any} ip daddr {LINK_LOCAL} {reject} comment \"link-local and metadata\""
    ));
    line(format!(
        "add rule {t} forward iifname {any} ip daddr {range} {reject} comment \"slot range\""
    ));
    line(format!(
        "add rule {t} forward iifname {any} meta nfproto ipv6 {reject}"
    ));
    line(format!(
        "add rule {t} forward oifname {any} counter drop comment \"into a slot\""
    ));
    line(format!(
        "add rule {t} forward iifname {any} iifgroup {EGRESS_GROUP:#x} ip saddr {range} accept comment \"egress allowed\""
    ));
    line(format!(
        "add rule {t} forward iifname {any} {reject} comment \"egress blocked\""
    ));
    line(format!(
        "add rule {t} postrouting ip saddr {range} oifname != {any} masquerade comment \"slot NAT\""
    ));
    s
}

/// Runs `nft -f -` with `ruleset` on stdin: the whole text is one transaction.
pub fn apply(ruleset: &str) -> Result<(), NetError> {
    let spawn_err = |source| NetError::NftSpawn { source };
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(spawn_err)?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(ruleset.as_bytes()).map_err(spawn_err)?;
    }
    let out = child.wait_with_output().map_err(spawn_err)?;
    if out.status.success() {
        Ok(())
    } else {
        Err(NetError::Nft {
            ruleset: ruleset.to_owned(),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_blocks_host_metadata_and_range_for_every_slot() {
        let text = table_ruleset("10.200.0.0/16".parse().unwrap());
        let has = |needle: &str| {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        };
        has("add table inet firkin\n");
        has("flush chain inet firkin forward\n");
        has("add rule inet firkin input iifname \"fkh*\" ct state established,related accept\n");
        has("input iifname \"fkh*\" counter goto refuse");
        has("forward iifname \"fkh*\" ip daddr 169.254.0.0/16 counter goto refuse");
        has("forward iifname \"fkh*\" ip daddr 10.200.0.0/16 counter goto refuse");
        has("add rule inet firkin refuse meta l4proto tcp reject with tcp reset\n");
        has("forward oifname \"fkh*\" counter drop");
        has("forward iifname \"fkh*\" iifgroup 0x66726b6e ip saddr 10.200.0.0/16 accept");
        has("postrouting ip saddr 10.200.0.0/16 oifname != \"fkh*\" masquerade");
        // Blocked destinations come before the egress switch, the catch-all after it.
        let pos = |n: &str| text.find(n).unwrap();
        assert!(pos("169.254.0.0/16") < pos("iifgroup"));
        assert!(pos("daddr 10.200.0.0/16") < pos("into a slot"));
        assert!(pos("iifgroup") < pos("egress blocked"));
        // The target chain exists before the first rule that jumps to it.
        assert!(pos("add chain inet firkin refuse") < pos("goto refuse"));
    }
}
