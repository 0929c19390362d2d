//! Whether this replica can serve its tenant, found the way a request would find it: a
//! read of the tenant's fence key on the authoritative datastore with cutover's own
//! credentials. An endpoint that answers is not enough: wrong credentials, a user that
//! may not read the fence key, or a store that says the tenant moved away (and this
//! replica cannot follow) all leave every request failing.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use tonic::Code;

use crate::error::ProxyError;
use crate::route::fence::Marker;
use crate::route::Router;
use crate::upstream::calls;

/// How often the check runs.
const EVERY: Duration = Duration::from_secs(2);
/// How long a replica may take to follow a "moved" marker before that counts against it.
const FOLLOW_GRACE: Duration = Duration::from_secs(1);

pub struct Readiness {
    /// Why the replica cannot serve (`None`: it can, as of the last check).
    problem: ArcSwapOption<String>,
}

impl Default for Readiness {
    /// Not ready until the first check has run.
    fn default() -> Self {
        Readiness {
            problem: ArcSwapOption::from_pointee("not checked yet".to_string()),
        }
    }
}

impl Readiness {
    /// The reason requests fail now, if they do.
    pub fn problem(&self) -> Option<Arc<String>> {
        self.problem.load_full()
    }

    /// Checks now and every [`EVERY`] until the process stops.
    pub fn spawn(router: Arc<Router>, background: &crate::tasks::Background) -> Arc<Readiness> {
        let me = Arc::new(Readiness::default());
        let this = me.clone();
        background.spawn(async move {
            loop {
                let found = check(&router).await.err();
                let was = this.problem.load_full();
                if was.as_deref() != found.as_ref() {
                    match &found {
                        Some(p) => tracing::warn!(problem = %p, "not ready: requests to the tenant's datastore fail"),
                        None => tracing::info!("ready: the tenant's datastore serves requests again"),
                    }
                }
                this.problem.store(found.map(Arc::new));
                tokio::time::sleep(EVERY).await;
            }
        });
        me
    }
}

/// `Err(reason)` when a request to the tenant would fail now.
pub async fn check(router: &Router) -> Result<(), String> {
    // Subscribed before the route is read: a switch in between is seen below.
    let mut changes = router.changes();
    let route = router.route();
    if let Some(s) = &route.stranded {
        return Err(format!(
            "the tenant moved from datastore {:?} to {:?}, which cannot be used yet: {}",
            route.datastore_name, s.moved_to, s.reason
        ));
    }
    if !route.datastore.is_ready() {
        return Err(format!(
            "datastore {:?} has no endpoint that answers",
            route.datastore_name
        ));
    }
    let fence_key = router.fence().guard.fence_key().clone();
    match calls::value(&route.datastore, fence_key).await {
        Ok(Some(value)) => {
            let Some(to) = Marker::moved_to(&value) else {
                return Ok(());
            };
            // A commit this replica has not followed yet: wake the follower and give it
            // a moment.
            router.nudge(route.generation);
            let _ = tokio::time::timeout(FOLLOW_GRACE, changes.wait_for(|g| *g > route.generation)).await;
            if router.route().generation != route.generation {
                return Ok(());
            }
            Err(format!(
                "datastore {:?} says the tenant moved to {to:?}, and this replica has not followed",
                route.datastore_name
            ))
        }
        Ok(None) => Ok(()),
        Err(ProxyError::Etcd(s)) if s.code() == Code::PermissionDenied => Err(format!(
            "cutover's etcd user on datastore {:?} may not read the tenant's fence key: {}",
            route.datastore_name,
            s.message()
        )),
        Err(ProxyError::Etcd(s)) => Err(format!(
            "datastore {:?} refuses cutover's requests: {}",
            route.datastore_name,
            s.message()
        )),
        Err(e) => Err(format!("datastore {:?}: {e}", route.datastore_name)),
    }
}
