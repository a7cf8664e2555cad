//! Address planning: the slot range and the per-slot /30 (pure values, no kernel).

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::NetError;

/// Prefix of every host-side veth firkin creates (`fkh<index>`); leftovers are found by it.
pub const HOST_IF_PREFIX: &str = "fkh";

/// Name of the sandbox-side veth inside a slot's network namespace.
pub const SANDBOX_IF: &str = "eth0";

/// Prefix length of one slot's subnet: network, host (`.1`), sandbox (`.2`), broadcast.
pub const SLOT_PREFIX_LEN: u8 = 30;

/// Linux limit on interface names (`IFNAMSIZ` - 1).
const MAX_IF_NAME: usize = 15;

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
    /// Host-side veth name, `fkh<index>`.
    pub host_if: String,
}

impl SlotPlan {
    /// Plans slot `index` of `range`; fails when the range has no such slot.
    pub fn new(range: Ipv4Net, index: u32) -> Result<Self, NetError> {
        let capacity = range.slot_capacity();
        if index >= capacity {
            return Err(NetError::RangeExhausted {
                range: range.to_string(),
                index,
                capacity,
            });
        }
        let base = u32::from(range.network()) + index * 4;
        let host_if = host_if_name(index);
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

/// `fkh<index>`: at most 13 characters for any `u32`, inside the 15-character limit.
pub fn host_if_name(index: u32) -> String {
    format!("{HOST_IF_PREFIX}{index}")
}

/// The slot index of a firkin host-side veth name, or `None` for any other name.
pub fn parse_host_if(name: &str) -> Option<u32> {
    let digits = name.strip_prefix(HOST_IF_PREFIX)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let index: u32 = digits.parse().ok()?;
    (host_if_name(index) == name).then_some(index)
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

    #[test]
    fn plans_slots_as_consecutive_30s() {
        let range: Ipv4Net = "10.200.0.0/16".parse().unwrap();
        let p0 = SlotPlan::new(range, 0).unwrap();
        assert_eq!(p0.host_ip, Ipv4Addr::new(10, 200, 0, 1));
        assert_eq!(p0.sandbox_ip, Ipv4Addr::new(10, 200, 0, 2));
        assert_eq!(p0.host_if, "fkh0");
        let p = SlotPlan::new(range, 16383).unwrap();
        assert_eq!(p.subnet.to_string(), "10.200.255.252/30");
        assert_eq!(p.sandbox_ip, Ipv4Addr::new(10, 200, 255, 254));
        assert!(matches!(
            SlotPlan::new(range, 16384),
            Err(NetError::RangeExhausted {
                capacity: 16384,
                ..
            })
        ));
    }

    #[test]
    fn interface_names_fit_and_round_trip() {
        assert!(host_if_name(u32::MAX).len() <= MAX_IF_NAME);
        assert_eq!(parse_host_if("fkh12"), Some(12));
        assert_eq!(parse_host_if("fkh"), None);
        assert_eq!(parse_host_if("fkh012"), None);
        assert_eq!(parse_host_if("fkhx"), None);
        assert_eq!(parse_host_if("eth0"), None);
    }
}
