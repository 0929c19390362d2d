//! The sidecar's configuration: a YAML file in the shape of a Kamaji DataStore, where every
//! key can also be set by a command-line flag or a `CUTOVER_*` environment variable.
//!
//! Flags are applied onto the parsed YAML document before it is turned into [`Config`], so a
//! value from either source goes through the same checks and errors name the same key.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_norway::{Mapping, Value};

/// etcd's default `--max-request-bytes`.
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 1536 * 1024;
/// etcd adds this much to `--max-request-bytes` for its gRPC receive limit.
pub const GRPC_OVERHEAD_BYTES: usize = 512 * 1024;
/// The largest `maxRequestBytes`: far beyond what etcd itself accepts in practice, and
/// small enough that nothing computed from it overflows.
pub const MAX_REQUEST_BYTES_LIMIT: usize = 256 << 20;
/// The largest `migration.revisionGap`: revisions stay far from i64's end even after
/// many migrations of a busy tenant.
pub const MAX_REVISION_GAP: i64 = 1_000_000_000_000;
/// The longest a held write or read may wait for a fence to lift.
pub const MAX_HOLD_TIMEOUT: Duration = Duration::from_secs(3600);
/// The longest any other duration setting may be.
pub const MAX_SETTING_DURATION: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("config: {key}: {message}")]
    Invalid { key: String, message: String },
}

impl ConfigError {
    fn invalid(key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.into(),
            message: message.into(),
        }
    }
}

/// Where the etcd gRPC service listens: a TCP address or a unix socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListenAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(a) => write!(f, "{a}"),
            ListenAddr::Unix(p) => write!(f, "unix://{}", p.display()),
        }
    }
}

impl ListenAddr {
    pub fn parse(s: &str) -> Result<Self, String> {
        if let Some(path) = s.strip_prefix("unix://").or_else(|| s.strip_prefix("unix:")) {
            if path.is_empty() {
                return Err("unix socket path is empty".into());
            }
            return Ok(ListenAddr::Unix(PathBuf::from(path)));
        }
        parse_socket_addr(s).map(ListenAddr::Tcp)
    }
}

/// Accepts `ip:port` and `localhost:port` (which means 127.0.0.1, never a name lookup).
fn parse_socket_addr(s: &str) -> Result<SocketAddr, String> {
    let s = s
        .strip_prefix("http://")
        .or_else(|| s.strip_prefix("https://"))
        .unwrap_or(s);
    if let Some(port) = s.strip_prefix("localhost:") {
        let port: u16 = port
            .parse()
            .map_err(|_| format!("{s:?} is not a valid host:port (bad port)"))?;
        return Ok(SocketAddr::from(([127, 0, 0, 1], port)));
    }
    s.parse().map_err(|_| format!("{s:?} is not a valid ip:port address"))
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct RawConfig {
    #[serde(default = "default_listen")]
    pub listen: String,
    #[serde(default)]
    pub tls: Option<ServerTls>,
    #[serde(default)]
    pub admin: AdminConfig,
    pub data_store: String,
    pub data_stores: BTreeMap<String, DataStoreConfig>,
    #[serde(default = "default_max_request_bytes")]
    pub max_request_bytes: usize,
    /// Threads serving requests: 1 runs everything on one thread (the least CPU per request).
    #[serde(default = "default_worker_threads")]
    pub worker_threads: usize,
    /// The tenant's key range: every key under this prefix (empty: the whole key space).
    #[serde(default)]
    pub prefix: String,
    #[serde(default)]
    pub fence: FenceConfig,
    #[serde(default)]
    pub migration: MigrationConfig,
    #[serde(default)]
    pub log: LogConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
    /// `sidecar` (one tenant, `prefix`) or `gateway` (many tenants over the pool; see
    /// `gateway`).
    #[serde(default)]
    pub mode: Mode,
    #[serde(default)]
    pub gateway: GatewayConfig,
}

/// What cutover is in front of.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Mode {
    /// One tenant's datastore, beside its kube-apiserver.
    #[default]
    Sidecar,
    /// The DataStore of many tenants (Kamaji's), over a pool of etcd clusters.
    Gateway,
}

/// Gateway mode's settings.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct GatewayConfig {
    /// The datastore that keeps the gateway's catalog (users, roles, each tenant's home)
    /// [default: dataStore].
    #[serde(default)]
    pub catalog: Option<String>,
    /// Where new tenants go: a datastore's name, or `fewestKeys` (the datastore of the pool
    /// holding the fewest keys when the tenant appears) [default: dataStore].
    #[serde(default)]
    pub placement: Option<String>,
}

/// Where a gateway puts a new tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// Always this datastore.
    Named(String),
    /// The datastore holding the fewest keys then.
    FewestKeys,
}

/// Gateway mode's settings, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewaySettings {
    pub catalog: String,
    pub placement: Placement,
}

/// The limits on what clients can make the proxy hold, as checked (see server::limits).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_connections: usize,
    pub max_streams_per_connection: u32,
    /// How long a new connection may take to send its first bytes (the TLS ClientHello
    /// or the HTTP/2 preface).
    pub handshake_timeout: Duration,
}

/// What one client can make the proxy hold.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LimitsConfig {
    /// Client connections open at once; more wait in the kernel's backlog.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// Concurrent gRPC calls and streams on one connection (HTTP/2 streams).
    #[serde(default = "default_max_streams_per_connection")]
    pub max_streams_per_connection: u32,
    /// How long a new connection may take to send its first bytes.
    #[serde(default = "default_handshake_timeout")]
    pub handshake_timeout: String,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_connections: default_max_connections(),
            max_streams_per_connection: default_max_streams_per_connection(),
            handshake_timeout: default_handshake_timeout(),
        }
    }
}

fn default_max_connections() -> usize {
    4096
}
fn default_max_streams_per_connection() -> u32 {
    // kube-apiserver multiplexes its watches and calls onto few connections.
    16384
}
fn default_handshake_timeout() -> String {
    "10s".into()
}

