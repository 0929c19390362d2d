//! What cutover costs compared with talking to etcd directly and with etcd's own
//! `etcd grpc-proxy`.
//!
//!     cargo bench --bench overhead
//!
//! One run of this program starts a private etcd (Debian's `etcd` 3.4, on free loopback
//! ports, with a temp data dir), `etcd grpc-proxy start` in front of it, and the cutover
//! binary in front of it too, then drives the same client code (the generated tonic clients
//! in `cutover::proto`, one HTTP/2 channel per target shared by every task) against the
//! three targets:
//!
//! * `range`: a linearizable Range of one existing key;
//! * `put`:   a Put, each task on its own key;
//! * `txn`:   a kube-apiserver style update (compare mod_revision == the revision the task
//!   last saw; success: put; failure: range), each task on its own key;
//! * `watch`: event delivery. One watch stream per target with one prefix watch; every task
//!   puts its own key and waits for its event. The latency is measured from *issuing the
//!   Put* to the watcher receiving the event, so it includes the Put's own round trip;
//!   the median of (event received − Put response received) is printed as well.
//!
//! Every op runs closed-loop at each concurrency (1 and 64 tasks). For each op and
//! concurrency every target is warmed up once, then measured in several short rounds in a
//! rotating order so slow drift of etcd (its database grows with every Put) is shared
//! fairly. It prints p50/p99, throughput, ratios to direct and to grpc-proxy, the CPU time
//! each process used per op, cutover's (and grpc-proxy's) peak RSS under the highest
//! concurrency, and PASS/MISS for the targets of the issue. Nothing is asserted: a miss is
//! printed, never a panic.
//!
//! Environment:
//!
//! * `BENCH_SECS` (default 3): measured seconds per op, concurrency and target, split
//!   across the rounds;
//! * `BENCH_ROUNDS` (default 3); `BENCH_WARMUP_SECS` (default 0.5);
//! * `BENCH_CONCURRENCY` (default `1,64`): comma-separated task counts; the largest one is
//!   the load under which RSS and the throughput target are judged;
//! * `BENCH_OPS` (default `range,put,txn,watch`); `BENCH_VALUE_BYTES` (default 1024);
//! * `CUTOVER_BIN`: the cutover binary to run. By default the one cargo built for this
//!   bench (`CARGO_BIN_EXE_cutover`, i.e. `target/release/cutover` under the bench profile,
//!   which inherits `release`), so it is never stale;
//! * `ETCD_BIN` (default `etcd`);
//! * `BENCH_TCP_RELAY=1` adds a fourth target for reference: a byte-copying TCP relay
//!   process (this program in another mode), i.e. the cost of one more process and
//!   loopback hop with no HTTP/2 or protobuf work at all. `BENCH_TCP_RELAY=h2` makes that
//!   relay terminate HTTP/2 on both sides (hyper server and client, frames re-sent
//!   unchanged, no gRPC or protobuf work): the floor for a proxy that routes requests.
//!
//! * `BENCH_GATEWAY=1` adds two targets that clients reach over TLS with a client
//!   certificate: `cutover-tls`, a sidecar with the tenant prefix `/registry/`, and
//!   `gateway`, a gateway (mode: gateway) serving that tenant (role `registry`, its user the
//!   certificate's CN) beside 50 idle ones; the report adds gateway / cutover-tls ratios;
//! * `BENCH_UDS=1`: clients reach cutover over a unix socket instead of TCP (cutover
//!   still reaches etcd over TCP; the other targets are unchanged);
//! * `BENCH_CUTOVER_ENV="K=V ..."`: extra environment for the cutover process only, e.g.
//!   `BENCH_CUTOVER_ENV=TOKIO_WORKER_THREADS=1`;
//! * `BENCH_PIN="etcd=0;client=0;proxy=1"`: bind etcd, this program and the proxies to CPU
//!   lists (`0`, `0,2`, `1-3`). Unset, everything shares every CPU, so on a small machine a
//!   proxy's CPU time is taken from etcd and the client and the throughput ratio mostly
//!   measures CPU per op; pinning models a proxy with its own CPU, as a sidecar has.
//!
//! The children inherit this environment (this program's own runtime always has one worker
//! per CPU, whatever TOKIO_WORKER_THREADS says; `GOMAXPROCS` tunes etcd and grpc-proxy).
//!
//! Every child process is killed when this program ends, panics (drop guards), or dies
//! (PR_SET_PDEATHSIG).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support/gateway.rs"]
mod gateway;
#[path = "support/relay.rs"]
mod relay;
use common::{bench_etcd, connect_channel, cutover_binary, env_parse, free_port, percentile, Proc};
use gateway::{gateway_tls, BENCH_TENANT};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, Barrier};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use cutover::proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use cutover::proto::etcdserverpb::kv_client::KvClient;
use cutover::proto::etcdserverpb::request_op::Request as Op1;
use cutover::proto::etcdserverpb::response_op::Response as OpResp;
use cutover::proto::etcdserverpb::watch_client::WatchClient;
use cutover::proto::etcdserverpb::watch_request::RequestUnion;
use cutover::proto::etcdserverpb::{
    Compare, PutRequest, RangeRequest, RequestOp, TxnRequest, WatchCreateRequest, WatchRequest,
};

/// No single request should take this long; one that does counts as an error.
const OP_TIMEOUT: Duration = Duration::from_secs(10);
const KEY_PREFIX: &str = "/registry/bench/";
const MIB: f64 = 1024.0 * 1024.0;

// ---------------------------------------------------------------------------------------
// Settings

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Op {
    Range,
    Put,
    Txn,
    /// A read-only Txn: compare the key's mod_revision, read it in either branch.
    ReadTxn,
    Watch,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Range => "range",
            Op::Put => "put",
            Op::Txn => "txn",
            Op::ReadTxn => "rotxn",
            Op::Watch => "watch",
        }
    }
}

struct Settings {
    secs: f64,
    warmup_secs: f64,
    rounds: usize,
    concurrency: Vec<usize>,
    ops: Vec<Op>,
    value_bytes: usize,
}

