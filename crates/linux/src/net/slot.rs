//! One network slot: its namespace, veth pair, addresses, route and egress switch.
//!
//! Preparation runs on a helper thread in the host namespace, which starts a second, scoped
//! thread for the namespace steps. That one gets its own single-threaded tokio runtime and
//! two rtnetlink sockets: one opened *before* `unshare(CLONE_NEWNET)` (so it talks to the
//! host namespace), one after (so it talks to the slot's). The veth is created from inside the
//! slot (`eth0`) with its peer (`fk<tag>h<n>`) placed in the host namespace by file descriptor, so
//! no interface is ever renamed or moved after creation. The thread exits when done; the
//! namespace lives on through its bind mount.

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use futures::TryStreamExt;
use rtnetlink::packet_route::link::{InfoData, InfoVeth};
use rtnetlink::{Handle, LinkMessageBuilder, LinkUnspec, LinkVeth, RouteMessageBuilder};
use serde::{Deserialize, Serialize};

use super::addr::{SANDBOX_IF, SLOT_PREFIX_LEN, SlotPlan};
use super::forward::IpForward;
use super::{NetError, netns, nft};

/// A prepared network slot. Serializable so a restarted daemon can re-adopt it (and pass it
/// to [`super::reclaim_leftovers`] as one to keep).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Slot {
    /// Slot number inside the configured range.
    pub index: u32,
    /// The bind-mounted network namespace, `<netns_dir>/slot-<index>`.
    pub netns_path: PathBuf,
    /// Host side of the veth (`.1`), the sandbox's default gateway.
    pub host_ip: Ipv4Addr,
    /// Sandbox side (`.2`, on `eth0` inside the namespace): where the daemon connects.
    pub sandbox_ip: Ipv4Addr,
    /// Host-side veth name, `fk<tag>h<index>` (see [`super::InstanceTag`]); slots stored by
    /// versions before instance tags have `fkh<index>`.
    pub host_if: String,
    /// Whether the slot may reach the outside (its host-side veth is in
    /// [`nft::EGRESS_GROUP`]).
    pub internet_access: bool,
}

impl Slot {
    /// Opens the slot's network namespace, for `setns` before cloning the sandbox.
    pub fn open_netns(&self) -> Result<OwnedFd, NetError> {
        netns::open(&self.netns_path)
    }

    /// Allows or blocks egress to the outside (E2B `allow_internet_access` /
    /// `update_network`). Allowing also turns on `net.ipv4.ip_forward`, which is host-wide
    /// (see [`super::forward`]). The host, other slots, link-local, the slot range and the
    /// private ranges not opted in stay blocked either way.
    /// One netlink message on a helper thread (no `nft` run).
    pub async fn set_internet_access(&mut self, allow: bool) -> Result<(), NetError> {
        let host_if = self.host_if.clone();
        on_thread(format!("firkin-slot-{}", self.index), move || {
            if allow {
                IpForward::host().enable()?;
            }
            block_on(async {
                let host = connect(None)?;
                let msg = LinkUnspec::new_with_name(&host_if)
                    .link_group(egress_group(allow))
                    .build();
                host.link()
                    .set(msg)
                    .execute()
                    .await
                    .map_err(|source| NetError::Netlink {
                        step: "set egress group of",
                        interface: host_if.clone(),
                        netns: None,
                        source: Box::new(source),
                    })
            })
        })
        .await?;
        self.internet_access = allow;
        Ok(())
    }
}

/// The link group carrying a slot's egress switch (0 is the kernel's default group).
fn egress_group(allow: bool) -> u32 {
    if allow { nft::EGRESS_GROUP } else { 0 }
}

/// Runs `f` on a new OS thread and awaits its result without blocking the caller's runtime.
pub(crate) async fn on_thread<T, F>(name: String, f: F) -> Result<T, NetError>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, NetError> + Send + 'static,
{
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name(name.clone())
        .spawn(move || {
            let _ = tx.send(f());
        })
        .map_err(|source| NetError::Thread {
            name: name.clone(),
            source,
        })?;
    rx.await.map_err(|_| NetError::ThreadDied { name })?
}

/// Drives `fut` on a single-threaded runtime owned by the calling (dedicated) thread.
pub(crate) fn block_on<T>(fut: impl Future<Output = Result<T, NetError>>) -> Result<T, NetError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|source| NetError::Thread {
            name: "slot runtime".into(),
            source,
        })?;
    rt.block_on(fut)
}