/// Tunables of a live migration.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct MigrationConfig {
    /// Keys read from the source per page during the copy.
    #[serde(default = "default_page_size")]
    pub page_size: i64,
    /// Txns (of up to 128 puts) in flight on the target during the copy.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Fence once the target is at most this many source revisions behind.
    #[serde(default = "default_max_lag")]
    pub max_lag: i64,
    /// Release the fence and fail if drain, verification and commit take longer.
    #[serde(default = "default_fence_timeout")]
    pub fence_timeout: String,
    /// TTL of the migration's lease (lock and fence): how long a crashed migrator keeps
    /// the tenant fenced.
    #[serde(default = "default_lease_ttl", rename = "leaseTTL")]
    pub lease_ttl: String,
    /// Added to the source revision at the fence to make S, the first revision of the
    /// target era as clients see it.
    #[serde(default = "default_revision_gap")]
    pub revision_gap: i64,
    /// Pause this long at the start of each phase before the fence (rehearsals, demos,
    /// tests) [default: 0s].
    #[serde(default = "default_step_delay")]
    pub step_delay: String,
    /// Keep the source fenced this much longer, in Fenced and in Committing (to rehearse
    /// what held or refused writes see) [default: 0s].
    #[serde(default = "default_step_delay")]
    pub fence_delay: String,
    /// How often a replica drops from the translation's key map the keys whose copy is
    /// gone from the datastore (a read of the tenant's keys, without values); 0s: never.
    #[serde(default = "default_prune_interval")]
    pub prune_interval: String,
}

impl Default for MigrationConfig {
    fn default() -> Self {
        MigrationConfig {
            page_size: default_page_size(),
            concurrency: default_concurrency(),
            max_lag: default_max_lag(),
            fence_timeout: default_fence_timeout(),
            lease_ttl: default_lease_ttl(),
            revision_gap: default_revision_gap(),
            step_delay: default_step_delay(),
            fence_delay: default_step_delay(),
            prune_interval: default_prune_interval(),
        }
    }
}

// The file's defaults are the checked settings' own, written once (MigrationSettings).
fn default_page_size() -> i64 {
    MigrationSettings::default().page_size
}
fn default_concurrency() -> usize {
    MigrationSettings::default().concurrency
}
fn default_max_lag() -> i64 {
    MigrationSettings::default().max_lag
}
fn default_fence_timeout() -> String {
    humantime::format_duration(MigrationSettings::default().fence_timeout).to_string()
}
fn default_lease_ttl() -> String {
    humantime::format_duration(Duration::from_secs(MigrationSettings::default().lease_ttl as u64)).to_string()
}
fn default_revision_gap() -> i64 {
    MigrationSettings::default().revision_gap
}
fn default_step_delay() -> String {
    humantime::format_duration(MigrationSettings::default().step_delay).to_string()
}
fn default_prune_interval() -> String {
    humantime::format_duration(MigrationSettings::default().prune_every).to_string()
}

/// Tunables of a migration (defaults suit a kube-apiserver tenant).
#[derive(Debug, Clone)]
pub struct MigrationSettings {
    /// S = the source's revision at the fence + this gap: no client can have seen a
    /// revision above S from the source.
    pub revision_gap: i64,
    pub page_size: i64,
    pub concurrency: usize,
    /// The catch-up is close enough to fence when the target is this many source
    /// revisions behind or less.
    pub max_lag: i64,
    /// Give up if the catch-up does not get close enough in this time.
    pub catch_up_timeout: Duration,
    /// Give up (and drop the fence) if drain, verification and commit take longer.
    pub fence_timeout: Duration,
    /// TTL of the migration's lease on the source: a crashed migrator's fence and lock
    /// disappear after this.
    pub lease_ttl: i64,
    /// A pause at the start of each phase before the fence (rehearsals, demos, tests).
    pub step_delay: Duration,
    /// Extra time the source stays fenced, in Fenced and in Committing (rehearsals, tests).
    pub fence_delay: Duration,
    /// How often the translation's key map is pruned (zero: never).
    pub prune_every: Duration,
}

impl Default for MigrationSettings {
    fn default() -> Self {
        MigrationSettings {
            revision_gap: 1_000_000,
            page_size: 1000,
            concurrency: 4,
            max_lag: 20,
            catch_up_timeout: Duration::from_secs(600),
            fence_timeout: Duration::from_secs(10),
            lease_ttl: 10,
            step_delay: Duration::ZERO,
            fence_delay: Duration::ZERO,
            prune_every: Duration::from_secs(600),
        }
    }
}

/// What a write meets while the tenant is fenced.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum FenceMode {
    /// Queue the write until the fence lifts (or `holdTimeout` passes), then send it.
    #[default]
    Hold,
    /// Refuse the write at once with the freeze message.
    Reject,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct FenceConfig {
    #[serde(default)]
    pub mode: FenceMode,
    /// How long a held write waits, e.g. `5s` or `1500ms`.
    #[serde(default = "default_hold_timeout")]
    pub hold_timeout: String,
}

impl Default for FenceConfig {
    fn default() -> Self {
        FenceConfig {
            mode: FenceMode::Hold,
            hold_timeout: default_hold_timeout(),
        }
    }
}

fn default_hold_timeout() -> String {
    "5s".into()
}

fn default_worker_threads() -> usize {
    1
}

fn default_listen() -> String {
    "127.0.0.1:2379".into()
}
fn default_max_request_bytes() -> usize {
    DEFAULT_MAX_REQUEST_BYTES
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ServerTls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// When set, clients must present a certificate signed by this CA.
    #[serde(default, rename = "clientCAFile")]
    pub client_ca_file: Option<PathBuf>,
    /// Clients whose verified certificate has one of these common names are the
    /// operator: with a `prefix`, only they may call cluster-wide RPCs (member changes,
    /// auth changes, snapshots, defragmentation, ...). Needs clientCAFile.
    #[serde(default)]
    pub operator_common_names: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct AdminConfig {
    #[serde(default = "default_admin_listen")]
    pub listen: String,
    /// File holding the bearer token needed for calls that change state.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            listen: default_admin_listen(),
            token_file: None,
        }
    }
}

fn default_admin_listen() -> String {
    "127.0.0.1:9180".into()
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct DataStoreConfig {
    pub endpoints: Vec<String>,
    #[serde(default)]
    pub tls: Option<UpstreamTls>,
    #[serde(default)]
    pub basic_auth: Option<BasicAuth>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct UpstreamTls {
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    #[serde(default)]
    pub cert_file: Option<PathBuf>,
    #[serde(default)]
    pub key_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct BasicAuth {
    pub username: String,
    pub password_file: PathBuf,
}

#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize, PartialEq, Eq, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LogConfig {
    #[serde(default)]
    pub format: LogFormat,
    /// A tracing filter, e.g. `info` or `cutover=debug,h2=warn`.
    #[serde(default = "default_log_level")]
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: default_log_level(),
        }
    }
}

fn default_log_level() -> String {
    "info".into()
}

