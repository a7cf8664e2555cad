//! Signed `/files` URLs that name no sandbox.
//!
//! With `E2B_SANDBOX_URL` set (recipe A), the SDK signs download and upload URLs as
//! `<sandbox URL>/files?path=...&signature=v1_...`: neither the host nor a header says which
//! sandbox the URL is for. The signature is a SHA-256 over the path, operation, user, expiry
//! and the sandbox's envd token, so the only way to find its sandbox is to compute it under
//! each live sandbox's token until one fits. That costs one hash per live sandbox, so:
//!
//! - a signature that fitted is remembered (signature → sandbox), and the same URL again costs
//!   one check;
//! - a signature never seen before spends from a budget of scans ([`SCAN_BURST`], refilled at
//!   [`SCANS_PER_SECOND`]), shared by all clients; past it the request is refused with 429, so
//!   a flood of made-up signatures costs the daemon at most that many scans a second instead
//!   of one scan per request. URLs that name their sandbox (host `<port>-<id>.<domain>`, or the
//!   `E2b-Sandbox-Id` header) never come here.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use axum::body::Body;
use axum::extract::Request;
use axum::http::Method;
use firkin_envd::http::signature::{self, Operation};
use firkin_single_node::{ListQuery, SandboxSession};

use crate::AppState;
use crate::auth::constant_time_eq;

/// How many signed URLs the proxy remembers the sandbox of.
const REMEMBERED: usize = 1024;

/// Scans of never-seen signatures allowed at once.
pub const SCAN_BURST: u32 = 256;

/// Scans of never-seen signatures allowed per second, after the burst.
pub const SCANS_PER_SECOND: u32 = 128;

/// What the proxy knows of signed URLs: the sandboxes of those seen before, the scan budget,
/// and how many signatures it computed.
#[derive(Debug)]
pub(crate) struct SignedUrls {
    remembered: Mutex<HashMap<String, String>>,
    budget: Mutex<ScanBudget>,
    checks: AtomicU64,
}

impl Default for SignedUrls {
    fn default() -> Self {
        Self {
            remembered: Mutex::default(),
            budget: Mutex::new(ScanBudget::new(
                SCAN_BURST,
                SCANS_PER_SECOND,
                Instant::now(),
            )),
            checks: AtomicU64::new(0),
        }
    }
}

impl SignedUrls {
    /// Signatures computed so far to find the sandbox of a signed URL.
    pub(crate) fn checks(&self) -> u64 {
        self.checks.load(Ordering::Relaxed)
    }

