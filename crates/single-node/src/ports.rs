//! Port routes: where the proxy sends traffic for one port of one sandbox.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};

use crate::error::{Error, Result};

/// `(sandbox, port) → address` routes, plus per-sandbox addresses that serve every port (a
/// sandbox with its own network address is reachable on any port it listens on). Cloning
/// shares the registry; the backend removes a sandbox's routes when it is deleted.
#[derive(Clone, Debug, Default)]
pub struct PortRegistry {
    inner: Arc<RwLock<Routes>>,
}

#[derive(Debug, Default)]
struct Routes {
    exact: HashMap<(String, u16), SocketAddr>,
    any_port: HashMap<String, IpAddr>,
}

impl PortRegistry {
    /// An empty registry.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Route `port` of `sandbox_id` to `target` (replacing any previous route).
    pub fn route(&self, sandbox_id: &str, port: u16, target: SocketAddr) {
        self.write()
            .exact
            .insert((sandbox_id.to_owned(), port), target);
    }

    /// Route every port of `sandbox_id` to the same port at `address`.
    pub fn route_all_ports(&self, sandbox_id: &str, address: IpAddr) {
        self.write().any_port.insert(sandbox_id.to_owned(), address);
    }

    /// Where `port` of `sandbox_id` is reached. An exact route wins over an any-port route.
    ///
    /// # Errors
    ///
    /// [`Error::SandboxNotFound`] when the sandbox has no route for that port.
    pub fn target(&self, sandbox_id: &str, port: u16) -> Result<SocketAddr> {
        let routes = self.read();
        if let Some(target) = routes.exact.get(&(sandbox_id.to_owned(), port)) {
            return Ok(*target);
        }
        routes
            .any_port
            .get(sandbox_id)
            .map(|address| SocketAddr::new(*address, port))
            .ok_or_else(|| Error::SandboxNotFound(sandbox_id.to_owned()))
    }

    /// Drop every route of `sandbox_id`.
    pub fn remove_sandbox(&self, sandbox_id: &str) {
        let mut routes = self.write();
        routes.exact.retain(|(id, _), _| id != sandbox_id);
        routes.any_port.remove(sandbox_id);
    }

    /// Number of sandboxes with at least one route.
    #[must_use]
    pub fn sandbox_count(&self) -> usize {
        let routes = self.read();
        let mut ids: std::collections::HashSet<&str> =
            routes.exact.keys().map(|(id, _)| id.as_str()).collect();
        ids.extend(routes.any_port.keys().map(String::as_str));
        ids.len()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Routes> {
        // Map inserts and removals cannot leave the maps half-changed: poison is harmless.
        self.inner
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Routes> {
        self.inner
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_routes_win_and_removal_is_total() {
        let ports = PortRegistry::new();
        let envd: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        ports.route_all_ports("a", "10.0.0.2".parse().unwrap());
        ports.route("a", 49983, envd);
        ports.route("b", 80, "127.0.0.1:81".parse().unwrap());
        assert_eq!(ports.target("a", 49983).unwrap(), envd);
        assert_eq!(
            ports.target("a", 3000).unwrap(),
            "10.0.0.2:3000".parse().unwrap()
        );
        assert!(ports.target("b", 81).is_err());
        assert_eq!(ports.sandbox_count(), 2);
        ports.remove_sandbox("a");
        assert!(matches!(
            ports.target("a", 3000),
            Err(Error::SandboxNotFound(_))
        ));
        assert!(ports.target("a", 49983).is_err());
        assert_eq!(
            ports.target("b", 80).unwrap(),
            "127.0.0.1:81".parse().unwrap()
        );
        assert_eq!(ports.sandbox_count(), 1);
    }
}