/// A datastore password: read from a file, never printed.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
impl From<&str> for Secret {
    fn from(s: &str) -> Secret {
        Secret(s.to_string())
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// The checked configuration the proxy runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: ListenAddr,
    pub tls: Option<ServerTls>,
    pub admin_listen: SocketAddr,
    pub admin_token: Option<Secret>,
    pub data_store: String,
    pub data_stores: BTreeMap<String, DataStore>,
    pub max_request_bytes: usize,
    pub worker_threads: usize,
    pub prefix: bytes::Bytes,
    pub fence_mode: FenceMode,
    pub hold_timeout: std::time::Duration,
    pub migration: MigrationSettings,
    pub log: LogConfig,
    pub limits: Limits,
    /// `Some` in gateway mode.
    pub gateway: Option<GatewaySettings>,
}

impl Config {
    /// The largest gRPC message accepted from a client, as etcd computes it.
    pub fn max_recv_message_bytes(&self) -> usize {
        self.max_request_bytes + GRPC_OVERHEAD_BYTES
    }
}

#[derive(Debug, Clone)]
pub struct DataStore {
    pub name: String,
    /// Endpoint URIs with their scheme (`http://` or `https://`).
    pub endpoints: Vec<String>,
    pub tls: Option<UpstreamTls>,
    pub basic_auth: Option<(String, Secret)>,
}

/// Flags and environment variables that override keys of the file.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct Overrides {
    /// Config file (YAML). Optional when the flags below give dataStore and dataStores.
    #[arg(long, short = 'c', env = "CUTOVER_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// `listen`: where clients connect, ip:port or unix:///path/to.sock [default: 127.0.0.1:2379]
    #[arg(long, env = "CUTOVER_LISTEN", value_name = "ADDR")]
    pub listen: Option<String>,
    /// `tls.certFile`: serve TLS with this certificate (PEM)
    #[arg(long, env = "CUTOVER_TLS_CERT_FILE", value_name = "FILE")]
    pub tls_cert_file: Option<PathBuf>,
    /// `tls.keyFile`: the key of tls.certFile (PEM)
    #[arg(long, env = "CUTOVER_TLS_KEY_FILE", value_name = "FILE")]
    pub tls_key_file: Option<PathBuf>,
    /// `tls.clientCAFile`: require client certificates signed by this CA
    #[arg(long, env = "CUTOVER_TLS_CLIENT_CA_FILE", value_name = "FILE")]
    pub tls_client_ca_file: Option<PathBuf>,
    /// `tls.operatorCommonNames`: client certificate common names that may call
    /// cluster-wide RPCs when a prefix is set (comma-separated)
    #[arg(
        long,
        env = "CUTOVER_TLS_OPERATOR_COMMON_NAMES",
        value_name = "CN,...",
        value_delimiter = ','
    )]
    pub tls_operator_common_names: Vec<String>,
    /// `admin.listen`: the admin HTTP address [default: 127.0.0.1:9180]
    #[arg(long, env = "CUTOVER_ADMIN_LISTEN", value_name = "ADDR")]
    pub admin_listen: Option<String>,
    /// `admin.tokenFile`: bearer token needed for admin calls that change state
    #[arg(long, env = "CUTOVER_ADMIN_TOKEN_FILE", value_name = "FILE")]
    pub admin_token_file: Option<PathBuf>,
    /// `dataStore`: the name of the active datastore
    #[arg(long, env = "CUTOVER_DATA_STORE", value_name = "NAME")]
    pub data_store: Option<String>,
    /// `dataStores.NAME.endpoints`, as NAME=HOST:PORT[,HOST:PORT...]; repeat per datastore
    /// (environment: entries separated by ';')
    #[arg(
        long,
        env = "CUTOVER_DATA_STORE_ENDPOINTS",
        value_name = "NAME=EPS",
        value_delimiter = ';'
    )]
    pub data_store_endpoints: Vec<String>,
    /// `dataStores.NAME.tls.caFile`, as NAME=FILE
    #[arg(
        long,
        env = "CUTOVER_DATA_STORE_CA_FILE",
        value_name = "NAME=FILE",
        value_delimiter = ';'
    )]
    pub data_store_ca_file: Vec<String>,
    /// `dataStores.NAME.tls.certFile`, as NAME=FILE
    #[arg(
        long,
        env = "CUTOVER_DATA_STORE_CERT_FILE",
        value_name = "NAME=FILE",
        value_delimiter = ';'
    )]
    pub data_store_cert_file: Vec<String>,
    /// `dataStores.NAME.tls.keyFile`, as NAME=FILE
    #[arg(
        long,
        env = "CUTOVER_DATA_STORE_KEY_FILE",
        value_name = "NAME=FILE",
        value_delimiter = ';'
    )]
    pub data_store_key_file: Vec<String>,
    /// `dataStores.NAME.basicAuth.username`, as NAME=USER
    #[arg(
        long,
        env = "CUTOVER_DATA_STORE_USERNAME",
        value_name = "NAME=USER",
        value_delimiter = ';'
    )]
    pub data_store_username: Vec<String>,
    /// `dataStores.NAME.basicAuth.passwordFile`, as NAME=FILE
    #[arg(
        long,
        env = "CUTOVER_DATA_STORE_PASSWORD_FILE",
        value_name = "NAME=FILE",
        value_delimiter = ';'
    )]
    pub data_store_password_file: Vec<String>,
    /// `maxRequestBytes`: largest request accepted, as etcd's --max-request-bytes [default: 1572864]
    #[arg(long, env = "CUTOVER_MAX_REQUEST_BYTES", value_name = "BYTES")]
    pub max_request_bytes: Option<usize>,
    /// `prefix`: the tenant's key range (keys under this prefix) [default: the whole key space]
    #[arg(long, env = "CUTOVER_PREFIX", value_name = "PREFIX")]
    pub prefix: Option<String>,
    /// `fence.mode`: hold (queue writes while fenced) or reject (refuse them at once) [default: hold]
    #[arg(long, env = "CUTOVER_FENCE_MODE", value_name = "MODE")]
    pub fence_mode: Option<FenceMode>,
    /// `fence.holdTimeout`: how long a held write waits, e.g. 5s [default: 5s]
    #[arg(long, env = "CUTOVER_FENCE_HOLD_TIMEOUT", value_name = "DURATION")]
    pub fence_hold_timeout: Option<String>,
    /// `migration.pageSize`: keys read from the source per page during the copy [default: 1000]
    #[arg(long, env = "CUTOVER_MIGRATION_PAGE_SIZE", value_name = "KEYS")]
    pub migration_page_size: Option<i64>,
    /// `migration.concurrency`: copy Txns in flight on the target [default: 4]
    #[arg(long, env = "CUTOVER_MIGRATION_CONCURRENCY", value_name = "N")]
    pub migration_concurrency: Option<usize>,
    /// `migration.maxLag`: fence once the target is at most this many source revisions behind [default: 20]
    #[arg(long, env = "CUTOVER_MIGRATION_MAX_LAG", value_name = "REVISIONS")]
    pub migration_max_lag: Option<i64>,
    /// `migration.fenceTimeout`: fail and release the fence if the fenced steps take longer [default: 10s]
    #[arg(long, env = "CUTOVER_MIGRATION_FENCE_TIMEOUT", value_name = "DURATION")]
    pub migration_fence_timeout: Option<String>,
    /// `migration.leaseTTL`: how long a crashed migrator keeps the tenant fenced [default: 10s]
    #[arg(long, env = "CUTOVER_MIGRATION_LEASE_TTL", value_name = "DURATION")]
    pub migration_lease_ttl: Option<String>,
    /// `migration.revisionGap`: gap between the last source revision and the first target-era one [default: 1000000]
    #[arg(long, env = "CUTOVER_MIGRATION_REVISION_GAP", value_name = "REVISIONS")]
    pub migration_revision_gap: Option<i64>,
    /// `migration.stepDelay`: pause at the start of each phase before the fence, for rehearsals and demos [default: 0s]
    #[arg(long, env = "CUTOVER_MIGRATION_STEP_DELAY", value_name = "DURATION")]
    pub migration_step_delay: Option<String>,
    /// `migration.fenceDelay`: keep the source fenced this much longer in Fenced and Committing, and pause as long after the commit marker before switching, for rehearsals [default: 0s]
    #[arg(long, env = "CUTOVER_MIGRATION_FENCE_DELAY", value_name = "DURATION")]
    pub migration_fence_delay: Option<String>,
    /// `migration.pruneInterval`: how often the translation's key map drops the keys whose copy is gone from the datastore; 0s: never [default: 10m]
    #[arg(long, env = "CUTOVER_MIGRATION_PRUNE_INTERVAL", value_name = "DURATION")]
    pub migration_prune_interval: Option<String>,
    /// `workerThreads`: threads serving requests; 1 = a single-threaded runtime [default: 1]
    #[arg(long, env = "CUTOVER_WORKER_THREADS", value_name = "N")]
    pub worker_threads: Option<usize>,
    /// `limits.maxConnections`: client connections open at once [default: 4096]
    #[arg(long, env = "CUTOVER_LIMITS_MAX_CONNECTIONS", value_name = "N")]
    pub limits_max_connections: Option<usize>,
    /// `limits.maxStreamsPerConnection`: concurrent calls and streams on one connection
    /// [default: 16384]
    #[arg(long, env = "CUTOVER_LIMITS_MAX_STREAMS_PER_CONNECTION", value_name = "N")]
    pub limits_max_streams_per_connection: Option<u32>,
    /// `limits.handshakeTimeout`: how long a new connection may take to send its first
    /// bytes [default: 10s]
    #[arg(long, env = "CUTOVER_LIMITS_HANDSHAKE_TIMEOUT", value_name = "DURATION")]
    pub limits_handshake_timeout: Option<String>,
    /// `log.format`: text or json
    #[arg(long, env = "CUTOVER_LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<LogFormat>,
    /// `log.level`: a tracing filter such as info or cutover=debug
    #[arg(long, env = "CUTOVER_LOG_LEVEL", value_name = "FILTER")]
    pub log_level: Option<String>,
}