/// Opens an rtnetlink socket in the calling thread's current network namespace.
pub(crate) fn connect(netns: Option<&Path>) -> Result<Handle, NetError> {
    let (conn, handle, _) =
        rtnetlink::new_connection().map_err(|source| NetError::NetlinkSocket {
            netns: netns.map(Path::to_owned),
            source,
        })?;
    tokio::spawn(conn);
    Ok(handle)
}

/// Creates slot `plan` in `netns_path`: blocking, call it on a thread in the host namespace.
pub(crate) fn prepare_blocking(
    plan: &SlotPlan,
    netns_path: &Path,
    internet_access: bool,
) -> Result<Slot, NetError> {
    let slot = Slot {
        index: plan.index,
        netns_path: netns_path.to_owned(),
        host_ip: plan.host_ip,
        sandbox_ip: plan.sandbox_ip,
        host_if: plan.host_if.clone(),
        internet_access,
    };
    // The namespace steps run on a scoped thread of their own, which unshare moves into the
    // slot's namespace for good; this thread stays in the host's, for the rollback (and any
    // child process: it would inherit its forking thread's namespace).
    let result = std::thread::scope(|scope| {
        let in_slot = std::thread::Builder::new()
            .name(format!("firkin-netns-{}", plan.index))
            .spawn_scoped(scope, || {
                create_and_configure(plan, netns_path, internet_access)
            })
            .map_err(|source| NetError::Thread {
                name: format!("firkin-netns-{}", plan.index),
                source,
            })?;
        in_slot.join().map_err(|_| NetError::ThreadDied {
            name: format!("firkin-netns-{}", plan.index),
        })?
    })
    .and_then(|()| {
        if internet_access {
            IpForward::host().enable()?;
        }
        Ok(())
    });
    match result {
        Ok(()) => Ok(slot),
        Err(error) => {
            // Roll back everything this attempt may have made; report both failures.
            let cleanup = remove_netns(&slot)
                .and(delete_links_blocking(std::slice::from_ref(&slot.host_if)))
                .err()
                .map(Box::new);
            Err(NetError::Prepare {
                index: plan.index,
                source: Box::new(error),
                cleanup,
            })
        }
    }
}

/// Runs on a thread that ends afterwards: moves it into a new namespace pinned at
/// `netns_path`, then makes the veth pair, addresses and routes.
fn create_and_configure(
    plan: &SlotPlan,
    netns_path: &Path,
    internet_access: bool,
) -> Result<(), NetError> {
    block_on(async {
        let host_ns: OwnedFd = std::fs::File::open("/proc/thread-self/ns/net")
            .map_err(|source| NetError::Netns {
                path: "/proc/thread-self/ns/net".into(),
                step: "open the host namespace",
                source,
            })?
            .into();
        let host = connect(None)?;
        netns::create_on_this_thread(netns_path)?;
        let inner = connect(Some(netns_path))?;
        configure(&host, &inner, &host_ns, plan, netns_path, internet_access).await
    })
}

