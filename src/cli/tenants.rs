//! The gateway's commands: list its tenants, move one, drain a datastore of the pool.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

use super::{say, Admin, CliError};
use crate::admin::gateway::{DatastoreView, TenantView};

/// How often a wait asks how a migration goes.
const POLL: Duration = Duration::from_millis(250);

async fn tenants(admin: &Admin) -> Result<Vec<TenantView>, CliError> {
    tenants_sized(admin, false).await
}

async fn tenants_sized(admin: &Admin, size: bool) -> Result<Vec<TenantView>, CliError> {
    let json = admin
        .get(if size { "/v1/tenants?size=true" } else { "/v1/tenants" })
        .await?;
    serde_json::from_value(json).map_err(|e| CliError::Refused(format!("the admin API sent no tenant list: {e}")))
}

async fn tenant(admin: &Admin, name: &str) -> Result<TenantView, CliError> {
    let json = admin.get(&format!("/v1/tenants/{name}")).await?;
    serde_json::from_value(json).map_err(|e| CliError::Refused(format!("the admin API sent no tenant: {e}")))
}

/// A size in bytes, as people read it.
fn human(bytes: i64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// One line of `tenants` / `status --tenant`.
fn line(t: &TenantView) -> String {
    let migration = match &t.migration {
        Some(m) if m.finished_unix_ms.is_some() => format!("{} {:?} ({} -> {})", m.id, m.outcome, m.from, m.to),
        Some(m) => format!("{} {:?} ({} -> {})", m.id, m.phase, m.from, m.to),
        None => "-".into(),
    };
    format!(
        "{:<24} {:<28} {:<12} {:<12} {:>8} {}",
        t.name,
        t.prefix,
        t.home,
        t.serving_from.as_deref().unwrap_or("-"),
        t.keys.map_or("?".to_string(), |k| k.to_string()),
        match t.size_bytes {
            Some(b) => format!("{:>10} {migration}", human(b)),
            None => migration,
        }
    )
}

fn header() -> String {
    format!(
        "{:<24} {:<28} {:<12} {:<12} {:>8} {}",
        "NAME", "PREFIX", "HOME", "SERVING", "KEYS", "MIGRATION"
    )
}

/// `cutover tenants [--size]`.
pub async fn list(admin: &Admin, json: bool, size: bool) -> Result<(), CliError> {
    let all = tenants_sized(admin, size).await?;
    if json {
        return say(serde_json::to_string(&all).unwrap_or_default());
    }
    say(if size {
        header().replacen("MIGRATION", &format!("{:>10} MIGRATION", "SIZE"), 1)
    } else {
        header()
    })?;
    for t in &all {
        say(line(t))?;
    }
    Ok(())
}

/// `cutover status --tenant NAME [--watch]`.
pub async fn status(admin: &Admin, name: &str, watch: bool, json: bool) -> Result<(), CliError> {
    let show = |t: &TenantView| {
        if json {
            say(serde_json::to_string(t).unwrap_or_default())
        } else {
            say(line(t))
        }
    };
    let mut last = tenant(admin, name).await?;
    if !json {
        say(header())?;
    }
    show(&last)?;
    if !watch {
        return Ok(());
    }
    // A line per change of home, serving datastore or migration (not of the key count).
    let state = |t: &TenantView| {
        line(&TenantView {
            keys: None,
            ..t.clone()
        })
    };
    loop {
        tokio::time::sleep(POLL).await;
        let now = tenant(admin, name).await?;
        if state(&now) != state(&last) {
            show(&now)?;
            last = now;
        }
    }
}

/// Starts moving tenant `name` to `to`: the migration's id.
async fn start(admin: &Admin, name: &str, to: &str) -> Result<String, CliError> {
    let view = admin
        .post(
            &format!("/v1/tenants/{name}/migrations"),
            serde_json::json!({ "to": to }),
        )
        .await?;
    let id = view["id"].as_str().unwrap_or("?").to_string();
    say(format_args!(
        "migration {id} started: tenant {name}, {} -> {to}",
        view["from"].as_str().unwrap_or("?")
    ))?;
    Ok(id)
}

/// Waits for migration `id` of tenant `name` to end, saying each phase; whether it
/// succeeded.
async fn wait_for(admin: &Admin, name: &str, id: &str) -> Result<bool, CliError> {
    let mut said = String::new();
    loop {
        let t = tenant(admin, name).await?;
        if let Some(m) = t.migration.as_ref().filter(|m| m.id == id) {
            let now = line(&t);
            if now != said {
                say(&now)?;
                said = now;
            }
            if m.finished_unix_ms.is_some() {
                return Ok(m.outcome == crate::migrate::Outcome::Succeeded);
            }
        }
        tokio::time::sleep(POLL).await;
    }
}

/// `cutover migrate --tenant NAME --to TARGET [--wait]`.
pub async fn migrate(admin: &Admin, name: &str, to: &str, wait: bool) -> Result<bool, CliError> {
    let id = start(admin, name, to).await?;
    if !wait {
        return Ok(true);
    }
    wait_for(admin, name, &id).await
}

/// `cutover cleanup --tenant S --datastore NAME`: deletes tenant `name`'s old copy from
/// a datastore it has left.
pub async fn cleanup(admin: &Admin, name: &str, datastore: &str) -> Result<(), CliError> {
    let r = admin
        .post(
            &format!("/v1/tenants/{name}/cleanup"),
            serde_json::json!({ "datastore": datastore }),
        )
        .await?;
    say(format_args!(
        "deleted {} keys of tenant {name} from {datastore}",
        r["deleted"]
    ))
}

/// `cutover drain --datastore NAME [--parallel N] [--cleanup]`: moves every tenant whose
/// home is `datastore` to the other datastores of the pool, each to the one holding the
/// fewest tenants then, `parallel` at a time; with `cleanup`, deletes each moved tenant's
/// old copy from `datastore` once it has moved. Whether every move succeeded.
pub async fn drain(admin: &Admin, datastore: &str, parallel: usize, cleanup_after: bool) -> Result<bool, CliError> {
    let pool: Vec<DatastoreView> = serde_json::from_value(admin.get("/v1/datastores").await?)
        .map_err(|e| CliError::Refused(format!("the admin API sent no datastore list: {e}")))?;
    if !pool.iter().any(|d| d.name == datastore) {
        return Err(CliError::Usage(format!(
            "no datastore {datastore:?} in the gateway's pool"
        )));
    }
    let mut load: BTreeMap<String, usize> = pool
        .iter()
        .filter(|d| d.name != datastore)
        .map(|d| (d.name.clone(), d.tenants))
        .collect();
    if load.is_empty() {
        return Err(CliError::Usage(format!(
            "the pool has no datastore besides {datastore:?}"
        )));
    }
    let leaving: Vec<String> = tenants(admin)
        .await?
        .into_iter()
        // (One being deleted is not moved: its keys are about to go.)
        .filter(|t| t.home == datastore && !t.deleting)
        .map(|t| t.name)
        .collect();
    say(format_args!(
        "draining {datastore}: {} tenants, {} at a time",
        leaving.len(),
        parallel.max(1)
    ))?;
    let mut all_ok = true;
    for batch in leaving.chunks(parallel.max(1)) {
        let mut running = Vec::new();
        for name in batch {
            let (to, n) = load
                .iter_mut()
                .min_by_key(|(name, n)| (**n, (*name).clone()))
                .map(|(name, n)| (name.clone(), n))
                .ok_or_else(|| CliError::Usage("no datastore to move to".into()))?;
            *n += 1;
            let id = start(admin, name, &to).await?;
            running.push((name.clone(), id));
        }
        for (name, id) in running {
            let ok = wait_for(admin, &name, &id).await?;
            if !ok {
                say(format_args!(
                    "tenant {name}: migration {id} did not succeed; it stays where it was"
                ))?;
            } else if cleanup_after {
                cleanup(admin, &name, datastore).await?;
            }
            all_ok &= ok;
        }
    }
    let left: Vec<Value> = tenants(admin)
        .await?
        .into_iter()
        .filter(|t| t.serving_from.as_deref() == Some(datastore) && !t.deleting)
        .map(|t| Value::String(t.name))
        .collect();
    if left.is_empty() {
        say(format_args!("{datastore} is drained"))?;
    } else {
        say(format_args!("still served from {datastore}: {}", Value::Array(left)))?;
    }
    Ok(all_ok)
}