fn set_path(doc: &mut Value, path: &[&str], value: Value) {
    let Some((last, parents)) = path.split_last() else {
        return;
    };
    let mut cur = doc;
    for key in parents {
        if !cur.is_mapping() {
            *cur = Value::Mapping(Mapping::new());
        }
        let Value::Mapping(map) = cur else { return };
        cur = map
            .entry(Value::String((*key).to_string()))
            .or_insert_with(|| Value::Mapping(Mapping::new()));
    }
    if !cur.is_mapping() {
        *cur = Value::Mapping(Mapping::new());
    }
    if let Value::Mapping(map) = cur {
        map.insert(Value::String((*last).to_string()), value);
    }
}

fn split_named<'a>(flag: &str, entry: &'a str) -> Result<(&'a str, &'a str), ConfigError> {
    entry
        .split_once('=')
        .filter(|(n, v)| !n.is_empty() && !v.is_empty())
        .ok_or_else(|| ConfigError::invalid(flag, format!("{entry:?} is not of the form NAME=VALUE")))
}

impl Overrides {
    fn apply(&self, doc: &mut Value) -> Result<(), ConfigError> {
        let s = |v: &str| Value::String(v.to_string());
        let p = |v: &Path| Value::String(v.display().to_string());
        if let Some(v) = &self.listen {
            set_path(doc, &["listen"], s(v));
        }
        if let Some(v) = &self.tls_cert_file {
            set_path(doc, &["tls", "certFile"], p(v));
        }
        if let Some(v) = &self.tls_key_file {
            set_path(doc, &["tls", "keyFile"], p(v));
        }
        if let Some(v) = &self.tls_client_ca_file {
            set_path(doc, &["tls", "clientCAFile"], p(v));
        }
        if !self.tls_operator_common_names.is_empty() {
            let names = self.tls_operator_common_names.iter().map(|n| s(n)).collect();
            set_path(doc, &["tls", "operatorCommonNames"], Value::Sequence(names));
        }
        if let Some(v) = &self.admin_listen {
            set_path(doc, &["admin", "listen"], s(v));
        }
        if let Some(v) = &self.admin_token_file {
            set_path(doc, &["admin", "tokenFile"], p(v));
        }
        if let Some(v) = &self.data_store {
            set_path(doc, &["dataStore"], s(v));
        }
        for e in &self.data_store_endpoints {
            let (name, eps) = split_named("--data-store-endpoints", e)?;
            let list = eps.split(',').map(|e| s(e.trim())).collect();
            set_path(doc, &["dataStores", name, "endpoints"], Value::Sequence(list));
        }
        let named: [(&str, &Vec<String>, &[&str]); 5] = [
            ("--data-store-ca-file", &self.data_store_ca_file, &["tls", "caFile"]),
            (
                "--data-store-cert-file",
                &self.data_store_cert_file,
                &["tls", "certFile"],
            ),
            ("--data-store-key-file", &self.data_store_key_file, &["tls", "keyFile"]),
            (
                "--data-store-username",
                &self.data_store_username,
                &["basicAuth", "username"],
            ),
            (
                "--data-store-password-file",
                &self.data_store_password_file,
                &["basicAuth", "passwordFile"],
            ),
        ];
        for (flag, entries, sub) in named {
            for e in entries {
                let (name, value) = split_named(flag, e)?;
                let mut path = vec!["dataStores", name];
                path.extend_from_slice(sub);
                set_path(doc, &path, s(value));
            }
        }
        if let Some(v) = self.max_request_bytes {
            set_path(doc, &["maxRequestBytes"], Value::Number(v.into()));
        }
        if let Some(v) = &self.prefix {
            set_path(doc, &["prefix"], s(v));
        }
        if let Some(v) = self.fence_mode {
            let m = match v {
                FenceMode::Hold => "hold",
                FenceMode::Reject => "reject",
            };
            set_path(doc, &["fence", "mode"], s(m));
        }
        if let Some(v) = &self.fence_hold_timeout {
            set_path(doc, &["fence", "holdTimeout"], s(v));
        }
        if let Some(v) = self.worker_threads {
            set_path(doc, &["workerThreads"], Value::Number(v.into()));
        }
        if let Some(v) = self.limits_max_connections {
            set_path(doc, &["limits", "maxConnections"], Value::Number(v.into()));
        }
        if let Some(v) = self.limits_max_streams_per_connection {
            set_path(doc, &["limits", "maxStreamsPerConnection"], Value::Number(v.into()));
        }
        if let Some(v) = &self.limits_handshake_timeout {
            set_path(doc, &["limits", "handshakeTimeout"], s(v));
        }
        if let Some(v) = self.migration_page_size {
            set_path(doc, &["migration", "pageSize"], Value::Number(v.into()));
        }
        if let Some(v) = self.migration_concurrency {
            set_path(doc, &["migration", "concurrency"], Value::Number(v.into()));
        }
        if let Some(v) = self.migration_max_lag {
            set_path(doc, &["migration", "maxLag"], Value::Number(v.into()));
        }
        if let Some(v) = self.migration_revision_gap {
            set_path(doc, &["migration", "revisionGap"], Value::Number(v.into()));
        }
        for (v, key) in [
            (&self.migration_fence_timeout, "fenceTimeout"),
            (&self.migration_lease_ttl, "leaseTTL"),
            (&self.migration_step_delay, "stepDelay"),
            (&self.migration_fence_delay, "fenceDelay"),
            (&self.migration_prune_interval, "pruneInterval"),
        ] {
            if let Some(v) = v {
                set_path(doc, &["migration", key], s(v));
            }
        }
        if let Some(v) = self.log_format {
            let f = match v {
                LogFormat::Text => "text",
                LogFormat::Json => "json",
            };
            set_path(doc, &["log", "format"], s(f));
        }
        if let Some(v) = &self.log_level {
            set_path(doc, &["log", "level"], s(v));
        }
        Ok(())
    }

