//! Who may call what. A proxy with a `prefix` serves one tenant of a datastore other
//! tenants share: the tenant's clients reach its keys and leases, and the read-only
//! views kube-apiserver needs (member list, member status), and nothing that acts on the
//! whole cluster. The operator, a client whose verified certificate has one of
//! `tls.operatorCommonNames`, may call everything. Without a prefix the tenant owns the
//! whole key space, so every client is treated as the operator.

use tonic::Request;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::error::ProxyError;

#[derive(Debug, Clone, Default)]
pub struct Access {
    /// A prefix is configured: callers other than the operator are a tenant.
    scoped: bool,
    operator_common_names: Vec<String>,
}

impl Access {
    pub fn new(scoped: bool, operator_common_names: Vec<String>) -> Access {
        Access {
            scoped,
            operator_common_names,
        }
    }

    /// Whether the caller of `request` may call cluster-wide RPCs.
    pub fn is_operator<T>(&self, request: &Request<T>) -> bool {
        if !self.scoped {
            return true;
        }
        if self.operator_common_names.is_empty() {
            return false;
        }
        common_name(request).is_some_and(|cn| self.operator_common_names.contains(&cn))
    }

    /// `Ok` for the operator; etcd's permission error for a tenant.
    pub fn operator_only<T>(
        &self,
        request: &Request<T>,
        service: &'static str,
        method: &'static str,
    ) -> Result<(), ProxyError> {
        if self.is_operator(request) {
            Ok(())
        } else {
            Err(ProxyError::NotTheTenants { service, method })
        }
    }
}

/// The common name of the caller's client certificate, as etcd takes a user from it:
/// tonic hands over the peer's chain only after verifying it against the client CA.
pub fn common_name<T>(request: &Request<T>) -> Option<String> {
    common_name_in(request.extensions())
}

/// [`common_name`], from a request's extensions (where the server puts the connection's
/// verified chain).
pub fn common_name_in(extensions: &http::Extensions) -> Option<String> {
    use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
    let chain = extensions.get::<TlsConnectInfo<TcpConnectInfo>>()?.peer_certs()?;
    let leaf = chain.first()?;
    let (_, cert) = X509Certificate::from_der(leaf.as_ref()).ok()?;
    let cn = cert.subject().iter_common_name().next()?.as_str().ok()?.to_string();
    Some(cn)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_a_prefix_every_caller_is_the_operator() {
        let open = Access::new(false, vec![]);
        assert!(open.is_operator(&Request::new(())));
        let scoped = Access::new(true, vec!["root".into()]);
        // No verified certificate: a tenant, whatever it claims.
        assert!(!scoped.is_operator(&Request::new(())));
        let e = scoped
            .operator_only(&Request::new(()), "Cluster", "MemberAdd")
            .unwrap_err();
        let status = e.to_status();
        assert_eq!(status.code(), tonic::Code::PermissionDenied);
        assert_eq!(status.message(), "etcdserver: permission denied");
    }
}