impl Settings {
    fn from_env() -> Settings {
        let concurrency: Vec<usize> = std::env::var("BENCH_CONCURRENCY")
            .unwrap_or_else(|_| "1,64".into())
            .split(',')
            .map(|s| s.trim().parse().expect("BENCH_CONCURRENCY: comma-separated numbers"))
            .filter(|&c| c > 0)
            .collect();
        let ops = std::env::var("BENCH_OPS")
            .unwrap_or_else(|_| "range,put,txn,watch".into())
            .split(',')
            .map(|s| match s.trim() {
                "range" => Op::Range,
                "put" => Op::Put,
                "txn" => Op::Txn,
                "rotxn" => Op::ReadTxn,
                "watch" => Op::Watch,
                other => panic!("BENCH_OPS: unknown op {other:?} (range, put, txn, rotxn, watch)"),
            })
            .collect();
        let s = Settings {
            secs: env_parse("BENCH_SECS", 3.0),
            warmup_secs: env_parse("BENCH_WARMUP_SECS", 0.5),
            rounds: env_parse("BENCH_ROUNDS", 3usize).max(1),
            concurrency,
            ops,
            value_bytes: env_parse("BENCH_VALUE_BYTES", 1024usize),
        };
        assert!(!s.concurrency.is_empty(), "BENCH_CONCURRENCY is empty");
        assert!(s.secs > 0.0, "BENCH_SECS must be positive");
        s
    }

    fn max_concurrency(&self) -> usize {
        *self.concurrency.iter().max().expect("not empty")
    }
}

// ---------------------------------------------------------------------------------------
// Child processes

/// What a child runs before exec: binding itself to `cpus`, if given. It runs before
/// exec so that the Go and tokio runtimes size themselves to the set.
fn bound_to(cpus: Option<CpuSet>) -> impl FnMut() -> std::io::Result<()> + Send + Sync + 'static {
    move || match &cpus {
        Some(set) => set.apply(),
        None => Ok(()),
    }
}

/// A set of CPUs a process is bound to.
#[derive(Clone, Copy)]
struct CpuSet(libc::cpu_set_t);

impl CpuSet {
    /// `0`, `0,1`, `2-3`...
    fn parse(list: &str) -> CpuSet {
        // SAFETY: an all-zero cpu_set_t is the empty set.
        let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
        for part in list.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (a, b) = part.split_once('-').unwrap_or((part, part));
            let bad = || panic!("BENCH_PIN: {list:?} is not a CPU list");
            let (a, b): (usize, usize) = (a.parse().unwrap_or_else(|_| bad()), b.parse().unwrap_or_else(|_| bad()));
            for cpu in a..=b {
                assert!(
                    cpu < 8 * std::mem::size_of::<libc::cpu_set_t>(),
                    "BENCH_PIN: CPU {cpu} out of range"
                );
                // SAFETY: cpu is inside the set (checked above).
                unsafe { libc::CPU_SET(cpu, &mut set) };
            }
        }
        CpuSet(set)
    }

    /// Binds the calling thread (and what it starts later) to the set.
    fn apply(&self) -> std::io::Result<()> {
        // SAFETY: a valid cpu_set_t of the size given.
        let rc = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &self.0) };
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error())
        }
    }
}

/// `BENCH_PIN="etcd=0;client=0;proxy=1"`: the CPUs of etcd, of this program and of every
/// proxy (they are measured one at a time, so they may share CPUs).
#[derive(Default)]
struct Pinning {
    etcd: Option<CpuSet>,
    client: Option<CpuSet>,
    proxy: Option<CpuSet>,
    text: String,
}

impl Pinning {
    fn from_env() -> Pinning {
        let text = std::env::var("BENCH_PIN").unwrap_or_default();
        let mut pin = Pinning::default();
        for entry in text.split(';').map(str::trim).filter(|e| !e.is_empty()) {
            let (role, cpus) = entry
                .split_once('=')
                .unwrap_or_else(|| panic!("BENCH_PIN: {entry:?} is not ROLE=CPUS"));
            let set = Some(CpuSet::parse(cpus));
            match role.trim() {
                "etcd" => pin.etcd = set,
                "client" => pin.client = set,
                "proxy" => pin.proxy = set,
                other => panic!("BENCH_PIN: unknown role {other:?} (etcd, client, proxy)"),
            }
        }
        pin.text = text;
        pin
    }
}

/// `BENCH_CUTOVER_ENV="K=V K2=V2"`: extra environment for the cutover process only.
fn cutover_env() -> Vec<(String, String)> {
    std::env::var("BENCH_CUTOVER_ENV")
        .unwrap_or_default()
        .split_whitespace()
        .map(|kv| {
            let (k, v) = kv
                .split_once('=')
                .unwrap_or_else(|| panic!("BENCH_CUTOVER_ENV: {kv:?} is not K=V"));
            (k.to_string(), v.to_string())
        })
        .collect()
}

// ---------------------------------------------------------------------------------------
// /proc

/// Kibibytes of a `VmXXX:` line of /proc/PID/status.
fn proc_status_kib(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Resets VmHWM to the current RSS (writing 5 to clear_refs, Linux ≥ 4.0).
fn reset_hwm(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

/// User + system CPU time a process has used so far.
fn cpu_time(pid: Option<u32>) -> Duration {
    let path = match pid {
        Some(p) => format!("/proc/{p}/stat"),
        None => "/proc/self/stat".to_string(),
    };
    let Ok(text) = std::fs::read_to_string(path) else {
        return Duration::ZERO;
    };
    // Fields after the command name (which may contain spaces) start at `state`, field 3;
    // utime and stime are fields 14 and 15.
    let rest = text.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let total = ticks(11) + ticks(12);
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_nanos(total * 1_000_000_000 / hz)
}

/// Busy CPU time of the whole machine (all CPUs), from /proc/stat.
fn machine_busy() -> Duration {
    let text = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = text.lines().find(|l| l.starts_with("cpu ")) else {
        return Duration::ZERO;
    };
    // user nice system idle iowait irq softirq steal ...: everything but idle and iowait.
    let v: Vec<u64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    let busy: u64 = v
        .iter()
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, x)| x)
        .sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    Duration::from_nanos(busy * 1_000_000_000 / hz)
}

/// CPU time used so far by etcd, each proxy, this program and the whole machine.
struct CpuSnapshot {
    etcd: Duration,
    /// One per proxy pid given to `take`, in that order.
    proxies: Vec<Duration>,
    client: Duration,
    machine: Duration,
}

impl CpuSnapshot {
    fn take(etcd: u32, proxies: &[u32]) -> CpuSnapshot {
        CpuSnapshot {
            etcd: cpu_time(Some(etcd)),
            proxies: proxies.iter().map(|&p| cpu_time(Some(p))).collect(),
            client: cpu_time(None),
            machine: machine_busy(),
        }
    }

    fn since(&self, before: &CpuSnapshot) -> CpuSnapshot {
        CpuSnapshot {
            etcd: self.etcd.saturating_sub(before.etcd),
            proxies: self
                .proxies
                .iter()
                .zip(&before.proxies)
                .map(|(a, b)| a.saturating_sub(*b))
                .collect(),
            client: self.client.saturating_sub(before.client),
            machine: self.machine.saturating_sub(before.machine),
        }
    }

