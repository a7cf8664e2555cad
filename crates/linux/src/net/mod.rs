//! Network slots: pooled network namespaces, veth pairs, addresses and egress rules.
//!
//! A **slot** is everything a sandbox needs to be on the network, made before the sandbox
//! exists, so that creating a sandbox only has to `setns` into it (a namespace with a veth
//! costs ~7–14 ms to make; taking a pooled one costs microseconds).
//!
//! # Layout
//!
//! Slot `n` owns the `n`-th /30 of [`NetConfig::range`] (default `10.200.0.0/16`, 16384
//! slots): the host side `.1` is on the veth `fk<tag>h<n>` in the host namespace, the sandbox
//! side `.2` on `eth0` inside the slot's namespace, with `lo` up and a default route via `.1`.
//!
//! # Instances
//!
//! Every pool is an *instance* with a short tag: five hex digits hashed from its canonical
//! [`NetConfig::netns_dir`] ([`InstanceTag`]): stable across a daemon's restarts, different
//! for daemons with directories of their own (under their state directories, say). Everything
//! it makes on the host carries the tag: veths `fk<tag>h<n>` (at most 15 characters, the
//! Linux limit, for any range of [`addr::MAX_SLOTS`] slots or fewer), the nftables table
//! `inet firkin_<tag>`, and namespace files `<netns_dir>/slot-<n>`. Leftovers are found by
//! these names after a crash, and a pool only ever finds, reclaims and matches its own:
//! several daemons, tests and benchmarks share a host as long as each has a namespace
//! directory and a range of its own. Overlapping ranges are refused at start
//! ([`NetError::RangeOverlap`]). nftables holds no per-slot state: the instance's table
//! matches `fk<tag>h*`, and a slot's egress switch is its veth's link group.
//!
//! # Namespaces
//!
//! A slot's namespace is made by `unshare(CLONE_NEWNET)` on a thread of its own (the only
//! `unsafe` call here, in the private `netns` module) and bind-mounted onto its file, so it outlives the
//! thread. The namespace directory is a shared mount point (as `ip netns` does for
//! `/run/netns`), so unmounting a slot also unmounts the copies that sandboxes' mount
//! namespaces made of it. The namespace is owned by the initial user namespace: a sandbox's
//! root (in its own user namespace) has no `CAP_NET_ADMIN` or `CAP_NET_RAW` there and cannot
//! change addresses, routes or spoof packets. The driver opens [`Slot::open_netns`] and
//! `setns`es into it before cloning the sandbox.
//!
//! # Egress
//!
//! See [`nft`] for the ruleset and why egress is a link group rather than per-slot rules
//! (deleting an nftables element costs 10–20 ms). Always blocked from a slot: new connections
//! to the host (any of its addresses; replies to connections the host opened pass, so the
//! daemon reaches envd and any user port), to other slots (of any pool), to link-local
//! `169.254.0.0/16` (cloud metadata), to the slot range, and IPv6. Blocked unless the operator
//! opts a part back in ([`NetConfig::egress_allow_private`], see [`egress`]): the private
//! ranges `10.0.0.0/8`, `172.16.0.0/12`, `192.168.0.0/16` and `100.64.0.0/10`. With
//! `allow_internet_access` the rest is forwarded and masqueraded; without it, it is rejected.
//! Blocked TCP connections get a reset (`ECONNREFUSED`), other blocked traffic ICMP
//! admin-prohibited, so they fail at once instead of hanging. A sandbox needs a DNS server
//! reachable through egress (a resolver on the host's own addresses, such as `127.0.0.53`, or
//! on the LAN, is blocked by design unless its range is opted in; the host never is).
//!
//! In the other direction, only root's sockets on the host reach a slot (the daemon runs as
//! root); other host accounts are refused on the way out ([`nft`], `output`).
//!
//! # Host settings
//!
//! NAT needs `net.ipv4.ip_forward=1`, which firkin sets when a slot that allows egress is
//! made and the setting is off. **That setting is host-wide** (it cannot be scoped to firkin's
//! interfaces: Linux checks it on the interface the sandbox's replies come in on, the uplink):
//! the host then forwards between all its interfaces as its other firewall rules allow. firkin
//! records the value it replaced and puts it back at the last clean shutdown that leaves no
//! slot on the host; see [`forward`]. No other sysctl is changed.
//!
//! # Pool
//!
//! [`SlotPool`] keeps [`NetConfig::pool_size`] slots ready, refilled by a tokio task;
//! released slots are torn down, never reused (a fresh namespace is clean by construction):
//! the namespace is unmounted at once, the veth pair deleted in the background (the kernel
//! takes 20–40 ms for it), its index reserved until then.
//! After a daemon restart, [`SlotPool::start`] is given the slots of sandboxes still alive
//! and reclaims everything else carrying its instance's names ([`reclaim_leftovers`]).
//! [`SlotPool::shutdown`] removes the table and the namespace directory's mount once no slot
//! is handed out (sandboxes outlive the daemon and keep both until the next one adopts them).
//!
//! # Needs
//!
//! Root (`CAP_NET_ADMIN`, `CAP_SYS_ADMIN` for the bind mounts), the `nft` binary (Debian
//! package `nftables`), and a kernel with nf_tables, veth and network namespaces.