    /// Reads the file (if any), applies the flags and checks the result.
    pub fn load(&self) -> Result<Config, ConfigError> {
        let mut doc = match &self.config {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.clone(),
                    source,
                })?;
                parse_yaml(&text)?
            }
            None => Value::Mapping(Mapping::new()),
        };
        self.apply(&mut doc)?;
        let raw = from_value(doc)?;
        validate(raw)
    }
}

/// Parses YAML text into a document; an empty file is an empty mapping.
pub fn parse_yaml(text: &str) -> Result<Value, ConfigError> {
    let doc: Value = serde_norway::from_str(text).map_err(|e| {
        let at = e
            .location()
            .map(|l| format!("line {} column {}", l.line(), l.column()))
            .unwrap_or_else(|| "document".into());
        ConfigError::invalid(at, format!("not valid YAML: {e}"))
    })?;
    Ok(match doc {
        Value::Null => Value::Mapping(Mapping::new()),
        other => other,
    })
}

fn from_value(doc: Value) -> Result<RawConfig, ConfigError> {
    serde_path_to_error::deserialize(doc).map_err(|e| {
        let path = e.path().to_string();
        let key = if path == "." { "(top level)".to_string() } else { path };
        ConfigError::invalid(key, e.into_inner().to_string())
    })
}

/// Parses and checks a whole config text (used by tests and `cutover check-config`).
pub fn from_yaml(text: &str) -> Result<Config, ConfigError> {
    validate(from_value(parse_yaml(text)?)?)
}

fn check_readable(key: &str, path: &Path) -> Result<(), ConfigError> {
    std::fs::File::open(path)
        .map(|_| ())
        .map_err(|e| ConfigError::invalid(key, format!("cannot read {}: {e}", path.display())))
}

/// Reads a bearer token file the one way the server and the CLI both use: surrounding
/// whitespace (an editor's newline, stray spaces) is not part of the token, and a token
/// is one word on one line.
pub fn read_token(path: &Path) -> Result<Secret, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    if token.contains(char::is_whitespace) {
        return Err(format!(
            "{} must hold the token alone, on one line (it has whitespace inside)",
            path.display()
        ));
    }
    Ok(Secret(token.to_string()))
}

/// A duration setting, at most `max`.
fn bounded_duration(key: &str, value: &str, max: Duration) -> Result<Duration, ConfigError> {
    let d = humantime::parse_duration(value).map_err(|e| ConfigError::invalid(key, format!("{value:?}: {e}")))?;
    if d > max {
        return Err(ConfigError::invalid(
            key,
            format!(
                "{value:?} is longer than the most allowed, {}",
                humantime::format_duration(max)
            ),
        ));
    }
    Ok(d)
}

fn read_secret(key: &str, path: &Path) -> Result<Secret, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::invalid(key, format!("cannot read {}: {e}", path.display())))?;
    let value = text.trim_end_matches(['\r', '\n']).to_string();
    if value.is_empty() {
        return Err(ConfigError::invalid(key, format!("{} is empty", path.display())));
    }
    Ok(Secret(value))
}

