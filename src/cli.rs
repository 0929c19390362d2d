//! The operator commands (`migrate`, `abort`, `status`, `cleanup`): clients of a running
//! sidecar's admin API, found through its config file or given directly.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use crate::config::Overrides;

/// Where the admin API is and how to authenticate to it.
#[derive(Debug, Clone, clap::Args)]
pub struct Connect {
    /// The config file the sidecar runs with: the admin API's address and token file are
    /// read from it
    #[arg(long, short = 'c', value_name = "FILE", conflicts_with = "admin")]
    pub config: Option<PathBuf>,
    /// The admin API's base URL, e.g. http://127.0.0.1:9180 (instead of --config)
    #[arg(long, env = "CUTOVER_ADMIN", value_name = "URL")]
    pub admin: Option<String>,
    /// File holding the admin token (with --admin; needed by migrate, abort and cleanup)
    #[arg(long, env = "CUTOVER_TOKEN_FILE", value_name = "FILE")]
    pub token_file: Option<PathBuf>,
}

pub struct Admin {
    base: String,
    token: Option<String>,
    client: Client<hyper_util::client::legacy::connect::HttpConnector, Full<bytes::Bytes>>,
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("{0}")]
    Usage(String),
    #[error("cannot reach the cutover admin API at {url}: {detail}")]
    Unreachable { url: String, detail: String },
    #[error("{0}")]
    Refused(String),
}

impl Connect {
    pub fn admin(&self) -> Result<Admin, CliError> {
        let (base, token) = if let Some(path) = &self.config {
            let cfg = Overrides {
                config: Some(path.clone()),
                ..Default::default()
            }
            .load()
            .map_err(|e| CliError::Usage(e.to_string()))?;
            let mut addr = cfg.admin_listen;
            // A wildcard listener is reached on loopback.
            if addr.ip().is_unspecified() {
                addr.set_ip(if addr.is_ipv4() {
                    std::net::Ipv4Addr::LOCALHOST.into()
                } else {
                    std::net::Ipv6Addr::LOCALHOST.into()
                });
            }
            (
                format!("http://{addr}"),
                cfg.admin_token.map(|t| t.expose().to_string()),
            )
        } else if let Some(url) = &self.admin {
            let token = match &self.token_file {
                Some(f) => Some(
                    std::fs::read_to_string(f)
                        .map_err(|e| CliError::Usage(format!("--token-file {}: {e}", f.display())))?
                        .trim()
                        .to_string(),
                ),
                None => None,
            };
            (url.trim_end_matches('/').to_string(), token)
        } else {
            return Err(CliError::Usage(
                "say where the admin API is: --config FILE (the sidecar's config) or --admin URL [--token-file F]"
                    .into(),
            ));
        };
        Ok(Admin {
            base,
            token,
            client: Client::builder(TokioExecutor::new()).build_http(),
        })
    }
}

impl Admin {
    async fn call(&self, method: http::Method, path: &str, body: Option<Value>) -> Result<(u16, Value), CliError> {
        let url = format!("{}{path}", self.base);
        let mut req = http::Request::builder().method(method).uri(&url);
        if let Some(t) = &self.token {
            req = req.header(http::header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let payload = match &body {
            Some(b) => {
                req = req.header(http::header::CONTENT_TYPE, "application/json");
                bytes::Bytes::from(b.to_string())
            }
            None => bytes::Bytes::new(),
        };
        let req = req
            .body(Full::new(payload))
            .map_err(|e| CliError::Usage(format!("bad admin URL {url}: {e}")))?;
        let unreachable = |detail: String| CliError::Unreachable {
            url: self.base.clone(),
            detail,
        };
        let resp = tokio::time::timeout(Duration::from_secs(10), self.client.request(req))
            .await
            .map_err(|_| unreachable("no answer in 10 s".into()))?
            .map_err(|e| unreachable(format!("{e:?}")))?;
        let code = resp.status().as_u16();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| unreachable(e.to_string()))?
            .to_bytes();
        let json = serde_json::from_slice(&bytes).unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into()));
        Ok((code, json))
    }

    async fn post(&self, path: &str, body: Value) -> Result<Value, CliError> {
        let (code, json) = self.call(http::Method::POST, path, Some(body)).await?;
        if (200..300).contains(&code) {
            Ok(json)
        } else {
            let why = json["error"]
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| json.to_string());
            Err(CliError::Refused(format!("{why} (HTTP {code})")))
        }
    }

    pub async fn status(&self) -> Result<Value, CliError> {
        let (code, json) = self.call(http::Method::GET, "/v1/status", None).await?;
        if code == 200 {
            Ok(json)
        } else {
            Err(CliError::Refused(format!("status: HTTP {code}: {json}")))
        }
    }
}