pub mod addr;
pub mod egress;
pub mod forward;
mod netns;
pub mod nft;
mod overlap;
mod pool;
mod reclaim;
mod slot;

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use addr::{InstanceTag, Ipv4Net};
pub use pool::SlotPool;
pub use reclaim::{Leftovers, find_leftovers, reclaim_leftovers};
pub use slot::Slot;

/// Prefix of a slot's namespace file inside [`NetConfig::netns_dir`].
pub const NETNS_PREFIX: &str = "slot-";

/// Network configuration of the slots.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NetConfig {
    /// Private IPv4 range the slots' /30s are cut from; must not overlap the host's networks.
    pub range: Ipv4Net,
    /// How many slots are kept ready.
    pub pool_size: usize,
    /// Where slot namespaces are bind-mounted; also the pool's identity (its
    /// [`InstanceTag`]), so every pool on a host needs a directory of its own.
    pub netns_dir: PathBuf,
    /// Egress of pooled slots; [`SlotPool::take`] changes it when a sandbox asks otherwise.
    pub default_internet_access: bool,
    /// Parts of the private ranges ([`egress::PRIVATE_RANGES`]) that slots with egress may
    /// reach after all; empty by default. The host, link-local and every pool's slots stay
    /// refused even when covered.
    pub egress_allow_private: Vec<Ipv4Net>,
}

impl Default for NetConfig {
    fn default() -> Self {
        Self {
            // A /16 literal that is valid by construction.
            range: Ipv4Net::new(std::net::Ipv4Addr::new(10, 200, 0, 0), 16)
                .expect("10.200.0.0/16 is a valid network"),
            pool_size: 4,
            netns_dir: PathBuf::from("/run/firkin/netns"),
            default_internet_access: true,
            egress_allow_private: Vec::new(),
        }
    }
}

impl NetConfig {
    /// Checks the values against each other before anything is made.
    pub fn validate(&self) -> Result<(), NetError> {
        let capacity = self.range.slot_capacity();
        if capacity == 0 {
            return Err(NetError::InvalidRange {
                range: self.range.to_string(),
                reason: "smaller than one /30 slot",
            });
        }
        if capacity > addr::MAX_SLOTS {
            return Err(NetError::InvalidRange {
                range: self.range.to_string(),
                reason: addr::TOO_MANY_SLOTS,
            });
        }
        if self.pool_size as u64 > u64::from(capacity) {
            return Err(NetError::InvalidConfig {
                reason: format!(
                    "pool_size {} exceeds the {capacity} slots of {}",
                    self.pool_size, self.range
                ),
            });
        }
        for net in &self.egress_allow_private {
            egress::check_opt_in(*net)?;
        }
        if !self.netns_dir.is_absolute() {
            return Err(NetError::InvalidConfig {
                reason: format!("netns_dir {} is not absolute", self.netns_dir.display()),
            });
        }
        Ok(())
    }

    /// The namespace file of slot `index`.
    pub fn netns_path(&self, index: u32) -> PathBuf {
        self.netns_dir.join(format!("{NETNS_PREFIX}{index}"))
    }

    /// The tag of the pool instance this configuration describes: a hash of the canonical
    /// [`NetConfig::netns_dir`] (symbolic links resolved as far as the directory exists), so
    /// that the same directory, however spelled, is the same instance, before and after the
    /// directory is created. See [`InstanceTag`].
    pub fn instance_tag(&self) -> InstanceTag {
        InstanceTag::of_dir(&canonical_dir(&self.netns_dir))
    }
}

