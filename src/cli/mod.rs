//! The operator commands (`migrate`, `abort`, `status`, `cleanup`, and a gateway's
//! `tenants`, `drain`): clients of a running replica's admin API, found through its config
//! file or given directly.

pub mod tenants;

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use crate::admin::Status;
use crate::config::Overrides;
use crate::migrate::{MigrationView, Outcome, Phase};

/// Where the admin API is and how to authenticate to it.
#[derive(Debug, Clone, clap::Args)]
pub struct Connect {
    /// The config file the sidecar runs with: the admin API's address (admin.listen,
    /// loopback if it listens on all addresses) and token (admin.tokenFile) are read from
    /// it, with the sidecar's CUTOVER_* variables applied
    #[arg(long, short = 'c', env = "CUTOVER_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The admin API's base URL, e.g. http://127.0.0.1:9180 (instead of --config, or to
    /// reach the sidecar at another address than its admin.listen)
    #[arg(long, env = "CUTOVER_ADMIN", value_name = "URL")]
    pub admin: Option<String>,
    /// File holding the admin token, sent as a bearer token (needed by migrate, abort and
    /// cleanup; overrides the config's admin.tokenFile)
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
    /// Whoever read our output went away (`| head`): stop quietly.
    #[error("standard output closed")]
    StdoutClosed,
}

/// Prints a line on stdout; a closed stdout ends the command (quietly) instead of
/// panicking as `println!` would.
pub(crate) fn say(text: impl std::fmt::Display) -> Result<(), CliError> {
    let mut out = std::io::stdout().lock();
    match writeln!(out, "{text}").and_then(|_| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(CliError::StdoutClosed),
        Err(e) => Err(CliError::Refused(format!("cannot write to standard output: {e}"))),
    }
}

/// The sidecar's flags as the environment gives them (CUTOVER_*), with `--config path`.
#[derive(clap::Parser)]
struct SidecarEnv {
    #[command(flatten)]
    overrides: Overrides,
}

/// The sidecar's configuration: `path` with the CUTOVER_* environment applied, as
/// `cutover serve --config path` would load it.
fn sidecar_config(path: &std::path::Path) -> Result<crate::config::Config, CliError> {
    use clap::Parser;
    let args = [
        std::ffi::OsString::from("cutover"),
        "--config".into(),
        path.as_os_str().to_owned(),
    ];
    let env =
        SidecarEnv::try_parse_from(args).map_err(|e| CliError::Usage(format!("the CUTOVER_* environment: {e}")))?;
    env.overrides
        .load()
        .map_err(|e| CliError::Usage(format!("--config {}: {e}", path.display())))
}

fn read_token(path: &std::path::Path) -> Result<String, CliError> {
    crate::config::read_token(path)
        .map(|t| t.expose().to_string())
        .map_err(|e| CliError::Usage(format!("--token-file: {e}")))
}

impl Connect {
    /// The admin API's base URL and token: the URL from --admin, else from the config's
    /// admin.listen; the token from --token-file, else from the config's admin.tokenFile.
    pub fn admin(&self) -> Result<Admin, CliError> {
        if self.admin.is_none() && self.config.is_none() {
            return Err(CliError::Usage(
                "say where the admin API is: --config FILE (the sidecar's config, or CUTOVER_CONFIG) \
                 or --admin URL --token-file FILE (or CUTOVER_ADMIN, CUTOVER_TOKEN_FILE)"
                    .into(),
            ));
        }
        let cfg = self.config.as_deref().map(sidecar_config).transpose()?;
        let base = match (&self.admin, &cfg) {
            (Some(url), _) => {
                let url = url.trim_end_matches('/');
                let uri: http::Uri = url
                    .parse()
                    .map_err(|e| CliError::Usage(format!("--admin {url:?}: not a URL: {e}")))?;
                if uri.scheme_str() != Some("http") || uri.authority().is_none() {
                    return Err(CliError::Usage(format!(
                        "--admin {url:?}: expected http://HOST:PORT (the admin API speaks plain HTTP)"
                    )));
                }
                url.to_string()
            }
            (None, Some(cfg)) => {
                let mut addr = cfg.admin_listen;
                // A wildcard listener is reached on loopback.
                if addr.ip().is_unspecified() {
                    addr.set_ip(if addr.is_ipv4() {
                        std::net::Ipv4Addr::LOCALHOST.into()
                    } else {
                        std::net::Ipv6Addr::LOCALHOST.into()
                    });
                }
                format!("http://{addr}")
            }
            (None, None) => unreachable!("checked above"),
        };
        let token = match (&self.token_file, cfg) {
            (Some(f), _) => Some(read_token(f)?),
            (None, Some(cfg)) => cfg.admin_token.map(|t| t.expose().to_string()),
            (None, None) => None,
        };
        Ok(Admin {
            base,
            token,
            client: Client::builder(TokioExecutor::new()).build_http(),
        })
    }
}

