//! Every error the proxy can hand to a client, and the one table that turns each into the
//! gRPC status etcd itself would send in that situation.
//!
//! Clients (clientv3, kube-apiserver) match on codes and message strings, so a status that
//! came from the datastore is passed through untouched, and one the proxy makes itself
//! reuses etcd's or grpc-go's exact wording. Each error also says who is to blame and
//! whether the client may safely send the request again.

use tonic::{Code, Status};

/// etcd's and grpc-go's own messages, byte for byte.
pub mod messages {
    pub const COMPACTED: &str = "etcdserver: mvcc: required revision has been compacted";
    pub const FUTURE_REV: &str = "etcdserver: mvcc: required revision is a future revision";
    pub const REQUEST_TIMED_OUT: &str = "etcdserver: request timed out";
    pub const PERMISSION_DENIED: &str = "etcdserver: permission denied";
    /// A refused watch's cancel reason: etcd writes the whole gRPC error into it.
    pub const WATCH_PERMISSION_DENIED: &str = "rpc error: code = PermissionDenied desc = etcdserver: permission denied";
    pub const NOT_CAPABLE: &str = "etcdserver: not capable";
    /// grpc-go's load-balancer message when no connection exists: clientv3 treats it as
    /// "never sent" and retries even writes.
    pub const NO_CONNECTION: &str = "there is no connection available";
    pub const LEASE_EXISTS: &str = "etcdserver: lease already exists";
    pub const EMPTY_KEY: &str = "etcdserver: key is not provided";
    /// What a write gets while the tenant is fenced and writes are rejected.
    pub const FROZEN: &str =
        "the current Control Plane is in freezing mode due to a maintenance mode, all the changes are blocked";
}