/// `dir` with its longest existing ancestor canonicalized and the rest appended as written.
fn canonical_dir(dir: &Path) -> PathBuf {
    let mut existing = dir;
    let mut rest = Vec::new();
    loop {
        if let Ok(canonical) = existing.canonicalize() {
            return rest
                .iter()
                .rev()
                .fold(canonical, |path, name| path.join(name));
        }
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name);
                existing = parent;
            }
            _ => return dir.to_owned(),
        }
    }
}

/// Errors of the network slots. Messages describe this layer; causes are in `source`.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The configured range is not a usable IPv4 network.
    #[error("invalid slot range {range}: {reason}")]
    InvalidRange {
        /// The range as given.
        range: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The configuration is inconsistent.
    #[error("invalid network configuration: {reason}")]
    InvalidConfig {
        /// What is wrong, with the values.
        reason: String,
    },
    /// The slot range is already in use on this host by an interface that is not this pool
    /// instance's: another pool's slots, or a network of the host.
    #[error(
        "slot range {range} overlaps {what} on interface {interface}, which is not this slot \
         pool's: give every slot pool on a host a range of its own, disjoint from the host's \
         networks"
    )]
    RangeOverlap {
        /// The configured range.
        range: String,
        /// The interface the overlapping address or route is on.
        interface: String,
        /// What overlaps, such as `address 10.200.0.1/30` or `route 10.200.0.0/24`.
        what: String,
    },
    /// The pool was shut down: it hands out no more slots (its table may be gone).
    #[error("the slot pool of {range} is shut down")]
    PoolClosed {
        /// The configured range.
        range: String,
    },
    /// No free slot is left in the range.
    #[error("slot range {range} has {capacity} slots, none free for index {index}")]
    RangeExhausted {
        /// The configured range.
        range: String,
        /// The index asked for.
        index: u32,
        /// How many slots the range holds.
        capacity: u32,
    },
    /// Setting up the namespace directory failed.
    #[error("namespace directory {path}: {step} failed")]
    NetnsDir {
        /// The directory.
        path: PathBuf,
        /// The step that failed.
        step: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Creating, opening or removing a slot's namespace failed.
    #[error("network namespace {path}: {step} failed")]
    Netns {
        /// The namespace file.
        path: PathBuf,
        /// The step that failed.
        step: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A netlink request (link, address, route) failed.
    #[error("netlink: {step} {interface} in {} failed", netns_name(netns.as_deref()))]
    Netlink {
        /// What was asked.
        step: &'static str,
        /// The interface concerned.
        interface: String,
        /// The slot namespace, or `None` for the host's.
        netns: Option<PathBuf>,
        /// The cause.
        #[source]
        source: Box<rtnetlink::Error>,
    },
    /// An rtnetlink socket could not be opened.
    #[error("cannot open a netlink socket in {}", netns_name(netns.as_deref()))]
    NetlinkSocket {
        /// The slot namespace, or `None` for the host's.
        netns: Option<PathBuf>,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// `nft` could not be run.
    #[error("cannot run nft (is the nftables package installed?)")]
    NftSpawn {
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// `nft` refused a ruleset.
    #[error("nft failed ({status}): {stderr}; ruleset:\n{ruleset}")]
    Nft {
        /// The text given to `nft -f -`.
        ruleset: String,
        /// Its exit status.
        status: String,
        /// What it printed on stderr.
        stderr: String,
    },
    /// Reading or writing a sysctl failed.
    #[error("cannot {step} {path}")]
    Sysctl {
        /// The `/proc/sys` file.
        path: PathBuf,
        /// `read`, or `write <value> to`.
        step: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The record of a sysctl value firkin replaced (to restore it later) failed.
    #[error("cannot {step} {path}, the record of the sysctl value firkin replaced")]
    SysctlRecord {
        /// The record file.
        path: PathBuf,
        /// The step that failed.
        step: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A helper thread could not be started.
    #[error("cannot start thread {name}")]
    Thread {
        /// The thread's name.
        name: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A helper thread ended without an answer (it panicked).
    #[error("thread {name} died without an answer")]
    ThreadDied {
        /// The thread's name.
        name: String,
    },
    /// Preparing a slot failed; what it had made was rolled back (`cleanup` says if not).
    #[error("preparing slot {index} failed{}", cleanup_note(cleanup.as_deref()))]
    Prepare {
        /// The slot index.
        index: u32,
        /// Why preparation failed.
        #[source]
        source: Box<NetError>,
        /// Why the rollback failed, if it did.
        cleanup: Option<Box<NetError>>,
    },
}

fn netns_name(netns: Option<&Path>) -> String {
    match netns {
        Some(p) => p.display().to_string(),
        None => "the host namespace".to_owned(),
    }
}

fn cleanup_note(cleanup: Option<&NetError>) -> String {
    match cleanup {
        Some(e) => format!(" (and so did its rollback: {e})"),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_is_valid_and_round_trips() {
        let c = NetConfig::default();
        c.validate().unwrap();
        assert_eq!(c.netns_path(3), Path::new("/run/firkin/netns/slot-3"));
        let json = serde_json::to_string(&c).unwrap();
        assert_eq!(serde_json::from_str::<NetConfig>(&json).unwrap(), c);
        let partial: NetConfig = serde_json::from_str(r#"{"range": "10.9.0.0/24"}"#).unwrap();
        assert_eq!(partial.range.slot_capacity(), 64);
        assert_eq!(partial.pool_size, 4);
        assert!(serde_json::from_str::<NetConfig>(r#"{"nope": 1}"#).is_err());
    }

    #[test]
    fn validate_quotes_the_values() {
        let c = NetConfig {
            range: "10.9.0.0/29".parse().unwrap(),
            pool_size: 3,
            ..NetConfig::default()
        };
        let msg = c.validate().unwrap_err().to_string();
        assert!(
            msg.contains("pool_size 3") && msg.contains("2 slots"),
            "{msg}"
        );
        let c = NetConfig {
            netns_dir: "rel".into(),
            ..NetConfig::default()
        };
        assert!(c.validate().is_err());
        let c = NetConfig {
            egress_allow_private: vec!["192.168.1.0/24".parse().unwrap()],
            ..NetConfig::default()
        };
        c.validate().unwrap();
        let c = NetConfig {
            egress_allow_private: vec!["8.8.8.0/24".parse().unwrap()],
            ..NetConfig::default()
        };
        let msg = c.validate().unwrap_err().to_string();
        assert!(msg.contains("8.8.8.0/24"), "{msg}");
    }

    #[test]
    fn slot_serializes_for_readoption() {
        let slot = Slot {
            index: 1,
            netns_path: "/run/firkin/netns/slot-1".into(),
            host_ip: "10.200.0.5".parse().unwrap(),
            sandbox_ip: "10.200.0.6".parse().unwrap(),
            host_if: "fk51a73h1".into(),
            internet_access: false,
        };
        let json = serde_json::to_string(&slot).unwrap();
        assert_eq!(serde_json::from_str::<Slot>(&json).unwrap(), slot);
        // A slot stored by a version before instance tags still reads back as it was.
        let old = r#"{"index":1,"netns_path":"/run/firkin/netns/slot-1","host_ip":"10.200.0.5",
            "sandbox_ip":"10.200.0.6","host_if":"fkh1","internet_access":false}"#;
        let old: Slot = serde_json::from_str(old).unwrap();
        assert_eq!(old.host_if, "fkh1");
        assert_eq!(
            serde_json::from_str::<Slot>(&serde_json::to_string(&old).unwrap()).unwrap(),
            old
        );
    }

    #[test]
    fn validate_refuses_ranges_whose_slot_numbers_do_not_fit_a_veth_name() {
        for (range, ok) in [
            ("10.0.0.0/8", true),
            ("10.0.0.0/7", true),
            ("0.0.0.0/6", false),
        ] {
            let c = NetConfig {
                range: range.parse().unwrap(),
                ..NetConfig::default()
            };
            assert_eq!(c.validate().is_ok(), ok, "{range}");
        }
    }

    #[test]
    fn the_instance_tag_follows_the_canonical_directory() {
        let tmp = tempfile::tempdir().unwrap();
        let real = tmp.path().join("real");
        std::fs::create_dir(&real).unwrap();
        std::os::unix::fs::symlink(&real, tmp.path().join("link")).unwrap();
        let config = |dir: PathBuf| NetConfig {
            netns_dir: dir,
            ..NetConfig::default()
        };
        // Through a symbolic link, and before the directory itself exists.
        let a = config(real.join("netns"));
        let b = config(tmp.path().join("link/netns"));
        assert_eq!(a.instance_tag(), b.instance_tag());
        std::fs::create_dir(real.join("netns")).unwrap();
        assert_eq!(a.instance_tag(), b.instance_tag());
        assert_ne!(a.instance_tag(), config(real.join("other")).instance_tag());
    }
}