/// The API's answer, or its refusal in its own words.
fn answered(code: u16, json: Value) -> Result<Value, CliError> {
    if (200..300).contains(&code) {
        return Ok(json);
    }
    let why = json["error"]
        .as_str()
        .map(str::to_string)
        .unwrap_or_else(|| json.to_string());
    Err(CliError::Refused(format!("{why} (HTTP {code})")))
}

/// The lines of `GET /v1/status?watch=true`, as they come.
pub struct StatusStream {
    body: hyper::body::Incoming,
    buf: Vec<u8>,
    url: String,
}

impl StatusStream {
    /// The next status (its raw line and parsed); `None` when the API ends the stream.
    pub async fn next(&mut self) -> Result<Option<(String, Status)>, CliError> {
        loop {
            if let Some(end) = self.buf.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.buf.drain(..=end).collect();
                let text = String::from_utf8_lossy(&line).trim().to_string();
                if text.is_empty() {
                    continue;
                }
                let v = serde_json::from_str(&text).map_err(|e| {
                    CliError::Refused(format!(
                        "the status stream sent something that is not a status ({e}): {text}"
                    ))
                })?;
                return Ok(Some((text, v)));
            }
            match self.body.frame().await {
                None if self.buf.iter().all(u8::is_ascii_whitespace) => return Ok(None),
                // A last line without its newline.
                None => self.buf.push(b'\n'),
                Some(Err(e)) => {
                    return Err(CliError::Unreachable {
                        url: self.url.clone(),
                        detail: format!("the status stream broke: {e}"),
                    })
                }
                Some(Ok(frame)) => {
                    if let Ok(data) = frame.into_data() {
                        self.buf.extend_from_slice(&data);
                    }
                }
            }
        }
    }
}

