//! TLS for the client's connections: the CA that nodes' certificates must come from, and the
//! client certificate a node with `--client-cert-auth` asks for.
//!
//! The material is given as PEM bytes, so an embedder may take it from wherever it keeps
//! secrets; [`TlsOptions::from_files`] reads it from files the way `kvsctl` does. Every node,
//! including a leader learned from a hint, is dialled with the same material, and its
//! certificate must name the host it is dialled at.

use std::path::Path;

use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use crate::error::{Error, Result};

/// How the client speaks TLS ([`ClientOptions::tls`](crate::ClientOptions::tls)).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TlsOptions {
    /// The CA bundle (PEM) the nodes' certificates must chain to; the system's roots when
    /// `None`.
    pub ca: Option<Vec<u8>>,
    /// The client certificate chain and its private key (PEM), for nodes that require one.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl TlsOptions {
    /// Reads the CA bundle and the client certificate and key from files; the certificate and
    /// the key go together.
    pub fn from_files(ca: Option<&Path>, cert: Option<&Path>, key: Option<&Path>) -> Result<Self> {
        let read = |what: &str, path: &Path| {
            std::fs::read(path).map_err(|e| {
                Error::InvalidTls(format!("cannot read the {what} {}: {e}", path.display()))
            })
        };
        let identity = match (cert, key) {
            (Some(cert), Some(key)) => Some((read("certificate", cert)?, read("key", key)?)),
            (None, None) => None,
            _ => {
                return Err(Error::InvalidTls(
                    "a client certificate and its key go together".into(),
                ));
            }
        };
        Ok(TlsOptions {
            ca: ca.map(|ca| read("CA bundle", ca)).transpose()?,
            identity,
        })
    }

    /// tonic's configuration of this material.
    pub(crate) fn config(&self) -> ClientTlsConfig {
        let config = ClientTlsConfig::new();
        let config = match &self.ca {
            Some(ca) => config.ca_certificate(Certificate::from_pem(ca)),
            None => config.with_native_roots(),
        };
        match &self.identity {
            Some((cert, key)) => config.identity(Identity::from_pem(cert, key)),
            None => config,
        }
    }
}
