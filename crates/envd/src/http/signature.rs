//! Signed `/files` URLs: what E2B's SDKs put in `download_url` and `upload_url`.
//!
//! `signature = "v1_" + base64_nopad(sha256("<path>:<read|write>:<username or ''>:<token>[:<expiration>]"))`,
//! with `signature_expiration` in unix seconds. The path and user are the query parameters as
//! the client sent them (not resolved), so a signature only fits the exact URL it was made for.

use base64::Engine;
use sha2::{Digest, Sha256};

use crate::auth::constant_time_eq;

/// What a signed URL allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Operation {
    /// `GET /files`.
    Read,
    /// `POST /files`.
    Write,
}

impl Operation {
    /// The word that goes into the signed string.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "read",
            Self::Write => "write",
        }
    }
}

/// The signature of `path` for `operation` as `username` (`None`: the default user), under
/// the access token `token`, valid until `expiration` (unix seconds; `None`: forever).
#[must_use]
pub fn sign(
    path: &str,
    operation: Operation,
    username: Option<&str>,
    token: &str,
    expiration: Option<i64>,
) -> String {
    let mut raw = format!(
        "{path}:{}:{}:{token}",
        operation.as_str(),
        username.unwrap_or_default()
    );
    if let Some(expiration) = expiration {
        raw.push(':');
        raw.push_str(&expiration.to_string());
    }
    let digest = Sha256::digest(raw.as_bytes());
    format!(
        "v1_{}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest)
    )
}

/// Why a signature was refused (the messages are E2B envd's).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// No `signature` query parameter (and no token header).
    #[error("missing signature query parameter")]
    Missing,
    /// The signature does not fit the path, operation, user, token and expiration.
    #[error("invalid signature")]
    Invalid,
    /// The signature fits, but its expiration has passed.
    #[error("signature is already expired")]
    Expired,
}

/// Check `signature` (as sent) against the one expected for the rest, at time `now` (unix
/// seconds). The comparison takes the same time wherever the signatures differ; expiry is only
/// looked at once the signature fits, so a forged expiration cannot be probed.
///
/// # Errors
///
/// [`SignatureError`] saying why the request is not allowed.
pub fn verify(
    signature: Option<&str>,
    path: &str,
    operation: Operation,
    username: Option<&str>,
    token: &str,
    expiration: Option<i64>,
    now: i64,
) -> Result<(), SignatureError> {
    let signature = signature.ok_or(SignatureError::Missing)?;
    let expected = sign(path, operation, username, token, expiration);
    if !constant_time_eq(expected.as_bytes(), signature.as_bytes()) {
        return Err(SignatureError::Invalid);
    }
    match expiration {
        Some(expiration) if expiration < now => Err(SignatureError::Expired),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Vectors computed independently with Python:
    //   base64.b64encode(hashlib.sha256(raw.encode()).digest()).rstrip(b"=")
    // (the same code as `e2b/sandbox/signature.py`).
    #[test]
    fn known_vectors() {
        assert_eq!(
            sign(
                "/home/user/hello.txt",
                Operation::Read,
                None,
                "secret-token",
                None
            ),
            "v1_ytpZKKz2vQXRZ8+eS8xBbRr9LL4kcwA5EgzNAGo1cWU"
        );
        assert_eq!(
            sign(
                "docs/a b.txt",
                Operation::Write,
                Some("root"),
                "secret-token",
                Some(1_700_000_000)
            ),
            "v1_FiXsjaR3xPrm/n1M0Vd9KT7qGVzUwWqinvFtxq6ULNI"
        );
    }

    #[test]
    fn empty_user_is_the_default_user() {
        assert_eq!(
            sign("a", Operation::Read, None, "t", None),
            sign("a", Operation::Read, Some(""), "t", None)
        );
    }

    #[test]
    fn every_part_is_bound() {
        let base = sign("a", Operation::Read, Some("u"), "t", Some(10));
        for other in [
            sign("b", Operation::Read, Some("u"), "t", Some(10)),
            sign("a", Operation::Write, Some("u"), "t", Some(10)),
            sign("a", Operation::Read, Some("v"), "t", Some(10)),
            sign("a", Operation::Read, None, "t", Some(10)),
            sign("a", Operation::Read, Some("u"), "T", Some(10)),
            sign("a", Operation::Read, Some("u"), "t", Some(11)),
            sign("a", Operation::Read, Some("u"), "t", None),
        ] {
            assert_ne!(base, other);
        }
    }

    #[test]
    fn verify_checks_signature_then_expiry() {
        let good = sign("p", Operation::Write, None, "t", Some(100));
        let check = |signature: Option<&str>, expiration, now| {
            verify(signature, "p", Operation::Write, None, "t", expiration, now)
        };
        assert_eq!(check(Some(&good), Some(100), 100), Ok(()));
        assert_eq!(
            check(Some(&good), Some(100), 101),
            Err(SignatureError::Expired)
        );
        // A changed expiration invalidates the signature before expiry is looked at.
        assert_eq!(
            check(Some(&good), Some(99), 101),
            Err(SignatureError::Invalid)
        );
        assert_eq!(check(None, Some(100), 0), Err(SignatureError::Missing));
        assert_eq!(check(Some("v1_x"), None, 0), Err(SignatureError::Invalid));
        let forever = sign("p", Operation::Write, None, "t", None);
        assert_eq!(check(Some(&forever), None, i64::MAX), Ok(()));
        assert_eq!(
            SignatureError::Expired.to_string(),
            "signature is already expired"
        );
    }
}
