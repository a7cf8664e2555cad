//! Finding and removing what firkin's slots left behind (after a crash or a daemon restart).
//!
//! Only the objects of the configuration's own instance ([`NetConfig::instance_tag`]) are
//! looked at: other pools on the host (other daemons, tests, benchmarks) keep theirs.

use std::collections::BTreeSet;
use std::fs;
use std::path::PathBuf;

use super::slot::{delete_links_blocking, on_thread};
use super::{NetConfig, NetError, Slot, netns, nft};

/// Everything of one pool instance not belonging to a kept slot: host-side veths
/// (`fk<tag>h<n>`), namespace files (`<netns_dir>/slot-<n>`), and, when no slot is kept,
/// the instance's nftables table and the bind mount of its namespace directory. nftables
/// holds no per-slot state (see [`super::nft`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Leftovers {
    /// Host-side veths named `fk<tag>h<n>` (this instance's tag).
    pub links: Vec<String>,
    /// Files named `slot-*` in the namespace directory.
    pub netns_files: Vec<PathBuf>,
    /// The instance's table (`firkin_<tag>`), listed only when no slot is kept (kept slots'
    /// sandboxes are fenced by it).
    pub table: Option<String>,
    /// The namespace directory, when it is still the bind mount of itself that
    /// [`super::SlotPool::start`] makes; listed only when no slot is kept.
    pub netns_dir_mount: Option<PathBuf>,
}

impl Leftovers {
    /// True when nothing is left.
    pub fn is_empty(&self) -> bool {
        self.links.is_empty()
            && self.netns_files.is_empty()
            && self.table.is_none()
            && self.netns_dir_mount.is_none()
    }
}

/// Lists the network objects of `config`'s instance that do not belong to a slot in `keep`
/// (no changes made). Reads `/sys/class/net` and the mount table, so it must run in the
/// host's network and mount namespaces.
pub fn find_leftovers(config: &NetConfig, keep: &[Slot]) -> Result<Leftovers, NetError> {
    let tag = config.instance_tag();
    let keep_ifs: BTreeSet<&str> = keep.iter().map(|s| s.host_if.as_str()).collect();
    let keep_paths: BTreeSet<&PathBuf> = keep.iter().map(|s| &s.netns_path).collect();
    let mut links: Vec<String> = fs::read_dir("/sys/class/net")
        .map_err(|source| NetError::NetnsDir {
            path: "/sys/class/net".into(),
            step: "list",
            source,
        })?
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| tag.parse_host_if(n).is_some() && !keep_ifs.contains(n.as_str()))
        .collect();
    links.sort();
    let netns_files = netns::list(&config.netns_dir)?
        .into_iter()
        .filter(|p| !keep_paths.contains(p))
        .collect();
    let (table, netns_dir_mount) = if keep.is_empty() {
        (
            nft::table_exists(tag)?.then(|| nft::table_name(tag)),
            netns::self_bind(&config.netns_dir)?,
        )
    } else {
        (None, None)
    };
    Ok(Leftovers {
        links,
        netns_files,
        table,
        netns_dir_mount,
    })
}

/// Removes every veth and namespace file of `config`'s instance not belonging to a slot in
/// `keep`; with no slot kept, also its nftables table and the bind mount of its namespace
/// directory (when nothing is mounted inside any more). Returns what was found. Every
/// removal is attempted; the first failure is returned.
pub async fn reclaim_leftovers(config: &NetConfig, keep: &[Slot]) -> Result<Leftovers, NetError> {
    let config = config.clone();
    let keep = keep.to_vec();
    on_thread("firkin-net-reclaim".into(), move || {
        let found = find_leftovers(&config, &keep)?;
        let mut first_err: Option<NetError> = None;
        let mut note = |r: Result<(), NetError>| {
            if let Err(e) = r {
                tracing::warn!(error = %e, "reclaiming a network leftover failed");
                first_err.get_or_insert(e);
            }
        };
        if !found.links.is_empty() {
            note(delete_links_blocking(&found.links));
        }
        for path in &found.netns_files {
            note(netns::remove(path));
        }
        if found.table.is_some() {
            note(nft::apply(&nft::delete_ruleset(config.instance_tag())));
        }
        if found.netns_dir_mount.is_some() {
            note(netns::release_dir(&config.netns_dir).map(|_| ()));
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(found),
        }
    })
    .await
}
