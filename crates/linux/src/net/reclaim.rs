//! Finding and removing what firkin's slots left behind (after a crash or a daemon restart).

use std::collections::BTreeSet;
use std::fs;
use std::path::PathBuf;

use super::addr::parse_host_if;
use super::slot::{delete_links_blocking, on_thread};
use super::{NetConfig, NetError, Slot, netns};

/// Everything carrying a slot's name: host-side veths (`fkh<n>`) and namespace files
/// (`<netns_dir>/slot-<n>`). nftables holds no per-slot state (see [`super::nft`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Leftovers {
    /// Host-side veths named `fkh<n>`.
    pub links: Vec<String>,
    /// Files named `slot-*` in the namespace directory.
    pub netns_files: Vec<PathBuf>,
}

impl Leftovers {
    /// True when nothing is left.
    pub fn is_empty(&self) -> bool {
        self.links.is_empty() && self.netns_files.is_empty()
    }
}

/// Lists firkin's network objects that do not belong to a slot in `keep` (no changes made).
/// Reads `/sys/class/net`, so it must run in the host's network and mount namespaces.
pub fn find_leftovers(config: &NetConfig, keep: &[Slot]) -> Result<Leftovers, NetError> {
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
        .filter(|n| parse_host_if(n).is_some() && !keep_ifs.contains(n.as_str()))
        .collect();
    links.sort();
    let netns_files = netns::list(&config.netns_dir)?
        .into_iter()
        .filter(|p| !keep_paths.contains(p))
        .collect();
    Ok(Leftovers { links, netns_files })
}

/// Removes every firkin-named veth and namespace file not belonging to a slot in `keep`.
/// Returns what was found. Every removal is attempted; the first failure is returned.
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
        match first_err {
            Some(e) => Err(e),
            None => Ok(found),
        }
    })
    .await
}