pub async fn migrate(admin: &Admin, to: &str, overwrite: bool, wait: bool) -> Result<bool, CliError> {
    let view = admin
        .post(
            "/v1/migrations",
            serde_json::json!({ "to": to, "overwrite": overwrite }),
        )
        .await?;
    let id = view["id"].as_str().unwrap_or("?").to_string();
    println!(
        "migration {id} started: {} -> {to}",
        view["from"].as_str().unwrap_or("?")
    );
    if !wait {
        return Ok(true);
    }
    let last = follow(admin, Some(&id), false).await?;
    Ok(last["migration"]["outcome"] == "Succeeded")
}

pub async fn abort(admin: &Admin) -> Result<(), CliError> {
    let view = admin.post("/v1/migrations/abort", serde_json::json!({})).await?;
    println!(
        "abort requested for migration {}; the tenant stays on {}",
        view["id"].as_str().unwrap_or("?"),
        view["from"].as_str().unwrap_or("the source")
    );
    Ok(())
}

pub async fn cleanup(admin: &Admin, datastore: &str) -> Result<(), CliError> {
    let r = admin
        .post("/v1/cleanup", serde_json::json!({ "datastore": datastore }))
        .await?;
    println!("deleted {} keys of the tenant from {datastore}", r["deleted"]);
    Ok(())
}