    /// What the rest of the machine used (after `since`).
    fn other(&self) -> Duration {
        let ours = self.etcd + self.client + self.proxies.iter().sum::<Duration>();
        self.machine.saturating_sub(ours)
    }
}

/// How this program was started: cargo's command line when cargo is the parent.
fn invocation() -> String {
    let argv = |pid: &str| -> Option<String> {
        let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let parts: Vec<String> = raw
            .split(|&b| b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect();
        Some(parts.join(" "))
    };
    let env: Vec<String> = std::env::vars()
        .filter(|(k, _)| {
            k.starts_with("BENCH_")
                || ["CUTOVER_BIN", "ETCD_BIN", "TOKIO_WORKER_THREADS", "GOMAXPROCS"].contains(&k.as_str())
        })
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let env = if env.is_empty() {
        String::new()
    } else {
        format!("{} ", env.join(" "))
    };
    let me = argv("self").unwrap_or_default();
    let ppid = std::fs::read_to_string("/proc/self/stat").ok().and_then(|s| {
        s.rsplit_once(')')
            .and_then(|(_, r)| r.split_whitespace().nth(1).map(str::to_string))
    });
    match ppid.and_then(|p| argv(&p)) {
        Some(parent) if parent.contains("cargo") => {
            // cargo runs as `.../cargo bench ...` or via rustup as `cargo bench ...`.
            let parent = parent
                .split_once("cargo")
                .map_or(parent.clone(), |(_, r)| format!("cargo{r}"));
            format!("{env}{parent}   (bench binary: {me})")
        }
        _ => format!("{env}{me}"),
    }
}

// ---------------------------------------------------------------------------------------
// Targets

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Direct,
    GrpcProxy,
    Cutover,
    /// Optional reference: a byte-level TCP relay, the least any proxy process can add.
    TcpRelay,
    /// (BENCH_GATEWAY) a sidecar for the tenant `/registry/`, over TLS with a client
    /// certificate.
    SidecarTls,
    /// (BENCH_GATEWAY) a gateway serving that tenant among 50 idle ones, the same way.
    Gateway,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Direct => "direct",
            Kind::GrpcProxy => "grpc-proxy",
            Kind::Cutover => "cutover",
            Kind::TcpRelay => relay_label(),
            Kind::SidecarTls => "cutover-tls",
            Kind::Gateway => "gateway",
        }
    }
}

struct Target {
    kind: Kind,
    addr: String,
    channel: Channel,
}

