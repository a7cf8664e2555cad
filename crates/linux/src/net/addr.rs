//! Address planning: the slot range and the per-slot /30 (pure values, no kernel).

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::NetError;

/// Prefix of every host-side veth firkin creates, whatever its instance (`fk<tag>h<index>`).
pub const HOST_IF_PREFIX: &str = "fk";

/// How many lowercase hex digits an [`InstanceTag`] has.
pub const TAG_LEN: usize = 5;

/// Name of the sandbox-side veth inside a slot's network namespace.
pub const SANDBOX_IF: &str = "eth0";

/// Prefix length of one slot's subnet: network, host (`.1`), sandbox (`.2`), broadcast.
pub const SLOT_PREFIX_LEN: u8 = 30;

/// Linux limit on interface names (`IFNAMSIZ` - 1).
const MAX_IF_NAME: usize = 15;

/// Digits left for the slot index in `fk<tag>h<index>`: 15 - 2 - 5 - 1 = 7.
const MAX_INDEX_DIGITS: usize = MAX_IF_NAME - HOST_IF_PREFIX.len() - TAG_LEN - 1;

/// The most slots a range may have so that every index fits in a veth name (10^7, so any
/// range of prefix length 7 or longer; `10.0.0.0/8` has 2^22).
pub const MAX_SLOTS: u32 = 10u32.pow(MAX_INDEX_DIGITS as u32);

/// Why a range with more than [`MAX_SLOTS`] slots is refused.
pub(crate) const TOO_MANY_SLOTS: &str = "more than 10^7 slots, whose numbers would not fit in a 15-character veth name \
     (use a prefix length of 7 or more)";

/// Prefix of the veths of firkin versions before instance tags (`fkh<index>`): only deleted
/// when a kept slot of such a version is released, never reclaimed or matched by rules.
const LEGACY_HOST_IF_PREFIX: &str = "fkh";

/// The short name of one slot pool instance, carried by everything it makes on the host: its
/// veths (`fk<tag>h<index>`) and its nftables table (`firkin_<tag>`). Pools with different
/// tags never touch each other's objects, so several daemons (tests, benchmarks) share a host.
///
/// Derived from the pool's canonical namespace directory ([`super::NetConfig::instance_tag`]),
/// which is the pool's identity: the same directory gives the same tag across restarts (so a
/// restarted daemon finds its leftovers), two directories give different tags (20 bits of
/// FNV-1a; two given directories collide with odds of one in a million).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InstanceTag(u32);

impl InstanceTag {
    /// The tag of the pool whose namespace directory is `canonical_dir` (already canonical:
    /// this only hashes the bytes). Stable across builds and Rust versions.
    pub fn of_dir(canonical_dir: &std::path::Path) -> Self {
        use std::os::unix::ffi::OsStrExt;
        // FNV-1a, 64 bits, folded to 20.
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in canonical_dir.as_os_str().as_bytes() {
            hash ^= u64::from(*byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        let folded = hash ^ (hash >> 20) ^ (hash >> 40);
        Self((folded & 0xf_ffff) as u32)
    }

    /// `fk<tag>h`, what every host-side veth of this instance starts with.
    pub fn host_if_prefix(self) -> String {
        format!("{HOST_IF_PREFIX}{self}h")
    }

    /// The host-side veth of slot `index`: `fk<tag>h<index>`, at most 15 characters for any
    /// index below [`MAX_SLOTS`].
    pub fn host_if_name(self, index: u32) -> String {
        format!("{}{index}", self.host_if_prefix())
    }

    /// The slot index of a host-side veth name of this instance, or `None` for any other
    /// name (another instance's veths included).
    pub fn parse_host_if(self, name: &str) -> Option<u32> {
        let digits = name.strip_prefix(&self.host_if_prefix())?;
        parse_index(digits).filter(|i| self.host_if_name(*i) == name)
    }
}

impl fmt::Display for InstanceTag {
    /// Five lowercase hex digits.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:05x}", self.0)
    }
}

fn parse_index(digits: &str) -> Option<u32> {
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// `fkh<index>`, the host-side veth name of slot `index` before instance tags.
pub(crate) fn legacy_host_if_name(index: u32) -> String {
    format!("{LEGACY_HOST_IF_PREFIX}{index}")
}

/// An IPv4 network in CIDR form, such as `10.200.0.0/16` (serialized as that string).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Ipv4Net {
    network: Ipv4Addr,
    prefix_len: u8,
}

impl Ipv4Net {
    /// A network from its base address and prefix length; host bits must be zero.
    pub fn new(network: Ipv4Addr, prefix_len: u8) -> Result<Self, NetError> {
        let invalid = |reason: &'static str| NetError::InvalidRange {
            range: format!("{network}/{prefix_len}"),
            reason,
        };
        if prefix_len > 32 {
            return Err(invalid("prefix length above 32"));
        }
        if u32::from(network) & !mask(prefix_len) != 0 {
            return Err(invalid("host bits set in the network address"));
        }
        Ok(Self {
            network,
            prefix_len,
        })
    }