fn validate(raw: RawConfig) -> Result<Config, ConfigError> {
    let listen = ListenAddr::parse(&raw.listen).map_err(|m| ConfigError::invalid("listen", m))?;
    if let Some(tls) = &raw.tls {
        check_readable("tls.certFile", &tls.cert_file)?;
        check_readable("tls.keyFile", &tls.key_file)?;
        if let Some(ca) = &tls.client_ca_file {
            check_readable("tls.clientCAFile", ca)?;
        }
        if !tls.operator_common_names.is_empty() && tls.client_ca_file.is_none() {
            return Err(ConfigError::invalid(
                "tls.operatorCommonNames",
                "needs tls.clientCAFile: a common name counts only on a certificate cutover verified",
            ));
        }
        if tls.operator_common_names.iter().any(String::is_empty) {
            return Err(ConfigError::invalid(
                "tls.operatorCommonNames",
                "a name must not be empty",
            ));
        }
    }
    let admin_listen = parse_socket_addr(&raw.admin.listen).map_err(|m| ConfigError::invalid("admin.listen", m))?;
    let admin_token = match &raw.admin.token_file {
        Some(p) => Some(read_token(p).map_err(|m| ConfigError::invalid("admin.tokenFile", m))?),
        None => None,
    };
    if raw.data_stores.is_empty() {
        return Err(ConfigError::invalid("dataStores", "at least one datastore is needed"));
    }
    if raw.data_store.is_empty() {
        return Err(ConfigError::invalid("dataStore", "must name the active datastore"));
    }
    if !raw.data_stores.contains_key(&raw.data_store) {
        let known: Vec<&str> = raw.data_stores.keys().map(String::as_str).collect();
        return Err(ConfigError::invalid(
            "dataStore",
            format!("{:?} is not one of dataStores ({})", raw.data_store, known.join(", ")),
        ));
    }
    let hold_timeout = bounded_duration("fence.holdTimeout", &raw.fence.hold_timeout, MAX_HOLD_TIMEOUT)?;
    if !raw.prefix.is_empty() && !raw.prefix.ends_with('/') {
        return Err(ConfigError::invalid(
            "prefix",
            format!(
                "{:?} must end with \"/\" (without it the tenant would also own the keys of any tenant whose prefix starts the same, such as {:?})",
                raw.prefix,
                format!("{}b/", raw.prefix)
            ),
        ));
    }
    let migration = migration_settings(&raw.migration)?;
    if raw.worker_threads == 0 || raw.worker_threads > 64 {
        return Err(ConfigError::invalid("workerThreads", "must be between 1 and 64"));
    }
    if raw.max_request_bytes == 0 || raw.max_request_bytes > MAX_REQUEST_BYTES_LIMIT {
        return Err(ConfigError::invalid(
            "maxRequestBytes",
            format!("must be between 1 and {MAX_REQUEST_BYTES_LIMIT}"),
        ));
    }
    let limits = Limits {
        max_connections: raw.limits.max_connections,
        max_streams_per_connection: raw.limits.max_streams_per_connection,
        handshake_timeout: bounded_duration(
            "limits.handshakeTimeout",
            &raw.limits.handshake_timeout,
            Duration::from_secs(600),
        )?,
    };
    if !(1..=1_000_000).contains(&limits.max_connections) {
        return Err(ConfigError::invalid(
            "limits.maxConnections",
            "must be between 1 and 1000000",
        ));
    }
    if !(1..=1_000_000).contains(&limits.max_streams_per_connection) {
        return Err(ConfigError::invalid(
            "limits.maxStreamsPerConnection",
            "must be between 1 and 1000000",
        ));
    }
    if limits.handshake_timeout.is_zero() {
        return Err(ConfigError::invalid("limits.handshakeTimeout", "must be more than 0s"));
    }
    let mut data_stores = BTreeMap::new();
    for (name, ds) in &raw.data_stores {
        let key = |k: &str| format!("dataStores.{name}.{k}");
        if ds.endpoints.is_empty() {
            return Err(ConfigError::invalid(
                key("endpoints"),
                "at least one endpoint is needed",
            ));
        }
        let scheme = if ds.tls.is_some() { "https" } else { "http" };
        let mut endpoints = Vec::new();
        for (i, ep) in ds.endpoints.iter().enumerate() {
            endpoints.push(
                normalize_endpoint(ep, scheme).map_err(|m| ConfigError::invalid(key(&format!("endpoints[{i}]")), m))?,
            );
        }
        if let Some(tls) = &ds.tls {
            for (k, f) in [
                ("tls.caFile", &tls.ca_file),
                ("tls.certFile", &tls.cert_file),
                ("tls.keyFile", &tls.key_file),
            ] {
                if let Some(f) = f {
                    check_readable(&key(k), f)?;
                }
            }
            if tls.cert_file.is_some() != tls.key_file.is_some() {
                return Err(ConfigError::invalid(key("tls"), "certFile and keyFile go together"));
            }
        }
        let basic_auth = match &ds.basic_auth {
            Some(b) => {
                if b.username.is_empty() {
                    return Err(ConfigError::invalid(key("basicAuth.username"), "must not be empty"));
                }
                Some((
                    b.username.clone(),
                    read_secret(&key("basicAuth.passwordFile"), &b.password_file)?,
                ))
            }
            None => None,
        };
        data_stores.insert(
            name.clone(),
            DataStore {
                name: name.clone(),
                endpoints,
                tls: ds.tls.clone(),
                basic_auth,
            },
        );
    }
    let gateway = gateway_settings(&raw, &listen)?;
    Ok(Config {
        listen,
        tls: raw.tls,
        admin_listen,
        admin_token,
        data_store: raw.data_store,
        data_stores,
        max_request_bytes: raw.max_request_bytes,
        worker_threads: raw.worker_threads,
        prefix: bytes::Bytes::from(raw.prefix.into_bytes()),
        fence_mode: raw.fence.mode,
        hold_timeout,
        migration,
        log: raw.log,
        limits,
        gateway,
    })
}

/// Gateway mode's settings: it knows its callers by their client certificates, so it
/// serves TLS over TCP with a client CA, and its tenants' prefixes come from their roles.
fn gateway_settings(raw: &RawConfig, listen: &ListenAddr) -> Result<Option<GatewaySettings>, ConfigError> {
    if raw.mode != Mode::Gateway {
        if raw.gateway.catalog.is_some() || raw.gateway.placement.is_some() {
            return Err(ConfigError::invalid("gateway", "is read only with mode: gateway"));
        }
        return Ok(None);
    }
    if !raw.prefix.is_empty() {
        return Err(ConfigError::invalid(
            "prefix",
            "is a sidecar's; in gateway mode each tenant's prefix comes from its role",
        ));
    }
    if raw.tls.as_ref().is_none_or(|t| t.client_ca_file.is_none()) || !matches!(listen, ListenAddr::Tcp(_)) {
        return Err(ConfigError::invalid(
            "tls.clientCAFile",
            "gateway mode knows its callers by their client certificates: serve TLS over TCP with a client CA",
        ));
    }
    let pick = |key: &str, v: &Option<String>| -> Result<String, ConfigError> {
        let name = v.clone().unwrap_or_else(|| raw.data_store.clone());
        if !raw.data_stores.contains_key(&name) {
            return Err(ConfigError::invalid(key, format!("{name:?} is not one of dataStores")));
        }
        Ok(name)
    };
    Ok(Some(GatewaySettings {
        catalog: pick("gateway.catalog", &raw.gateway.catalog)?,
        placement: match raw.gateway.placement.as_deref() {
            Some("fewestKeys") => Placement::FewestKeys,
            other => Placement::Named(pick("gateway.placement", &other.map(String::from))?),
        },
    }))
}