/// Connects and waits until a linearizable Range answers through `addr` (over TLS with
/// `tls`).
async fn connect_ready(what: &str, addr: &str, tls: Option<&tonic::transport::ClientTlsConfig>) -> (Channel, u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last;
    loop {
        let attempt = async {
            let channel = match tls {
                None => connect_channel(addr).await?,
                Some(tls) => gateway::connect_tls(addr, tls).await?,
            };
            let resp = KvClient::new(channel.clone())
                .range(RangeRequest {
                    key: Bytes::from_static(b"/registry/bench/ready"),
                    ..Default::default()
                })
                .await
                .map_err(|s| format!("range: {s}"))?;
            let cluster = resp.into_inner().header.map_or(0, |h| h.cluster_id);
            Ok::<_, String>((channel, cluster))
        };
        match tokio::time::timeout(Duration::from_secs(5), attempt).await {
            Ok(Ok(r)) => return r,
            Ok(Err(e)) => last = e,
            Err(_) => last = "timed out".into(),
        }
        if Instant::now() > deadline {
            panic!("{what} at {addr} did not answer within 30s: {last}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---------------------------------------------------------------------------------------
// Measurements

/// What one measured run (or several merged) produced.
#[derive(Default)]
struct Sample {
    /// Latency of every completed op, in nanoseconds.
    lat_ns: Vec<u64>,
    ops: u64,
    wall: Duration,
    errors: u64,
    first_error: Option<String>,
    /// Txn: compares that failed (someone else changed the key; should stay 0).
    conflicts: u64,
    /// Watch: event received minus Put response received, in nanoseconds (may be < 0).
    resp_to_event_ns: Vec<i64>,
    cpu_etcd: Duration,
    cpu_proxy: Duration,
    cpu_client: Duration,
    /// CPU used by processes other than the four of this bench (noise).
    cpu_other: Duration,
}

impl Sample {
    fn merge(&mut self, other: Sample) {
        self.lat_ns.extend(other.lat_ns);
        self.ops += other.ops;
        self.wall += other.wall;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error = other.first_error;
        }
        self.conflicts += other.conflicts;
        self.resp_to_event_ns.extend(other.resp_to_event_ns);
        self.cpu_etcd += other.cpu_etcd;
        self.cpu_proxy += other.cpu_proxy;
        self.cpu_client += other.cpu_client;
        self.cpu_other += other.cpu_other;
    }

    fn ops_per_sec(&self) -> f64 {
        self.ops as f64 / self.wall.as_secs_f64().max(1e-9)
    }

    fn cpu_per_op_us(&self, d: Duration) -> f64 {
        d.as_secs_f64() * 1e6 / (self.ops.max(1) as f64)
    }
}

/// One task's results.
#[derive(Default)]
struct TaskOut {
    lat_ns: Vec<u64>,
    errors: u64,
    first_error: Option<String>,
    conflicts: u64,
    resp_to_event_ns: Vec<i64>,
}

impl TaskOut {
    fn error(&mut self, e: String) {
        self.errors += 1;
        if self.first_error.is_none() {
            self.first_error = Some(e);
        }
    }
}

fn key(kind: &str, i: usize) -> Bytes {
    Bytes::from(format!("{KEY_PREFIX}{kind}/{i:04}"))
}

fn range_key() -> Bytes {
    Bytes::from(format!("{KEY_PREFIX}range/object"))
}

async fn timed<T, E: std::fmt::Display>(fut: impl std::future::Future<Output = Result<T, E>>) -> Result<T, String> {
    match tokio::time::timeout(OP_TIMEOUT, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {OP_TIMEOUT:?}")),
    }
}

/// The mod_revision of `key` now (0 when it does not exist).
async fn current_mod_revision(kv: &mut KvClient<Channel>, key: &Bytes) -> Result<i64, String> {
    let r = timed(kv.range(RangeRequest {
        key: key.clone(),
        ..Default::default()
    }))
    .await?
    .into_inner();
    Ok(r.kvs.first().map_or(0, |kv| kv.mod_revision))
}

/// One closed-loop task of a unary op until `dur` has passed after the common start.
async fn unary_task(op: Op, channel: Channel, idx: usize, value: Bytes, start: Arc<Barrier>, dur: Duration) -> TaskOut {
    let mut kv = KvClient::new(channel);
    let mut out = TaskOut {
        lat_ns: Vec::with_capacity(16 * 1024),
        ..Default::default()
    };
    let my_key = match op {
        Op::Range | Op::ReadTxn => range_key(),
        Op::Put => key("put", idx),
        Op::Txn => key("txn", idx),
        Op::Watch => unreachable!("watch has its own task"),
    };
    // kube-apiserver's update: it knows the object's mod_revision from its last read.
    let mut known_rev = if op == Op::Txn || op == Op::ReadTxn {
        match current_mod_revision(&mut kv, &my_key).await {
            Ok(r) => r,
            Err(e) => {
                out.error(e);
                0
            }
        }
    } else {
        0
    };
    start.wait().await;
    let deadline = Instant::now() + dur;
    while Instant::now() < deadline {
        let t0 = Instant::now();
        let result: Result<(), String> = match op {
            Op::Range => timed(kv.range(RangeRequest {
                key: my_key.clone(),
                serializable: false,
                ..Default::default()
            }))
            .await
            .and_then(|r| match r.get_ref().kvs.len() {
                1 => Ok(()),
                n => Err(format!("range returned {n} keys, expected 1")),
            }),
            Op::Put => timed(kv.put(PutRequest {
                key: my_key.clone(),
                value: value.clone(),
                ..Default::default()
            }))
            .await
            .map(drop),
            Op::Txn => {
                let req = TxnRequest {
                    compare: vec![Compare {
                        result: CompareResult::Equal as i32,
                        target: CompareTarget::Mod as i32,
                        key: my_key.clone(),
                        target_union: Some(TargetUnion::ModRevision(known_rev)),
                        ..Default::default()
                    }],
                    success: vec![RequestOp {
                        request: Some(Op1::RequestPut(PutRequest {
                            key: my_key.clone(),
                            value: value.clone(),
                            ..Default::default()
                        })),
                    }],
                    failure: vec![RequestOp {
                        request: Some(Op1::RequestRange(RangeRequest {
                            key: my_key.clone(),
                            ..Default::default()
                        })),
                    }],
                };
                timed(kv.txn(req)).await.map(|r| {
                    let r = r.into_inner();
                    if r.succeeded {
                        // The put's mod_revision is the revision the txn created.
                        known_rev = r.header.map_or(known_rev, |h| h.revision);
                    } else {
                        out.conflicts += 1;
                        if let Some(OpResp::ResponseRange(rr)) = r.responses.into_iter().next().and_then(|o| o.response)
                        {
                            known_rev = rr.kvs.first().map_or(0, |kv| kv.mod_revision);
                        }
                    }
                })
            }
            Op::ReadTxn => {
                let read = || RequestOp {
                    request: Some(Op1::RequestRange(RangeRequest {
                        key: my_key.clone(),
                        ..Default::default()
                    })),
                };
                let req = TxnRequest {
                    compare: vec![Compare {
                        result: CompareResult::Equal as i32,
                        target: CompareTarget::Mod as i32,
                        key: my_key.clone(),
                        target_union: Some(TargetUnion::ModRevision(known_rev)),
                        ..Default::default()
                    }],
                    success: vec![read()],
                    failure: vec![read()],
                };
                timed(kv.txn(req)).await.and_then(|r| match r.get_ref().succeeded {
                    true => Ok(()),
                    false => Err("the read-only txn's compare failed (the key changed?)".into()),
                })
            }
            Op::Watch => unreachable!(),
        };
        match result {
            Ok(()) => out.lat_ns.push(t0.elapsed().as_nanos() as u64),
            Err(e) => out.error(e),
        }
    }
    out
}

type Slots = Arc<Vec<Mutex<Option<oneshot::Sender<Instant>>>>>;

/// Reads the watch stream and hands each event's arrival time to the task that wrote it.
async fn watch_reader(
    mut stream: tonic::Streaming<cutover::proto::etcdserverpb::WatchResponse>,
    slots: Slots,
    prefix_len: usize,
) -> Result<(), String> {
    loop {
        let resp = match stream.message().await {
            Ok(Some(r)) => r,
            Ok(None) => return Err("watch stream ended".into()),
            Err(s) => return Err(format!("watch stream: {s}")),
        };
        let now = Instant::now();
        if resp.canceled {
            return Err(format!("watch canceled: {}", resp.cancel_reason));
        }
        for ev in &resp.events {
            let Some(kv) = &ev.kv else { continue };
            let idx = std::str::from_utf8(&kv.key[prefix_len..])
                .ok()
                .and_then(|s| s.parse::<usize>().ok());
            if let Some(tx) = idx.and_then(|i| slots.get(i)).and_then(|s| s.lock().unwrap().take()) {
                let _ = tx.send(now);
            }
        }
    }
}

/// One writer of the watch op: put own key, wait for the put's answer and for its event.
async fn watch_writer(
    channel: Channel,
    idx: usize,
    value: Bytes,
    slots: Slots,
    start: Arc<Barrier>,
    dur: Duration,
) -> TaskOut {
    let mut kv = KvClient::new(channel);
    let mut out = TaskOut {
        lat_ns: Vec::with_capacity(16 * 1024),
        ..Default::default()
    };
    let my_key = key("watch", idx);
    start.wait().await;
    let deadline = Instant::now() + dur;
    while Instant::now() < deadline {
        let (tx, rx) = oneshot::channel();
        // Registered before the put is sent, so the event cannot arrive first.
        *slots[idx].lock().unwrap() = Some(tx);
        let t0 = Instant::now();
        let put = timed(kv.put(PutRequest {
            key: my_key.clone(),
            value: value.clone(),
            ..Default::default()
        }))
        .await;
        let t1 = Instant::now();
        if let Err(e) = put {
            slots[idx].lock().unwrap().take();
            out.error(e);
            continue;
        }
        match tokio::time::timeout(OP_TIMEOUT, rx).await {
            Ok(Ok(t2)) => {
                out.lat_ns.push(t2.duration_since(t0).as_nanos() as u64);
                let signed = if t2 >= t1 {
                    t2.duration_since(t1).as_nanos() as i64
                } else {
                    -(t1.duration_since(t2).as_nanos() as i64)
                };
                out.resp_to_event_ns.push(signed);
            }
            Ok(Err(_)) => {
                out.error("watch reader stopped before the event arrived".into());
                break;
            }
            Err(_) => {
                slots[idx].lock().unwrap().take();
                out.error(format!("event not received within {OP_TIMEOUT:?}"));
            }
        }
    }
    out
}

/// Runs `op` with `conc` tasks for `dur` against one target.
async fn run(op: Op, channel: &Channel, conc: usize, dur: Duration, value: &Bytes) -> Sample {
    let start = Arc::new(Barrier::new(conc + 1));
    let mut handles = Vec::with_capacity(conc);
    let mut watch = None;
    if op == Op::Watch {
        let slots: Slots = Arc::new((0..conc).map(|_| Mutex::new(None)).collect());
        let prefix = format!("{KEY_PREFIX}watch/");
        let mut end = prefix.clone().into_bytes();
        *end.last_mut().expect("not empty") += 1;
        let (req_tx, req_rx) = mpsc::channel(4);
        req_tx
            .send(WatchRequest {
                request_union: Some(RequestUnion::CreateRequest(WatchCreateRequest {
                    key: Bytes::from(prefix.clone()),
                    range_end: Bytes::from(end),
                    ..Default::default()
                })),
            })
            .await
            .expect("queue the watch create");
        let mut stream = timed(WatchClient::new(channel.clone()).watch(ReceiverStream::new(req_rx)))
            .await
            .expect("open the watch stream")
            .into_inner();
        let created = timed(stream.message()).await.expect("watch created");
        assert!(
            created.is_some_and(|r| r.created && !r.canceled),
            "the watch was not created"
        );
        let reader = tokio::spawn(watch_reader(stream, slots.clone(), prefix.len()));
        for i in 0..conc {
            handles.push(tokio::spawn(watch_writer(
                channel.clone(),
                i,
                value.clone(),
                slots.clone(),
                start.clone(),
                dur,
            )));
        }
        // Keep the request side open until the writers are done.
        watch = Some((reader, req_tx));
    } else {
        for i in 0..conc {
            handles.push(tokio::spawn(unary_task(
                op,
                channel.clone(),
                i,
                value.clone(),
                start.clone(),
                dur,
            )));
        }
    }
    start.wait().await;
    let t0 = Instant::now();
    let mut sample = Sample::default();
    for h in handles {
        let out = h.await.expect("a bench task panicked");
        sample.ops += out.lat_ns.len() as u64;
        sample.lat_ns.extend(out.lat_ns);
        sample.errors += out.errors;
        if sample.first_error.is_none() {
            sample.first_error = out.first_error;
        }
        sample.conflicts += out.conflicts;
        sample.resp_to_event_ns.extend(out.resp_to_event_ns);
    }
    sample.wall = t0.elapsed();
    if let Some((reader, req_tx)) = watch {
        drop(req_tx);
        reader.abort();
        if let Ok(Err(e)) = reader.await {
            sample.errors += 1;
            sample.first_error.get_or_insert(e);
        }
    }
    sample
}

// ---------------------------------------------------------------------------------------
// Report

fn fmt_us(ns: f64) -> String {
    format!("{:.1}µs", ns / 1000.0)
}

fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 && a.is_finite() {
        format!("{:.3}", a / b)
    } else {
        "-".into()
    }
}

struct Row {
    p50: f64,
    p99: f64,
    ops_s: f64,
}

fn pass(ok: bool) -> &'static str {
    if ok {
        "PASS"
    } else {
        "MISS"
    }
}

fn h2_relay() -> bool {
    std::env::var("BENCH_TCP_RELAY").is_ok_and(|v| v == "h2")
}

fn relay_label() -> &'static str {
    if h2_relay() {
        "h2-relay"
    } else {
        "tcp-relay"
    }
}

