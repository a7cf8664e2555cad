//! What `GET /files` and `POST /files` share: the query and who may use them.
//!
//! `/files` is exempt from the token middleware because a signed URL stands in for the token
//! (that is what `download_url`/`upload_url` hand out to browsers and `curl`).

use axum::http::HeaderMap;
use serde::Deserialize;

use super::signature::{self, Operation};
use super::{HttpError, unix_now};
use crate::auth::{ACCESS_TOKEN_HEADER, constant_time_eq};
use crate::state::Envd;

/// The query of `/files` (unknown parameters are ignored).
#[derive(Clone, Debug, Default, Deserialize)]
pub struct FilesQuery {
    /// The file, relative to the user's home unless absolute; `~` expands.
    pub path: Option<String>,
    /// The user to act as (default: envd's default user).
    pub username: Option<String>,
    /// A signed URL's signature (see [`signature`]).
    pub signature: Option<String>,
    /// A signed URL's expiry, unix seconds.
    pub signature_expiration: Option<i64>,
}

impl FilesQuery {
    /// The user named in the query; empty is the same as none (the default user).
    #[must_use]
    pub fn username(&self) -> Option<&str> {
        self.username.as_deref().filter(|name| !name.is_empty())
    }
}

/// Allow the request when envd has no token, when it carries the right `X-Access-Token`, or
/// when its signature fits the path, `operation`, user and expiry. A token header that is
/// present but wrong is refused even with a good signature (as E2B's envd does).
///
/// # Errors
///
/// 401 with E2B's messages (`signature is already expired` verbatim).
pub fn authorize(
    envd: &Envd,
    headers: &HeaderMap,
    query: &FilesQuery,
    operation: Operation,
) -> Result<(), HttpError> {
    let Some(token) = envd.settings().access_token else {
        return Ok(());
    };
    if let Some(sent) = headers.get(ACCESS_TOKEN_HEADER) {
        return if constant_time_eq(sent.as_bytes(), token.as_bytes()) {
            Ok(())
        } else {
            Err(HttpError::unauthorized(
                "access token present in header but does not match",
            ))
        };
    }
    signature::verify(
        query.signature.as_deref(),
        query.path.as_deref().unwrap_or_default(),
        operation,
        query.username.as_deref(),
        &token,
        query.signature_expiration,
        unix_now(),
    )
    .map_err(|error| HttpError::unauthorized(error.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Settings;
    use crate::users::UserDb;

    fn envd(token: Option<&str>) -> Envd {
        Envd::new(
            Settings {
                access_token: token.map(str::to_owned),
                default_user: "root".into(),
                ..Settings::default()
            },
            UserDb::default(),
        )
    }

    fn query(path: &str, signature: Option<String>, expiration: Option<i64>) -> FilesQuery {
        FilesQuery {
            path: Some(path.into()),
            username: None,
            signature,
            signature_expiration: expiration,
        }
    }

    #[test]
    fn no_token_no_check() {
        let q = query("a", None, None);
        assert!(authorize(&envd(None), &HeaderMap::new(), &q, Operation::Read).is_ok());
    }

    #[test]
    fn header_or_signature() {
        let envd = envd(Some("T"));
        let mut headers = HeaderMap::new();
        let unsigned = query("a", None, None);
        let refused = authorize(&envd, &headers, &unsigned, Operation::Read).unwrap_err();
        assert_eq!(refused.message, "missing signature query parameter");

        headers.insert(ACCESS_TOKEN_HEADER, "T".parse().unwrap());
        assert!(authorize(&envd, &headers, &unsigned, Operation::Read).is_ok());
        headers.insert(ACCESS_TOKEN_HEADER, "wrong".parse().unwrap());
        assert_eq!(
            authorize(&envd, &headers, &unsigned, Operation::Read)
                .unwrap_err()
                .status,
            axum::http::StatusCode::UNAUTHORIZED
        );

        let headers = HeaderMap::new();
        let later = unix_now() + 60;
        let signed = query(
            "a",
            Some(signature::sign(
                "a",
                Operation::Read,
                None,
                "T",
                Some(later),
            )),
            Some(later),
        );
        assert!(authorize(&envd, &headers, &signed, Operation::Read).is_ok());
        // A read signature does not allow a write, nor another path.
        assert!(authorize(&envd, &headers, &signed, Operation::Write).is_err());
        let moved = FilesQuery {
            path: Some("b".into()),
            ..signed.clone()
        };
        assert!(authorize(&envd, &headers, &moved, Operation::Read).is_err());

        let past = unix_now() - 1;
        let expired = query(
            "a",
            Some(signature::sign("a", Operation::Read, None, "T", Some(past))),
            Some(past),
        );
        let refused = authorize(&envd, &headers, &expired, Operation::Read).unwrap_err();
        assert_eq!(refused.message, "signature is already expired");
    }
}