fn migration_settings(m: &MigrationConfig) -> Result<MigrationSettings, ConfigError> {
    let duration = |key: &'static str, v: &str| bounded_duration(key, v, MAX_SETTING_DURATION);
    if !(1..=10_000).contains(&m.page_size) {
        return Err(ConfigError::invalid(
            "migration.pageSize",
            "must be between 1 and 10000",
        ));
    }
    if !(1..=64).contains(&m.concurrency) {
        return Err(ConfigError::invalid(
            "migration.concurrency",
            "must be between 1 and 64",
        ));
    }
    if !(0..=MAX_REVISION_GAP).contains(&m.max_lag) {
        return Err(ConfigError::invalid(
            "migration.maxLag",
            format!("must be between 0 and {MAX_REVISION_GAP}"),
        ));
    }
    if !(1..=MAX_REVISION_GAP).contains(&m.revision_gap) {
        return Err(ConfigError::invalid(
            "migration.revisionGap",
            format!("must be between 1 and {MAX_REVISION_GAP}"),
        ));
    }
    let lease_ttl = duration("migration.leaseTTL", &m.lease_ttl)?;
    if lease_ttl < std::time::Duration::from_secs(2) {
        return Err(ConfigError::invalid("migration.leaseTTL", "must be at least 2s"));
    }
    Ok(MigrationSettings {
        revision_gap: m.revision_gap,
        page_size: m.page_size,
        concurrency: m.concurrency,
        max_lag: m.max_lag,
        fence_timeout: duration("migration.fenceTimeout", &m.fence_timeout)?,
        lease_ttl: lease_ttl.as_secs() as i64,
        step_delay: duration("migration.stepDelay", &m.step_delay)?,
        fence_delay: duration("migration.fenceDelay", &m.fence_delay)?,
        prune_every: duration("migration.pruneInterval", &m.prune_interval)?,
        ..Default::default()
    })
}

