//! Real servers on loopback for the integration tests: etcd members and clusters, the
//! cutover binary, and the etcdctl client. Every process gets its own ports and temp dir
//! and is killed when its handle is dropped (also when a test fails), or when the test
//! process itself dies (PR_SET_PDEATHSIG).

#![allow(dead_code)]

use std::future::Future;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// A port on 127.0.0.1 that nothing listens on now. Ports are handed out from a range
/// chosen by process id so that concurrent test processes rarely collide, and each is
/// checked by binding it. The range lies below the kernel's ephemeral ports, so that a
/// server restarted on its old port (an etcd member after a kill) never finds it taken by
/// some outgoing connection meanwhile.
pub fn free_port() -> u16 {
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let (lo, hi) = test_ports();
    let span = (hi - lo) / 10;
    let _ = NEXT.compare_exchange(
        0,
        lo + (std::process::id() % span as u32) as u16 * 10,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    loop {
        let p = NEXT.fetch_add(1, Ordering::SeqCst);
        if p >= hi {
            NEXT.store(lo, Ordering::SeqCst);
            continue;
        }
        if TcpListener::bind(("127.0.0.1", p)).is_ok() {
            return p;
        }
    }
}

/// [lo, hi) of the ports tests use: below the ephemeral range when there is room.
fn test_ports() -> (u16, u16) {
    let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| {
            let mut it = s.split_whitespace().map(|x| x.parse::<u16>().ok());
            Some((it.next()??, it.next()??))
        });
    match ephemeral {
        Some((elo, _)) if elo > 15_000 => (10_000, elo),
        Some((_, ehi)) if ehi < 55_000 => (ehi + 1, 65_000),
        _ => (20_000, 60_000),
    }
}

/// Polls `check` until it returns true, failing the test after `timeout`.
pub async fn eventually<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn spawn(cmd: &mut Command, log: &Path) -> Child {
    crate::common::spawn_logged(cmd, log, || Ok(()))
}

fn tail(path: &Path) -> String {
    crate::common::log_tail(path, 40)
}

/// TLS material for a test: a CA, a server certificate for 127.0.0.1/localhost and a
/// client certificate, as PEM files.
pub struct TlsFiles {
    pub dir: TempDir,
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// A second client certificate, common name "tenant-a".
    pub tenant_cert: PathBuf,
    pub tenant_key: PathBuf,
    /// A third, common name "tenant-b".
    pub tenant_b_cert: PathBuf,
    pub tenant_b_key: PathBuf,
}

impl TlsFiles {
    pub fn generate() -> TlsFiles {
        use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, SanType};
        let dir = tempfile::tempdir().expect("tempdir");
        let ca_key = KeyPair::generate().expect("key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(DnType::CommonName, "cutover test CA");
        let ca = ca_params.self_signed(&ca_key).expect("ca");
        let issuer = rcgen::Issuer::new(ca_params, ca_key);

        let server_key = KeyPair::generate().expect("key");
        let mut sp = CertificateParams::new(vec!["localhost".to_string()]).expect("params");
        sp.subject_alt_names
            .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
        sp.distinguished_name.push(DnType::CommonName, "127.0.0.1");
        sp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        let server = sp.signed_by(&server_key, &issuer).expect("server cert");

        let client_key = KeyPair::generate().expect("key");
        let mut cp = CertificateParams::new(Vec::<String>::new()).expect("params");
        cp.distinguished_name.push(DnType::CommonName, "root");
        cp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let client = cp.signed_by(&client_key, &issuer).expect("client cert");
        let tenant_key = KeyPair::generate().expect("key");
        let mut tp = CertificateParams::new(Vec::<String>::new()).expect("params");
        tp.distinguished_name.push(DnType::CommonName, "tenant-a");
        tp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let tenant = tp.signed_by(&tenant_key, &issuer).expect("tenant cert");
        let tenant_b_key = KeyPair::generate().expect("key");
        let mut bp = CertificateParams::new(Vec::<String>::new()).expect("params");
        bp.distinguished_name.push(DnType::CommonName, "tenant-b");
        bp.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        let tenant_b = bp.signed_by(&tenant_b_key, &issuer).expect("tenant-b cert");

        let write = |name: &str, pem: String| {
            let p = dir.path().join(name);
            std::fs::write(&p, pem).expect("write pem");
            p
        };
        TlsFiles {
            ca: write("ca.pem", ca.pem()),
            server_cert: write("server.pem", server.pem()),
            server_key: write("server-key.pem", server_key.serialize_pem()),
            client_cert: write("client.pem", client.pem()),
            client_key: write("client-key.pem", client_key.serialize_pem()),
            tenant_cert: write("tenant.pem", tenant.pem()),
            tenant_key: write("tenant-key.pem", tenant_key.serialize_pem()),
            tenant_b_cert: write("tenant-b.pem", tenant_b.pem()),
            tenant_b_key: write("tenant-b-key.pem", tenant_b_key.serialize_pem()),
            dir,
        }
    }
}

