//! The optional TLS listener (E2B-CONTRACT.md recipe B): the SDK reaches
//! `https://api.<domain>` and `https://<port>-<id>.<domain>`, so the daemon serves the same
//! routes over TLS with a certificate for `*.<domain>` and `<domain>`, issued by a local CA
//! that firkin makes on first use and keeps in its state directory. Users point
//! `SSL_CERT_FILE` (Python) or `NODE_EXTRA_CA_CERTS` (Node) at the CA certificate.
//!
//! Only HTTP/1.1 is offered (ALPN `http/1.1`): the SDK pins downloads to it anyway, and one
//! protocol keeps the proxy's streaming and upgrades the same on both listeners.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose,
};

/// Errors making or loading the certificates.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// Reading or writing a file failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Generating a key or certificate failed.
    #[error("generate the {what}: {source}")]
    Generate {
        /// Which one.
        what: &'static str,
        /// The cause.
        #[source]
        source: rcgen::Error,
    },
    /// The stored files do not make a usable server configuration.
    #[error(
        "the TLS files in {dir} are not usable ({reason}); delete them to have them made again"
    )]
    Unusable {
        /// Where they are.
        dir: PathBuf,
        /// Why.
        reason: String,
    },
}

/// The local CA and the server certificate for one domain, as files.
#[derive(Debug, Clone)]
pub struct LocalCa {
    /// The CA certificate users trust (`SSL_CERT_FILE`).
    pub ca_cert: PathBuf,
    server_cert: PathBuf,
    server_key: PathBuf,
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> TlsError + 'a {
    move |source| TlsError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

fn write_private(path: &Path, text: &str) -> Result<(), TlsError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(io("create", path))?;
    // An existing file keeps its mode through open: restrict it before writing the key.
    file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .map_err(io("chmod 0600", path))?;
    file.write_all(text.as_bytes()).map_err(io("write", path))
}

/// The CA's certificate parameters: always the same, so the issuer can be rebuilt from the
/// stored key alone.
fn ca_params() -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, "firkin local CA");
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

impl LocalCa {
    /// The CA and the certificate for `domain` (the host part, no port) under `dir`, made if
    /// missing: the CA once, the server certificate whenever the domain changes.
    ///
    /// # Errors
    ///
    /// [`TlsError`] when files cannot be written or keys generated.
    pub fn ensure(dir: &Path, domain: &str) -> Result<Self, TlsError> {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::create_dir_all(dir).map_err(io("create", dir))?;
        // Anyone may read the CA certificate by its name (SDK users point SSL_CERT_FILE at
        // it); no one else may list the directory or read a key.
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711))
            .map_err(io("chmod 0711", dir))?;
        let ca_cert = dir.join("ca.pem");
        let ca_key = dir.join("ca-key.pem");
        let server_cert = dir.join("server.pem");
        let server_key = dir.join("server-key.pem");
        let domain_file = dir.join("server.domain");
        for key in [&ca_key, &server_key] {
            match std::fs::set_permissions(key, std::fs::Permissions::from_mode(0o600)) {
                Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
                    return Err(io("chmod 0600", key)(error));
                }
                _ => {}
            }
        }

        if !ca_cert.exists() || !ca_key.exists() {
            let key = KeyPair::generate().map_err(|source| TlsError::Generate {
                what: "CA key",
                source,
            })?;
            let cert = ca_params()
                .self_signed(&key)
                .map_err(|source| TlsError::Generate {
                    what: "CA certificate",
                    source,
                })?;
            write_private(&ca_key, &key.serialize_pem())?;
            std::fs::write(&ca_cert, cert.pem()).map_err(io("write", &ca_cert))?;
            // A new CA invalidates the old server certificate.
            let _ = std::fs::remove_file(&domain_file);
        }
        let current = std::fs::read_to_string(&domain_file).unwrap_or_default();
        if current != domain || !server_cert.exists() || !server_key.exists() {
            let ca_key_pem = std::fs::read_to_string(&ca_key).map_err(io("read", &ca_key))?;
            let unusable = |reason: String| TlsError::Unusable {
                dir: dir.to_owned(),
                reason,
            };
            let ca_key_pair =
                KeyPair::from_pem(&ca_key_pem).map_err(|e| unusable(e.to_string()))?;
            // The issuer as rcgen needs it: same name and key as the stored CA certificate,
            // which is what a client checks the server certificate against.
            let ca = ca_params()
                .self_signed(&ca_key_pair)
                .map_err(|e| unusable(e.to_string()))?;
            let key = KeyPair::generate().map_err(|source| TlsError::Generate {
                what: "server key",
                source,
            })?;
            // `*.localhost` directly is refused by rustls clients: a two-label domain such as
            // e2b.localhost is needed (see the contract).
            let names = vec![format!("*.{domain}"), domain.to_owned()];
            let mut params =
                CertificateParams::new(names).map_err(|source| TlsError::Generate {
                    what: "server certificate names",
                    source,
                })?;
            params
                .distinguished_name
                .push(DnType::CommonName, format!("*.{domain}"));
            let cert = params
                .signed_by(&key, &ca, &ca_key_pair)
                .map_err(|source| TlsError::Generate {
                    what: "server certificate",
                    source,
                })?;
            write_private(&server_key, &key.serialize_pem())?;
            std::fs::write(&server_cert, cert.pem()).map_err(io("write", &server_cert))?;
            std::fs::write(&domain_file, domain).map_err(io("write", &domain_file))?;
        }
        Ok(Self {
            ca_cert,
            server_cert,
            server_key,
        })
    }

    /// A rustls server configuration with the server certificate, offering HTTP/1.1.
    ///
    /// # Errors
    ///
    /// [`TlsError`] when the files cannot be read or parsed.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        use rustls::pki_types::pem::PemObject as _;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let dir = self.ca_cert.parent().unwrap_or(Path::new(".")).to_owned();
        let unusable = |reason: String| TlsError::Unusable {
            dir: dir.clone(),
            reason,
        };
        let chain = CertificateDer::pem_file_iter(&self.server_cert)
            .and_then(Iterator::collect::<Result<Vec<_>, _>>)
            .map_err(|e| unusable(format!("server certificate: {e}")))?;
        let key = PrivateKeyDer::from_pem_file(&self.server_key)
            .map_err(|e| unusable(format!("server key: {e}")))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| unusable(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .map_err(|e| unusable(e.to_string()))?;
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(config))
    }
}

