//! Watches the config file while the sidecar runs and turns each change into a typed diff
//! (after rathole's config watcher). Changing `dataStore` to another entry of
//! `dataStores` starts a migration, as patching a TenantControlPlane's `dataStore` does;
//! other keys need a restart and are reported as such.

use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{Config, Overrides, Secret};
use crate::migrate::Migrator;

/// How often the file is read.
const POLL_EVERY: Duration = Duration::from_secs(1);

/// One difference between the running configuration and the file's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigChange {
    /// `dataStore` names another datastore: move the tenant there.
    DataStoreChanged { from: String, to: String },
    /// Keys that changed but only take effect after a restart.
    Other(Vec<String>),
}

/// What changed from `old` to `new` (pure: both are loaded configurations).
pub fn diff(old: &Config, new: &Config) -> Vec<ConfigChange> {
    let mut out = Vec::new();
    if old.data_store != new.data_store {
        out.push(ConfigChange::DataStoreChanged {
            from: old.data_store.clone(),
            to: new.data_store.clone(),
        });
    }
    // Debug renderings compare whole values; secrets render redacted, so their values
    // are compared apart.
    let same = |a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| format!("{a:?}") == format!("{b:?}");
    let secret = |s: Option<&Secret>| s.map(|s| s.expose().to_string());
    let mut changed: Vec<String> = Vec::new();
    let mut check = |key: &str, unchanged: bool| {
        if !unchanged {
            changed.push(key.to_string());
        }
    };
    check("listen", old.listen == new.listen);
    check("tls", same(&old.tls, &new.tls));
    check("admin.listen", old.admin_listen == new.admin_listen);
    check(
        "admin.tokenFile",
        secret(old.admin_token.as_ref()) == secret(new.admin_token.as_ref()),
    );
    let names: std::collections::BTreeSet<&String> = old.data_stores.keys().chain(new.data_stores.keys()).collect();
    for name in names {
        let unchanged = match (old.data_stores.get(name), new.data_stores.get(name)) {
            (Some(a), Some(b)) => {
                same(a, b)
                    && secret(a.basic_auth.as_ref().map(|(_, p)| p)) == secret(b.basic_auth.as_ref().map(|(_, p)| p))
            }
            _ => false,
        };
        check(&format!("dataStores.{name}"), unchanged);
    }
    check("prefix", old.prefix == new.prefix);
    check("fence.mode", old.fence_mode == new.fence_mode);
    check("fence.holdTimeout", old.hold_timeout == new.hold_timeout);
    check("migration", same(&old.migration, &new.migration));
    check("maxRequestBytes", old.max_request_bytes == new.max_request_bytes);
    check("workerThreads", old.worker_threads == new.worker_threads);
    check("log", same(&old.log, &new.log));
    check("limits", same(&old.limits, &new.limits));
    if !changed.is_empty() {
        out.push(ConfigChange::Other(changed));
    }
    out
}

fn content_hash(bytes: &[u8]) -> u64 {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

/// Polls the config file `overrides.config` names every second (by content, so the
/// symlink swap of a mounted ConfigMap is seen), loads it as `cutover serve` did (flags
/// and environment still apply) and acts on what changed from `initial`, the config the
/// proxy started with. Only a change acts: a file whose `dataStore` differs from the
/// authoritative datastore at start-up moves nothing.
pub fn spawn(
    path: PathBuf,
    overrides: Overrides,
    initial: Config,
    migrator: Arc<Migrator>,
    background: &crate::tasks::Background,
) {
    background.spawn(async move {
        let mut current = initial;
        // None: the first poll loads the file and compares it with what the proxy
        // started with (the same, unless it changed in between).
        let mut seen: Option<u64> = None;
        let mut unreadable = false;
        loop {
            tokio::time::sleep(POLL_EVERY).await;
            let hash = match tokio::fs::read(&path).await {
                Ok(bytes) => {
                    unreadable = false;
                    content_hash(&bytes)
                }
                Err(e) => {
                    // Missing for a moment while a mounted ConfigMap is swapped: wait.
                    if !std::mem::replace(&mut unreadable, true) {
                        tracing::warn!(file = %path.display(), error = %e, "config: cannot read the config file; keeping the running configuration");
                    }
                    continue;
                }
            };
            if seen == Some(hash) {
                continue;
            }
            seen = Some(hash);
            let new = match overrides.load() {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(file = %path.display(), error = %e, "config: the changed config file is not valid; keeping the running configuration");
                    continue;
                }
            };
            for change in diff(&current, &new) {
                apply(&migrator, change).await;
            }
            current = new;
        }
    });
}