/// One etcd member (Debian's etcd 3.4) on loopback.
pub struct Etcd {
    pub name: String,
    /// `127.0.0.1:PORT`
    pub endpoint: String,
    /// `http://127.0.0.1:PORT` or `https://...`
    pub client_url: String,
    pub peer_url: String,
    dir: TempDir,
    child: Option<Child>,
    args: Vec<String>,
}

#[derive(Default, Clone)]
pub struct EtcdOptions {
    /// Serve clients over TLS with these files; require client certificates if `client_auth`.
    pub tls: Option<(PathBuf, PathBuf, PathBuf)>,
    pub client_auth: bool,
}

impl Etcd {
    pub async fn start() -> Etcd {
        Self::start_with(EtcdOptions::default()).await
    }

    pub async fn start_with(opts: EtcdOptions) -> Etcd {
        let client = free_port();
        let peer = free_port();
        let name = format!("m{client}");
        let peer_url = format!("http://127.0.0.1:{peer}");
        let cluster = format!("{name}={peer_url}");
        let mut e = Self::prepare(&name, client, &peer_url, &cluster, "new", &opts);
        e.launch();
        e.wait_ready().await;
        e
    }

    /// A cluster of `n` members on loopback.
    pub async fn cluster(n: usize) -> Vec<Etcd> {
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let cluster = ports
            .iter()
            .map(|(c, p)| format!("m{c}=http://127.0.0.1:{p}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut members: Vec<Etcd> = ports
            .iter()
            .map(|(c, p)| {
                Self::prepare(
                    &format!("m{c}"),
                    *c,
                    &format!("http://127.0.0.1:{p}"),
                    &cluster,
                    "new",
                    &EtcdOptions::default(),
                )
            })
            .collect();
        for m in &mut members {
            m.launch();
        }
        for m in &members {
            m.wait_ready().await;
        }
        members
    }

    fn prepare(name: &str, client: u16, peer_url: &str, cluster: &str, state: &str, opts: &EtcdOptions) -> Etcd {
        let dir = tempfile::tempdir().expect("tempdir");
        let scheme = if opts.tls.is_some() { "https" } else { "http" };
        let client_url = format!("{scheme}://127.0.0.1:{client}");
        let mut args = vec![
            format!("--name={name}"),
            format!("--data-dir={}", dir.path().join("data").display()),
            format!("--listen-client-urls={client_url}"),
            format!("--advertise-client-urls={client_url}"),
            format!("--listen-peer-urls={peer_url}"),
            format!("--initial-advertise-peer-urls={peer_url}"),
            format!("--initial-cluster={cluster}"),
            format!("--initial-cluster-state={state}"),
            "--initial-cluster-token=cutover-test".to_string(),
            "--logger=zap".to_string(),
            "--log-level=warn".to_string(),
            "--quota-backend-bytes=1073741824".to_string(),
        ];
        if let Some((cert, key, ca)) = &opts.tls {
            args.push(format!("--cert-file={}", cert.display()));
            args.push(format!("--key-file={}", key.display()));
            args.push(format!("--trusted-ca-file={}", ca.display()));
            if opts.client_auth {
                args.push("--client-cert-auth=true".to_string());
            }
        }
        Etcd {
            name: name.to_string(),
            endpoint: format!("127.0.0.1:{client}"),
            client_url,
            peer_url: peer_url.to_string(),
            dir,
            child: None,
            args,
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    fn launch(&mut self) {
        let mut cmd = Command::new("etcd");
        cmd.args(&self.args);
        self.child = Some(spawn(&mut cmd, &self.log_path()));
    }

    /// Waits until the member answers `etcdctl endpoint health`.
    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let out = Command::new("etcdctl")
                .env("ETCDCTL_API", "3")
                .args([
                    "--endpoints",
                    &self.client_url,
                    "--command-timeout=2s",
                    "endpoint",
                    "health",
                ])
                .args(self.tls_client_args())
                .output()
                .expect("etcdctl");
            if out.status.success() {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "etcd {} did not become healthy; log:\n{}",
                    self.name,
                    tail(&self.log_path())
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn tls_client_args(&self) -> Vec<String> {
        let a = &self.args;
        let get = |flag: &str| a.iter().find_map(|x| x.strip_prefix(flag).map(str::to_string));
        match (get("--trusted-ca-file="), get("--cert-file="), get("--key-file=")) {
            (Some(ca), Some(cert), Some(key)) => vec![
                format!("--cacert={ca}"),
                format!("--cert={cert}"),
                format!("--key={key}"),
            ],
            _ => vec![],
        }
    }

    /// SIGKILL, as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- etcd {} log ---\n{}", self.name, tail(&self.log_path()));
        }
        self.kill();
    }
}

/// The admin token every test proxy is started with (see [`Proxy::launch`]).
pub const ADMIN_TOKEN: &str = "test-admin-token";

/// The cutover binary, started with a config file.
pub struct Proxy {
    /// `127.0.0.1:PORT` of the etcd API.
    pub endpoint: String,
    /// `http://127.0.0.1:PORT` of the admin API.
    pub admin: String,
    pub dir: TempDir,
    child: Option<Child>,
}

impl Proxy {
    /// A proxy in front of these etcd members (plain HTTP).
    pub async fn start_for(etcds: &[&Etcd]) -> Proxy {
        let eps: Vec<String> = etcds.iter().map(|e| format!("\"{}\"", e.endpoint)).collect();
        Self::start(&format!(
            "dataStore: default\ndataStores:\n  default:\n    endpoints: [{}]\n",
            eps.join(", ")
        ))
        .await
    }

    /// A proxy with `body` as its config; `listen` and `admin.listen` are added unless given.
    pub async fn start(body: &str) -> Proxy {
        let p = Self::launch(body, &[]);
        p.wait_ready().await;
        p
    }

    /// Starts the binary without waiting for it to be ready.
    pub fn launch(body: &str, extra_args: &[&str]) -> Proxy {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let admin_port = free_port();
        let mut config = String::new();
        if !body.contains("listen:") {
            config.push_str(&format!("listen: 127.0.0.1:{port}\n"));
        }
        if !body.contains("admin:") {
            let token = dir.path().join("admin-token");
            std::fs::write(&token, ADMIN_TOKEN).expect("write token");
            config.push_str(&format!(
                "admin:\n  listen: 127.0.0.1:{admin_port}\n  tokenFile: {}\n",
                token.display()
            ));
        }
        config.push_str(body);
        let path = dir.path().join("cutover.yaml");
        std::fs::write(&path, &config).expect("write config");
        // Addresses the body gives itself win (a replica restarted on its own ports).
        let given = |prefix: &str| {
            body.lines()
                .find_map(|l| l.strip_prefix(prefix))
                .map(|a| a.trim().to_string())
                .filter(|a| a.starts_with("127.0.0.1:"))
        };
        let endpoint = given("listen: ").unwrap_or(format!("127.0.0.1:{port}"));
        let admin = given("  listen: ")
            .map(|a| format!("http://{a}"))
            .unwrap_or(format!("http://127.0.0.1:{admin_port}"));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_cutover"));
        cmd.arg("serve").arg("--config").arg(&path).args(extra_args).env(
            "RUST_LOG",
            std::env::var("CUTOVER_TEST_RUST_LOG").unwrap_or_else(|_| "cutover=debug,info".into()),
        );
        let child = spawn(&mut cmd, &dir.path().join("cutover.log"));
        Proxy {
            endpoint,
            admin,
            dir,
            child: Some(child),
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("cutover.log")).unwrap_or_default()
    }

    /// Waits until /readyz answers 200.
    pub async fn wait_ready(&self) {
        let url = format!("{}/readyz", self.admin);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(r) = reqwest::get(&url).await {
                if r.status().is_success() {
                    return;
                }
            }
            if Instant::now() > deadline {
                panic!("cutover did not become ready; log:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The exit status, if the process has ended.
    pub fn try_exit(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Resident memory of the process, in KiB (from /proc).
    pub fn rss_kib(&self) -> u64 {
        crate::common::rss_kib(self.pid().expect("the proxy runs"))
    }

    /// CPU time the process has used (user + system), from /proc.
    pub fn cpu_time(&self) -> Duration {
        let pid = self.pid().expect("the proxy runs");
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Fields after the command name (which may hold spaces) start after ") ".
        let rest = stat.rsplit_once(") ").map_or("", |(_, r)| r);
        let f: Vec<u64> = rest.split(' ').map(|x| x.parse().unwrap_or(0)).collect();
        // utime and stime are fields 14 and 15 of the whole line: 12 and 13 here.
        // SAFETY: sysconf has no memory effects.
        let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        Duration::from_millis((f.get(11).unwrap_or(&0) + f.get(12).unwrap_or(&0)) * 1000 / ticks)
    }

    /// Sends `signal` (SIGSTOP, SIGCONT, ...) to the process, if it runs.
    pub fn signal(&self, signal: i32) {
        if let Some(c) = &self.child {
            // SAFETY: kill(2) on our own child's pid; no memory is involved.
            unsafe {
                libc::kill(c.id() as i32, signal);
            }
        }
    }

    /// Waits until /healthz answers (the process serves; it may not be ready).
    pub async fn wait_alive(&self) {
        let url = format!("{}/healthz", self.admin);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if reqwest::get(&url).await.is_ok_and(|r| r.status().is_success()) {
                return;
            }
            if Instant::now() > deadline {
                panic!("cutover did not answer /healthz; log:\n{}", self.log());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The config file the proxy runs with.
    pub fn config_path(&self) -> std::path::PathBuf {
        self.dir.path().join("cutover.yaml")
    }

    /// POSTs to the admin API with the token; returns the status and the JSON body.
    pub async fn admin_post(&self, path: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
        let r = reqwest::Client::new()
            .post(format!("{}{path}", self.admin))
            .bearer_auth(ADMIN_TOKEN)
            .json(&body)
            .send()
            .await
            .expect("admin API answers");
        let code = r.status().as_u16();
        (code, r.json().await.unwrap_or(serde_json::Value::Null))
    }

    /// GET /v1/status.
    pub async fn status(&self) -> serde_json::Value {
        reqwest::get(format!("{}/v1/status", self.admin))
            .await
            .expect("status")
            .json()
            .await
            .expect("status JSON")
    }

    /// Sets a failpoint's actions (src/failpoint.rs), e.g. `return(pause)`.
    pub async fn failpoint(&self, name: &str, actions: &str) {
        let r = reqwest::Client::new()
            .put(format!("{}/v1/failpoints/{name}", self.admin))
            .bearer_auth(ADMIN_TOKEN)
            .body(actions.to_string())
            .send()
            .await
            .expect("admin API answers");
        assert_eq!(
            r.status().as_u16(),
            204,
            "failpoint {name}={actions}: {:?}",
            r.text().await
        );
    }

    /// Releases a paused failpoint and turns it off.
    pub async fn release(&self, name: &str) {
        self.failpoint(name, "off").await;
    }

    /// (hits, callers paused now) of a failpoint.
    pub async fn failpoint_state(&self, name: &str) -> (u64, u64) {
        let all: serde_json::Value = reqwest::get(format!("{}/v1/failpoints", self.admin))
            .await
            .expect("failpoints")
            .json()
            .await
            .expect("failpoints JSON");
        let p = &all[name];
        (p["hits"].as_u64().unwrap_or(0), p["paused"].as_u64().unwrap_or(0))
    }

    /// Waits until something is paused at failpoint `name`.
    pub async fn wait_paused(&self, name: &str) {
        eventually(
            &format!("a caller paused at failpoint {name}"),
            Duration::from_secs(60),
            || async { self.failpoint_state(name).await.1 > 0 },
        )
        .await;
    }

    pub async fn metrics(&self) -> String {
        reqwest::get(format!("{}/metrics", self.admin))
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics body")
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(dir) = std::env::var_os("CUTOVER_TEST_LOGS") {
            // Keep every proxy's whole log for a post-mortem (the name says which test).
            let test = std::thread::current().name().unwrap_or("test").replace("::", ".");
            // A replica restarted on the same port gets a log of its own.
            static KEPT: AtomicU16 = AtomicU16::new(0);
            let to = PathBuf::from(dir).join(format!(
                "{test}.{}.{}.{}.log",
                self.endpoint.replace(':', "_"),
                std::process::id(),
                KEPT.fetch_add(1, Ordering::SeqCst)
            ));
            let _ = std::fs::create_dir_all(to.parent().unwrap_or(std::path::Path::new(".")));
            let _ = std::fs::copy(self.dir.path().join("cutover.log"), to);
        }
        if std::thread::panicking() {
            let log = self.log();
            let lines: Vec<&str> = log.lines().collect();
            eprintln!(
                "--- cutover log ---\n{}",
                lines[lines.len().saturating_sub(60)..].join("\n")
            );
        }
        self.kill();
    }
}

/// The version of the etcd on PATH, e.g. "3.5.16", from the first line of
/// `etcd --version` ("etcd Version: 3.5.16"), read once per test process.
pub fn etcd_version() -> &'static str {
    static V: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    V.get_or_init(|| version_of("etcd", &["--version"], "etcd Version: "))
}

/// The version of the etcdctl on PATH, from the first line of `etcdctl version`
/// ("etcdctl version: 3.5.16"), read once per test process.
pub fn etcdctl_version() -> &'static str {
    static V: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    V.get_or_init(|| version_of("etcdctl", &["version"], "etcdctl version: "))
}

fn version_of(program: &str, args: &[&str], prefix: &str) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    let text = String::from_utf8_lossy(&out.stdout);
    let first = text.lines().next().unwrap_or_default();
    first
        .strip_prefix(prefix)
        .unwrap_or_else(|| panic!("{program} {args:?}: unexpected first line {first:?}"))
        .trim()
        .to_string()
}

/// The etcd minor version the tests were asked to run against (CUTOVER_ETCD_VERSION,
/// "3.4" or "3.5", set by the Makefile's tiers), if any.
pub fn wanted_etcd_version() -> Option<String> {
    std::env::var("CUTOVER_ETCD_VERSION").ok().filter(|v| !v.is_empty())
}

/// Runs etcdctl (API v3) against `endpoint` with a short command timeout.
pub fn etcdctl(endpoint: &str, args: &[&str]) -> Output {
    Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .arg("--command-timeout=10s")
        .args(args)
        .output()
        .expect("etcdctl runs")
}

/// etcdctl's stdout, failing the test if the command failed.
pub fn etcdctl_ok(endpoint: &str, args: &[&str]) -> String {
    let out = etcdctl(endpoint, args);
    assert!(
        out.status.success(),
        "etcdctl {args:?} against {endpoint} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// An etcd-client connection to `endpoint`.
pub async fn client(endpoint: &str) -> etcd_client::Client {
    etcd_client::Client::connect([endpoint], None)
        .await
        .expect("etcd-client connects")
}

impl Etcd {
    /// Starts a member again after [`Etcd::kill`], with the same data dir, ports and
    /// flags, as a restart after a crash would. Does not wait: a member of a cluster whose
    /// quorum is down only becomes healthy once enough of its peers are back.
    pub fn relaunch(&mut self) {
        assert!(self.child.is_none(), "etcd {} is still running", self.name);
        self.launch();
    }
}

/// A TCP forwarder on 127.0.0.1 that the test controls: it relays every connection to
/// `target` until [`Forwarder::cut`] drops them all and closes the port (new connections
/// are refused), and [`Forwarder::restore`] opens the same port again. It runs on a
/// runtime of its own, so that it keeps relaying while the test's runtime is busy.
pub struct Forwarder {
    /// `127.0.0.1:PORT`, to give as an endpoint instead of `target`.
    pub addr: String,
    target: String,
    rt: Option<tokio::runtime::Runtime>,
    accept: Option<tokio::task::JoinHandle<()>>,
    conns: std::sync::Arc<parking_lot::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
}

impl Forwarder {
    pub fn start(target: &str) -> Forwarder {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("forwarder runtime");
        let listener = TcpListener::bind("127.0.0.1:0").expect("forwarder port");
        let mut f = Forwarder {
            addr: listener.local_addr().expect("address").to_string(),
            target: target.to_string(),
            rt: Some(rt),
            accept: None,
            conns: Default::default(),
        };
        f.serve(listener);
        f
    }

    fn serve(&mut self, listener: TcpListener) {
        listener.set_nonblocking(true).expect("nonblocking");
        let conns = self.conns.clone();
        let target = self.target.clone();
        let rt = self.rt.as_ref().expect("runtime");
        self.accept = Some(rt.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            loop {
                let Ok((mut inbound, _)) = listener.accept().await else {
                    continue;
                };
                let target = target.clone();
                let relay = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                let mut c = conns.lock();
                c.retain(|t| !t.is_finished());
                c.push(relay);
            }
        }));
    }

    /// Drops every relayed connection and closes the port; returns once both are done.
    pub fn cut(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(5);
        // The accept loop first: a connection it accepts while the relays are being
        // collected would otherwise survive the cut.
        if let Some(accept) = self.accept.take() {
            accept.abort();
            while !accept.is_finished() {
                assert!(Instant::now() < deadline, "the forwarder's accept loop did not stop");
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        let tasks: Vec<_> = self.conns.lock().drain(..).collect();
        for t in &tasks {
            t.abort();
        }
        while !tasks.iter().all(|t| t.is_finished()) {
            assert!(Instant::now() < deadline, "the forwarder's tasks did not stop");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(
            std::net::TcpStream::connect(&self.addr).is_err(),
            "the forwarder's port still accepts connections"
        );
    }

    /// Opens the port again and relays new connections.
    pub fn restore(&mut self) {
        assert!(self.accept.is_none(), "the forwarder is not cut");
        let deadline = Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match TcpListener::bind(&self.addr) {
                Ok(l) => break l,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => panic!("cannot listen on {} again: {e}", self.addr),
            }
        };
        self.serve(listener);
    }
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        for t in self.conns.lock().drain(..).chain(self.accept.take()) {
            t.abort();
        }
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}
