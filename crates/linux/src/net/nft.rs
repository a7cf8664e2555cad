//! The nftables layout of the slots: generated as text (pure, tested without root) and
//! applied atomically with `nft -f -`.
//!
//! One table per pool instance, `inet firkin_<tag>` (see [`InstanceTag`]), with four base
//! chains, one helper chain, two sets and no per-slot rules. Every rule matches the instance's
//! own veths, `fk<tag>h*` ("own" below), or its own range, so the tables of two pools on one
//! host (each with a range of its own) never decide for each other's slots:
//!
//! - `input` (filter, priority `filter - 10`): traffic from an own veth to any address of
//!   the host (the slot's gateway, other slots' gateways, the host's own addresses, and so
//!   on) is rejected unless it belongs to a connection the host opened (`ct state
//!   established,related`): the daemon connects into sandboxes, sandboxes never connect out
//!   to the host. Loopback (`127.0.0.0/8`) is unreachable anyway: the kernel drops
//!   loopback destinations arriving on a non-loopback interface, and this rule covers the rest.
//! - `output` (filter, priority `filter - 10`): a packet the host sends out of an own veth
//!   (IPv6 link-local included) or to the slot range is rejected when its socket is not
//!   root's (`meta skuid != 0`): only the daemon, which runs as root, talks to sandboxes;
//!   other host accounts cannot reach envd or any sandbox port. See below for why. (IPv6
//!   link-local to a slot gets no answer even for root, since `input` refuses the sandbox's
//!   untracked neighbour advertisements; the veth match refuses it at once all the same.)
//! - `forward` (filter, priority `filter - 10`): replies into an own slot pass; traffic *from*
//!   an own slot to link-local `169.254.0.0/16` (cloud metadata), to the slot range (other
//!   slots) or out of any firkin veth (`fk*`: another instance's slots) is rejected, as is
//!   IPv6, and so is traffic from any firkin veth into an own slot (both tables of two pools
//!   see slot-to-slot traffic between them, in no set order, and either rejects it); then
//!   traffic to the set `private` (RFC 1918 and CGNAT, [`egress::PRIVATE_RANGES`]) not in
//!   the set `private_allowed` (the operator's opt-ins) is rejected; anything else heading
//!   *into* an own slot is dropped (the outside opening connections); what remains from an
//!   own slot is accepted only when its host-side veth is in the link group
//!   [`EGRESS_GROUP`]; everything else from own veths is rejected.
//! - `refuse` (a regular chain, where every rejection goes): a TCP reset for TCP, ICMP
//!   admin-prohibited otherwise, so a connection attempt fails at once instead of hanging.
//!   TCP gets a reset because the kernel rate-limits ICMP errors per destination.
//! - `postrouting` (nat): traffic from the slot range leaving through a non-own interface is
//!   masqueraded.
//!
//! The table is written at [`super::SlotPool::start`] and deleted at
//! [`super::SlotPool::shutdown`] when no slot is handed out any more (sandboxes outlive the
//! daemon, and must stay fenced until the next daemon of the same instance takes over).
//!
//! # Why the socket's owner, and no `ct state` exception on the way out
//!
//! The threat is another, unprivileged account on the host. Root is the operator: it can
//! enter any sandbox's namespaces anyway, so a narrower mark (an `SO_MARK` on the daemon's
//! sockets) would add nothing against it and would have to be set by every connector.
//! `meta skuid` is the owner of the socket's file (its opener's fsuid; a user namespace does
//! not change it in the host's namespace). Packets without a socket, or whose socket has no
//! file (the kernel's own control sockets), never match (the expression fails, so the rule
//! does not apply): the resets and ICMP errors the kernel sends, including this table's own
//! rejections of a sandbox's attempts, pass. Forwarded traffic
//! never crosses `output`. The chain accepts no `ct state established,related` first, on
//! purpose: a host account could only hold a connection with a slot that the slot opened,
//! and `input` rejects every connection a slot opens to the host, so there is no flow such
//! an exception would serve; without it, every packet with a socket is judged by its owner,
//! whatever conntrack thinks of it.
//!
//! # Private ranges and opt-ins
//!
//! See [`egress`]. The sets are interval sets, flushed and refilled on every write of the
//! table, so a restarted daemon applies a changed opt-in list to the live slots as well. The
//! rule comes after the slot-range and other-pool rules, so an opt-in that covers the slots
//! (`10.0.0.0/8` covers the default range) never opens them; the host is refused in `input`,
//! which no opt-in touches.
//!
//! # Why a link group, not per-slot rules
//!
//! A slot's egress switch is the *link group* of its host-side veth (`ip link set fk<tag>h<n>
//! group 0x66726b6e`), set over netlink with the other link attributes. The first design kept
//! a set of interface names in the table; adding an element cost ~1 ms (an `nft` run), but
//! deleting one cost 10–20 ms (the kernel waits for an RCU grace period on commit), on every
//! sandbox delete. With the group, the per-slot state lives on the interface and disappears
//! with it: nothing per slot to add, remove, reclaim or leak in nftables, and changing egress
//! is one netlink message. The sandbox cannot change the group: the host-side veth is in the
//! host's namespace, where it has no capabilities. Any interface not in the group is blocked
//! (fail closed). The group number is the same for every instance (groups are host-wide);
//! each table matches it only together with its own `iifname "fk<tag>h*"`, so an instance's
//! rule never accepts another's traffic.
//!
//! These chains only ever match firkin interfaces or the slot range, so they leave the host's
//! other traffic alone; another table's `drop` (a Docker `FORWARD` policy, say) still applies
//! to forwarded slot traffic, since every base chain must accept a packet.

