//! The layers that builds in progress stand on or have made: no ready build names them yet,
//! so a prune (the automatic one under the disk floor included) must keep them.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use firkin_image::Digest;

/// How many running builds hold each layer.
#[derive(Debug, Default)]
pub(crate) struct HeldLayers {
    counts: Mutex<HashMap<Digest, usize>>,
}

impl HeldLayers {
    fn counts(&self) -> std::sync::MutexGuard<'_, HashMap<Digest, usize>> {
        // Every critical section is a plain map update.
        self.counts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A new, empty hold for one build.
    pub(crate) fn hold(self: &Arc<Self>) -> Hold {
        Hold {
            owner: Arc::clone(self),
            layers: HashSet::new(),
        }
    }

    /// Every layer some build holds now.
    pub(crate) fn all(&self) -> HashSet<Digest> {
        self.counts().keys().copied().collect()
    }
}

/// One build's hold: its layers are kept until it is dropped (after the build is recorded).
#[derive(Debug)]
pub(crate) struct Hold {
    owner: Arc<HeldLayers>,
    layers: HashSet<Digest>,
}

impl Hold {
    /// Holds `layers` too.
    pub(crate) fn add(&mut self, layers: &[Digest]) {
        let mut counts = self.owner.counts();
        for layer in layers {
            if self.layers.insert(*layer) {
                *counts.entry(*layer).or_default() += 1;
            }
        }
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        let mut counts = self.owner.counts();
        for layer in &self.layers {
            if let Some(count) = counts.get_mut(layer) {
                *count -= 1;
                if *count == 0 {
                    counts.remove(layer);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_layer_is_held_while_any_build_holds_it() {
        let held = Arc::new(HeldLayers::default());
        let (a, b) = (Digest::of(b"a"), Digest::of(b"b"));
        let mut first = held.hold();
        let mut second = held.hold();
        first.add(&[a, b]);
        first.add(&[a]);
        second.add(&[a]);
        assert_eq!(held.all(), HashSet::from([a, b]));
        drop(first);
        assert_eq!(held.all(), HashSet::from([a]));
        drop(second);
        assert!(held.all().is_empty());
    }
}