async fn apply(migrator: &Arc<Migrator>, change: ConfigChange) {
    match change {
        ConfigChange::DataStoreChanged { from, to } => {
            let authoritative = migrator.router().route().datastore_name.clone();
            if to == authoritative {
                tracing::info!(data_store = %to, "config: dataStore now names the datastore the tenant is on; nothing to do");
                return;
            }
            tracing::info!(%from, %to, "config: dataStore changed; starting a migration");
            match migrator
                .start_checked(&to, false, crate::migrate::WholeKeyspace::Refused, "config")
                .await
            {
                Ok(view) => {
                    tracing::info!(migration = %view.id, from = %view.from, %to, "config: migration started")
                }
                // The same change reached another replica first: one migration, followed here.
                Err(e @ crate::migrate::StartError::LedElsewhere { .. }) => tracing::info!(%to, "config: {e}"),
                Err(e) => tracing::error!(%to, error = %e, "config: cannot start the migration"),
            }
        }
        ConfigChange::Other(keys) => {
            for key in keys {
                tracing::warn!("config: {key} changed; restart cutover to apply it");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(yaml: &str) -> Config {
        let dir = std::env::temp_dir().join(format!(
            "cutover-reload-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.yaml");
        std::fs::write(&path, yaml).unwrap();
        let c = Overrides {
            config: Some(path),
            ..Default::default()
        }
        .load()
        .unwrap();
        let _ = std::fs::remove_dir_all(dir);
        c
    }

    const BASE: &str = "dataStores:\n  a: {endpoints: [127.0.0.1:1]}\n  b: {endpoints: [127.0.0.1:2]}\n";

    fn other(keys: &[&str]) -> ConfigChange {
        ConfigChange::Other(keys.iter().map(|k| k.to_string()).collect())
    }

    #[test]
    fn the_same_config_is_no_change() {
        let old = load(&format!("dataStore: a\n{BASE}"));
        assert_eq!(diff(&old, &old), vec![]);
        assert_eq!(diff(&old, &load(&format!("dataStore: a\n{BASE}"))), vec![]);
    }

    #[test]
    fn a_new_data_store_is_a_migration() {
        let old = load(&format!("dataStore: a\n{BASE}"));
        let moved = load(&format!("dataStore: b\n{BASE}"));
        assert_eq!(
            diff(&old, &moved),
            vec![ConfigChange::DataStoreChanged {
                from: "a".into(),
                to: "b".into()
            }]
        );
    }

    #[test]
    fn other_keys_need_a_restart() {
        let old = load(&format!("dataStore: a\n{BASE}"));
        let changed = load(&format!(
            "dataStore: a\nprefix: /x/\nfence: {{mode: reject}}\nmigration: {{pageSize: 7}}\nlog: {{level: debug}}\n{BASE}"
        ));
        assert_eq!(
            diff(&old, &changed),
            vec![other(&["prefix", "fence.mode", "migration", "log"])]
        );
    }

    #[test]
    fn data_stores_are_compared_one_by_one() {
        let old = load(&format!("dataStore: a\n{BASE}"));
        let new = load(
            "dataStore: b\ndataStores:\n  a: {endpoints: [127.0.0.1:1]}\n  b: {endpoints: [127.0.0.1:3]}\n  c: {endpoints: [127.0.0.1:4]}\n",
        );
        assert_eq!(
            diff(&old, &new),
            vec![
                ConfigChange::DataStoreChanged {
                    from: "a".into(),
                    to: "b".into()
                },
                other(&["dataStores.b", "dataStores.c"]),
            ]
        );
    }

    #[test]
    fn a_new_token_is_seen_though_it_prints_redacted() {
        let dir = std::env::temp_dir().join(format!("cutover-reload-token-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let token = dir.join("token");
        let yaml = format!("dataStore: a\nadmin: {{tokenFile: {}}}\n{BASE}", token.display());
        std::fs::write(&token, "one\n").unwrap();
        let old = load(&yaml);
        std::fs::write(&token, "two\n").unwrap();
        let new = load(&yaml);
        let _ = std::fs::remove_dir_all(dir);
        assert_eq!(diff(&old, &new), vec![other(&["admin.tokenFile"])]);
    }

    #[test]
    fn content_hashes_tell_contents_apart() {
        assert_eq!(content_hash(b"dataStore: a\n"), content_hash(b"dataStore: a\n"));
        assert_ne!(content_hash(b"dataStore: a\n"), content_hash(b"dataStore: b\n"));
    }
}