    /// The network's base address.
    pub fn network(&self) -> Ipv4Addr {
        self.network
    }

    /// The prefix length.
    pub fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    /// Whether `addr` lies inside this network.
    pub fn contains(&self, addr: Ipv4Addr) -> bool {
        u32::from(addr) & mask(self.prefix_len) == u32::from(self.network)
    }

    /// How many /30 slots fit in this network.
    pub fn slot_capacity(&self) -> u32 {
        if self.prefix_len > SLOT_PREFIX_LEN {
            0
        } else {
            1u32 << (SLOT_PREFIX_LEN - self.prefix_len)
        }
    }
}

fn mask(prefix_len: u8) -> u32 {
    if prefix_len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(prefix_len))
    }
}

impl fmt::Display for Ipv4Net {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}

impl FromStr for Ipv4Net {
    type Err = NetError;

    fn from_str(s: &str) -> Result<Self, NetError> {
        let invalid = |reason: &'static str| NetError::InvalidRange {
            range: s.to_owned(),
            reason,
        };
        let (addr, len) = s
            .split_once('/')
            .ok_or_else(|| invalid("expected a.b.c.d/len"))?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| invalid("bad IPv4 address"))?;
        let len: u8 = len.parse().map_err(|_| invalid("bad prefix length"))?;
        Self::new(addr, len)
    }
}

impl TryFrom<String> for Ipv4Net {
    type Error = NetError;

    fn try_from(s: String) -> Result<Self, NetError> {
        s.parse()
    }
}

impl From<Ipv4Net> for String {
    fn from(net: Ipv4Net) -> String {
        net.to_string()
    }
}

/// The addresses and names of slot `index` in `range`: what [`super::Slot`] is built from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotPlan {
    /// Slot number inside the range.
    pub index: u32,
    /// The slot's /30.
    pub subnet: Ipv4Net,
    /// Host side (`.1`), the sandbox's gateway.
    pub host_ip: Ipv4Addr,
    /// Sandbox side (`.2`).
    pub sandbox_ip: Ipv4Addr,
    /// Host-side veth name, `fk<tag>h<index>`.
    pub host_if: String,
}

