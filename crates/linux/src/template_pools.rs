//! Warm pools of templates from images: one [`WarmPool`] per template build that sandboxes
//! are created from, so that a custom template is handed out warm as `base` is.
//!
//! A template gets its pool at its first create (that create is cold; the pool then keeps
//! `floor` sandboxes, growing with demand like `base`'s). At most `capacity` templates keep a
//! pool: the one used least recently loses its pool when another needs one, and a rebuilt
//! template (a new build) gets a new pool while the old one ages out the same way.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use firkin_single_node::{Result, TemplateImage};

use crate::driver::Core;
use crate::warm::WarmPool;

/// The pools, the most recently used first.
#[derive(Debug)]
pub(crate) struct TemplatePools {
    core: Arc<Core>,
    floor: usize,
    /// Floors of the templates named, instead of `floor`.
    floors: HashMap<String, usize>,
    ceiling: usize,
    capacity: usize,
    pools: Mutex<VecDeque<(String, Arc<WarmPool>)>>,
}

impl TemplatePools {
    /// Pools of `floor` (or the template's own in `floors`, by name) to `ceiling` sandboxes,
    /// for at most `capacity` templates.
    pub(crate) fn new(
        core: Arc<Core>,
        floor: usize,
        floors: HashMap<String, usize>,
        ceiling: usize,
        capacity: usize,
    ) -> Self {
        Self {
            core,
            floor,
            floors,
            ceiling,
            capacity,
            pools: Mutex::new(VecDeque::new()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<(String, Arc<WarmPool>)>> {
        // Every critical section is a plain list update.
        self.pools
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The pool of `image`'s build, made now if it has none, now the most recently used.
    /// The pool that falls beyond the capacity is shut down in the background.
    /// None for an image that is not to be kept warm (a build's step).
    pub(crate) fn pool(&self, image: &TemplateImage) -> Option<Arc<WarmPool>> {
        let floor = self.floors.get(&image.name).copied().unwrap_or(self.floor);
        if self.capacity == 0 || floor == 0 || !image.keep_warm {
            return None;
        }
        let mut pools = self.lock();
        let pool = match pools.iter().position(|(build, _)| *build == image.build_id) {
            Some(at) => pools.remove(at)?.1,
            None => Arc::new(WarmPool::start(
                Arc::clone(&self.core),
                Some(image.clone()),
                floor,
                self.ceiling.max(floor),
            )),
        };
        pools.push_front((image.build_id.clone(), Arc::clone(&pool)));
        while pools.len() > self.capacity {
            if let Some((build, evicted)) = pools.pop_back() {
                tracing::info!(
                    build,
                    "a template's warm pool gives way to a more recent one"
                );
                tokio::spawn(async move {
                    if let Err(error) = evicted.shutdown().await {
                        tracing::warn!(%error, "tearing down an evicted template pool");
                    }
                });
            }
        }
        Some(pool)
    }

    /// (ready, target) summed over the pools.
    pub(crate) fn sizes(&self) -> (usize, usize) {
        self.lock()
            .iter()
            .fold((0, 0), |(ready, target), (_, pool)| {
                (ready + pool.ready(), target + pool.target())
            })
    }

    /// Tears every pool down.
    pub(crate) async fn shutdown(&self) -> Result<()> {
        let pools: Vec<_> = self.lock().drain(..).collect();
        let mut result = Ok(());
        for (_, pool) in pools {
            result = result.and(pool.shutdown().await);
        }
        result
    }
}