/// Serve `app` over TLS on `listener` within `limits` until `shutdown` completes
/// (connections then drain).
///
/// # Errors
///
/// None so far: failed accepts are logged and retried (see
/// [`serve_connections`](crate::listener::serve_connections)).
pub async fn serve_tls(
    listener: tokio::net::TcpListener,
    config: Arc<rustls::ServerConfig>,
    app: axum::Router,
    limits: crate::listener::ConnectionLimits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let acceptor = tokio_rustls::TlsAcceptor::from(config);
    crate::listener::serve_connections(listener, app, limits, shutdown, move |tcp| {
        acceptor.accept(tcp)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ca_is_made_once_and_the_server_certificate_follows_the_domain() {
        let dir = tempfile::tempdir().unwrap();
        let first = LocalCa::ensure(dir.path(), "e2b.localhost").unwrap();
        let ca = std::fs::read_to_string(&first.ca_cert).unwrap();
        let server = std::fs::read_to_string(&first.server_cert).unwrap();
        first.server_config().unwrap();
        let again = LocalCa::ensure(dir.path(), "e2b.localhost").unwrap();
        assert_eq!(std::fs::read_to_string(&again.ca_cert).unwrap(), ca);
        assert_eq!(std::fs::read_to_string(&again.server_cert).unwrap(), server);
        let other = LocalCa::ensure(dir.path(), "sandboxes.localhost").unwrap();
        assert_eq!(
            std::fs::read_to_string(&other.ca_cert).unwrap(),
            ca,
            "CA remade"
        );
        assert_ne!(
            std::fs::read_to_string(&other.server_cert).unwrap(),
            server,
            "server certificate not remade for the new domain"
        );
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(dir.path().join("ca-key.pem"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "the CA key is readable by others");
    }

    #[test]
    fn keys_left_open_by_an_older_firkin_are_restricted() {
        use std::os::unix::fs::PermissionsExt as _;
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("tls");
        LocalCa::ensure(&dir, "e2b.localhost").unwrap();
        let set = |name: &str, mode: u32| {
            std::fs::set_permissions(dir.join(name), std::fs::Permissions::from_mode(mode))
                .unwrap();
        };
        let mode = |name: &str| {
            std::fs::metadata(dir.join(name))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        set("ca-key.pem", 0o644);
        set("server-key.pem", 0o644);
        set("", 0o755);
        LocalCa::ensure(&dir, "e2b.localhost").unwrap();
        assert_eq!(mode("ca-key.pem"), 0o600);
        assert_eq!(mode("server-key.pem"), 0o600);
        assert_eq!(
            mode(""),
            0o711,
            "others may pass through the TLS directory, not list it"
        );
        // A new domain rewrites the server key in place: still private.
        set("server-key.pem", 0o644);
        LocalCa::ensure(&dir, "other.localhost").unwrap();
        assert_eq!(mode("server-key.pem"), 0o600);
        assert_eq!(
            mode("ca.pem") & 0o004,
            0o004,
            "the CA certificate is for everyone"
        );
    }
}