/// A datastore answer that does not have the shape the guard asked for.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the datastore answered the guarded write with an unexpected shape: {0}")]
pub struct Malformed(pub &'static str);

/// A request revision that the target cannot answer: it lies before the tenant's last
/// change on the source, which the target never saw.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("revision {requested} is older than the migration (last source change at {last})")]
pub struct Compacted {
    pub requested: i64,
    pub last: i64,
}

/// Who caused an error (after pingora): the datastore, the client, or the proxy itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blame {
    Upstream,
    Downstream,
    Proxy,
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The datastore answered with this status; it goes to the client as it is.
    #[error("datastore answered {}: {}", .0.code(), .0.message())]
    Etcd(Status),
    /// No endpoint of the datastore could be reached; the request was never sent.
    #[error("datastore {datastore:?}: no endpoint reachable: {detail}")]
    NoEndpoint { datastore: String, detail: String },
    /// The connection broke after the request went out: it may or may not have been applied.
    #[error("datastore {datastore:?}: connection to {endpoint} lost after sending: {detail}")]
    OutcomeUnknown {
        datastore: String,
        endpoint: String,
        detail: String,
    },
    /// The datastore holds the write fence and the write was refused (reject mode, or a
    /// held write whose wait ran out).
    #[error("the datastore is fenced ({holder}); the write was not applied")]
    Fenced { holder: String },
    /// The datastore answered the guard Txn in a shape the proxy did not ask for.
    #[error("{0}")]
    Malformed(#[from] Malformed),
    /// The request touches cutover's reserved keys.
    #[error("the request touches cutover's reserved keys")]
    Reserved,
    /// A tenant called an RPC that acts on the whole shared datastore, or on another
    /// tenant's lease.
    #[error("{service}.{method} reaches beyond the tenant; only the operator may make this call")]
    NotTheTenants {
        service: &'static str,
        method: &'static str,
    },
    /// A revision from before the tenant's last change on a datastore it has left: the
    /// current datastore never had it, as if compacted.
    #[error("{0}")]
    Compacted(#[from] Compacted),
    /// A request the revision translation cannot carry to the target faithfully.
    #[error("{0}")]
    Untranslatable(String),
    /// A gRPC path cutover does not serve.
    #[error("{}", match .method { Some(m) => format!("unknown method {m} for service {service}"), None => format!("unknown service {service}") })]
    UnknownMethod { service: String, method: Option<String> },
    /// A service etcd has and cutover does not proxy.
    #[error("cutover does not proxy the {service} service; {instead}")]
    NotProxied { service: String, instead: &'static str },
    /// The datastore's answer to cutover's own authentication cannot be used.
    #[error("the datastore returned an auth token that is not ASCII")]
    BadToken,
    /// A refusal of cutover's own auth store (gateway mode), worded as etcd's.
    #[error("{0}")]
    Auth(#[from] crate::rbac::AuthError),
    /// A request of a kind cutover does not serve (yet), said plainly.
    #[error("cutover: {0}")]
    Unsupported(&'static str),
    /// The gateway's catalog cannot be read or written (damaged, or never settled).
    #[error("the gateway's catalog: {0}")]
    Catalog(String),
    /// A KV request without a key, refused before any permission is looked at (as etcd
    /// validates a request before it checks it).
    #[error("etcdserver: key is not provided")]
    EmptyKey,
    /// The client sent a message larger than the configured limit.
    #[error("request of {size} bytes is larger than the limit of {limit} bytes")]
    RequestTooLarge { size: usize, limit: usize },
}

impl ProxyError {
    /// etcd said the revision asked for was compacted.
    pub fn is_compacted(&self) -> bool {
        matches!(self, ProxyError::Etcd(s) if s.message() == messages::COMPACTED)
    }

    pub fn blame(&self) -> Blame {
        match self {
            ProxyError::Etcd(_) => Blame::Upstream,
            ProxyError::NoEndpoint { .. } | ProxyError::OutcomeUnknown { .. } => Blame::Upstream,
            ProxyError::RequestTooLarge { .. } => Blame::Downstream,
            ProxyError::Fenced { .. } => Blame::Proxy,
            ProxyError::Reserved | ProxyError::NotTheTenants { .. } => Blame::Downstream,
            ProxyError::Compacted(_) => Blame::Downstream,
            ProxyError::Untranslatable(_) => Blame::Proxy,
            ProxyError::Malformed(_) => Blame::Upstream,
            ProxyError::UnknownMethod { .. } | ProxyError::NotProxied { .. } => Blame::Downstream,
            ProxyError::BadToken => Blame::Upstream,
            ProxyError::Auth(_) => Blame::Downstream,
            ProxyError::Catalog(_) => Blame::Proxy,
            ProxyError::Unsupported(_) | ProxyError::EmptyKey => Blame::Downstream,
        }
    }

    /// Whether sending the same request again cannot apply it twice.
    pub fn retry_safe(&self) -> bool {
        match self {
            ProxyError::NoEndpoint { .. } => true,
            ProxyError::OutcomeUnknown { .. } => false,
            ProxyError::RequestTooLarge { .. } => false,
            ProxyError::Fenced { .. } => true,
            ProxyError::Reserved | ProxyError::NotTheTenants { .. } => false,
            ProxyError::Compacted(_) => false,
            ProxyError::Untranslatable(_) => false,
            ProxyError::Malformed(_) => false,
            // Nothing was sent.
            ProxyError::UnknownMethod { .. } | ProxyError::NotProxied { .. } => false,
            ProxyError::BadToken => true,
            ProxyError::Auth(_) => false,
            ProxyError::Catalog(_) | ProxyError::Unsupported(_) | ProxyError::EmptyKey => false,
            ProxyError::Etcd(s) => s.code() == Code::Unavailable && s.message() == messages::NO_CONNECTION,
        }
    }

    /// The table: what the client receives for each error.
    pub fn to_status(&self) -> Status {
        match self {
            ProxyError::Etcd(s) => Status::with_details_and_metadata(
                s.code(),
                s.message().to_string(),
                s.details().to_vec().into(),
                s.metadata().clone(),
            ),
            ProxyError::NoEndpoint { .. } => Status::unavailable(messages::NO_CONNECTION),
            // What etcd says when it cannot tell whether a proposal was applied.
            ProxyError::OutcomeUnknown { .. } => Status::unavailable(messages::REQUEST_TIMED_OUT),
            // Unavailable: the refusal is temporary, and clientv3 does not resend writes on it.
            ProxyError::Fenced { .. } => Status::unavailable(messages::FROZEN),
            ProxyError::Malformed(e) => Status::internal(format!("cutover: {e}")),
            // As etcd answers a user without permission on a key.
            ProxyError::Reserved | ProxyError::NotTheTenants { .. } => {
                Status::permission_denied(messages::PERMISSION_DENIED)
            }
            // Exactly etcd's answer for a revision it compacted away.
            ProxyError::Compacted(_) => Status::out_of_range(messages::COMPACTED),
            ProxyError::Untranslatable(m) => Status::unimplemented(format!("cutover: {m}")),
            // grpc-go's wording for a path the server does not register.
            ProxyError::UnknownMethod { .. } | ProxyError::NotProxied { .. } => Status::unimplemented(self.to_string()),
            ProxyError::BadToken | ProxyError::Catalog(_) => Status::internal(format!("cutover: {self}")),
            ProxyError::Unsupported(_) => Status::unimplemented(self.to_string()),
            ProxyError::EmptyKey => Status::invalid_argument(messages::EMPTY_KEY),
            // etcd's own code for each, with its message.
            ProxyError::Auth(e) => {
                use crate::rbac::AuthError::*;
                let code = match e {
                    PermissionDenied => Code::PermissionDenied,
                    UserEmpty | RoleEmpty | AuthFailed | PermissionNotGiven | InvalidAuthMgmt => Code::InvalidArgument,
                    RootUserNotExist | RootRoleNotExist | UserAlreadyExist | UserNotFound | RoleAlreadyExist
                    | RoleNotFound | RoleNotGranted | PermissionNotGranted | AuthNotEnabled => Code::FailedPrecondition,
                    NoPasswordUser => Code::Unknown,
                    InvalidAuthToken => Code::Unauthenticated,
                };
                Status::new(code, e.to_string())
            }
            // grpc-go's wording, which etcd's server produces for an oversized message.
            ProxyError::RequestTooLarge { size, limit } => {
                Status::resource_exhausted(format!("grpc: received message larger than max ({size} vs. {limit})"))
            }
        }
    }
}

impl From<ProxyError> for Status {
    fn from(e: ProxyError) -> Status {
        e.to_status()
    }
}

/// etcd refused a lease grant because the asked-for ID is taken.
/// What a call gets when its channel cannot take requests (worded as tonic's generated
/// clients word it).
pub fn channel_not_ready(e: impl std::fmt::Display) -> Status {
    Status::unknown(format!("Service was not ready: {e}"))
}

pub fn is_lease_exists(s: &Status) -> bool {
    s.message() == messages::LEASE_EXISTS
}

/// gRPC code names as grpc-go spells them (used in metrics labels and logs).
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Canceled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_refusals_carry_etcds_codes_and_words() {
        use crate::rbac::AuthError;
        let cases = [
            (
                AuthError::UserNotFound,
                Code::FailedPrecondition,
                "etcdserver: user name not found",
            ),
            (
                AuthError::RoleNotFound,
                Code::FailedPrecondition,
                "etcdserver: role name not found",
            ),
            (
                AuthError::UserAlreadyExist,
                Code::FailedPrecondition,
                "etcdserver: user name already exists",
            ),
            (
                AuthError::PermissionDenied,
                Code::PermissionDenied,
                "etcdserver: permission denied",
            ),
            (
                AuthError::InvalidAuthToken,
                Code::Unauthenticated,
                "etcdserver: invalid auth token",
            ),
            (
                AuthError::NoPasswordUser,
                Code::Unknown,
                "auth: authentication failed, password was given for no password user",
            ),
            (
                AuthError::UserEmpty,
                Code::InvalidArgument,
                "etcdserver: user name is empty",
            ),
            (
                AuthError::InvalidAuthMgmt,
                Code::InvalidArgument,
                "etcdserver: invalid auth management",
            ),
        ];
        for (e, code, message) in cases {
            let s = ProxyError::from(e).to_status();
            assert_eq!((s.code(), s.message()), (code, message));
        }
        assert_eq!(
            messages::PERMISSION_DENIED,
            crate::rbac::AuthError::PermissionDenied.to_string()
        );
    }

    #[test]
    fn etcd_status_passes_through_unchanged() {
        let s = Status::out_of_range(messages::COMPACTED);
        let out = ProxyError::Etcd(s).to_status();
        assert_eq!(out.code(), Code::OutOfRange);
        assert_eq!(out.message(), messages::COMPACTED);
    }

    #[test]
    fn unsent_requests_are_safe_to_retry_and_say_so_in_clientv3_terms() {
        let e = ProxyError::NoEndpoint {
            datastore: "default".into(),
            detail: "connection refused".into(),
        };
        assert!(e.retry_safe());
        assert_eq!(e.blame(), Blame::Upstream);
        let s = e.to_status();
        assert_eq!((s.code(), s.message()), (Code::Unavailable, messages::NO_CONNECTION));
    }

    #[test]
    fn lost_responses_are_not_safe_to_retry() {
        let e = ProxyError::OutcomeUnknown {
            datastore: "default".into(),
            endpoint: "http://127.0.0.1:1".into(),
            detail: "reset".into(),
        };
        assert!(!e.retry_safe());
        assert_eq!(e.to_status().message(), messages::REQUEST_TIMED_OUT);
    }

    #[test]
    fn oversized_requests_use_grpc_go_wording() {
        let s = ProxyError::RequestTooLarge { size: 3, limit: 2 }.to_status();
        assert_eq!(s.code(), Code::ResourceExhausted);
        assert_eq!(s.message(), "grpc: received message larger than max (3 vs. 2)");
    }
}
