//! The daemon's API key: where the control plane accepts it, and how the proxy keeps it out
//! of sandboxes.
//!
//! A client may present the key as `X-API-KEY: <key>` (what the E2B SDKs send) or as
//! `Authorization: Bearer <key>`. Both are compared in constant time.
//!
//! The proxy forwards requests to code that runs inside sandboxes, which must never learn the
//! key (with it, a sandbox could create, read or kill every other sandbox). So before a
//! request is forwarded:
//!
//! - every `X-API-KEY` header goes, whatever its value: it is the E2B control plane's header,
//!   the SDKs never send it to a sandbox, and a value that is not our key may still be a key
//!   of another E2B deployment;
//! - an `Authorization` header goes only when it is `Bearer <our key>`. Other values pass:
//!   `Authorization` is shared with what sandboxes need, envd's user selection
//!   (`Basic base64("<user>:")`) and a user's own server's credentials.
//!
//! Sandbox credentials pass untouched: `X-Access-Token` (envd's token, which envd checks)
//! and `E2B-Traffic-Access-Token` (the per-sandbox traffic token of `E2B-CONTRACT-2.md` §4.3).

use axum::http::header::{self, HeaderMap, HeaderValue};

/// The control plane's key header.
pub const API_KEY_HEADER: &str = "x-api-key";

/// What a request presents as the API key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presented {
    /// No `X-API-KEY` and no `Authorization: Bearer`.
    Nothing,
    /// A key that is not the daemon's.
    WrongKey,
    /// The daemon's key.
    TheKey,
}

/// Whether `headers` carry `key` in `X-API-KEY` or as `Authorization: Bearer`; any matching
/// header is enough.
#[must_use]
pub fn presented(headers: &HeaderMap, key: &str) -> Presented {
    let mut result = Presented::Nothing;
    let offered = headers
        .get_all(API_KEY_HEADER)
        .iter()
        .map(HeaderValue::as_bytes)
        .chain(
            headers
                .get_all(header::AUTHORIZATION)
                .iter()
                .filter_map(bearer),
        );
    for candidate in offered {
        if constant_time_eq(candidate, key.as_bytes()) {
            return Presented::TheKey;
        }
        result = Presented::WrongKey;
    }
    result
}

/// The token of an `Authorization: Bearer <token>` value (scheme case-insensitive, as RFC
/// 9110 has it).
fn bearer(value: &HeaderValue) -> Option<&[u8]> {
    let bytes = value.as_bytes();
    let scheme = bytes.get(..7)?;
    scheme
        .eq_ignore_ascii_case(b"bearer ")
        .then(|| bytes[7..].trim_ascii())
}

/// Remove the daemon's credentials from a request about to be forwarded into a sandbox (see
/// the module docs for what goes and what stays).
pub fn strip_daemon_credentials(headers: &mut HeaderMap, key: &str) {
    headers.remove(API_KEY_HEADER);
    let carries_key = |value: &HeaderValue| {
        bearer(value).is_some_and(|token| constant_time_eq(token, key.as_bytes()))
    };
    if headers
        .get_all(header::AUTHORIZATION)
        .iter()
        .any(carries_key)
    {
        let kept: Vec<HeaderValue> = headers
            .get_all(header::AUTHORIZATION)
            .iter()
            .filter(|value| !carries_key(value))
            .cloned()
            .collect();
        headers.remove(header::AUTHORIZATION);
        for value in kept {
            headers.append(header::AUTHORIZATION, value);
        }
    }
}

/// Equality whose time depends only on the lengths (envd's, which compares its tokens).
pub use firkin_envd::auth::constant_time_eq;

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.append(*name, HeaderValue::from_static(value));
        }
        map
    }

    #[test]
    fn the_key_is_accepted_in_either_header() {
        let check = |pairs: &[(&'static str, &'static str)]| presented(&headers(pairs), "k3y");
        assert_eq!(check(&[("x-api-key", "k3y")]), Presented::TheKey);
        assert_eq!(check(&[("authorization", "Bearer k3y")]), Presented::TheKey);
        assert_eq!(
            check(&[("authorization", "bearer  k3y ")]),
            Presented::TheKey
        );
        assert_eq!(
            check(&[("x-api-key", "old"), ("authorization", "Bearer k3y")]),
            Presented::TheKey
        );
        assert_eq!(check(&[("x-api-key", "nope")]), Presented::WrongKey);
        assert_eq!(
            check(&[("authorization", "Bearer nope")]),
            Presented::WrongKey
        );
        assert_eq!(check(&[("authorization", "Bearer")]), Presented::Nothing);
        assert_eq!(check(&[("authorization", "Basic k3y")]), Presented::Nothing);
        assert_eq!(check(&[]), Presented::Nothing);
    }

    #[test]
    fn only_the_daemons_credentials_are_stripped() {
        let mut map = headers(&[
            ("x-api-key", "anything"),
            ("authorization", "Bearer k3y"),
            ("authorization", "Basic dXNlcjo="),
            ("x-access-token", "envd"),
            ("e2b-traffic-access-token", "traffic"),
        ]);
        strip_daemon_credentials(&mut map, "k3y");
        assert!(!map.contains_key("x-api-key"));
        let authorization: Vec<_> = map.get_all("authorization").iter().collect();
        assert_eq!(authorization, ["Basic dXNlcjo="]);
        assert_eq!(map["x-access-token"], "envd");
        assert_eq!(map["e2b-traffic-access-token"], "traffic");

        let mut own = headers(&[("authorization", "Bearer the-users-own-token")]);
        strip_daemon_credentials(&mut own, "k3y");
        assert_eq!(own["authorization"], "Bearer the-users-own-token");
    }
}
