//! TLS client settings for wss:// and https:// targets: the system's trusted roots plus
//! `--ca FILE`, or `--insecure` (any certificate, for self-signed test servers).

use std::path::Path;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    ClientConfig, DigitallySignedStruct, Error as TlsError, RootCertStore, SignatureScheme,
};

use crate::stream::TlsTarget;
use crate::target::Origin;

/// The client settings every TLS connection of this process shares.
pub fn client_config(ca: Option<&Path>, insecure: bool) -> Result<Arc<ClientConfig>, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS settings: {e}"))?;
    let mut cfg = if insecure {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AnyCertificate(provider)))
            .with_no_client_auth()
    } else {
        builder
            .with_root_certificates(roots(ca)?)
            .with_no_client_auth()
    };
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// The system's roots and those of `ca`; an unreadable or empty `ca` is an error.
fn roots(ca: Option<&Path>) -> Result<RootCertStore, String> {
    let mut store = RootCertStore::empty();
    // A system without a CA bundle still works with --ca.
    let (added, _) =
        store.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    let mut total = added;
    if let Some(path) = ca {
        let shown = path.display();
        let certs = CertificateDer::pem_file_iter(path)
            .map_err(|e| format!("--ca {shown}: {e}"))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("--ca {shown}: {e}"))?;
        if certs.is_empty() {
            return Err(format!("--ca {shown}: no certificate in it"));
        }
        for cert in certs {
            store.add(cert).map_err(|e| format!("--ca {shown}: {e}"))?;
            total += 1;
        }
    }
    if total == 0 {
        return Err(
            "no trusted roots for wss:// or https:// (the system has none): give --ca FILE, \
                    or --insecure for a self-signed test server"
                .into(),
        );
    }
    Ok(store)
}

/// `--insecure`: any certificate is accepted; the handshake signatures are still checked (a
/// server must hold the key of the certificate it sends).
#[derive(Debug)]
struct AnyCertificate(Arc<CryptoProvider>);

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// Builds the client settings once, when the first TLS target needs them.
pub struct TlsSettings {
    ca: Option<std::path::PathBuf>,
    insecure: bool,
    config: Option<Arc<ClientConfig>>,
}

impl TlsSettings {
    pub fn new(ca: Option<&Path>, insecure: bool) -> Self {
        Self {
            ca: ca.map(Path::to_path_buf),
            insecure,
            config: None,
        }
    }

    /// The TLS side of a connection to `origin` (None for a plain one).
    pub fn target(&mut self, origin: &Origin) -> Result<Option<TlsTarget>, String> {
        if !origin.tls {
            return Ok(None);
        }
        let config = match &self.config {
            Some(c) => c.clone(),
            None => {
                let c = client_config(self.ca.as_deref(), self.insecure)?;
                self.config = Some(c.clone());
                c
            }
        };
        let name = ServerName::try_from(origin.host.clone())
            .map_err(|e| format!("{}: not a TLS server name: {e}", origin.host))?;
        Ok(Some(TlsTarget { config, name }))
    }
}