/// The netlink steps: veth pair, addresses, links up, default route.
async fn configure(
    host: &Handle,
    inner: &Handle,
    host_ns: &OwnedFd,
    plan: &SlotPlan,
    netns_path: &Path,
    internet_access: bool,
) -> Result<(), NetError> {
    let in_ns = |step: &'static str, interface: &str| {
        let interface = interface.to_owned();
        let netns = Some(netns_path.to_owned());
        move |source| NetError::Netlink {
            step,
            interface,
            netns,
            source: Box::new(source),
        }
    };
    let on_host = |step: &'static str| {
        let interface = plan.host_if.clone();
        move |source| NetError::Netlink {
            step,
            interface,
            netns: None,
            source: Box::new(source),
        }
    };
    // eth0 inside the slot, its peer created directly in the host namespace.
    let peer = LinkMessageBuilder::<LinkUnspec>::new()
        .name(plan.host_if.clone())
        .setns_by_fd(host_ns.as_raw_fd())
        .build();
    let veth = LinkVeth::new(SANDBOX_IF, &plan.host_if)
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
        .build();
    inner
        .link()
        .add(veth)
        .execute()
        .await
        .map_err(in_ns("create veth", SANDBOX_IF))?;

    // Host side: address, egress group, up.
    let host_index = link_index(host, &plan.host_if)
        .await
        .map_err(on_host("look up"))?;
    host.address()
        .add(host_index, IpAddr::V4(plan.host_ip), SLOT_PREFIX_LEN)
        .execute()
        .await
        .map_err(on_host("add address"))?;
    host.link()
        .set(
            LinkUnspec::new_with_index(host_index)
                .link_group(egress_group(internet_access))
                .up()
                .build(),
        )
        .execute()
        .await
        .map_err(on_host("set up"))?;

    // Slot side: lo up, eth0 address and up, default route via the host side.
    let lo = link_index(inner, "lo")
        .await
        .map_err(in_ns("look up", "lo"))?;
    inner
        .link()
        .set(LinkUnspec::new_with_index(lo).up().build())
        .execute()
        .await
        .map_err(in_ns("set up", "lo"))?;
    let eth0 = link_index(inner, SANDBOX_IF)
        .await
        .map_err(in_ns("look up", SANDBOX_IF))?;
    inner
        .address()
        .add(eth0, IpAddr::V4(plan.sandbox_ip), SLOT_PREFIX_LEN)
        .execute()
        .await
        .map_err(in_ns("add address", SANDBOX_IF))?;
    inner
        .link()
        .set(LinkUnspec::new_with_index(eth0).up().build())
        .execute()
        .await
        .map_err(in_ns("set up", SANDBOX_IF))?;
    let route = RouteMessageBuilder::<Ipv4Addr>::new()
        .gateway(plan.host_ip)
        .output_interface(eth0)
        .build();
    inner
        .route()
        .add(route)
        .execute()
        .await
        .map_err(in_ns("add default route", SANDBOX_IF))?;

    // Each end knows the other's hardware address for good: no ARP on a sandbox's first
    // packet, and no entry for the host's neighbour table to count or collect. With a
    // thousand slots in use, learned entries would pass the kernel's default table limit
    // (`gc_thresh3`, 1024) and new connections into sandboxes would fail; permanent ones
    // are not counted against it (Linux 4.19 and later).
    let host_mac = link_mac(host, host_index)
        .await
        .map_err(on_host("read the address of"))?;
    let eth0_mac = link_mac(inner, eth0)
        .await
        .map_err(in_ns("read the address of", SANDBOX_IF))?;
    host.neighbours()
        .add(host_index, IpAddr::V4(plan.sandbox_ip))
        .link_layer_address(&eth0_mac)
        .replace()
        .execute()
        .await
        .map_err(on_host("add the sandbox as a neighbour on"))?;
    inner
        .neighbours()
        .add(eth0, IpAddr::V4(plan.host_ip))
        .link_layer_address(&host_mac)
        .replace()
        .execute()
        .await
        .map_err(in_ns("add the host as a neighbour on", SANDBOX_IF))
}

/// The hardware address of the link `index`.
async fn link_mac(handle: &Handle, index: u32) -> Result<Vec<u8>, rtnetlink::Error> {
    let mut links = handle.link().get().match_index(index).execute();
    let message = links
        .try_next()
        .await?
        .ok_or(rtnetlink::Error::RequestFailed)?;
    message
        .attributes
        .into_iter()
        .find_map(|attribute| match attribute {
            rtnetlink::packet_route::link::LinkAttribute::Address(mac) => Some(mac),
            _ => None,
        })
        .ok_or(rtnetlink::Error::RequestFailed)
}

async fn link_index(handle: &Handle, name: &str) -> Result<u32, rtnetlink::Error> {
    let mut links = handle.link().get().match_name(name.to_owned()).execute();
    match links.try_next().await? {
        Some(msg) => Ok(msg.header.index),
        None => Err(rtnetlink::Error::RequestFailed),
    }
}

/// Deletes a host-namespace link by name; a missing link counts as success.
async fn delete_link(handle: &Handle, name: &str) -> Result<(), NetError> {
    let msg = LinkUnspec::new_with_name(name).build();
    match handle.link().del_with_message(msg).execute().await {
        Ok(()) => Ok(()),
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code().abs() == libc::ENODEV => Ok(()),
        Err(source) => Err(NetError::Netlink {
            step: "delete",
            interface: name.to_owned(),
            netns: None,
            source: Box::new(source),
        }),
    }
}

/// Unmounts and removes the slot's namespace file (fast, idempotent). The namespace itself
/// dies once no process is left in it; the veth pair goes with [`delete_links_blocking`].
pub(crate) fn remove_netns(slot: &Slot) -> Result<(), NetError> {
    netns::remove(&slot.netns_path)
}

/// Deletes host-namespace links by name (missing ones count as deleted); every name is
/// tried, the first failure is returned. Blocking, call it on a dedicated thread.
pub(crate) fn delete_links_blocking(names: &[String]) -> Result<(), NetError> {
    block_on(async {
        let host = connect(None)?;
        let mut result = Ok(());
        for name in names {
            let r = delete_link(&host, name).await;
            result = result.and(r);
        }
        result
    })
}