fn main() {
    relay::run_if_asked();
    let began = Instant::now();
    let settings = Settings::from_env();
    let with_relay = h2_relay() || env_parse("BENCH_TCP_RELAY", 0u8) != 0;
    let command = invocation();
    let cutover_bin = cutover_binary();
    let etcd_bin = std::env::var("ETCD_BIN").unwrap_or_else(|_| "etcd".into());
    let dir = tempfile::Builder::new()
        .prefix("cutover-bench-")
        .tempdir()
        .expect("temp dir");
    let pin = Pinning::from_env();
    // BENCH_UDS=1: clients reach cutover over a unix socket (cutover still reaches etcd
    // over TCP), as a sidecar's apiserver can.
    let cutover_socket = (env_parse("BENCH_UDS", 0u8) != 0).then(|| dir.path().join("cutover.sock"));

    // Declared after `dir`, so they are dropped (killed) before it is removed.
    let etcd_port = free_port();
    let mut etcd = bench_etcd(&etcd_bin, etcd_port, dir.path(), bound_to(pin.etcd));

    // The proxies, each with the port clients use.
    let mut proxies: Vec<(Kind, u16, Proc)> = Vec::new();
    {
        let port = free_port();
        let mut cmd = Command::new(&etcd_bin);
        cmd.args([
            "grpc-proxy".to_string(),
            "start".to_string(),
            format!("--endpoints=127.0.0.1:{etcd_port}"),
            format!("--listen-addr=127.0.0.1:{port}"),
            format!("--advertise-client-url=127.0.0.1:{port}"),
            format!("--data-dir={}", dir.path().join("grpc-proxy").display()),
        ])
        .env("ETCD_UNSUPPORTED_ARCH", "");
        proxies.push((
            Kind::GrpcProxy,
            port,
            Proc::spawn(
                "etcd grpc-proxy",
                cmd,
                dir.path().join("grpc-proxy.log"),
                bound_to(pin.proxy),
            ),
        ));
    }
    {
        let port = free_port();
        let admin_port = free_port();
        let config = dir.path().join("cutover.yaml");
        let listen = match &cutover_socket {
            Some(path) => format!("unix://{}", path.display()),
            None => format!("127.0.0.1:{port}"),
        };
        std::fs::write(
            &config,
            format!(
                "listen: {listen}\nadmin:\n  listen: 127.0.0.1:{admin_port}\n\
                 dataStore: bench\ndataStores:\n  bench:\n    endpoints: [\"127.0.0.1:{etcd_port}\"]\n\
                 log:\n  level: warn\n"
            ),
        )
        .expect("write the cutover config");
        let mut cmd = Command::new(&cutover_bin);
        cmd.arg("serve").arg("--config").arg(&config).env_remove("RUST_LOG");
        for (k, v) in cutover_env() {
            cmd.env(k, v);
        }
        proxies.push((
            Kind::Cutover,
            port,
            Proc::spawn("cutover", cmd, dir.path().join("cutover.log"), bound_to(pin.proxy)),
        ));
    }
    if with_relay {
        let port = free_port();
        let mut cmd = Command::new(std::env::current_exe().expect("own path"));
        cmd.env(
            relay::RELAY_ENV,
            relay::spec(
                h2_relay(),
                &format!("127.0.0.1:{port}"),
                &format!("127.0.0.1:{etcd_port}"),
            ),
        );
        proxies.push((
            Kind::TcpRelay,
            port,
            Proc::spawn(
                relay_label(),
                cmd,
                dir.path().join("tcp-relay.log"),
                bound_to(pin.proxy),
            ),
        ));
    }

    let gateway_tls = (env_parse("BENCH_GATEWAY", 0u8) != 0).then(|| gateway_tls(dir.path()));
    if let Some(tls) = &gateway_tls {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(async {
            let (channel, _) = connect_ready("etcd", &format!("127.0.0.1:{etcd_port}"), None).await;
            gateway::write_catalog(channel, "bench", 50).await;
        });
        for kind in [Kind::SidecarTls, Kind::Gateway] {
            let port = free_port();
            let admin_port = free_port();
            let config = dir.path().join(format!("{}.yaml", kind.name()));
            let mode = match kind {
                Kind::Gateway => "mode: gateway\n".to_string(),
                _ => format!("prefix: /{BENCH_TENANT}/\n"),
            };
            std::fs::write(
                &config,
                format!(
                    "{mode}listen: 127.0.0.1:{port}\nadmin:\n  listen: 127.0.0.1:{admin_port}\n\
                     tls:\n  certFile: {}\n  keyFile: {}\n  clientCAFile: {}\n\
                     dataStore: bench\ndataStores:\n  bench:\n    endpoints: [\"127.0.0.1:{etcd_port}\"]\n\
                     log:\n  level: warn\n",
                    tls.server.0.display(),
                    tls.server.1.display(),
                    tls.ca.display()
                ),
            )
            .expect("write the config");
            let mut cmd = Command::new(&cutover_bin);
            cmd.arg("serve").arg("--config").arg(&config).env_remove("RUST_LOG");
            for (k, v) in cutover_env() {
                cmd.env(k, v);
            }
            proxies.push((
                kind,
                port,
                Proc::spawn(
                    kind.name(),
                    cmd,
                    dir.path().join(format!("{}.log", kind.name())),
                    bound_to(pin.proxy),
                ),
            ));
        }
    }

    if let Some(set) = &pin.client {
        // After the children started (they must not inherit it), before the runtime
        // exists (its threads must).
        set.apply().expect("BENCH_PIN: bind this program");
    }
    // The worker count is set explicitly so that TOKIO_WORKER_THREADS, which the children
    // inherit, tunes cutover without changing the client.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(std::thread::available_parallelism().map_or(2, |n| n.get()))
        .enable_all()
        .build()
        .expect("tokio runtime");
    let worker_threads = runtime.metrics().num_workers();

    let mut endpoints = vec![(Kind::Direct, etcd_port)];
    endpoints.extend(proxies.iter().map(|(k, port, _)| (*k, *port)));
    let targets: Vec<Target> = runtime.block_on(async {
        let mut targets = Vec::new();
        let mut clusters = Vec::new();
        for &(kind, port) in &endpoints {
            let addr = match (&cutover_socket, kind) {
                (Some(path), Kind::Cutover) => format!("unix:{}", path.display()),
                _ => format!("127.0.0.1:{port}"),
            };
            let tls = match kind {
                Kind::SidecarTls | Kind::Gateway => gateway_tls.as_ref().map(|t| &t.client),
                _ => None,
            };
            let (channel, cluster) = connect_ready(kind.name(), &addr, tls).await;
            clusters.push(cluster);
            targets.push(Target { kind, addr, channel });
        }
        assert!(
            clusters.windows(2).all(|w| w[0] == w[1]),
            "the targets answer for different etcd clusters: {clusters:x?}"
        );
        // The object the range op reads.
        let value = Bytes::from(vec![b'v'; settings.value_bytes]);
        KvClient::new(targets[0].channel.clone())
            .put(PutRequest {
                key: range_key(),
                value,
                ..Default::default()
            })
            .await
            .expect("create the range key");
        targets
    });
    check_alive(&mut etcd, &mut proxies);

    println!("cutover overhead bench");
    println!("command: {command}");
    println!(
        "etcd: {} (pid {}, {})",
        targets[0].addr,
        etcd.pid(),
        etcd_version(&etcd_bin)
    );
    for (t, (_, _, p)) in targets[1..].iter().zip(&proxies) {
        let extra = if t.kind == Kind::Cutover {
            format!(", {}", cutover_bin.display())
        } else {
            String::new()
        };
        println!("{}: {} (pid {}{extra})", t.kind.name(), t.addr, p.pid());
    }
    println!(
        "settings: {}s measured per op/concurrency/target in {} rounds (rotating order), {}s warm-up, \
         concurrency {:?}, value {} B, client runtime {} workers, {} CPUs",
        settings.secs,
        settings.rounds,
        settings.warmup_secs,
        settings.concurrency,
        settings.value_bytes,
        worker_threads,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    if !pin.text.is_empty() {
        println!("CPU pinning (BENCH_PIN): {}", pin.text);
    }
    println!("watch latency = from issuing the Put to the watcher receiving its event");
    println!("load average at start: {}", loadavg());
    println!();

    let value = Bytes::from(vec![b'v'; settings.value_bytes]);
    let max_conc = settings.max_concurrency();
    let kinds: Vec<Kind> = targets.iter().map(|t| t.kind).collect();
    let mut results: BTreeMap<(Op, usize, Kind), Sample> = BTreeMap::new();
    // Peak RSS (KiB) of each proxy under the highest concurrency, per op.
    let mut hwm: BTreeMap<(Op, Kind), u64> = BTreeMap::new();
    let mut hwm_reset_ok = true;
    let etcd_pid = etcd.pid();
    let proxy_pids: Vec<u32> = proxies.iter().map(|(_, _, p)| p.pid()).collect();

    for &op in &settings.ops {
        for &conc in &settings.concurrency {
            let measuring_rss = conc == max_conc;
            if measuring_rss {
                for &pid in &proxy_pids {
                    hwm_reset_ok &= reset_hwm(pid);
                }
            }
            runtime.block_on(async {
                let warm = Duration::from_secs_f64(settings.warmup_secs);
                for t in &targets {
                    if !warm.is_zero() {
                        run(op, &t.channel, conc, warm, &value).await;
                    }
                }
                let slice = Duration::from_secs_f64(settings.secs / settings.rounds as f64);
                for round in 0..settings.rounds {
                    for k in 0..targets.len() {
                        let i = (round + k) % targets.len();
                        let t = &targets[i];
                        let before = CpuSnapshot::take(etcd_pid, &proxy_pids);
                        let mut s = run(op, &t.channel, conc, slice, &value).await;
                        let used = CpuSnapshot::take(etcd_pid, &proxy_pids).since(&before);
                        s.cpu_etcd = used.etcd;
                        // targets[0] is direct; targets[i] is proxies[i - 1].
                        s.cpu_proxy = if i == 0 { Duration::ZERO } else { used.proxies[i - 1] };
                        s.cpu_client = used.client;
                        s.cpu_other = used.other();
                        results.entry((op, conc, t.kind)).or_default().merge(s);
                    }
                }
            });
            if measuring_rss {
                for (kind, _, p) in &proxies {
                    if let Some(kib) = proc_status_kib(p.pid(), "VmHWM") {
                        hwm.insert((op, *kind), kib);
                    }
                }
            }
            check_alive(&mut etcd, &mut proxies);
            eprintln!(
                "  done: {} x{} ({:.0}s so far)",
                op.name(),
                conc,
                began.elapsed().as_secs_f64()
            );
        }
    }

    // --- the table
    let mut rows: BTreeMap<(Op, usize, Kind), Row> = BTreeMap::new();
    for (k, s) in results.iter_mut() {
        s.lat_ns.sort_unstable();
        rows.insert(
            *k,
            Row {
                p50: percentile(&s.lat_ns, 0.50).unwrap_or_default() as f64,
                p99: percentile(&s.lat_ns, 0.99).unwrap_or_default() as f64,
                ops_s: s.ops_per_sec(),
            },
        );
    }
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<6} {:>4} {:<11} {:>10} {:>10} {:>9} | {:>8} {:>8} | {:>8} {:>8} | {:>9} {:>9} {:>9} {:>6} | {:>6}",
        "op",
        "conc",
        "target",
        "p50",
        "p99",
        "ops/s",
        "thr/dir",
        "p50/dir",
        "thr/gp",
        "p50/gp",
        "etcd cpu",
        "proxy cpu",
        "clnt cpu",
        "other",
        "errors"
    );
    let _ = writeln!(out, "{}", "-".repeat(158));
    for &op in &settings.ops {
        for &conc in &settings.concurrency {
            let d = &rows[&(op, conc, Kind::Direct)];
            let g = &rows[&(op, conc, Kind::GrpcProxy)];
            for &kind in &kinds {
                let r = &rows[&(op, conc, kind)];
                let s = &results[&(op, conc, kind)];
                let cpu = |v: Duration| format!("{:.1}µs", s.cpu_per_op_us(v));
                let _ = writeln!(
                    out,
                    "{:<6} {:>4} {:<11} {:>10} {:>10} {:>9.0} | {:>8} {:>8} | {:>8} {:>8} | {:>9} {:>9} {:>9} {:>5.0}% | {:>6}",
                    op.name(),
                    conc,
                    kind.name(),
                    fmt_us(r.p50),
                    fmt_us(r.p99),
                    r.ops_s,
                    ratio(r.ops_s, d.ops_s),
                    ratio(r.p50, d.p50),
                    ratio(r.ops_s, g.ops_s),
                    ratio(r.p50, g.p50),
                    cpu(s.cpu_etcd),
                    if kind == Kind::Direct { "-".into() } else { cpu(s.cpu_proxy) },
                    cpu(s.cpu_client),
                    100.0 * s.cpu_other.as_secs_f64() / s.wall.as_secs_f64().max(1e-9),
                    s.errors,
                );
            }
        }
    }
    let _ = writeln!(
        out,
        "(thr = throughput, dir = direct, gp = grpc-proxy; cpu = CPU time per op of etcd, of the proxy under test and of this client;\n \
         other = CPU used meanwhile by unrelated processes or stolen by the hypervisor, in % of one CPU: high = noisy row)"
    );
    print!("{out}");

    // Extra facts that explain the numbers.
    for ((op, conc, kind), s) in &results {
        if let Some(e) = &s.first_error {
            println!(
                "errors {} x{conc} {}: {} (first: {e})",
                op.name(),
                kind.name(),
                s.errors
            );
        }
        if s.conflicts > 0 {
            println!("note: txn x{conc} {}: {} compares failed", kind.name(), s.conflicts);
        }
    }
    if settings.ops.contains(&Op::Watch) {
        println!();
        println!("watch: median (event received - Put response received), negative = event came first:");
        for &conc in &settings.concurrency {
            let mut line = format!("  x{conc}:");
            for &kind in &kinds {
                let mut v = results[&(Op::Watch, conc, kind)].resp_to_event_ns.clone();
                v.sort_unstable();
                let _ = write!(
                    line,
                    "  {} {}",
                    kind.name(),
                    fmt_us(percentile(&v, 0.5).unwrap_or_default() as f64)
                );
            }
            println!("{line}");
        }
    }

    // --- the targets of the issue
    println!();
    println!("added p50 latency over direct (target: cutover's at most half of grpc-proxy's)");
    let relay_hdr = if with_relay {
        format!("{:>12}", relay_label())
    } else {
        String::new()
    };
    println!(
        "{:<6} {:>4} {:>12} {:>12} {:>14}  verdict{relay_hdr}",
        "op", "conc", "grpc-proxy", "cutover", "cutover/gp"
    );
    let mut misses = Vec::new();
    for &op in &settings.ops {
        for &conc in &settings.concurrency {
            let d = rows[&(op, conc, Kind::Direct)].p50;
            let g = rows[&(op, conc, Kind::GrpcProxy)].p50 - d;
            let c = rows[&(op, conc, Kind::Cutover)].p50 - d;
            let ok = c <= 0.5 * g || c <= 0.0;
            if !ok {
                misses.push(format!("added p50 {} x{conc}", op.name()));
            }
            let relay = match rows.get(&(op, conc, Kind::TcpRelay)) {
                Some(r) => format!("   {:>12}", fmt_us(r.p50 - d)),
                None => String::new(),
            };
            println!(
                "{:<6} {:>4} {:>12} {:>12} {:>14}  {}{relay}",
                op.name(),
                conc,
                fmt_us(g),
                fmt_us(c),
                if g > 0.0 { format!("{:.2}", c / g) } else { "-".into() },
                pass(ok)
            );
        }
    }
    println!();
    println!("throughput at concurrency {max_conc} (target: cutover at least 95% of direct)");
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    if pin.text.is_empty() && cpus < 4 {
        println!(
            "  note: etcd, the proxy and this client share {cpus} CPUs, so at this load throughput is bound by the \
             CPU time per op of all three\n  (cpu columns above); BENCH_PIN gives the proxy a CPU of its own"
        );
    }
    for &op in &settings.ops {
        let d = rows[&(op, max_conc, Kind::Direct)].ops_s;
        let g = rows[&(op, max_conc, Kind::GrpcProxy)].ops_s;
        let c = rows[&(op, max_conc, Kind::Cutover)].ops_s;
        let ok = c >= 0.95 * d;
        if !ok {
            misses.push(format!("throughput {}", op.name()));
        }
        let relay = match rows.get(&(op, max_conc, Kind::TcpRelay)) {
            Some(r) => format!("  ({} {:.0}/s, {:.1}%)", relay_label(), r.ops_s, 100.0 * r.ops_s / d),
            None => String::new(),
        };
        println!(
            "{:<6} direct {:>8.0}/s  grpc-proxy {:>8.0}/s ({:>5.1}%)  cutover {:>8.0}/s ({:>5.1}%)  {}{relay}",
            op.name(),
            d,
            g,
            100.0 * g / d,
            c,
            100.0 * c / d,
            pass(ok)
        );
    }
    println!();
    // What the proxy and etcd spend per request, the machine's load shared out: the
    // targets of the data-path issue (the relay is the floor for a routing proxy).
    let cpu_us = |op: Op, conc: usize, kind: Kind, etcd: bool| {
        results
            .get(&(op, conc, kind))
            .map(|s| s.cpu_per_op_us(if etcd { s.cpu_etcd } else { s.cpu_proxy }))
    };
    if with_relay && h2_relay() {
        println!("proxy CPU per op, cutover / h2-relay (target: at most 1.15)");
        for &op in &settings.ops {
            for &conc in &settings.concurrency {
                let (Some(c), Some(r)) = (
                    cpu_us(op, conc, Kind::Cutover, false),
                    cpu_us(op, conc, Kind::TcpRelay, false),
                ) else {
                    continue;
                };
                let ok = c <= 1.15 * r;
                if !ok {
                    misses.push(format!("proxy cpu {} x{conc}", op.name()));
                }
                println!(
                    "{:<6} {:>4} {:>10.1}µs {:>10.1}µs {:>8.2}  {}",
                    op.name(),
                    conc,
                    c,
                    r,
                    c / r,
                    pass(ok)
                );
            }
        }
        println!();
    }
    if gateway_tls.is_some() {
        println!("gateway / cutover-tls (the same tenant, both over TLS with its client certificate)");
        println!(
            "{:<6} {:>4} {:>12} {:>12} {:>8} {:>14} {:>14} {:>8}",
            "op", "conc", "cpu gateway", "cpu sidecar", "ratio", "added p50 gw", "added p50 sc", "ratio"
        );
        for &op in &settings.ops {
            for &conc in &settings.concurrency {
                let (Some(g), Some(c)) = (
                    cpu_us(op, conc, Kind::Gateway, false),
                    cpu_us(op, conc, Kind::SidecarTls, false),
                ) else {
                    continue;
                };
                // (p50s are kept in nanoseconds.)
                let added = |kind: Kind| {
                    let d = rows[&(op, conc, Kind::Direct)].p50;
                    (rows[&(op, conc, kind)].p50 - d) / 1000.0
                };
                let (ag, ac) = (added(Kind::Gateway), added(Kind::SidecarTls));
                println!(
                    "{:<6} {:>4} {:>10.1}µs {:>10.1}µs {:>8.2} {:>12.1}µs {:>12.1}µs {:>8.2}",
                    op.name(),
                    conc,
                    g,
                    c,
                    g / c,
                    ag,
                    ac,
                    ag / ac
                );
            }
        }
        println!();
    }
    if settings.concurrency.contains(&1) {
        println!("added p50 latency at concurrency 1, cutover / grpc-proxy (target: at most 0.55)");
        for &op in &settings.ops {
            let d = rows[&(op, 1, Kind::Direct)].p50;
            let g = rows[&(op, 1, Kind::GrpcProxy)].p50 - d;
            let c = rows[&(op, 1, Kind::Cutover)].p50 - d;
            let ok = c <= 0.55 * g || c <= 0.0;
            if !ok {
                misses.push(format!("added p50 (0.55) {} x1", op.name()));
            }
            let ratio = if g > 0.0 { format!("{:.2}", c / g) } else { "-".into() };
            println!("{:<6} {:>8}  {}", op.name(), ratio, pass(ok));
        }
        println!();
    }
    println!("etcd CPU per op through cutover / direct (target: at most 1.1 for range and txn; put reported: its guard is a Txn)");
    for &op in &settings.ops {
        for &conc in &settings.concurrency {
            let (Some(c), Some(d)) = (
                cpu_us(op, conc, Kind::Cutover, true),
                cpu_us(op, conc, Kind::Direct, true),
            ) else {
                continue;
            };
            let judged = matches!(op, Op::Range | Op::Txn);
            let ok = c <= 1.1 * d;
            if judged && !ok {
                misses.push(format!("etcd cpu {} x{conc}", op.name()));
            }
            let verdict = if judged { pass(ok) } else { "(reported)" };
            println!("{:<6} {:>4} {:>8.2}  {verdict}", op.name(), conc, c / d);
        }
    }
    println!();
    let what = if hwm_reset_ok {
        "VmHWM, reset before each op's highest-concurrency block"
    } else {
        "VmHWM since start: resetting it via clear_refs failed"
    };
    println!("peak RSS under concurrency {max_conc} ({what}; target: cutover at most 32 MiB)");
    for &kind in &kinds[1..] {
        let per_op: Vec<String> = settings
            .ops
            .iter()
            .filter_map(|&op| {
                hwm.get(&(op, kind))
                    .map(|k| format!("{} {:.1}", op.name(), *k as f64 / 1024.0))
            })
            .collect();
        let peak = settings
            .ops
            .iter()
            .filter_map(|&op| hwm.get(&(op, kind)))
            .max()
            .copied();
        let verdict = if kind == Kind::Cutover {
            let ok = peak.is_some_and(|k| k as f64 * 1024.0 <= 32.0 * MIB);
            if !ok {
                misses.push("RSS".into());
            }
            format!("  {}", pass(ok))
        } else {
            String::new()
        };
        println!(
            "  {:<11} peak {} MiB  (MiB per op: {}){verdict}",
            format!("{}:", kind.name()),
            peak.map_or("?".into(), |k| format!("{:.1}", k as f64 / 1024.0)),
            per_op.join(", ")
        );
    }
    println!();
    if misses.is_empty() {
        println!("all targets met");
    } else {
        println!("targets missed: {}", misses.join("; "));
    }
    println!("load average at end: {}", loadavg());
    println!("total time {:.1}s", began.elapsed().as_secs_f64());

    // Children are killed before the temp dir they use is removed.
    drop(targets);
    drop(runtime);
    drop(proxies);
    drop(etcd);
    drop(dir);
}

/// Fails the bench, with the log, if any child process has exited.
fn check_alive(etcd: &mut Proc, proxies: &mut [(Kind, u16, Proc)]) {
    etcd.check_alive().unwrap_or_else(|e| panic!("{e}"));
    for (_, _, p) in proxies.iter_mut() {
        p.check_alive().unwrap_or_else(|e| panic!("{e}"));
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn etcd_version(bin: &str) -> String {
    Command::new(bin)
        .arg("--version")
        .env("ETCD_UNSUPPORTED_ARCH", "")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(str::to_string))
        .unwrap_or_else(|| "version unknown".into())
}
