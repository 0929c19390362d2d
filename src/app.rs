//! Wires the pieces together for `cutover serve`: datastores, route, gRPC server, admin API.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::admin::{self, AdminState};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::migrate::Migrator;
use crate::route::fence::Guard;
use crate::route::{FencePolicy, Router};
use crate::server::{self, Context, Listener};
use crate::upstream::{Datastore, UpstreamError};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Upstream(#[from] UpstreamError),
    #[error(transparent)]
    Serve(#[from] server::ServeError),
    #[error("admin API: cannot listen on {addr}: {source}")]
    AdminBind { addr: String, source: std::io::Error },
    #[error("admin API: {0}")]
    Admin(std::io::Error),
    #[error("{0}")]
    Route(#[from] crate::route::UnknownDatastore),
    #[error("cannot tell which datastore holds the tenant: {0}")]
    Resolve(#[from] crate::migrate::marker::ResolveError),
}

/// How often each datastore endpoint is probed.
const HEALTH_PROBE_EVERY: Duration = Duration::from_secs(2);

/// How often a gateway replica checks whether a tenant it serves moved (to record its new
/// home in the catalog).
const CATALOG_READ_EVERY: Duration = Duration::from_millis(500);
/// How often (in those ticks) deleted tenants are looked for: every 5 s.
const RETIRE_EVERY_TICKS: u64 = 10;
/// A gateway replica watches the catalog, and reads it this often besides.
const CATALOG_REREAD_EVERY: Duration = Duration::from_secs(10);

/// Serves gateway mode until SIGTERM or Ctrl-C: the Auth API from the catalog, and each
/// caller's tenant over its home datastore.
async fn serve_gateway(config: Config, gateway: crate::config::GatewaySettings) -> Result<(), RunError> {
    use crate::gateway::{auth::GatewayAuth, catalog::CatalogStore, dispatch};
    let metrics = Arc::new(Metrics::new());
    let mut datastores = BTreeMap::new();
    for (name, ds) in &config.data_stores {
        datastores.insert(name.clone(), Datastore::new(ds, metrics.clone())?);
    }
    let background = crate::tasks::Background::new();
    for ds in datastores.values() {
        ds.spawn_health_probe(HEALTH_PROBE_EVERY, &background);
    }
    let catalog_ds = datastores
        .get(&gateway.catalog)
        .cloned()
        .ok_or_else(|| crate::route::UnknownDatastore(gateway.catalog.clone()))?;
    let catalog = Arc::new(CatalogStore::new(
        catalog_ds,
        gateway.placement.clone(),
        datastores.clone(),
    ));
    if let Err(e) = catalog.read().await {
        tracing::warn!(error = %e, datastore = %gateway.catalog, "cannot read the gateway's catalog yet; retrying in the background");
    }
    catalog.spawn_follower(CATALOG_REREAD_EVERY, &background);
    let shared = dispatch::Shared {
        datastores,
        metrics: metrics.clone(),
        max_recv_bytes: config.max_recv_message_bytes(),
        fence_mode: config.fence_mode,
        hold_timeout: config.hold_timeout,
        root_home: gateway.catalog.clone(),
        migration: config.migration.clone(),
        background: background.clone(),
    };
    let catalog_home = shared.datastores.get(&gateway.catalog).cloned();
    let gw = dispatch::Gateway::new(shared, catalog.clone())?;
    {
        // After a migration, the catalog learns the tenant's new home; now and then, the
        // tenants Kamaji deleted leave it.
        let gw = gw.clone();
        background.spawn(async move {
            let mut tick = tokio::time::interval(CATALOG_READ_EVERY);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            for n in 0u64.. {
                tick.tick().await;
                gw.record_homes().await;
                if n % RETIRE_EVERY_TICKS == 0 {
                    gw.retire_deleted_tenants().await;
                }
            }
        });
    }
    let admin_state = Arc::new(admin::gateway::GatewayAdmin {
        metrics: metrics.clone(),
        gateway: gw.clone(),
        token: config.admin_token.clone(),
        problem: {
            let catalog = catalog.clone();
            let name = gateway.catalog.clone();
            Box::new(move || {
                if !catalog.has_read() {
                    return Some("the gateway's catalog has not been read yet".to_string());
                }
                match &catalog_home {
                    Some(ds) if ds.is_ready() => None,
                    _ => Some(format!("no endpoint of datastore {name:?} answers")),
                }
            })
        },
    });
    let dispatcher: Arc<dyn server::Dispatch> = gw;
    let routes = server::auth_routes(GatewayAuth::new(catalog), config.max_recv_message_bytes());
    let listener = Listener::bind(&config.listen).await?;
    let admin_listener = bind_admin(&config).await?;
    tracing::info!(
        listen = %listener.local_addr(),
        catalog = %gateway.catalog,
        placement = ?gateway.placement,
        "cutover is serving as a gateway"
    );
    let app = admin::gateway::routes(admin_state);
    run_until_signal(admin_listener, app, &background, |stop| async move {
        let max = config.max_recv_message_bytes();
        server::serve_routes(&config, max, routes, Some(dispatcher), listener, stop).await
    })
    .await
}

/// Serves until SIGTERM or Ctrl-C. With `reload` (the flags the config was loaded with,
/// naming the file), the file is watched for changes.
pub async fn serve(config: Config, reload: Option<crate::config::Overrides>) -> Result<(), RunError> {
    if let Some(gateway) = config.gateway.clone() {
        return serve_gateway(config, gateway).await;
    }
    let metrics = Arc::new(Metrics::new());
    let mut datastores = BTreeMap::new();
    for (name, ds) in &config.data_stores {
        datastores.insert(name.clone(), Datastore::new(ds, metrics.clone())?);
    }
    let fence = FencePolicy {
        tenant_prefix: config.prefix.clone(),
        guard: Guard::new(&config.prefix),
        mode: config.fence_mode,
        hold_timeout: config.hold_timeout,
    };
    let router = Arc::new(Router::new(datastores, &config.data_store, fence)?);

    let listener = Listener::bind(&config.listen).await?;
    let admin_listener = bind_admin(&config).await?;

    let background = crate::tasks::Background::new();
    for ds in router.datastores().values() {
        ds.spawn_health_probe(HEALTH_PROBE_EVERY, &background);
    }
    // The configured datastore may have been left by a migration: follow its marker. If
    // it cannot be read now, keep trying in the background (writes stay safe meanwhile:
    // a datastore the tenant left refuses them through the fence guard).
    match tokio::time::timeout(Duration::from_secs(5), crate::migrate::marker::follow_markers(&router)).await {
        Ok(Ok(())) => {}
        Ok(Err(e @ crate::migrate::marker::ResolveError::UnknownTarget { .. }))
        | Ok(Err(e @ crate::migrate::marker::ResolveError::Loop(_))) => return Err(e.into()),
        outcome => {
            let why = match outcome {
                Ok(Err(e)) => e.to_string(),
                _ => "no answer in 5 s".to_string(),
            };
            tracing::warn!(error = %why, "cannot read the migration marker yet; retrying in the background");
            let router = router.clone();
            background.spawn(async move {
                loop {
                    tokio::time::sleep(HEALTH_PROBE_EVERY).await;
                    match crate::migrate::marker::follow_markers(&router).await {
                        Ok(()) => break,
                        Err(e) => tracing::debug!(error = %e, "migration marker still unreadable"),
                    }
                }
            });
        }
    }
    // Another replica may run a migration: follow its commit as soon as it happens.
    crate::migrate::marker::spawn_follower(router.clone(), &background);
    let migrator = Migrator::new(router.clone(), metrics.clone(), config.migration.clone());
    migrator.spawn_status_follower();

    let ctx = Arc::new(Context {
        router: router.clone(),
        metrics: metrics.clone(),
        max_recv_bytes: config.max_recv_message_bytes(),
        warned_unguarded: Default::default(),
        access: crate::server::access::Access::new(
            !config.prefix.is_empty(),
            config
                .tls
                .as_ref()
                .map(|t| t.operator_common_names.clone())
                .unwrap_or_default(),
        ),
        known_leases: Default::default(),
        tenant_requests: None,
        keep_client_credentials: false,
    });
    if let Some(o) = reload {
        if let Some(path) = o.config.clone() {
            crate::reload::spawn(path, o, config.clone(), migrator.clone(), &background);
        }
    }
    crate::memory::spawn_trimmer(metrics.clone(), &background);
    crate::migrate::prune::spawn(
        router.clone(),
        metrics.clone(),
        config.migration.prune_every,
        &background,
    );
    let admin_state = Arc::new(AdminState {
        router: router.clone(),
        metrics,
        migrator: migrator.clone(),
        token: config.admin_token.clone(),
        started: Instant::now(),
        readiness: admin::readiness::Readiness::spawn(router.clone(), &background),
        loopback: config.admin_listen.ip().is_loopback(),
    });

    tracing::info!(
        listen = %listener.local_addr(),
        admin = %config.admin_listen,
        data_store = %router.route().datastore_name,
        tls = config.tls.is_some(),
        "cutover is serving"
    );

    let app = admin::routes(admin_state);
    run_until_signal(admin_listener, app, &background, |stop| async move {
        server::serve(&config, ctx, listener, stop).await
    })
    .await
}

/// The admin API's listener, bound before anything serves.
async fn bind_admin(config: &Config) -> Result<tokio::net::TcpListener, RunError> {
    tokio::net::TcpListener::bind(config.admin_listen)
        .await
        .map_err(|source| RunError::AdminBind {
            addr: config.admin_listen.to_string(),
            source,
        })
}

/// Runs the admin API and the gRPC server (`grpc`, given the future that says stop) until
/// SIGTERM or Ctrl-C, then stops both and the background tasks. Streams (watches) may stay
/// open: nothing is waited for longer than a grace period.
async fn run_until_signal<G, F>(
    admin_listener: tokio::net::TcpListener,
    app: axum::Router,
    background: &crate::tasks::Background,
    grpc: G,
) -> Result<(), RunError>
where
    G: FnOnce(std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>) -> F,
    F: std::future::Future<Output = Result<(), server::ServeError>> + Send + 'static,
{
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut stop: tokio::sync::watch::Receiver<bool>| {
        Box::pin(async move {
            let _ = stop.wait_for(|s| *s).await;
        }) as std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>
    };
    let admin_stop = stopped(stop_rx.clone());
    let admin = tokio::spawn(async move {
        axum::serve(admin_listener, app)
            .with_graceful_shutdown(admin_stop)
            .await
    });
    let grpc = tokio::spawn(grpc(stopped(stop_rx)));
    shutdown_signal().await;
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    let grace = Duration::from_secs(5);
    background.shutdown(grace).await;
    if let Ok(Ok(Err(e))) = tokio::time::timeout(grace, grpc).await {
        return Err(e.into());
    }
    if let Ok(Ok(Err(e))) = tokio::time::timeout(grace, admin).await {
        return Err(RunError::Admin(e));
    }
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGTERM; stopping only on Ctrl-C");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}
