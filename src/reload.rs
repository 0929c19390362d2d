//! Watches the config file while the sidecar runs and turns each change into a typed diff
//! (after rathole's config watcher). Changing `dataStore` to another entry of
//! `dataStores` starts a migration, as patching a TenantControlPlane's `dataStore` does;
//! other keys need a restart and are reported as such.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::config::{Config, Overrides};
use crate::migrate::Migrator;

/// One difference between the running configuration and the file's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConfigChange {
    /// `dataStore` names another datastore: move the tenant there.
    DataStoreChanged { from: String, to: String },
    /// Keys that changed but only take effect after a restart.
    NeedsRestart(Vec<&'static str>),
}

/// What changed from `old` to `new`.
pub fn diff(old: &Config, new: &Config) -> Vec<ConfigChange> {
    let mut out = Vec::new();
    if old.data_store != new.data_store {
        out.push(ConfigChange::DataStoreChanged {
            from: old.data_store.clone(),
            to: new.data_store.clone(),
        });
    }
    // Debug renderings compare every field (secrets render redacted, so a new token
    // value is not seen: restart to rotate it).
    let same = |a: &dyn std::fmt::Debug, b: &dyn std::fmt::Debug| format!("{a:?}") == format!("{b:?}");
    let mut restart = Vec::new();
    let checks: [(&'static str, bool); 10] = [
        ("listen", same(&old.listen, &new.listen)),
        ("tls", same(&old.tls, &new.tls)),
        (
            "admin",
            same(&old.admin_listen, &new.admin_listen) && old.admin_token.is_some() == new.admin_token.is_some(),
        ),
        ("dataStores", same(&old.data_stores, &new.data_stores)),
        ("prefix", old.prefix == new.prefix),
        (
            "fence",
            old.fence_mode == new.fence_mode && old.hold_timeout == new.hold_timeout,
        ),
        ("migration", same(&old.migration, &new.migration)),
        ("maxRequestBytes", old.max_request_bytes == new.max_request_bytes),
        ("workerThreads", old.worker_threads == new.worker_threads),
        ("log", same(&old.log, &new.log)),
    ];
    for (key, unchanged) in checks {
        if !unchanged {
            restart.push(key);
        }
    }
    if !restart.is_empty() {
        out.push(ConfigChange::NeedsRestart(restart));
    }
    out
}

/// Polls the config file every second (by content, so the symlink swap of a mounted
/// ConfigMap is seen) and acts on its changes.
pub fn spawn(
    path: PathBuf,
    overrides: Overrides,
    initial: Config,
    migrator: Arc<Migrator>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut current = initial;
        let mut seen = std::fs::read(&path).ok();
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let now = std::fs::read(&path).ok();
            if now.is_none() || now == seen {
                continue;
            }
            seen = now;
            let new = match overrides.load() {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(file = %path.display(), error = %e, "the changed config file is not valid; keeping the running configuration");
                    continue;
                }
            };
            for change in diff(&current, &new) {
                match change {
                    ConfigChange::DataStoreChanged { from, to } => {
                        let authoritative = migrator.router().route().datastore_name.clone();
                        if to == authoritative {
                            tracing::info!(data_store = %to, "config: dataStore now names the datastore the tenant is on");
                            continue;
                        }
                        tracing::info!(%from, %to, "config: dataStore changed; starting a migration");
                        match migrator.start(&to, false, "config") {
                            Ok(view) => tracing::info!(migration = %view.id, "migration started by the config change"),
                            Err(e) => tracing::error!(error = %e, "config: cannot start the migration"),
                        }
                    }
                    ConfigChange::NeedsRestart(keys) => {
                        for key in keys {
                            tracing::warn!("config: {key} changed; restart cutover to apply it");
                        }
                    }
                }
            }
            current = new;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(yaml: &str) -> Config {
        let dir = tempfile_dir();
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

    fn tempfile_dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "cutover-reload-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    const BASE: &str = "dataStores:\n  a: {endpoints: [127.0.0.1:1]}\n  b: {endpoints: [127.0.0.1:2]}\n";

    #[test]
    fn a_new_data_store_is_a_migration_and_other_keys_need_a_restart() {
        let old = load(&format!("dataStore: a\n{BASE}"));
        assert_eq!(diff(&old, &old), vec![]);
        let moved = load(&format!("dataStore: b\n{BASE}"));
        assert_eq!(
            diff(&old, &moved),
            vec![ConfigChange::DataStoreChanged {
                from: "a".into(),
                to: "b".into()
            }]
        );
        let other = load(&format!("dataStore: a\nprefix: /x/\nfence: {{mode: reject}}\n{BASE}"));
        assert_eq!(
            diff(&old, &other),
            vec![ConfigChange::NeedsRestart(vec!["prefix", "fence"])]
        );
    }
}
