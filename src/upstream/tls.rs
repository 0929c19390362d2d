//! TLS (and mutual TLS) from the proxy to a datastore, with rustls.

use tonic::transport::{Certificate, ClientTlsConfig, Identity};

use super::UpstreamError;
use crate::config::DataStore;

pub(super) fn client_config(ds: &DataStore) -> Result<Option<ClientTlsConfig>, UpstreamError> {
    let Some(tls) = &ds.tls else {
        return Ok(None);
    };
    let err = |message: String| UpstreamError::Tls {
        datastore: ds.name.clone(),
        message,
    };
    let read = |key: &str, path: &std::path::Path| {
        std::fs::read(path).map_err(|e| err(format!("{key} {}: {e}", path.display())))
    };
    let ca = tls
        .ca_file
        .as_ref()
        .ok_or_else(|| err("caFile is required: cutover trusts only the CA you name".into()))?;
    let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read("caFile", ca)?));
    if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
        config = config.identity(Identity::from_pem(read("certFile", cert)?, read("keyFile", key)?));
    }
    Ok(Some(config))
}