impl Admin {
    /// Sends a request; the response once its head arrived (within 10 s).
    async fn send(
        &self,
        method: http::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<http::Response<hyper::body::Incoming>, CliError> {
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
        tokio::time::timeout(Duration::from_secs(10), self.client.request(req))
            .await
            .map_err(|_| self.unreachable("no answer in 10 s".into()))?
            .map_err(|e| self.unreachable(error_chain(&e)))
    }

    fn unreachable(&self, detail: String) -> CliError {
        CliError::Unreachable {
            url: self.base.clone(),
            detail,
        }
    }

    async fn call(&self, method: http::Method, path: &str, body: Option<Value>) -> Result<(u16, Value), CliError> {
        let resp = self.send(method, path, body).await?;
        let code = resp.status().as_u16();
        let bytes = tokio::time::timeout(Duration::from_secs(10), resp.into_body().collect())
            .await
            .map_err(|_| self.unreachable("the answer did not complete in 10 s".into()))?
            .map_err(|e| self.unreachable(error_chain(&e)))?
            .to_bytes();
        let json = serde_json::from_slice(&bytes).unwrap_or(Value::String(String::from_utf8_lossy(&bytes).into()));
        Ok((code, json))
    }

    /// Follows the status: the current one first, then one per change.
    pub async fn watch_status(&self) -> Result<StatusStream, CliError> {
        let resp = self.send(http::Method::GET, "/v1/status?watch=true", None).await?;
        if resp.status() != http::StatusCode::OK {
            let code = resp.status().as_u16();
            let body = resp
                .into_body()
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            return Err(CliError::Refused(format!(
                "status: HTTP {code}: {}",
                String::from_utf8_lossy(&body).trim()
            )));
        }
        Ok(StatusStream {
            body: resp.into_body(),
            buf: Vec::new(),
            url: self.base.clone(),
        })
    }

    /// GET `path`: its JSON, or the API's refusal.
    pub(crate) async fn get(&self, path: &str) -> Result<Value, CliError> {
        let (code, json) = self.call(http::Method::GET, path, None).await?;
        answered(code, json)
    }

    pub(crate) async fn post(&self, path: &str, body: Value) -> Result<Value, CliError> {
        let (code, json) = self.call(http::Method::POST, path, Some(body)).await?;
        answered(code, json)
    }

    pub async fn status(&self) -> Result<Status, CliError> {
        let (code, json) = self.call(http::Method::GET, "/v1/status", None).await?;
        if code != 200 {
            return Err(CliError::Refused(format!("status: HTTP {code}: {json}")));
        }
        serde_json::from_value(json)
            .map_err(|e| CliError::Refused(format!("the admin API sent something that is not a status: {e}")))
    }
}

pub async fn migrate(
    admin: &Admin,
    to: &str,
    overwrite: bool,
    delete_whole_keyspace: bool,
    wait: bool,
) -> Result<bool, CliError> {
    let view = admin
        .post(
            "/v1/migrations",
            serde_json::json!({ "to": to, "overwrite": overwrite, "deleteWholeKeyspace": delete_whole_keyspace }),
        )
        .await?;
    let id = view["id"].as_str().unwrap_or("?").to_string();
    say(format_args!(
        "migration {id} started: {} -> {to}",
        view["from"].as_str().unwrap_or("?")
    ))?;
    if !wait {
        return Ok(true);
    }
    let last = follow(admin, Some(&id)).await?;
    Ok(last.migration.is_some_and(|m| m.outcome == Outcome::Succeeded))
}

pub async fn abort(admin: &Admin) -> Result<(), CliError> {
    let view = admin.post("/v1/migrations/abort", serde_json::json!({})).await?;
    say(format_args!(
        "abort requested for migration {}; the tenant stays on {}",
        view["id"].as_str().unwrap_or("?"),
        view["from"].as_str().unwrap_or("the source")
    ))?;
    Ok(())
}

pub async fn cleanup(admin: &Admin, datastore: &str, delete_whole_keyspace: bool) -> Result<(), CliError> {
    let r = admin
        .post(
            "/v1/cleanup",
            serde_json::json!({ "datastore": datastore, "deleteWholeKeyspace": delete_whole_keyspace }),
        )
        .await?;
    say(format_args!(
        "deleted {} keys of the tenant from {datastore}",
        r["deleted"]
    ))?;
    Ok(())
}

pub async fn status(admin: &Admin, watch: bool, json: bool) -> Result<(), CliError> {
    match (watch, json) {
        (false, false) => {
            let st = admin.status().await?;
            say(header())?;
            say(line(&st))?;
        }
        (false, true) => say(serde_json::to_string(&admin.status().await?).unwrap_or_default())?,
        (true, false) => {
            follow(admin, None).await?;
        }
        (true, true) => {
            let mut stream = admin.watch_status().await?;
            while let Some((text, _)) = stream.next().await? {
                say(&text)?;
            }
            return Err(stream_ended());
        }
    }
    Ok(())
}

fn stream_ended() -> CliError {
    CliError::Refused("the admin API ended the status stream (the sidecar stopped?)".into())
}

/// An error and its causes, on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
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
pub fn line(st: &Status) -> String {
    let ds = st.data_store.clone();
    let Some(m) = &st.migration else {
        return row(&[
            "-".into(),
            "Ready".into(),
            ds,
            "-".into(),
            st.phase.as_str().into(),
            "-".into(),
            "-".into(),
            "-".into(),
        ]);
    };
    let fence = m.fence_ms.map_or("-".to_string(), |f| format!("{f:.0}ms"));
    let mut out = row(&[
        m.id.clone(),
        format!("{:?}", m.outcome),
        ds,
        age(m.started_unix_ms),
        m.phase.as_str().into(),
        format!("{}/{} ({:.1} MiB)", m.keys_copied, m.keys_total, mib(m.bytes_copied)),
        m.lag_revisions.to_string(),
        fence,
    ]);
    if let Some(e) = &m.error {
        out.push_str(&format!("\n  error: {e}"));
    }
    out
}

/// The fields whose change deserves a new line.
#[derive(PartialEq)]
struct Milestone {
    data_store: String,
    phase: Phase,
    migration: Option<(String, Phase, Outcome, Option<String>)>,
}

fn milestone(st: &Status) -> Milestone {
    Milestone {
        data_store: st.data_store.clone(),
        phase: st.phase,
        migration: st
            .migration
            .as_ref()
            .map(|m| (m.id.clone(), m.phase, m.outcome, m.error.clone())),
    }
}

/// The progress bar drawn on stderr while copying (on a terminal).
fn progress_bar(m: &MigrationView) -> String {
    let total = m.keys_total;
    let done = m.keys_copied.min(total.max(1));
    const WIDTH: u64 = 40;
    let filled = (done * WIDTH).checked_div(total).unwrap_or(0) as usize;
    format!(
        "\r  copying [{}{}] {done}/{total} keys, {:.1} MiB",
        "#".repeat(filled),
        "-".repeat(WIDTH as usize - filled),
        mib(m.bytes_copied)
    )
}

/// Prints a line per change (from the status stream) until the migration `id` ends, or
/// with no `id` until interrupted. Returns the last status.
///
/// A new line for every change of phase, outcome, datastore or error; progress changes
/// in between draw a bar on stderr while copying on a terminal, else a line at most once
/// a second.
async fn follow(admin: &Admin, id: Option<&str>) -> Result<Status, CliError> {
    let tty = std::io::stdout().is_terminal();
    let mut stream = admin.watch_status().await?;
    say(header())?;
    let mut last_milestone: Option<Milestone> = None;
    let mut last_line = String::new();
    let mut last_print = std::time::Instant::now();
    let mut bar_shown = false;
    let clear_bar = |shown: &mut bool| {
        if std::mem::take(shown) {
            let _ = writeln!(std::io::stderr());
        }
    };
    loop {
        let Some((_, st)) = stream.next().await? else {
            clear_bar(&mut bar_shown);
            return Err(stream_ended());
        };
        let ms = milestone(&st);
        let text = line(&st);
        if last_milestone.as_ref() != Some(&ms) {
            clear_bar(&mut bar_shown);
            say(&text)?;
            last_milestone = Some(ms);
            last_print = std::time::Instant::now();
        } else if text != last_line {
            if let Some(m) = st.migration.as_ref().filter(|m| tty && m.phase == Phase::Copying) {
                let mut err = std::io::stderr().lock();
                let _ = write!(err, "{}", progress_bar(m)).and_then(|_| err.flush());
                bar_shown = true;
            } else if last_print.elapsed() >= Duration::from_secs(1) {
                clear_bar(&mut bar_shown);
                say(&text)?;
                last_print = std::time::Instant::now();
            }
        }
        last_line = text;
        if let Some(id) = id {
            let current = st.migration.as_ref();
            if current.map(|m| m.id.as_str()) != Some(id) {
                clear_bar(&mut bar_shown);
                return Err(CliError::Refused(format!(
                    "migration {id} is no longer the current one (now: {}); see cutover status",
                    current.map_or("none", |m| m.id.as_str())
                )));
            }
            if current.is_some_and(|m| m.outcome != Outcome::Running) {
                clear_bar(&mut bar_shown);
                return Ok(st);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(json: serde_json::Value) -> Status {
        let mut doc = serde_json::json!({
            "version": "0", "dataStore": "default", "phase": "Ready", "ready": true,
            "dataStoreSinceUnixMs": 0, "stranded": null, "uptimeSeconds": 1, "dataStores": [],
            "migration": null
        });
        for (k, v) in json.as_object().unwrap() {
            doc[k] = v.clone();
        }
        serde_json::from_value(doc).unwrap()
    }

    fn view(json: serde_json::Value) -> MigrationView {
        let mut doc = serde_json::to_value(MigrationView::default()).unwrap();
        for (k, v) in json.as_object().unwrap() {
            doc[k] = v.clone();
        }
        serde_json::from_value(doc).unwrap()
    }

    #[test]
    fn status_lines_show_the_migration() {
        let m = view(
            serde_json::json!({"id": "m-1", "outcome": "Succeeded", "phase": "Ready", "startedUnixMs": 0,
                          "keysCopied": 10, "keysTotal": 10, "bytesCopied": 2097152, "lagRevisions": 0,
                          "fenceMs": 12.4, "error": null}),
        );
        let st = status(serde_json::json!({"dataStore": "dedicated", "migration": m}));
        let l = line(&st);
        assert!(l.starts_with("m-1"), "{l}");
        for part in ["Succeeded", "dedicated", "10/10 (2.0 MiB)", "12ms"] {
            assert!(l.contains(part), "{part} in {l}");
        }
        let none = line(&status(serde_json::json!({})));
        assert!(none.contains("Ready") && none.contains("default"), "{none}");
        assert_eq!(header().split_whitespace().count(), 8);
    }

    #[test]
    fn progress_bars_fill_with_the_copy() {
        let bar = |done: u64, total: u64| {
            progress_bar(&view(
                serde_json::json!({"keysCopied": done, "keysTotal": total, "bytesCopied": 0}),
            ))
        };
        assert!(bar(0, 0).contains("[----"), "{}", bar(0, 0));
        assert!(bar(5, 10).contains(&format!("[{}{}]", "#".repeat(20), "-".repeat(20))));
        assert!(bar(10, 10).contains(&"#".repeat(40)));
        assert!(bar(20, 10).contains("10/10 keys"), "never past the total");
    }

    #[test]
    fn ages_read_like_kubectl() {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
        assert_eq!(age(now - 5_000), "5s");
        assert_eq!(age(now - 123_000), "2m3s");
        assert_eq!(age(now - 7_380_000), "2h3m");
    }

    fn connect(
        config: Option<&std::path::Path>,
        admin: Option<&str>,
        token_file: Option<&std::path::Path>,
    ) -> Result<Admin, CliError> {
        Connect {
            config: config.map(Into::into),
            admin: admin.map(Into::into),
            token_file: token_file.map(Into::into),
        }
        .admin()
    }

    #[test]
    fn the_admin_api_is_found_through_the_config_or_given() {
        let dir = std::env::temp_dir().join(format!("cutover-cli-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let token = dir.join("token");
        std::fs::write(&token, "s3cret\n").unwrap();
        let other_token = dir.join("other");
        std::fs::write(&other_token, "other").unwrap();
        let cfg = dir.join("c.yaml");
        std::fs::write(
            &cfg,
            format!(
                "admin: {{listen: 0.0.0.0:9181, tokenFile: {}}}\ndataStore: a\ndataStores:\n  a: {{endpoints: [127.0.0.1:1]}}\n",
                token.display()
            ),
        )
        .unwrap();

        let a = connect(Some(&cfg), None, None).unwrap();
        assert_eq!(
            a.base, "http://127.0.0.1:9181",
            "a wildcard listener is reached on loopback"
        );
        assert_eq!(a.token.as_deref(), Some("s3cret"));
        let a = connect(Some(&cfg), Some("http://10.0.0.1:9180/"), None).unwrap();
        assert_eq!(
            (a.base.as_str(), a.token.as_deref()),
            ("http://10.0.0.1:9180", Some("s3cret"))
        );
        let a = connect(Some(&cfg), None, Some(&other_token)).unwrap();
        assert_eq!(a.token.as_deref(), Some("other"));
        let a = connect(None, Some("http://127.0.0.1:9180"), None).unwrap();
        assert_eq!(a.token, None);

        let err = |r: Result<Admin, CliError>| r.err().expect("an error").to_string();
        assert!(err(connect(None, None, None)).contains("--config FILE"));
        assert!(err(connect(None, Some("127.0.0.1:9180"), None)).contains("http://HOST:PORT"));
        assert!(err(connect(Some(&dir.join("none.yaml")), None, None)).contains("none.yaml"));
        assert!(err(connect(None, Some("http://h:1"), Some(&dir.join("nope")))).contains("--token-file"));
        let _ = std::fs::remove_dir_all(dir);
    }
}