use std::io::Write;
use std::process::{Command, Stdio};

use super::addr::{HOST_IF_PREFIX, InstanceTag, Ipv4Net};
use super::{NetError, egress};

/// What the name of every firkin table starts with (`inet` family): `firkin_<tag>`.
pub const TABLE_PREFIX: &str = "firkin_";

/// The nftables table of instance `tag` (`inet` family): `firkin_<tag>`.
pub fn table_name(tag: InstanceTag) -> String {
    format!("{TABLE_PREFIX}{tag}")
}

/// Link group of host-side veths whose slots may reach the outside ("frkn" in ASCII).
pub const EGRESS_GROUP: u32 = 0x6672_6b6e;

/// The metadata/link-local range that is always blocked.
pub const LINK_LOCAL: &str = "169.254.0.0/16";

/// The set of destinations refused to every slot unless opted in ([`egress::PRIVATE_RANGES`]).
pub const PRIVATE_SET: &str = "private";

/// The set of the operator's opt-ins ([`super::NetConfig::egress_allow_private`]).
pub const ALLOWED_SET: &str = "private_allowed";

/// The whole table of instance `tag` for `range`, with the private ranges `allow_private`
/// opted in: creates what is missing and rewrites the chains' rules and the sets' elements.
/// Atomic, and harmless to live slots (their egress switch is on their interface).
pub fn table_ruleset(range: Ipv4Net, tag: InstanceTag, allow_private: &[Ipv4Net]) -> String {
    let t = format!("inet {}", table_name(tag));
    let any = format!("\"{}*\"", tag.host_if_prefix());
    let firkin = format!("\"{HOST_IF_PREFIX}*\"");
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
    // Interval sets: the private ranges, and the operator's opt-ins (flushed and refilled,
    // so a restarted daemon applies its new list to the live slots too).
    let allowed = egress::normalize(allow_private);
    for (set, elements) in [
        (PRIVATE_SET, egress::private_ranges()),
        (ALLOWED_SET, allowed),
    ] {
        line(format!(
            "add set {t} {set} {{ type ipv4_addr; flags interval; }}"
        ));
        line(format!("flush set {t} {set}"));
        if !elements.is_empty() {
            let list: Vec<String> = elements.iter().map(Ipv4Net::to_string).collect();
            line(format!("add element {t} {set} {{ {} }}", list.join(", ")));
        }
    }
    for (chain, spec) in [
        (
            "input",
            "type filter hook input priority filter - 10; policy accept;",
        ),
        (
            "output",
            "type filter hook output priority filter - 10; policy accept;",
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
    // Host -> sandbox: only from root's sockets (the daemon). No `ct state` exception: no
    // connection with a slot can exist that a host user's socket may use (see the module doc).
    line(format!(
        "add rule {t} output oifname {any} meta skuid != 0 {reject} comment \"host user to a slot\""
    ));
    line(format!(
        "add rule {t} output ip daddr {range} meta skuid != 0 {reject} comment \"host user to the slot range\""
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
        "add rule {t} forward iifname {any} oifname {firkin} {reject} comment \"to another pool's slot\""
    ));
    // After the slot rules, so an opt-in never opens the slots, and before the egress switch.
    line(format!(
        "add rule {t} forward iifname {any} ip daddr @{PRIVATE_SET} ip daddr != @{ALLOWED_SET} {reject} comment \"private ranges\""
    ));
    // The same traffic seen from the other side: the tables of two pools hook in at the same
    // priority in no set order, so each rejects both directions before its silent drop.
    line(format!(
        "add rule {t} forward iifname {firkin} oifname {any} {reject} comment \"from another pool's slot\""
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

/// Deletes the table of instance `tag`; a missing table counts as deleted (the `add` makes
/// the transaction valid either way).
pub fn delete_ruleset(tag: InstanceTag) -> String {
    let t = format!("inet {}", table_name(tag));
    format!("add table {t}\ndelete table {t}\n")
}

/// Whether the table of instance `tag` exists. `Ok(false)` when `nft` is not installed
/// (then nothing can have made the table).
pub fn table_exists(tag: InstanceTag) -> Result<bool, NetError> {
    let out = match Command::new("nft")
        .args(["list", "tables", "inet"])
        .output()
    {
        Ok(out) => out,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(source) => return Err(NetError::NftSpawn { source }),
    };
    if !out.status.success() {
        return Err(NetError::Nft {
            ruleset: "list tables inet".into(),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
        });
    }
    let name = table_name(tag);
    Ok(String::from_utf8_lossy(&out.stdout).lines().any(|l| {
        let mut words = l.split_whitespace();
        words.next() == Some("table")
            && words.next() == Some("inet")
            && words.next() == Some(name.as_str())
    }))
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
        let tag = InstanceTag::of_dir(std::path::Path::new("/run/firkin/netns"));
        assert_eq!(tag.to_string(), "51a73");
        let text = table_ruleset("10.200.0.0/16".parse().unwrap(), tag, &[]);
        let has = |needle: &str| {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        };
        has("add table inet firkin_51a73\n");
        has("flush chain inet firkin_51a73 forward\n");
        has(
            "add rule inet firkin_51a73 input iifname \"fk51a73h*\" ct state established,related accept\n",
        );
        has("input iifname \"fk51a73h*\" counter goto refuse");
        has("forward iifname \"fk51a73h*\" ip daddr 169.254.0.0/16 counter goto refuse");
        has("forward iifname \"fk51a73h*\" ip daddr 10.200.0.0/16 counter goto refuse");
        has("forward iifname \"fk51a73h*\" oifname \"fk*\" counter goto refuse");
        has("add rule inet firkin_51a73 refuse meta l4proto tcp reject with tcp reset\n");
        has("forward oifname \"fk51a73h*\" counter drop");
        has("forward iifname \"fk51a73h*\" iifgroup 0x66726b6e ip saddr 10.200.0.0/16 accept");
        has("postrouting ip saddr 10.200.0.0/16 oifname != \"fk51a73h*\" masquerade");
        // Blocked destinations come before the egress switch, the catch-all after it.
        let pos = |n: &str| text.find(n).unwrap();
        assert!(pos("169.254.0.0/16") < pos("iifgroup"));
        assert!(pos("daddr 10.200.0.0/16") < pos("into a slot"));
        assert!(pos("to another pool's slot") < pos("into a slot"));
        assert!(pos("from another pool's slot") < pos("into a slot"));
        has("forward iifname \"fk*\" oifname \"fk51a73h*\" counter goto refuse");
        assert!(pos("iifgroup") < pos("egress blocked"));
        // The target chain exists before the first rule that jumps to it.
        assert!(pos("add chain inet firkin_51a73 refuse") < pos("goto refuse"));
    }

    #[test]
    fn every_rule_names_its_own_instance() {
        let a = InstanceTag::of_dir(std::path::Path::new("/a/netns"));
        let b = InstanceTag::of_dir(std::path::Path::new("/b/netns"));
        let text = table_ruleset(
            "10.9.0.0/24".parse().unwrap(),
            a,
            &["192.168.0.0/24".parse().unwrap()],
        );
        for rule in text.lines().filter(|l| l.starts_with("add rule")) {
            assert!(rule.contains(&format!("inet firkin_{a} ")), "{rule}");
            assert!(!rule.contains(&b.to_string()), "{rule}");
            let own = rule.contains(&format!("\"fk{a}h*\"")) || rule.contains("10.9.0.0/24");
            let refuse = rule.contains(" refuse ");
            assert!(
                own || refuse,
                "a rule matching more than its instance: {rule}"
            );
            // The egress group is host-wide: it is matched with the own veths only.
            if rule.contains("iifgroup") {
                assert!(rule.contains(&format!("iifname \"fk{a}h*\"")), "{rule}");
            }
        }
        assert_eq!(
            delete_ruleset(a),
            format!("add table inet firkin_{a}\ndelete table inet firkin_{a}\n")
        );
    }

    #[test]
    fn host_users_are_refused_on_the_way_out_to_a_slot() {
        let tag = InstanceTag::of_dir(std::path::Path::new("/run/firkin/netns"));
        let text = table_ruleset("10.200.0.0/16".parse().unwrap(), tag, &[]);
        let has = |needle: &str| {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        };
        has(
            "add chain inet firkin_51a73 output { type filter hook output priority filter - 10; policy accept; }\n",
        );
        has("flush chain inet firkin_51a73 output\n");
        // Through an own veth (IPv6 link-local included) and to the range, sockets not root's.
        has(
            "add rule inet firkin_51a73 output oifname \"fk51a73h*\" meta skuid != 0 counter goto refuse",
        );
        has(
            "add rule inet firkin_51a73 output ip daddr 10.200.0.0/16 meta skuid != 0 counter goto refuse",
        );
        // No established/related exception in the output chain: every socket is judged.
        let output: Vec<&str> = text.lines().filter(|l| l.contains(" output ")).collect();
        assert!(output.iter().all(|l| !l.contains("ct state")), "{output:?}");
    }

    #[test]
    fn private_ranges_are_refused_unless_opted_in_after_the_slot_rules() {
        let tag = InstanceTag::of_dir(std::path::Path::new("/run/firkin/netns"));
        let opt_ins: Vec<Ipv4Net> = ["192.168.77.0/24", "10.0.0.0/8", "10.1.0.0/16"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let text = table_ruleset("10.200.0.0/16".parse().unwrap(), tag, &opt_ins);
        let has = |needle: &str| {
            assert!(text.contains(needle), "missing {needle:?} in\n{text}");
        };
        let t = "inet firkin_51a73";
        has(&format!(
            "add set {t} private {{ type ipv4_addr; flags interval; }}\nflush set {t} private\n"
        ));
        has(&format!(
            "add element {t} private {{ 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16, 100.64.0.0/10 }}\n"
        ));
        // Nested opt-ins are merged (an interval set refuses overlaps).
        has(&format!(
            "flush set {t} private_allowed\nadd element {t} private_allowed {{ 10.0.0.0/8, 192.168.77.0/24 }}\n"
        ));
        has(
            "forward iifname \"fk51a73h*\" ip daddr @private ip daddr != @private_allowed counter goto refuse",
        );
        let pos = |n: &str| text.find(n).unwrap();
        assert!(pos("add set") < pos("@private"), "sets before the rules");
        // An opt-in covering the slot range or another pool's slots does not open them.
        assert!(pos("comment \"slot range\"") < pos("@private"));
        assert!(pos("to another pool's slot") < pos("@private"));
        assert!(pos("@private") < pos("iifgroup"));
        // No opt-ins: the allowed set is emptied and gets no elements.
        let text = table_ruleset("10.200.0.0/16".parse().unwrap(), tag, &[]);
        assert!(text.contains(&format!("flush set {t} private_allowed\n")));
        assert!(!text.contains("add element inet firkin_51a73 private_allowed"));
    }
}
