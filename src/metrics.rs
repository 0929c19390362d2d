//! Prometheus metrics, served by the admin API at /metrics.
//!
//! Labels on the request path are `&'static str`, so recording a request allocates nothing.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tonic::Code;

use crate::error::code_name;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RpcLabels {
    pub service: &'static str,
    pub method: &'static str,
    pub code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    pub service: &'static str,
    pub method: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StreamLabels {
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EndpointLabels {
    pub datastore: String,
    pub endpoint: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DatastoreLabels {
    pub datastore: String,
}

/// A tenant of a gateway: the label set is as large as the catalog's tenants, which only
/// the root user creates.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantLabels {
    pub tenant: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TenantOutcomeLabels {
    pub tenant: String,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    pub version: &'static str,
}

pub struct Metrics {
    registry: Registry,
    pub requests: Family<RpcLabels, Counter>,
    pub latency: Family<MethodLabels, Histogram>,
    pub open_watches: Gauge,
    pub open_streams: Family<StreamLabels, Gauge>,
    /// Client streams that have ended, of every kind (not exported; see `memory`).
    pub streams_closed: Counter,
    pub endpoint_up: Family<EndpointLabels, Gauge>,
    pub failovers: Family<DatastoreLabels, Counter>,
    /// Writes that met the fence, by outcome (held then sent, held then rejected, rejected).
    pub fenced_writes: Family<OutcomeLabels, Counter>,
    /// Writes sent without the guard because the client may not read the fence key.
    pub unguarded_writes: Counter,
    /// Writes waiting behind the fence now.
    pub held_writes: Gauge,
    /// Linearizable reads that found the tenant moved and wait for this replica's route.
    pub held_reads: Gauge,
    /// Watch responses from a store the tenant may have left, waiting for proof that it
    /// has not (or for this replica's route to follow it).
    pub held_watch_responses: Gauge,
    /// Reads sent without the read guard because the client may not read the fence key.
    pub unguarded_reads: Counter,
    /// Linearizable reads that found the tenant moved away from the store they were sent
    /// to, and were sent again to its new home.
    pub rerouted_reads: Counter,
    /// The migration phase now (0 Ready, 1 Preparing, 2 Copying, 3 CatchingUp, 4 Fenced,
    /// 5 Committing, 6 Failed).
    pub migration_phase: Gauge,
    /// (Gateway) unary requests of each tenant this replica served.
    pub tenant_requests: Family<TenantLabels, Counter>,
    /// (Gateway) each tenant's migration phase on this replica (numbers as `migration_phase`).
    pub tenant_migration_phase: Family<TenantLabels, Gauge>,
    /// (Gateway) migrations of each tenant that ended, by outcome.
    pub tenant_migrations: Family<TenantOutcomeLabels, Counter>,
    /// (Gateway) tenants in the catalog, and those this replica has served.
    pub gateway_tenants: Gauge,
    pub gateway_tenants_served: Gauge,
    pub keys_copied: Counter,
    pub bytes_copied: Counter,
    /// Source revisions the target is behind during the catch-up.
    pub catch_up_lag: Gauge,
    /// Keys in the key map of the revision translation this replica routes with.
    pub translation_keys: Gauge,
    /// Bytes that key map holds in memory.
    pub translation_bytes: Gauge,
    /// Keys dropped from the key map because the copy of the key is gone from the target.
    pub translation_pruned: Counter,
    /// How long each migration kept the source fenced.
    pub fence_seconds: Histogram,
    pub shadow_reads: Counter,
    pub shadow_mismatches: Counter,
    /// Migrations ended, by outcome (succeeded, failed, aborted).
    pub migrations: Family<OutcomeLabels, Counter>,
    /// Cluster-wide RPCs refused to a tenant.
    pub tenant_refused: Family<MethodLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("cutover");
        let requests = Family::<RpcLabels, Counter>::default();
        registry.register(
            "grpc_requests",
            "etcd gRPC requests served, by service, method and gRPC status code (streams count when they end)",
            requests.clone(),
        );
        let latency = Family::<MethodLabels, Histogram>::new_with_constructor(|| {
            // 50 µs .. ~13 s
            Histogram::new(exponential_buckets(0.00005, 2.0, 19))
        });
        registry.register(
            "grpc_request_duration_seconds",
            "Time to answer a unary etcd gRPC request, including the datastore round trip",
            latency.clone(),
        );
        let open_watches = Gauge::default();
        registry.register("open_watches", "Watches open on client streams", open_watches.clone());
        let open_streams = Family::<StreamLabels, Gauge>::default();
        registry.register(
            "open_streams",
            "Client streams open, by kind (watch, lease_keepalive, snapshot)",
            open_streams.clone(),
        );
        let endpoint_up = Family::<EndpointLabels, Gauge>::default();
        registry.register(
            "upstream_endpoint_up",
            "1 when the datastore endpoint answered its last health probe, else 0",
            endpoint_up.clone(),
        );
        let failovers = Family::<DatastoreLabels, Counter>::default();
        registry.register(
            "upstream_failovers",
            "Times a request or stream moved to another endpoint of a datastore after a connection failure",
            failovers.clone(),
        );
        let fenced_writes = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "fenced_writes",
            "Writes that found the datastore fenced, by outcome: held (then sent), held_rejected (hold timed out), rejected",
            fenced_writes.clone(),
        );
        let unguarded_writes = Counter::default();
        registry.register(
            "unguarded_writes",
            "Writes sent without the fence guard because the client's etcd user may not read the fence key",
            unguarded_writes.clone(),
        );
        let held_writes = Gauge::default();
        registry.register(
            "held_writes",
            "Writes waiting behind the fence now (hold mode)",
            held_writes.clone(),
        );
        let held_reads = Gauge::default();
        registry.register(
            "held_reads",
            "Linearizable reads waiting for this replica to follow the tenant to its new datastore",
            held_reads.clone(),
        );
        let held_watch_responses = Gauge::default();
        registry.register(
            "held_watch_responses",
            "Watch responses waiting for proof that the tenant still lives on the datastore that sent them",
            held_watch_responses.clone(),
        );
        let unguarded_reads = Counter::default();
        registry.register(
            "unguarded_reads",
            "Linearizable reads sent without the read guard because the client's etcd user may not read the fence key",
            unguarded_reads.clone(),
        );
        let rerouted_reads = Counter::default();
        registry.register(
            "rerouted_reads",
            "Linearizable reads that found the tenant moved away from the datastore they were sent to and were sent to its new one",
            rerouted_reads.clone(),
        );
        let tenant_requests = Family::<TenantLabels, Counter>::default();
        registry.register(
            "tenant_requests",
            "(Gateway) unary requests of each tenant served by this replica",
            tenant_requests.clone(),
        );
        let tenant_migration_phase = Family::<TenantLabels, Gauge>::default();
        registry.register(
            "tenant_migration_phase",
            "(Gateway) each tenant's migration phase, numbered as migration_phase",
            tenant_migration_phase.clone(),
        );
        let tenant_migrations = Family::<TenantOutcomeLabels, Counter>::default();
        registry.register(
            "tenant_migrations",
            "(Gateway) migrations of each tenant that ended here, by outcome",
            tenant_migrations.clone(),
        );
        let gateway_tenants = Gauge::default();
        registry.register(
            "gateway_tenants",
            "(Gateway) tenants in the catalog",
            gateway_tenants.clone(),
        );
        let gateway_tenants_served = Gauge::default();
        registry.register(
            "gateway_tenants_served",
            "(Gateway) tenants this replica has built a context for",
            gateway_tenants_served.clone(),
        );
        let migration_phase = Gauge::default();
        registry.register(
            "migration_phase",
            "Migration phase: 0 Ready, 1 Preparing, 2 Copying, 3 CatchingUp, 4 Fenced, 5 Committing, 6 Failed",
            migration_phase.clone(),
        );
        let keys_copied = Counter::default();
        registry.register(
            "migration_keys_copied",
            "Keys copied to migration targets",
            keys_copied.clone(),
        );
        let bytes_copied = Counter::default();
        registry.register(
            "migration_bytes_copied",
            "Bytes of keys and values copied to migration targets",
            bytes_copied.clone(),
        );
        let catch_up_lag = Gauge::default();
        registry.register(
            "migration_catch_up_lag_revisions",
            "Source revisions the migration target is behind during the catch-up",
            catch_up_lag.clone(),
        );
        let translation_keys = Gauge::default();
        registry.register(
            "translation_keys",
            "Keys in the key map of the revision translation this replica routes with (0: no translation)",
            translation_keys.clone(),
        );
        let translation_bytes = Gauge::default();
        registry.register(
            "translation_memory_bytes",
            "Bytes of memory that key map holds",
            translation_bytes.clone(),
        );
        let translation_pruned = Counter::default();
        registry.register(
            "translation_pruned_keys",
            "Keys dropped from the key map because the target no longer holds their copied incarnation",
            translation_pruned.clone(),
        );
        // 1 ms .. ~65 s
        let fence_seconds = Histogram::new(exponential_buckets(0.001, 2.0, 17));
        registry.register(
            "migration_fence_duration_seconds",
            "How long a migration kept the source fenced (writes refused or held)",
            fence_seconds.clone(),
        );
        let shadow_reads = Counter::default();
        registry.register(
            "migration_shadow_reads",
            "Keys read on both sides and compared during migrations",
            shadow_reads.clone(),
        );
        let shadow_mismatches = Counter::default();
        registry.register(
            "migration_shadow_mismatches",
            "Comparisons of the two sides that found a difference (each aborts its migration)",
            shadow_mismatches.clone(),
        );
        let migrations = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "migrations",
            "Migrations ended, by outcome: succeeded, failed, aborted, refused (another replica leads)",
            migrations.clone(),
        );
        let tenant_refused = Family::<MethodLabels, Counter>::default();
        registry.register(
            "tenant_refused_requests",
            "Cluster-wide RPCs a tenant called and was refused (permission denied), by method",
            tenant_refused.clone(),
        );
        let build = Family::<BuildLabels, Gauge>::default();
        build
            .get_or_create(&BuildLabels {
                version: env!("CARGO_PKG_VERSION"),
            })
            .set(1);
        registry.register("build_info", "The running cutover version", build);
        Metrics {
            registry,
            requests,
            latency,
            open_watches,
            open_streams,
            streams_closed: Counter::default(),
            endpoint_up,
            failovers,
            fenced_writes,
            unguarded_writes,
            held_writes,
            held_reads,
            held_watch_responses,
            unguarded_reads,
            rerouted_reads,
            migration_phase,
            tenant_requests,
            tenant_migration_phase,
            tenant_migrations,
            gateway_tenants,
            gateway_tenants_served,
            keys_copied,
            bytes_copied,
            catch_up_lag,
            translation_keys,
            translation_bytes,
            translation_pruned,
            fence_seconds,
            shadow_reads,
            shadow_mismatches,
            migrations,
            tenant_refused,
        }
    }

    pub fn tenant_refused(&self, service: &'static str, method: &'static str) {
        self.tenant_refused
            .get_or_create(&MethodLabels { service, method })
            .inc();
    }

    pub fn observe_unary(&self, service: &'static str, method: &'static str, code: Code, elapsed: Duration) {
        self.requests
            .get_or_create(&RpcLabels {
                service,
                method,
                code: code_name(code),
            })
            .inc();
        self.latency
            .get_or_create(&MethodLabels { service, method })
            .observe(elapsed.as_secs_f64());
    }

    pub fn observe_stream_end(&self, service: &'static str, method: &'static str, code: Code) {
        self.requests
            .get_or_create(&RpcLabels {
                service,
                method,
                code: code_name(code),
            })
            .inc();
    }

    /// A guard that counts a stream's end, with the code it leaves in `code` (Cancelled
    /// unless set: a stream dropped with its client was cancelled).
    /// (Gateway) Drops a deleted tenant's series, so that the label sets stay those of the
    /// tenants that exist.
    pub fn forget_tenant(&self, tenant: &str) {
        let labels = TenantLabels {
            tenant: tenant.to_string(),
        };
        self.tenant_requests.remove(&labels);
        self.tenant_migration_phase.remove(&labels);
        for outcome in ["running", "succeeded", "failed", "aborted", "refused"] {
            self.tenant_migrations.remove(&TenantOutcomeLabels {
                tenant: tenant.to_string(),
                outcome,
            });
        }
    }

    pub fn stream_end(self: &Arc<Self>, service: &'static str, method: &'static str) -> StreamEnd {
        StreamEnd {
            metrics: Arc::clone(self),
            service,
            method,
            code: Code::Cancelled,
        }
    }

    /// A guard that counts a stream as open until it is dropped.
    pub fn stream_guard(&self, kind: &'static str) -> StreamGuard {
        let gauge = self.open_streams.get_or_create(&StreamLabels { kind }).clone();
        gauge.inc();
        StreamGuard {
            gauge,
            closed: self.streams_closed.clone(),
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

pub struct StreamGuard {
    gauge: Gauge,
    closed: Counter,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.gauge.dec();
        self.closed.inc();
    }
}

/// Counts a stream's end in the requests metric when dropped (see `Metrics::stream_end`).
pub struct StreamEnd {
    metrics: Arc<Metrics>,
    service: &'static str,
    method: &'static str,
    pub code: Code,
}

impl Drop for StreamEnd {
    fn drop(&mut self) {
        self.metrics.observe_stream_end(self.service, self.method, self.code);
    }
}