/// `127.0.0.1:2379` -> `http://127.0.0.1:2379`; an explicit scheme must match the TLS setting.
fn normalize_endpoint(ep: &str, scheme: &str) -> Result<String, String> {
    let (given, rest) = match ep.split_once("://") {
        Some((s, r)) => (Some(s), r),
        None => (None, ep),
    };
    if let Some(s) = given {
        if s != "http" && s != "https" {
            return Err(format!("{ep:?}: scheme must be http or https"));
        }
        if s != scheme {
            return Err(format!(
                "{ep:?}: scheme {s} does not match the datastore's tls setting ({scheme})"
            ));
        }
    }
    let uri: http::Uri = format!("{scheme}://{rest}")
        .parse()
        .map_err(|e| format!("{ep:?} is not a valid host:port ({e})"))?;
    match (uri.host(), uri.port_u16()) {
        (Some(h), Some(p)) if !h.is_empty() => Ok(format!("{scheme}://{h}:{p}")),
        _ => Err(format!("{ep:?} must be host:port")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = "dataStore: default\ndataStores:\n  default:\n    endpoints: [127.0.0.1:2379]\n";

    #[test]
    fn minimal_config_gets_defaults() {
        let c = from_yaml(MINIMAL).expect("valid");
        assert_eq!(c.listen, ListenAddr::Tcp("127.0.0.1:2379".parse().unwrap()));
        assert_eq!(c.admin_listen, "127.0.0.1:9180".parse().unwrap());
        assert_eq!(c.data_stores["default"].endpoints, vec!["http://127.0.0.1:2379"]);
        assert_eq!(c.max_recv_message_bytes(), 2 * 1024 * 1024);
    }

    #[test]
    fn unknown_key_is_named_with_its_path() {
        let text = format!("{MINIMAL}    tlss: {{}}\n");
        let err = from_yaml(&text).unwrap_err().to_string();
        assert!(
            err.starts_with("config: dataStores.default.tlss: unknown field `tlss`"),
            "{err}"
        );
    }

    #[test]
    fn unknown_active_datastore_is_rejected() {
        let text = MINIMAL.replace("dataStore: default", "dataStore: other");
        let err = from_yaml(&text).unwrap_err().to_string();
        assert!(
            err.contains("config: dataStore: \"other\" is not one of dataStores (default)"),
            "{err}"
        );
    }

    #[test]
    fn bad_addresses_are_rejected() {
        let err = from_yaml(&format!("listen: nowhere\n{MINIMAL}"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("config: listen:"), "{err}");
        let err = from_yaml(&MINIMAL.replace("127.0.0.1:2379", "ftp://x:1"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("config: dataStores.default.endpoints[0]:"), "{err}");
    }

    #[test]
    fn missing_files_are_named() {
        let text = format!("{MINIMAL}    tls: {{caFile: /nonexistent/ca.pem}}\n");
        let err = from_yaml(&text).unwrap_err().to_string();
        assert!(
            err.starts_with("config: dataStores.default.tls.caFile: cannot read /nonexistent/ca.pem"),
            "{err}"
        );
    }

    #[test]
    fn unix_listen_is_parsed() {
        let c = from_yaml(&format!("listen: unix:///run/etcd.sock\n{MINIMAL}")).unwrap();
        assert_eq!(c.listen, ListenAddr::Unix("/run/etcd.sock".into()));
    }

    #[test]
    fn flags_override_the_file_and_build_datastores() {
        let o = Overrides {
            data_store: Some("b".into()),
            data_store_endpoints: vec!["b=127.0.0.1:1,127.0.0.1:2".into()],
            listen: Some("unix:/tmp/x.sock".into()),
            ..Default::default()
        };
        let c = o.load().expect("flags alone are a config");
        assert_eq!(c.data_store, "b");
        assert_eq!(c.data_stores["b"].endpoints.len(), 2);
        assert_eq!(c.listen, ListenAddr::Unix("/tmp/x.sock".into()));
    }

    #[test]
    fn fence_settings_parse() {
        let c = from_yaml(&format!(
            "prefix: /t/\nfence: {{mode: reject, holdTimeout: 1500ms}}\n{MINIMAL}"
        ))
        .unwrap();
        assert_eq!(&c.prefix[..], b"/t/");
        assert_eq!(c.fence_mode, FenceMode::Reject);
        assert_eq!(c.hold_timeout, std::time::Duration::from_millis(1500));
        let err = from_yaml(&format!("fence: {{holdTimeout: soon}}\n{MINIMAL}"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("config: fence.holdTimeout:"), "{err}");
        let d = from_yaml(MINIMAL).unwrap();
        assert_eq!(
            (d.fence_mode, d.hold_timeout),
            (FenceMode::Hold, std::time::Duration::from_secs(5))
        );
    }

    #[test]
    fn a_file_without_migration_settings_gets_the_built_in_defaults() {
        let from_file = migration_settings(&MigrationConfig::default()).unwrap();
        let built_in = MigrationSettings::default();
        assert_eq!(
            (
                from_file.page_size,
                from_file.concurrency,
                from_file.max_lag,
                from_file.fence_timeout,
                from_file.lease_ttl,
                from_file.revision_gap,
                from_file.step_delay,
                from_file.fence_delay,
                from_file.catch_up_timeout,
            ),
            (
                built_in.page_size,
                built_in.concurrency,
                built_in.max_lag,
                built_in.fence_timeout,
                built_in.lease_ttl,
                built_in.revision_gap,
                built_in.step_delay,
                built_in.fence_delay,
                built_in.catch_up_timeout,
            )
        );
    }

    #[test]
    fn gateway_mode_needs_client_certificates_and_names_datastores_of_the_pool() {
        let dir = tempfile::tempdir().unwrap();
        let pem = dir.path().join("x.pem");
        std::fs::write(&pem, "not checked here").unwrap();
        let tls = format!(
            "tls: {{certFile: {p}, keyFile: {p}, clientCAFile: {p}}}\n",
            p = pem.display()
        );
        let pool = "dataStore: east\ndataStores:\n  east: {endpoints: [\"127.0.0.1:1\"]}\n  west: {endpoints: [\"127.0.0.1:2\"]}\n";
        let ok = from_yaml(&format!("mode: gateway\n{tls}{pool}gateway: {{placement: west}}\n")).unwrap();
        assert_eq!(
            ok.gateway,
            Some(GatewaySettings {
                catalog: "east".into(),
                placement: Placement::Named("west".into())
            })
        );
        assert_eq!(
            from_yaml(&format!("{tls}{pool}")).unwrap().gateway,
            None,
            "sidecar by default"
        );
        let fewest = from_yaml(&format!(
            "mode: gateway\n{tls}{pool}gateway: {{placement: fewestKeys}}\n"
        ))
        .unwrap();
        assert_eq!(fewest.gateway.unwrap().placement, Placement::FewestKeys);
        for (text, key) in [
            (format!("mode: gateway\n{pool}"), "tls.clientCAFile"),
            (format!("mode: gateway\nprefix: /a/\n{tls}{pool}"), "prefix"),
            (
                format!("mode: gateway\n{tls}{pool}gateway: {{placement: north}}\n"),
                "gateway.placement",
            ),
            (format!("{tls}{pool}gateway: {{catalog: west}}\n"), "gateway"),
        ] {
            let err = from_yaml(&text).unwrap_err().to_string();
            assert!(err.starts_with(&format!("config: {key}: ")), "{key}: {err}");
        }
    }

    #[test]
    fn a_prefix_must_end_with_a_slash() {
        // "/tenant-a" would also hold "/tenant-ab/...": another tenant's keys.
        let err = from_yaml(&format!("prefix: /tenant-a\n{MINIMAL}"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("config: prefix: \"/tenant-a\" must end with \"/\""),
            "{err}"
        );
        assert_eq!(
            &from_yaml(&format!("prefix: /tenant-a/\n{MINIMAL}")).unwrap().prefix[..],
            b"/tenant-a/"
        );
        assert!(
            from_yaml(MINIMAL).unwrap().prefix.is_empty(),
            "no prefix: the whole key space"
        );
    }

    #[test]
    fn numbers_are_bounded_where_they_are_read() {
        for (line, key) in [
            ("migration: {revisionGap: 9223372036854775807}", "migration.revisionGap"),
            ("fence: {holdTimeout: 18446744073709551615s}", "fence.holdTimeout"),
            ("fence: {holdTimeout: 2h}", "fence.holdTimeout"),
            ("maxRequestBytes: 18446744073709551615", "maxRequestBytes"),
            ("maxRequestBytes: 4294967296", "maxRequestBytes"),
            ("migration: {fenceTimeout: 100000000h}", "migration.fenceTimeout"),
            ("migration: {leaseTTL: 100000000h}", "migration.leaseTTL"),
            ("migration: {stepDelay: 100000000h}", "migration.stepDelay"),
            ("migration: {maxLag: 9223372036854775807}", "migration.maxLag"),
        ] {
            let err = from_yaml(&format!("{line}\n{MINIMAL}"))
                .err()
                .unwrap_or_else(|| panic!("{line} was accepted"))
                .to_string();
            assert!(err.starts_with(&format!("config: {key}:")), "{line}: {err}");
        }
        let c = from_yaml(&format!(
            "maxRequestBytes: 16777216\nfence: {{holdTimeout: 1h}}\nmigration: {{revisionGap: 1000000000000}}\n{MINIMAL}"
        ))
        .unwrap();
        assert_eq!(c.max_request_bytes, 16 << 20);
        assert_eq!(c.migration.revision_gap, MAX_REVISION_GAP);
    }

    #[test]
    fn a_token_file_is_one_line_with_its_whitespace_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        let with = |text: &str| {
            std::fs::write(&file, text).unwrap();
            from_yaml(&format!("admin: {{tokenFile: {}}}\n{MINIMAL}", file.display()))
        };
        // What the server keeps is what the CLI sends (read_token, for both).
        let c = with("  s3cret \t\r\n").unwrap();
        assert_eq!(c.admin_token.as_ref().unwrap().expose(), "s3cret");
        assert_eq!(read_token(&file).unwrap().expose(), "s3cret");
        for bad in ["", " \n\n", "one\ntwo\n", "two words"] {
            let err = with(bad)
                .err()
                .unwrap_or_else(|| panic!("{bad:?} was accepted"))
                .to_string();
            assert!(err.starts_with("config: admin.tokenFile:"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn secrets_do_not_print() {
        assert_eq!(format!("{:?}", Secret("hunter2".into())), "<redacted>");
    }
}
