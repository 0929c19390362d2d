//! What the benches need to run cutover as a gateway: TLS files (a CA, the serving
//! certificate, the tenant's client certificate) and the catalog Kamaji's setup would
//! leave, written straight into etcd before the gateway starts.

use bytes::Bytes;
use cutover::proto::etcdserverpb::kv_client::KvClient;
use cutover::proto::etcdserverpb::PutRequest;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

/// The tenant the benches' keys belong to (they are under `/registry/`), and its user.
pub const BENCH_TENANT: &str = "registry";
pub const BENCH_USER: &str = "bench";

pub struct GatewayTls {
    pub ca: std::path::PathBuf,
    pub server: (std::path::PathBuf, std::path::PathBuf),
    /// The tenant's client: the CA and a certificate whose CN is [`BENCH_USER`].
    pub client: ClientTlsConfig,
}

pub fn gateway_tls(dir: &std::path::Path) -> GatewayTls {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, SanType};
    let ca_key = KeyPair::generate().expect("key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(DnType::CommonName, "bench CA");
    let ca = ca_params.self_signed(&ca_key).expect("ca");
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let server_key = KeyPair::generate().expect("key");
    let mut sp = CertificateParams::new(vec!["localhost".to_string()]).expect("params");
    sp.subject_alt_names
        .push(SanType::IpAddress("127.0.0.1".parse().expect("ip")));
    let server = sp.signed_by(&server_key, &issuer).expect("server cert");
    let client_key = KeyPair::generate().expect("key");
    let mut cp = CertificateParams::new(Vec::<String>::new()).expect("params");
    cp.distinguished_name.push(DnType::CommonName, BENCH_USER);
    let client = cp.signed_by(&client_key, &issuer).expect("client cert");
    let write = |name: &str, pem: String| {
        let p = dir.join(name);
        std::fs::write(&p, pem).expect("write pem");
        p
    };
    GatewayTls {
        ca: write("bench-ca.pem", ca.pem()),
        server: (
            write("bench-server.pem", server.pem()),
            write("bench-server-key.pem", server_key.serialize_pem()),
        ),
        client: ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(ca.pem()))
            .identity(Identity::from_pem(client.pem(), client_key.serialize_pem()))
            .domain_name("localhost"),
    }
}

/// Writes the catalog: root, the bench's tenant and `idle` more, all on datastore `home`.
pub async fn write_catalog(etcd: Channel, home: &str, idle: usize) {
    use cutover::gateway::catalog::{Catalog, CATALOG_KEY};
    use cutover::proto::authpb::{permission::Type as PermType, Permission};
    let mut c = Catalog::default();
    let root = Some("root");
    c.auth.user_add(None, "root", true).expect("root");
    c.auth.user_grant_role(None, "root", "root").expect("root role");
    c.auth.auth_enable(None).expect("auth on");
    let mut tenants = vec![(BENCH_USER.to_string(), BENCH_TENANT.to_string())];
    tenants.extend((0..idle).map(|i| (format!("idle-user-{i:02}"), format!("idle-{i:02}"))));
    for (user, role) in tenants {
        c.auth.user_add(root, &user, true).expect("user");
        c.auth.role_add(root, &role).expect("role");
        let perm = Permission {
            perm_type: PermType::Readwrite as i32,
            key: Bytes::from(format!("/{role}/")),
            range_end: Bytes::from(format!("/{role}0")),
        };
        c.auth.role_grant_permission(root, &role, Some(perm)).expect("grant");
        c.auth.user_grant_role(root, &user, &role).expect("user's role");
    }
    c.place_tenants(home);
    KvClient::new(etcd)
        .put(PutRequest {
            key: Bytes::from_static(CATALOG_KEY),
            value: Bytes::from(serde_json::to_vec(&c).expect("catalog json")),
            ..Default::default()
        })
        .await
        .expect("write the gateway's catalog");
}

/// A TLS channel to `addr` as the bench's tenant.
pub async fn connect_tls(addr: &str, tls: &ClientTlsConfig) -> Result<Channel, String> {
    tonic::transport::Endpoint::from_shared(format!("https://{addr}"))
        .map_err(|e| e.to_string())?
        .tls_config(tls.clone())
        .map_err(|e| e.to_string())?
        .tcp_nodelay(true)
        .connect()
        .await
        .map_err(|e| format!("connect: {e}"))
}
