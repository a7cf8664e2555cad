//! A pool of ready slots, refilled in the background so that taking one costs no set-up.

use std::collections::{BTreeSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::addr::{InstanceTag, SlotPlan, legacy_host_if_name};
use super::forward::{self, IpForward};
use super::slot::{delete_links_blocking, on_thread, prepare_blocking, remove_netns};
use super::{NetConfig, NetError, Slot, netns, nft, overlap, reclaim_leftovers};

/// How long the filler waits after a failed preparation before trying again.
const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Keeps `pool_size` slots prepared ahead (egress as `default_internet_access`).
///
/// Slots are torn down on release, never reused: a fresh namespace is clean by construction
/// (no sockets, routes, conntrack entries or neighbours from the previous sandbox), while a
/// reset would have to prove it. Release unmounts the namespace at once and deletes the veth
/// pair in the background (deleting a veth waits ~20–30 ms for the kernel's RCU grace
/// periods); the index stays reserved until the veth is gone, so it is never reused early.
/// Indices are allocated lowest-free-first inside the range.
///
/// Everything the pool makes on the host carries its [`InstanceTag`], so pools with different
/// namespace directories and disjoint ranges share a host without touching each other's
/// slots; [`SlotPool::start`] refuses a range another interface already uses.
#[derive(Debug)]
pub struct SlotPool {
    inner: Arc<Inner>,
    filler: Mutex<Option<JoinHandle<()>>>,
}

#[derive(Debug)]
struct Inner {
    config: NetConfig,
    tag: InstanceTag,
    state: Mutex<State>,
    wake: Notify,
}

#[derive(Debug, Default)]
struct State {
    ready: VecDeque<Slot>,
    /// Every index in use: ready, being prepared, handed out, kept from a previous run, or
    /// being torn down.
    used: BTreeSet<u32>,
    /// Indices handed out (or kept) and not yet released.
    taken: BTreeSet<u32>,
    /// Background veth deletions not yet finished.
    pending: usize,
    closed: bool,
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, State> {
        // Every critical section leaves the state consistent, so a poisoned lock is usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn allocate(&self, state: &mut State) -> Result<SlotPlan, NetError> {
        let capacity = self.config.range.slot_capacity();
        let index = (0..capacity)
            .find(|i| !state.used.contains(i))
            .ok_or_else(|| NetError::RangeExhausted {
                range: self.config.range.to_string(),
                index: capacity,
                capacity,
            })?;
        state.used.insert(index);
        SlotPlan::new(self.config.range, self.tag, index)
    }

    fn free(&self, index: u32) {
        self.state().used.remove(&index);
    }

    async fn prepare(self: &Arc<Self>, plan: SlotPlan, internet: bool) -> Result<Slot, NetError> {
        let path = self.config.netns_path(plan.index);
        let index = plan.index;
        let slot = on_thread(format!("firkin-slot-{index}"), move || {
            prepare_blocking(&plan, &path, internet)
        })
        .await;
        if slot.is_err() {
            self.free(index);
        }
        slot
    }
}

impl SlotPool {
    /// Checks that no interface of another instance uses the range, removes this instance's
    /// leftovers not in `keep` (slots of sandboxes a previous daemon left running), installs
    /// the instance's nftables table, reserves `keep`'s indices and starts filling the pool
    /// in the background. Needs a tokio runtime.
    ///
    /// Fails with [`NetError::RangeOverlap`] when an address or route of an interface other
    /// than this instance's veths (or `keep`'s) overlaps the range: another pool on the host
    /// with an overlapping range, or one of the host's networks. Nothing is changed then.
    pub async fn start(config: NetConfig, keep: &[Slot]) -> Result<Self, NetError> {
        config.validate()?;
        let tag = config.instance_tag();
        let range = config.range;
        let keep_ifs: Vec<String> = keep.iter().map(|s| s.host_if.clone()).collect();
        on_thread("firkin-net-check".into(), move || {
            overlap::check_range_free(range, |name| {
                tag.parse_host_if(name).is_some() || keep_ifs.iter().any(|k| k == name)
            })
        })
        .await?;
        reclaim_leftovers(&config, keep).await?;
        netns::ensure_dir(&config.netns_dir)?;
        let ruleset = nft::table_ruleset(config.range, tag, &config.egress_allow_private);
        on_thread("firkin-nft".into(), move || nft::apply(&ruleset)).await?;
        let inner = Arc::new(Inner {
            state: Mutex::new(State {
                used: keep.iter().map(|s| s.index).collect(),
                taken: keep.iter().map(|s| s.index).collect(),
                ..State::default()
            }),
            config,
            tag,
            wake: Notify::new(),
        });
        let filler = tokio::spawn(fill(Arc::clone(&inner)));
        Ok(Self {
            inner,
            filler: Mutex::new(Some(filler)),
        })
    }

    /// The tag every host object of this pool carries (veths, nftables table).
    pub fn instance_tag(&self) -> InstanceTag {
        self.inner.tag
    }

    /// The pool's configuration.
    pub fn config(&self) -> &NetConfig {
        &self.inner.config
    }

    /// How many slots are ready to be taken now.
    pub fn ready(&self) -> usize {
        self.inner.state().ready.len()
    }

    /// Waits until `pool_size` slots are ready or `timeout` passes; returns whether it is full.
    pub async fn wait_full(&self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.ready() < self.inner.config.pool_size {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        true
    }

    /// Takes a ready slot (or prepares one now if the pool is empty) with egress set to
    /// `internet_access`. Changing a pooled slot's egress costs one netlink message.
    /// Fails with [`NetError::PoolClosed`] after [`SlotPool::shutdown`].
    pub async fn take(&self, internet_access: bool) -> Result<Slot, NetError> {
        let pooled = {
            let mut state = self.inner.state();
            if state.closed {
                return Err(NetError::PoolClosed {
                    range: self.inner.config.range.to_string(),
                });
            }
            let slot = state.ready.pop_front();
            if let Some(slot) = &slot {
                state.taken.insert(slot.index);
            }
            slot
        };
        self.inner.wake.notify_one();
        let mut slot = match pooled {
            Some(slot) => slot,
            None => {
                let plan = {
                    let mut state = self.inner.state();
                    self.inner.allocate(&mut state)?
                };
                let slot = self.inner.prepare(plan, internet_access).await?;
                let closed = {
                    let mut state = self.inner.state();
                    state.taken.insert(slot.index);
                    state.closed
                };
                if closed {
                    // A shutdown ran meanwhile and may have deleted the table: no unfenced slot.
                    if let Err(e) = self.release(slot).await {
                        tracing::warn!(error = %e, "releasing a slot made during shutdown");
                    }
                    return Err(NetError::PoolClosed {
                        range: self.inner.config.range.to_string(),
                    });
                }
                slot
            }
        };
        if slot.internet_access != internet_access {
            match slot.set_internet_access(internet_access).await {
                Ok(()) => {}
                Err(e) => {
                    // Best effort: the caller never sees this slot, so it must not leak.
                    if let Err(cleanup) = self.release(slot).await {
                        tracing::warn!(error = %cleanup, "releasing a slot after a failed take");
                    }
                    return Err(e);
                }
            }
        }
        Ok(slot)
    }

    /// Tears `slot` down: its namespace is unmounted before this returns, its veth pair is
    /// deleted in the background, then its index is freed. Releasing a slot that is not
    /// handed out (released already) does nothing; after a failure, releasing it again
    /// retries. Call it once per taken slot: a stale copy released after its index was
    /// taken again would tear down the new holder's slot.
    pub async fn release(&self, slot: Slot) -> Result<(), NetError> {
        if !self.inner.state().taken.remove(&slot.index) {
            return Ok(());
        }
        if let Err(e) = remove_netns(&slot) {
            self.inner.state().taken.insert(slot.index);
            return Err(e);
        }
        let mut names = vec![self.inner.tag.host_if_name(slot.index)];
        // A slot kept from a version before instance tags has its veth under the old name.
        if slot.host_if == legacy_host_if_name(slot.index) {
            names.push(slot.host_if);
        }
        self.delete_in_background(slot.index, names);
        Ok(())
    }

    /// Deletes the veths `names` of slot `index`, then frees the index. The names are
    /// derived from the index (a caller's [`Slot`] only chooses between the current and the
    /// legacy name), so a release cannot delete an interface that is not this pool's.
    fn delete_in_background(&self, index: u32, names: Vec<String>) {
        self.inner.state().pending += 1;
        let inner = Arc::clone(&self.inner);
        tokio::spawn(async move {
            let deleted = on_thread(format!("firkin-slot-{index}"), move || {
                delete_links_blocking(&names)
            })
            .await;
            match deleted {
                Ok(()) => inner.free(index),
                // The index stays reserved: a veth of that name may still exist.
                Err(e) => tracing::warn!(error = %e, index, "deleting a slot's veth failed"),
            }
            inner.state().pending -= 1;
            inner.wake.notify_one();
        });
    }

    /// Waits until every background veth deletion has finished.
    pub async fn settle(&self) {
        while self.inner.state().pending > 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Stops the filler and tears down the ready slots (slots handed out are the caller's
    /// to release); [`SlotPool::take`] fails afterwards. Without it, dropping the pool leaves
    /// the ready slots for [`reclaim_leftovers`] to find.
    ///
    /// When no slot is handed out any more (none kept from `start` either), it also deletes
    /// the instance's nftables table and unmounts the namespace directory's bind mount of
    /// itself, so nothing of the instance is left, and puts back `net.ipv4.ip_forward` if
    /// firkin turned it on and no firkin veth of any instance is left (see [`super::forward`]). While slots are handed out both stay:
    /// their sandboxes outlive the daemon, must stay fenced by the table, and the next
    /// daemon re-adopts them through their namespace files, which are bind mounts inside
    /// that directory (unmounting it would detach them too).
    pub async fn shutdown(&self) -> Result<(), NetError> {
        self.inner.state().closed = true;
        self.inner.wake.notify_one();
        let filler = self.filler.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(filler) = filler {
            let _ = filler.await;
        }
        let ready: Vec<Slot> = {
            let mut state = self.inner.state();
            let ready: Vec<Slot> = state.ready.drain(..).collect();
            state.taken.extend(ready.iter().map(|s| s.index));
            ready
        };
        let mut result = Ok(());
        for slot in ready {
            let r = self.release(slot).await;
            result = result.and(r);
        }
        self.settle().await;
        let handed_out = self.inner.state().taken.len();
        if handed_out > 0 {
            tracing::info!(
                handed_out,
                "slot pool shut down; its table and namespace directory stay for the live slots"
            );
            return result;
        }
        let tag = self.inner.tag;
        let dir = self.inner.config.netns_dir.clone();
        let removed = on_thread("firkin-net-shutdown".into(), move || {
            let table = nft::apply(&nft::delete_ruleset(tag));
            let mount = netns::release_dir(&dir).map(|_| ());
            // Another instance's live slots may still need forwarding.
            let forward = IpForward::host().restore(forward::firkin_veths_exist());
            if let Ok(Some(value)) = &forward {
                tracing::info!(value, "restored net.ipv4.ip_forward");
            }
            table.and(mount).and(forward.map(|_| ()))
        })
        .await;
        result.and(removed)
    }
}

impl Drop for SlotPool {
    fn drop(&mut self) {
        // The filler finishes (and tears down) a preparation in flight, then stops.
        self.inner.state().closed = true;
        self.inner.wake.notify_one();
    }
}

/// The background filler: one preparation at a time until the pool is full, then sleeps
/// until a take or release wakes it.
async fn fill(inner: Arc<Inner>) {
    let internet = inner.config.default_internet_access;
    loop {
        let plan = {
            let mut state = inner.state();
            if state.closed {
                return;
            }
            if state.ready.len() >= inner.config.pool_size {
                None
            } else {
                match inner.allocate(&mut state) {
                    Ok(plan) => Some(plan),
                    Err(e) => {
                        tracing::warn!(error = %e, "slot pool cannot grow");
                        None
                    }
                }
            }
        };
        let Some(plan) = plan else {
            inner.wake.notified().await;
            continue;
        };
        match inner.prepare(plan, internet).await {
            Ok(slot) => {
                let slot = {
                    let mut state = inner.state();
                    if state.closed {
                        slot
                    } else {
                        state.ready.push_back(slot);
                        continue;
                    }
                };
                let index = slot.index;
                let torn = on_thread(format!("firkin-slot-{index}"), move || {
                    remove_netns(&slot)
                        .and(delete_links_blocking(std::slice::from_ref(&slot.host_if)))
                })
                .await;
                match torn {
                    Ok(()) => inner.free(index),
                    Err(e) => tracing::warn!(error = %e, "tearing down a slot after close"),
                }
                return;
            }
            Err(e) => {
                tracing::warn!(error = %e, "preparing a pooled slot failed");
                tokio::select! {
                    () = tokio::time::sleep(RETRY_AFTER) => {}
                    () = inner.wake.notified() => {}
                }
            }
        }
    }
}