    fn remembered(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.remembered
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Where a signed URL leads.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Lookup {
    /// The live sandbox whose token makes the signature fit.
    Sandbox(String),
    /// No live sandbox (or not a signature envd could have made).
    NoMatch,
    /// A never-seen signature while the scan budget is spent.
    OverBudget,
}

/// A token bucket: `burst` scans at once, refilled at `per_second`.
#[derive(Debug)]
struct ScanBudget {
    tokens: f64,
    burst: f64,
    per_second: f64,
    last: Instant,
}

impl ScanBudget {
    fn new(burst: u32, per_second: u32, now: Instant) -> Self {
        Self {
            tokens: f64::from(burst),
            burst: f64::from(burst),
            per_second: f64::from(per_second),
            last: now,
        }
    }

    /// Spend one scan at `now`, if there is one left.
    fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The parts of a signed `/files` URL that its signature covers.
pub(crate) struct SignedFiles {
    signature: String,
    path: String,
    operation: Operation,
    username: String,
    /// `None` also when the parameter is present but not a number (nothing can match then).
    expiration: Option<i64>,
    expiration_garbled: bool,
}

impl SignedFiles {
    /// The signed parts of a `GET` or `POST /files?...signature=...`; `None` without a
    /// signature.
    pub(crate) fn from_request(request: &Request<Body>) -> Option<Self> {
        let query = request.uri().query()?;
        let mut signature = None;
        let mut path = None;
        let mut username = None;
        let mut expiration = None;
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            let slot = match key.as_ref() {
                "signature" => &mut signature,
                "path" => &mut path,
                "username" => &mut username,
                "signature_expiration" => &mut expiration,
                _ => continue,
            };
            if slot.is_none() {
                *slot = Some(value.into_owned());
            }
        }
        let parsed_expiration = expiration.as_deref().map(|text| text.parse::<i64>().ok());
        Some(Self {
            signature: signature?,
            path: path.unwrap_or_default(),
            operation: if request.method() == Method::POST {
                Operation::Write
            } else {
                Operation::Read
            },
            username: username.unwrap_or_default(),
            expiration: parsed_expiration.flatten(),
            expiration_garbled: matches!(parsed_expiration, Some(None)),
        })
    }

    /// The signature envd computes for these parts under `token` (envd's own function).
    fn expected(&self, token: &str) -> String {
        let username = (!self.username.is_empty()).then_some(self.username.as_str());
        signature::sign(&self.path, self.operation, username, token, self.expiration)
    }

    /// Whether the signature has the shape envd's signatures have (`v1_` and 43 base64
    /// characters): anything else fits no sandbox, and costs no hashing.
    fn well_formed(&self) -> bool {
        self.signature.len() == 46
            && self.signature.starts_with("v1_")
            && self.signature[3..]
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || byte == b'+' || byte == b'/')
    }

    /// Whether the signature fits `sandbox`'s envd token.
    fn fits(&self, urls: &SignedUrls, sandbox: &SandboxSession) -> bool {
        let Some(token) = sandbox.record().envd_access_token.as_deref() else {
            return false;
        };
        urls.checks.fetch_add(1, Ordering::Relaxed);
        constant_time_eq(self.expected(token).as_bytes(), self.signature.as_bytes())
    }

    /// The live (running or paused) sandbox whose envd token makes the signature fit, as the
    /// [module docs](self) describe.
    pub(crate) fn find(&self, state: &AppState) -> Lookup {
        if self.expiration_garbled || !self.well_formed() {
            return Lookup::NoMatch;
        }
        let urls = &state.proxy.signed_urls;
        let remembered = urls.remembered().get(&self.signature).cloned();
        if let Some(id) = remembered {
            if let Ok(sandbox) = state.backend.get(&id)
                && self.fits(urls, &sandbox)
            {
                return Lookup::Sandbox(id);
            }
            // Gone: no other sandbox has its token, so nothing else fits either.
            urls.remembered().remove(&self.signature);
            return Lookup::NoMatch;
        }
        let spent = urls
            .budget
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take(Instant::now());
        if !spent {
            return Lookup::OverBudget;
        }
        let Some(id) = self.scan(state) else {
            return Lookup::NoMatch;
        };
        let mut remembered = urls.remembered();
        if remembered.len() >= REMEMBERED {
            remembered.clear();
        }
        remembered.insert(self.signature.clone(), id.clone());
        Lookup::Sandbox(id)
    }

    /// Check the signature against every live sandbox.
    fn scan(&self, state: &AppState) -> Option<String> {
        let mut query = ListQuery {
            limit: Some(ListQuery::MAX_LIMIT),
            ..ListQuery::default()
        };
        loop {
            let page = match state.backend.list(&query) {
                Ok(page) => page,
                Err(error) => {
                    tracing::warn!(%error, "listing sandboxes for a signed /files URL failed");
                    return None;
                }
            };
            if let Some(sandbox) = page
                .sandboxes
                .iter()
                .find(|s| self.fits(&state.proxy.signed_urls, s))
            {
                return Some(sandbox.sandbox_id().to_owned());
            }
            query.next_token = Some(page.next_token?);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn signatures_match_envd() {
        // envd's known vectors (crates/envd/src/http/signature.rs).
        let signed = |path: &str, operation, username: &str, expiration| SignedFiles {
            signature: String::new(),
            path: path.to_owned(),
            operation,
            username: username.to_owned(),
            expiration,
            expiration_garbled: false,
        };
        assert_eq!(
            signed("/home/user/hello.txt", Operation::Read, "", None).expected("secret-token"),
            "v1_ytpZKKz2vQXRZ8+eS8xBbRr9LL4kcwA5EgzNAGo1cWU"
        );
        assert_eq!(
            signed(
                "docs/a b.txt",
                Operation::Write,
                "root",
                Some(1_700_000_000)
            )
            .expected("secret-token"),
            "v1_FiXsjaR3xPrm/n1M0Vd9KT7qGVzUwWqinvFtxq6ULNI"
        );
    }

    #[test]
    fn the_scan_budget_allows_a_burst_then_its_rate() {
        let start = Instant::now();
        let mut budget = ScanBudget::new(3, 2, start);
        assert!((0..3).all(|_| budget.take(start)), "the burst");
        assert!(!budget.take(start), "spent");
        // Half a second at 2 a second: one more, not two.
        let later = start + Duration::from_millis(500);
        assert!(budget.take(later));
        assert!(!budget.take(later));
        // A long pause refills to the burst, no further.
        let much_later = later + Duration::from_secs(60);
        assert!((0..3).all(|_| budget.take(much_later)));
        assert!(!budget.take(much_later));
    }
}