pub async fn status(admin: &Admin, watch: bool, json: bool) -> Result<(), CliError> {
    if json {
        let mut last = Value::Null;
        loop {
            let st = admin.status().await?;
            if st != last {
                println!("{st}");
                last = st;
            }
            if !watch {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    if watch {
        follow(admin, None, true).await?;
    } else {
        println!("{}", header());
        println!("{}", line(&admin.status().await?));
    }
    Ok(())
}

const COLUMNS: [(&str, usize); 8] = [
    ("NAME", 20),
    ("STATUS", 10),
    ("DATASTORE", 12),
    ("AGE", 8),
    ("PHASE", 11),
    ("PROGRESS", 26),
    ("LAG", 6),
    ("FENCE", 8),
];

fn header() -> String {
    row(&COLUMNS.map(|(h, _)| h.to_string()))
}

fn row(cells: &[String; 8]) -> String {
    let mut out = String::new();
    for (i, (cell, (_, width))) in cells.iter().zip(COLUMNS).enumerate() {
        if i + 1 == COLUMNS.len() {
            out.push_str(cell);
        } else {
            out.push_str(&format!("{cell:<width$} "));
        }
    }
    out.trim_end().to_string()
}

fn age(ms: u64) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64);
    let s = now.saturating_sub(ms) / 1000;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{}s", s / 60, s % 60),
        _ => format!("{}h{}m", s / 3600, (s % 3600) / 60),
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// One status line: NAME STATUS DATASTORE AGE PHASE PROGRESS LAG FENCE.
pub fn line(st: &Value) -> String {
    let m = &st["migration"];
    let ds = st["dataStore"].as_str().unwrap_or("?").to_string();
    if m.is_null() {
        return row(&[
            "-".into(),
            "Ready".into(),
            ds,
            "-".into(),
            st["phase"].as_str().unwrap_or("Ready").into(),
            "-".into(),
            "-".into(),
            "-".into(),
        ]);
    }
    let n = |k: &str| m[k].as_u64().unwrap_or(0);
    let fence = m["fenceMs"].as_f64().map_or("-".to_string(), |f| format!("{f:.0}ms"));
    let mut out = row(&[
        m["id"].as_str().unwrap_or("-").into(),
        m["outcome"].as_str().unwrap_or("-").into(),
        ds,
        age(n("startedUnixMs")),
        m["phase"].as_str().unwrap_or("-").into(),
        format!(
            "{}/{} ({:.1} MiB)",
            n("keysCopied"),
            n("keysTotal"),
            mib(n("bytesCopied"))
        ),
        m["lagRevisions"].as_i64().unwrap_or(0).to_string(),
        fence,
    ]);
    if let Some(e) = m["error"].as_str() {
        out.push_str(&format!("\n  error: {e}"));
    }
    out
}

/// The fields whose change deserves a new line.
fn milestone(st: &Value) -> Value {
    let m = &st["migration"];
    serde_json::json!([
        st["dataStore"],
        st["phase"],
        m["id"],
        m["phase"],
        m["outcome"],
        m["error"]
    ])
}

/// Prints a line per change until the migration (`id`, or the current one) ends; with
/// `forever`, until interrupted. Returns the last status.
async fn follow(admin: &Admin, id: Option<&str>, forever: bool) -> Result<Value, CliError> {
    let tty = std::io::stdout().is_terminal();
    println!("{}", header());
    let mut last_milestone = Value::Null;
    let mut last_line = String::new();
    let mut last_print = std::time::Instant::now() - Duration::from_secs(10);
    let mut bar_shown = false;
    loop {
        let st = admin.status().await?;
        let m = &st["migration"];
        let ours = id.is_none_or(|id| m["id"] == id);
        let ms = milestone(&st);
        let text = line(&st);
        if ms != last_milestone {
            if bar_shown {
                eprintln!();
                bar_shown = false;
            }
            println!("{text}");
            last_milestone = ms;
            last_print = std::time::Instant::now();
        } else if text != last_line {
            if tty && m["phase"] == "Copying" {
                let total = m["keysTotal"].as_u64().unwrap_or(0).max(1);
                let done = m["keysCopied"].as_u64().unwrap_or(0).min(total);
                let width = 40;
                let filled = (done * width / total) as usize;
                eprint!(
                    "\r  copying [{}{}] {done}/{total} keys, {:.1} MiB",
                    "#".repeat(filled),
                    "-".repeat(width as usize - filled),
                    mib(m["bytesCopied"].as_u64().unwrap_or(0))
                );
                let _ = std::io::stderr().flush();
                bar_shown = true;
            } else if last_print.elapsed() >= Duration::from_secs(1) {
                println!("{text}");
                last_print = std::time::Instant::now();
            }
        }
        last_line = text;
        if !forever && ours && m["outcome"] != "Running" && st["phase"] == "Ready" {
            if bar_shown {
                eprintln!();
            }
            return Ok(st);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_show_the_migration() {
        let st = serde_json::json!({
            "dataStore": "dedicated", "phase": "Ready",
            "migration": {"id": "m-1", "outcome": "Succeeded", "phase": "Ready", "startedUnixMs": 0,
                          "keysCopied": 10, "keysTotal": 10, "bytesCopied": 2097152, "lagRevisions": 0,
                          "fenceMs": 12.4, "error": null}
        });
        let l = line(&st);
        assert!(l.starts_with("m-1"), "{l}");
        for part in ["Succeeded", "dedicated", "10/10 (2.0 MiB)", "12ms"] {
            assert!(l.contains(part), "{part} in {l}");
        }
        let none = line(&serde_json::json!({"dataStore": "default", "phase": "Ready", "migration": null}));
        assert!(none.contains("Ready") && none.contains("default"), "{none}");
        assert_eq!(header().split_whitespace().count(), 8);
    }
}
