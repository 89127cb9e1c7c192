//! TLS between nodes and for clients (tonic over rustls).
//!
//! A node with TLS serves only TLS on its one listener, with its
//! certificate, and asks every peer for a certificate signed by the
//! cluster CA. The certificate is optional for clients (they are
//! authenticated by tokens, not certificates) but required for Raft
//! messages: [`crate::host::NodeRaftService`] refuses a peer that presented
//! none, so only holders of a certificate of this cluster's CA (its nodes:
//! `nokv certs` issues certificates to nodes only) can take part in its
//! Raft groups. Peers connect to each other with their own certificate as
//! the client identity.
//!
//! Without TLS (the default, and what `nokv dev` uses on loopback) traffic
//! is plain HTTP/2 and any process that reaches the port is trusted.

use std::fmt;
use std::path::Path;

use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};

use crate::node::NodeError;

/// A node's TLS material, PEM encoded: its certificate and private key,
/// and the cluster CA that signed every member's certificate.
#[derive(Clone)]
pub struct NodeTls {
    pub cert_pem: Vec<u8>,
    pub key_pem: Vec<u8>,
    pub ca_pem: Vec<u8>,
}

impl fmt::Debug for NodeTls {
    // Never prints the key.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NodeTls")
            .field("cert_pem", &format_args!("{} bytes", self.cert_pem.len()))
            .field("ca_pem", &format_args!("{} bytes", self.ca_pem.len()))
            .finish_non_exhaustive()
    }
}

impl NodeTls {
    /// Reads the three PEM files.
    pub fn load(cert: &Path, key: &Path, ca: &Path) -> Result<NodeTls, NodeError> {
        let read = |path: &Path| {
            std::fs::read(path).map_err(|source| NodeError::DataDir {
                path: path.to_path_buf(),
                source,
            })
        };
        Ok(NodeTls {
            cert_pem: read(cert)?,
            key_pem: read(key)?,
            ca_pem: read(ca)?,
        })
    }

    fn identity(&self) -> Identity {
        Identity::from_pem(&self.cert_pem, &self.key_pem)
    }

    /// The listener's side: this node's certificate; a client certificate
    /// is verified against the cluster CA when one is presented.
    pub(crate) fn server_config(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(self.identity())
            .client_ca_root(Certificate::from_pem(&self.ca_pem))
            .client_auth_optional(true)
    }

    /// A connection to a peer: the peer's certificate must come from the
    /// cluster CA and name the address dialled; this node presents its own.
    pub(crate) fn client_config(&self) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .identity(self.identity())
    }
}

/// An endpoint for peer `addr` (`HOST:PORT`): HTTPS with this node's
/// identity under TLS, plain HTTP otherwise.
pub(crate) fn peer_endpoint(addr: &str, tls: Option<&NodeTls>) -> Result<Endpoint, String> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    let endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
        .map_err(|e| format!("bad peer address {addr:?}: {e}"))?;
    match tls {
        Some(tls) => endpoint
            .tls_config(tls.client_config())
            .map_err(|e| format!("TLS for peer {addr}: {e}")),
        None => Ok(endpoint),
    }
}