impl SlotPlan {
    /// Plans slot `index` of `range` for the pool instance `tag`; fails when the range has no
    /// such slot.
    pub fn new(range: Ipv4Net, tag: InstanceTag, index: u32) -> Result<Self, NetError> {
        let capacity = range.slot_capacity();
        if capacity > MAX_SLOTS {
            return Err(NetError::InvalidRange {
                range: range.to_string(),
                reason: TOO_MANY_SLOTS,
            });
        }
        if index >= capacity {
            return Err(NetError::RangeExhausted {
                range: range.to_string(),
                index,
                capacity,
            });
        }
        let base = u32::from(range.network()) + index * 4;
        let host_if = tag.host_if_name(index);
        debug_assert!(host_if.len() <= MAX_IF_NAME);
        Ok(Self {
            index,
            subnet: Ipv4Net::new(Ipv4Addr::from(base), SLOT_PREFIX_LEN)?,
            host_ip: Ipv4Addr::from(base + 1),
            sandbox_ip: Ipv4Addr::from(base + 2),
            host_if,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_ranges() {
        let net: Ipv4Net = "10.200.0.0/16".parse().unwrap();
        assert_eq!(net.to_string(), "10.200.0.0/16");
        assert_eq!(net.slot_capacity(), 16384);
        assert!(net.contains(Ipv4Addr::new(10, 200, 255, 255)));
        assert!(!net.contains(Ipv4Addr::new(10, 201, 0, 0)));
        assert!("10.200.0.1/16".parse::<Ipv4Net>().is_err());
        assert!("10.200.0.0/33".parse::<Ipv4Net>().is_err());
        assert!("10.200.0.0".parse::<Ipv4Net>().is_err());
        let json = serde_json::to_string(&net).unwrap();
        assert_eq!(json, "\"10.200.0.0/16\"");
        assert_eq!(serde_json::from_str::<Ipv4Net>(&json).unwrap(), net);
    }

    const TAG: InstanceTag = InstanceTag(0x0a1b2);

    #[test]
    fn plans_slots_as_consecutive_30s() {
        let range: Ipv4Net = "10.200.0.0/16".parse().unwrap();
        let p0 = SlotPlan::new(range, TAG, 0).unwrap();
        assert_eq!(p0.host_ip, Ipv4Addr::new(10, 200, 0, 1));
        assert_eq!(p0.sandbox_ip, Ipv4Addr::new(10, 200, 0, 2));
        assert_eq!(p0.host_if, "fk0a1b2h0");
        let p = SlotPlan::new(range, TAG, 16383).unwrap();
        assert_eq!(p.subnet.to_string(), "10.200.255.252/30");
        assert_eq!(p.sandbox_ip, Ipv4Addr::new(10, 200, 255, 254));
        assert!(matches!(
            SlotPlan::new(range, TAG, 16384),
            Err(NetError::RangeExhausted {
                capacity: 16384,
                ..
            })
        ));
        // The largest range whose slot numbers all fit in a name, and one past it.
        let widest: Ipv4Net = "10.0.0.0/7".parse().unwrap();
        let last = SlotPlan::new(widest, TAG, widest.slot_capacity() - 1).unwrap();
        assert_eq!(last.host_if, "fk0a1b2h8388607");
        assert!(widest.slot_capacity() <= MAX_SLOTS);
        let too_wide: Ipv4Net = "0.0.0.0/6".parse().unwrap();
        assert!(SlotPlan::new(too_wide, TAG, 0).is_err());
    }

    #[test]
    fn interface_names_fit_and_round_trip() {
        assert_eq!(MAX_SLOTS, 10_000_000);
        assert_eq!(TAG.host_if_name(MAX_SLOTS - 1).len(), MAX_IF_NAME);
        assert_eq!(TAG.host_if_name(12), "fk0a1b2h12");
        assert_eq!(TAG.parse_host_if("fk0a1b2h12"), Some(12));
        assert_eq!(TAG.parse_host_if("fk0a1b2h"), None);
        assert_eq!(TAG.parse_host_if("fk0a1b2h012"), None);
        assert_eq!(TAG.parse_host_if("fk0a1b2hx"), None);
        assert_eq!(TAG.parse_host_if("eth0"), None);
        // Another instance's veths and the untagged names of older versions are not ours.
        assert_eq!(InstanceTag(0x0a1b3).parse_host_if("fk0a1b2h12"), None);
        assert_eq!(TAG.parse_host_if("fkh12"), None);
        assert_eq!(legacy_host_if_name(12), "fkh12");
    }

    #[test]
    fn tags_are_stable_short_hex_and_differ_between_dirs() {
        use std::path::Path;
        let a = InstanceTag::of_dir(Path::new("/run/firkin/netns"));
        let b = InstanceTag::of_dir(Path::new("/var/lib/firkin/netns"));
        assert_ne!(a, b);
        assert_eq!(a, InstanceTag::of_dir(Path::new("/run/firkin/netns")));
        for tag in [a, b, InstanceTag(0), InstanceTag(0xf_ffff)] {
            let text = tag.to_string();
            assert_eq!(text.len(), TAG_LEN, "{text}");
            assert!(
                text.bytes()
                    .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
            );
        }
        // Pinned: a change of the hash would orphan every running daemon's slots.
        assert_eq!(a.to_string(), "51a73");
        assert_eq!(b.to_string(), "0c9bf");
    }
}
