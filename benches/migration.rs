//! How long moving a tenant takes, and how long its writes are blocked, with cutover's live
//! migration compared with the two ways to do it without cutover.
//!
//!     cargo bench --bench migration
//!     BENCH_KEYS=10000 cargo bench --bench migration      # a quick run
//!
//! For each data set (10k and 100k keys by default: kube-style key names such as
//! `/registry/pods/ns-7/pod-1234`, values of 1 KiB) and each method, a fresh pair of etcd
//! 3.4 members (Debian's `etcd`, on free loopback ports, each with its own temp dir) is
//! started: the source ("default") and the target ("dedicated"). The source is loaded
//! directly (Txns of 128 puts, 8 in flight), then the tenant (`/registry/`) is moved:
//!
//! 1. `cutover`: `BENCH_REPLICAS` (3) cutover replicas (the release binary, the same config,
//!    each with its own listen and admin port), all in front of both members, as the
//!    sidecars of three kube-apiserver replicas. A write load of `BENCH_WRITE_RATE` (200)
//!    writes/s runs through them during the whole migration: 6 of 8 writers kube-style
//!    (linearizable get, then a Txn comparing mod_revision with what the get returned, put
//!    on success), 2 plain puts, each writer on its own keys and bound to one replica
//!    (writer `w` to replica `w % BENCH_REPLICAS`), open loop (a fixed schedule, a late
//!    write is not made up for). The migration is started on replica 0 with
//!    `POST /v1/migrations {"to": "dedicated"}` and followed by polling its
//!    `GET /v1/status` every 20 ms; once it succeeded, every replica's status is polled
//!    until it serves from `dedicated`, and for each replica `dataStoreSinceUnixMs` (when it
//!    started serving from its datastore) minus the leader's `migration.committedUnixMs`
//!    (when the commit marker was written) is the time from the commit marker to that
//!    replica serving from the target (the leader's own included; the replicas share the
//!    machine's wall clock). The largest of them, commit marker to the last replica, is
//!    reported per run. Also reported: the copy phase's throughput (keysCopied and
//!    bytesCopied over the copy's duration, from the proxy's `copy done` log line, or from
//!    the polled phases if that line is missing), the proxy's `fenceMs`, the
//!    client-observed write-blocked window (the longest gap between consecutive write
//!    completions that overlaps the fence, i.e. [finishedUnixMs - fenceMs,
//!    finishedUnixMs] widened by 50 ms each side, over the completions through all
//!    replicas; the same per replica is in the details), the longest write latency
//!    overlapping the fence, every client error, and the total time (startedUnixMs to
//!    finishedUnixMs).
//! 2. `kamaji`: Kamaji's stop-the-world migration. Writes are frozen (no load runs: the
//!    freeze is the start of the clock), one unpaginated prefix Get of the whole tenant
//!    from the source, then one Put per key to the target, sequentially, as Kamaji's etcd
//!    driver does (`BENCH_KAMAJI_CONCURRENCY` > 1 runs that many Puts in flight instead,
//!    and the method is labelled `kamaji-cN`). Writes are blocked for the whole duration;
//!    Kamaji also restarts the control plane on the new datastore, which is not counted,
//!    so this window is a lower bound.
//! 3. `make-mirror`: `etcdctl --endpoints SRC make-mirror --prefix /registry/
//!    --dest-prefix /registry/ DST`, timed from its start until the target holds every key
//!    (counted every 100 ms), then killed. It does not block writes, but it gives no
//!    cutover either: switching still needs a freeze and a drain.
//!
//! It prints one row per method and data set, the ratios (cutover's copy speed over each
//! baseline's, the stop-the-world window over cutover's), and PASS/MISS for the targets:
//! fence window <= 100 ms and independent of the key count, copy >= 5x faster than both
//! baselines, no client error under the hold fence. The commit-marker-to-last-replica time
//! (median and max over the repetitions, next to the fence columns) has no target. Nothing
//! is asserted; a value the proxy did not report prints as `-`.
//!
//! Environment:
//!
//! * `BENCH_KEYS` (default `10000,100000`): comma-separated data set sizes;
//! * `BENCH_REPS` (default 1): repetitions of every (size, method); with more than one, the
//!   table shows medians and the maximum of the write-blocked window;
//! * `BENCH_METHODS` (default `cutover,kamaji,make-mirror`); `gateway` is the cutover method
//!   with gateway replicas (mode: gateway, over TLS with the tenant's client certificate),
//!   moving the tenant `/registry/` while 50 idle tenants share the catalog;
//! * `BENCH_REPLICAS` (default 3): cutover replicas of the `cutover` method (1: a single
//!   proxy, as before);
//! * `BENCH_VALUE_BYTES` (default 1024); `BENCH_WRITE_RATE` (default 200 writes/s, the
//!   total over all replicas; 0: a closed loop, every writer writing again as soon as its
//!   last write is answered); `BENCH_WRITERS` (default 8; three in four kube-style);
//! * `BENCH_KAMAJI_CONCURRENCY` (default 1 = sequential, as Kamaji);
//! * `BENCH_CUTOVER_YAML`: extra top-level YAML appended to cutover's config, e.g.
//!   `BENCH_CUTOVER_YAML=$'migration:\n  concurrency: 8\n'`;
//! * `BENCH_CUTOVER_LOG` (default `info`): cutover's `log.level`, e.g. `cutover=debug,info`;
//! * `BENCH_LOG_DIR`: keep the logs of every run (etcd, every cutover replica, make-mirror) in
//!   `BENCH_LOG_DIR/run-N/` instead of deleting them with the temp dir;
//! * `CUTOVER_BIN` (default: the binary cargo built for this bench, `CARGO_BIN_EXE_cutover`),
//!   `ETCD_BIN` (default `etcd`), `ETCDCTL_BIN` (default `etcdctl`).
//!
//! Every child process is killed when this program ends, panics (drop guards), or dies
//! (PR_SET_PDEATHSIG).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support/gateway.rs"]
mod gateway;
use common::{cutover_binary, env_parse, free_port, percentile, Proc};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use tokio::sync::watch;
use tonic::transport::Channel;

use cutover::proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use cutover::proto::etcdserverpb::kv_client::KvClient;
use cutover::proto::etcdserverpb::request_op::Request as Op1;
use cutover::proto::etcdserverpb::{Compare, PutRequest, RangeRequest, RequestOp, TxnRequest};

const TENANT: &str = "/registry/";
const ADMIN_TOKEN: &str = "bench-admin-token";
/// No single request of the load or of a baseline should take this long.
const OP_TIMEOUT: Duration = Duration::from_secs(10);
const MIB: f64 = 1024.0 * 1024.0;
/// Txns of this many puts load the source (etcd's default --max-txn-ops).
const LOAD_TXN_OPS: usize = 128;
const LOAD_IN_FLIGHT: usize = 8;
/// Writers by default (`BENCH_WRITERS`); three in four of them (writers 0..kube_writers)
/// do get + Txn, the others plain puts.
const WRITERS: usize = 8;

fn kube_writers(writers: usize) -> usize {
    (writers * 3).div_ceil(4)
}
const KEYS_PER_WRITER: usize = 4;
const STATUS_POLL: Duration = Duration::from_millis(20);
const MIGRATION_DEADLINE: Duration = Duration::from_secs(900);
const MIRROR_DEADLINE: Duration = Duration::from_secs(1800);

// ---------------------------------------------------------------------------------------
// Settings

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Method {
    Cutover,
    /// cutover as a gateway (mode: gateway) moving the tenant among 50 idle ones.
    Gateway,
    Kamaji,
    MakeMirror,
}

struct Settings {
    sizes: Vec<usize>,
    reps: usize,
    methods: Vec<Method>,
    value_bytes: usize,
    /// Writes/s in all; 0: every writer writes again as soon as its last write is answered
    /// (a closed loop, as fast as the system goes).
    write_rate: f64,
    writers: usize,
    /// Cutover replicas of the `cutover` method.
    replicas: usize,
    kamaji_concurrency: usize,
    cutover_yaml: String,
    /// cutover's `log.level` (the copy time is read from its info-level `copy done` line).
    cutover_log: String,
    /// Where to keep the logs of every run (none: they go with the temp dir).
    log_dir: Option<PathBuf>,
}

impl Settings {
    fn from_env() -> Settings {
        let sizes: Vec<usize> = std::env::var("BENCH_KEYS")
            .ok()
            .filter(|v| !v.trim().is_empty())
            .unwrap_or_else(|| "10000,100000".into())
            .split(',')
            .map(|s| {
                s.trim()
                    .replace('_', "")
                    .parse()
                    .expect("BENCH_KEYS: comma-separated numbers")
            })
            .filter(|&n| n > 0)
            .collect();
        assert!(!sizes.is_empty(), "BENCH_KEYS is empty");
        let methods = std::env::var("BENCH_METHODS")
            .ok()
            .filter(|v| !v.trim().is_empty())
            .unwrap_or_else(|| "cutover,kamaji,make-mirror".into())
            .split(',')
            .map(|s| match s.trim() {
                "cutover" => Method::Cutover,
                "gateway" => Method::Gateway,
                "kamaji" => Method::Kamaji,
                "make-mirror" | "mirror" => Method::MakeMirror,
                other => panic!("BENCH_METHODS: unknown method {other:?} (cutover, gateway, kamaji, make-mirror)"),
            })
            .collect();
        Settings {
            sizes,
            reps: env_parse("BENCH_REPS", 1usize).max(1),
            methods,
            value_bytes: env_parse("BENCH_VALUE_BYTES", 1024usize),
            write_rate: env_parse("BENCH_WRITE_RATE", 200.0f64),
            writers: env_parse("BENCH_WRITERS", WRITERS).max(1),
            replicas: env_parse("BENCH_REPLICAS", 3usize).max(1),
            kamaji_concurrency: env_parse("BENCH_KAMAJI_CONCURRENCY", 1usize).max(1),
            cutover_yaml: std::env::var("BENCH_CUTOVER_YAML").unwrap_or_default(),
            cutover_log: std::env::var("BENCH_CUTOVER_LOG")
                .ok()
                .filter(|v| !v.trim().is_empty())
                .unwrap_or_else(|| "info".into()),
            log_dir: std::env::var_os("BENCH_LOG_DIR").map(PathBuf::from),
        }
    }

    fn method_name(&self, m: Method) -> String {
        match m {
            Method::Cutover => "cutover".into(),
            Method::Gateway => "gateway".into(),
            Method::Kamaji if self.kamaji_concurrency > 1 => format!("kamaji-c{}", self.kamaji_concurrency),
            Method::Kamaji => "kamaji".into(),
            Method::MakeMirror => "make-mirror".into(),
        }
    }
}

// ---------------------------------------------------------------------------------------
// Child processes

fn etcd_bin() -> String {
    std::env::var("ETCD_BIN").unwrap_or_else(|_| "etcd".into())
}

fn etcdctl_bin() -> String {
    std::env::var("ETCDCTL_BIN").unwrap_or_else(|_| "etcdctl".into())
}

/// One etcd member with its own ports and data dir (under `dir`).
struct Etcd {
    /// Held for its Drop (kills the member).
    #[allow(dead_code)]
    proc: Proc,
    /// `127.0.0.1:PORT`
    endpoint: String,
}

impl Etcd {
    fn start(name: &str, dir: &Path) -> Etcd {
        let port = free_port();
        let peer_port = free_port();
        let client = format!("http://127.0.0.1:{port}");
        let peer = format!("http://127.0.0.1:{peer_port}");
        let mut cmd = Command::new(etcd_bin());
        cmd.args([
            format!("--name={name}"),
            format!("--data-dir={}", dir.join(format!("{name}-data")).display()),
            format!("--listen-client-urls={client}"),
            format!("--advertise-client-urls={client}"),
            format!("--listen-peer-urls={peer}"),
            format!("--initial-advertise-peer-urls={peer}"),
            format!("--initial-cluster={name}={peer}"),
            "--initial-cluster-state=new".to_string(),
            "--logger=zap".to_string(),
            "--log-level=warn".to_string(),
            // 4 GiB: 100k keys of 1 KiB are ~100 MiB, a few times over with the history.
            "--quota-backend-bytes=4294967296".to_string(),
        ])
        .env("ETCD_UNSUPPORTED_ARCH", "");
        let proc = Proc::spawn(&format!("etcd {name}"), cmd, dir.join(format!("{name}.log")), || Ok(()));
        Etcd {
            proc,
            endpoint: format!("127.0.0.1:{port}"),
        }
    }
}

/// Connects and waits until a linearizable Range answers through `addr`.
async fn connect_ready(what: &str, addr: &str) -> Channel {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last;
    loop {
        let attempt = async {
            let channel = common::connect_channel(addr).await?;
            KvClient::new(channel.clone())
                .range(RangeRequest {
                    key: Bytes::from_static(b"/registry/bench-ready"),
                    ..Default::default()
                })
                .await
                .map_err(|s| format!("range: {s}"))?;
            Ok::<_, String>(channel)
        };
        match tokio::time::timeout(Duration::from_secs(5), attempt).await {
            Ok(Ok(c)) => return c,
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
// The data set

/// (resource path, object name stem, share in percent)
const RESOURCES: &[(&str, &str, &str, usize)] = &[
    ("pods", "pod", "Pod", 30),
    ("events", "ev", "Event", 20),
    ("configmaps", "cm", "ConfigMap", 10),
    ("secrets", "secret", "Secret", 10),
    ("replicasets", "rs", "ReplicaSet", 8),
    ("services/specs", "svc", "Service", 5),
    ("serviceaccounts", "sa", "ServiceAccount", 5),
    ("endpointslices", "eps", "EndpointSlice", 5),
    ("deployments", "deploy", "Deployment", 4),
    ("leases", "lease", "Lease", 3),
];

use cutover::keys::prefix_end;

struct DataSet {
    kvs: Vec<(Bytes, Bytes)>,
    /// Sum of key and value lengths (what cutover's bytesCopied counts).
    bytes: u64,
}

/// `n` objects with kube-like keys and `value_bytes`-byte JSON-ish values; the same for
/// every method.
fn dataset(n: usize, value_bytes: usize) -> DataSet {
    let mut kvs = Vec::with_capacity(n);
    let mut bytes = 0u64;
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for i in 0..n {
        let mut bucket = i % 100;
        let &(res, stem, kind, _) = RESOURCES
            .iter()
            .find(|r| {
                if bucket < r.3 {
                    true
                } else {
                    bucket -= r.3;
                    false
                }
            })
            .expect("shares add up to 100");
        let ns = (i / 100) % 200;
        let name = format!("{stem}-{i:07}");
        let key = format!("{TENANT}{res}/ns-{ns}/{name}");
        let mut value = format!(
            r#"{{"kind":"{kind}","apiVersion":"v1","metadata":{{"name":"{name}","namespace":"ns-{ns}","uid":"{i:08x}-0000-4000-8000-{:012x}"}},"data":""#,
            rng & 0xffff_ffff_ffff
        )
        .into_bytes();
        while value.len() + 2 < value_bytes {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            value.push(ALPHABET[(rng & 63) as usize]);
        }
        value.extend_from_slice(b"\"}");
        value.truncate(value_bytes.max(1));
        bytes += (key.len() + value.len()) as u64;
        kvs.push((Bytes::from(key), Bytes::from(value)));
    }
    DataSet { kvs, bytes }
}

async fn timed<T, E: std::fmt::Display>(fut: impl std::future::Future<Output = Result<T, E>>) -> Result<T, String> {
    match tokio::time::timeout(OP_TIMEOUT, fut).await {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err(format!("no answer within {OP_TIMEOUT:?}")),
    }
}

/// A fresh source and target etcd for one run, the source loaded with the data set.
struct Pair {
    src: Etcd,
    dst: Etcd,
    src_ch: Channel,
    dst_ch: Channel,
}

async fn fresh_pair(data: &DataSet, dir: &Path, tag: &str) -> Pair {
    let src = Etcd::start("source", dir);
    let dst = Etcd::start("target", dir);
    let src_ch = connect_ready("source etcd", &src.endpoint).await;
    let dst_ch = connect_ready("target etcd", &dst.endpoint).await;
    let loaded = load_source(&src_ch, data).await;
    eprintln!("  {tag}: source loaded in {:.1}s", loaded.as_secs_f64());
    Pair {
        src,
        dst,
        src_ch,
        dst_ch,
    }
}

/// Writes the data set into `ch` directly: Txns of 128 puts, 8 in flight.
async fn load_source(ch: &Channel, data: &DataSet) -> Duration {
    let t0 = Instant::now();
    common::send_txns(ch, common::put_txns(&data.kvs, LOAD_TXN_OPS), LOAD_IN_FLIGHT)
        .await
        .unwrap_or_else(|e| panic!("loading the source failed: {e}"));
    t0.elapsed()
}

async fn count_prefix(ch: &Channel, prefix: &str) -> Result<i64, String> {
    let r = timed(KvClient::new(ch.clone()).range(RangeRequest {
        key: Bytes::from(prefix.to_string()),
        range_end: prefix_end(prefix.as_bytes()),
        count_only: true,
        ..Default::default()
    }))
    .await?;
    Ok(r.into_inner().count)
}

/// Keys of the data set only (cutover keeps its own records under `/registry/\0cutover/`).
async fn count_tenant(ch: &Channel) -> Result<i64, String> {
    let all = count_prefix(ch, TENANT).await?;
    let reserved = count_prefix(ch, "/registry/\0").await?;
    Ok(all - reserved)
}

// ---------------------------------------------------------------------------------------
// The write load (cutover method)

#[derive(Clone, Copy)]
struct WriteRec {
    issued: Instant,
    done: Instant,
    ok: bool,
    /// The replica the writer is bound to.
    replica: usize,
}

#[derive(Default)]
struct LoadOut {
    recs: Vec<WriteRec>,
    errors: Vec<(Instant, String)>,
}

async fn kube_write(kv: &mut KvClient<Channel>, key: &Bytes, value: &Bytes) -> Result<(), String> {
    let got = timed(kv.range(RangeRequest {
        key: key.clone(),
        ..Default::default()
    }))
    .await
    .map_err(|e| format!("get {}: {e}", String::from_utf8_lossy(key)))?
    .into_inner();
    let rev = got.kvs.first().map_or(0, |kv| kv.mod_revision);
    let req = TxnRequest {
        compare: vec![Compare {
            result: CompareResult::Equal as i32,
            target: CompareTarget::Mod as i32,
            key: key.clone(),
            target_union: Some(TargetUnion::ModRevision(rev)),
            ..Default::default()
        }],
        success: vec![RequestOp {
            request: Some(Op1::RequestPut(PutRequest {
                key: key.clone(),
                value: value.clone(),
                ..Default::default()
            })),
        }],
        failure: vec![RequestOp {
            request: Some(Op1::RequestRange(RangeRequest {
                key: key.clone(),
                ..Default::default()
            })),
        }],
    };
    let r = timed(kv.txn(req))
        .await
        .map_err(|e| format!("txn {}: {e}", String::from_utf8_lossy(key)))?
        .into_inner();
    if r.succeeded {
        Ok(())
    } else {
        Err(format!(
            "txn {} at mod_revision {rev} did not succeed (conflict; nobody else writes this key)",
            String::from_utf8_lossy(key)
        ))
    }
}

/// One writer: a write every `period`, starting at `first`, until told to stop, through
/// `ch` (replica `replica`).
#[allow(clippy::too_many_arguments)]
async fn writer(
    ch: Channel,
    replica: usize,
    w: usize,
    kube: usize,
    period: Option<Duration>,
    first: tokio::time::Instant,
    mut stop: watch::Receiver<bool>,
) -> LoadOut {
    let mut kv = KvClient::new(ch);
    let mut out = LoadOut::default();
    let kube = w < kube;
    let keys: Vec<Bytes> = (0..KEYS_PER_WRITER)
        .map(|j| {
            Bytes::from(if kube {
                format!("{TENANT}leases/kube-node-lease/bench-node-{w}-{j}")
            } else {
                format!("{TENANT}events/bench/ev-{w}-{j}")
            })
        })
        .collect();
    let mut tick = period.map(|p| {
        let mut t = tokio::time::interval_at(first, p);
        t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        t
    });
    let mut n = 0usize;
    loop {
        if let Some(tick) = tick.as_mut() {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.changed() => return out,
            }
        }
        if *stop.borrow() {
            return out;
        }
        let key = &keys[n % keys.len()];
        n += 1;
        let value = Bytes::from(format!("{{\"writer\":{w},\"n\":{n}}}"));
        let issued = Instant::now();
        let r = if kube {
            kube_write(&mut kv, key, &value).await
        } else {
            timed(kv.put(PutRequest {
                key: key.clone(),
                value,
                ..Default::default()
            }))
            .await
            .map(drop)
            .map_err(|e| format!("put {}: {e}", String::from_utf8_lossy(key)))
        };
        let done = Instant::now();
        out.recs.push(WriteRec {
            issued,
            done,
            ok: r.is_ok(),
            replica,
        });
        if let Err(e) = r {
            out.errors.push((done, format!("via replica {replica}: {e}")));
        }
    }
}

struct Load {
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<LoadOut>>,
}

impl Load {
    /// `rate` writes/s in all; writer `w` writes through `replicas[w % replicas.len()]`.
    fn start(replicas: &[Channel], rate: f64, writers: usize) -> Load {
        let (stop, rx) = watch::channel(false);
        let period = (rate > 0.0).then(|| Duration::from_secs_f64(writers as f64 / rate));
        let start = tokio::time::Instant::now() + Duration::from_millis(20);
        let kube = kube_writers(writers);
        let tasks = (0..writers)
            .map(|w| {
                let first = start + period.map_or(Duration::ZERO, |p| p.mul_f64(w as f64 / writers as f64));
                let i = w % replicas.len();
                tokio::spawn(writer(replicas[i].clone(), i, w, kube, period, first, rx.clone()))
            })
            .collect();
        Load { stop, tasks }
    }

    async fn finish(self) -> LoadOut {
        let _ = self.stop.send(true);
        let mut all = LoadOut::default();
        for t in self.tasks {
            let out = t.await.expect("a writer panicked");
            all.recs.extend(out.recs);
            all.errors.extend(out.errors);
        }
        all.recs.sort_by_key(|r| r.done);
        all.errors.sort_by_key(|e| e.0);
        all
    }
}

// ---------------------------------------------------------------------------------------
// Results

#[derive(Default, Clone)]
struct RunResult {
    /// The whole migration (cutover: startedUnixMs to finishedUnixMs; kamaji: freeze to
    /// the last put; make-mirror: start to the last key on the target).
    total_s: f64,
    /// The copy alone (cutover: the Copying phase; the others: their total).
    copy_s: f64,
    keys: u64,
    bytes: u64,
    /// Writes blocked (cutover: client-observed window; kamaji: total; make-mirror: none).
    blocked_ms: Option<f64>,
    /// cutover: the proxy's fenceMs.
    fence_ms: Option<f64>,
    /// cutover: the longest write latency overlapping the fence.
    fence_max_latency_ms: Option<f64>,
    /// cutover: from the commit marker to the last replica serving from the target (the
    /// largest `dataStoreSinceUnixMs - committedUnixMs` over the replicas); none if a
    /// replica's value is unknown.
    commit_to_last_ms: Option<f64>,
    errors: u64,
    writes: u64,
    failed: Option<String>,
    /// Lines for the detail section.
    details: Vec<String>,
}

impl RunResult {
    fn failure(msg: String) -> RunResult {
        RunResult {
            failed: Some(msg),
            ..Default::default()
        }
    }

    fn keys_per_s(&self) -> f64 {
        self.keys as f64 / self.copy_s.max(1e-9)
    }

    fn mib_per_s(&self) -> f64 {
        self.bytes as f64 / MIB / self.copy_s.max(1e-9)
    }
}

fn median(v: &[f64]) -> f64 {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if s.is_empty() {
        return f64::NAN;
    }
    if s.len() % 2 == 1 {
        s[s.len() / 2]
    } else {
        (s[s.len() / 2 - 1] + s[s.len() / 2]) / 2.0
    }
}

fn max_of(v: &[f64]) -> f64 {
    v.iter().copied().filter(|x| x.is_finite()).fold(f64::NAN, f64::max)
}

/// Maps the proxy's unix-millisecond timestamps onto this program's monotonic clock.
#[derive(Clone, Copy)]
struct Clock {
    unix_ms: f64,
    at: Instant,
}

impl Clock {
    fn now() -> Clock {
        let unix_ms = SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs_f64() * 1000.0;
        Clock {
            unix_ms,
            at: Instant::now(),
        }
    }

    fn instant(&self, unix_ms: f64) -> Instant {
        let d = unix_ms - self.unix_ms;
        if d >= 0.0 {
            self.at + Duration::from_secs_f64(d / 1000.0)
        } else {
            self.at - Duration::from_secs_f64(-d / 1000.0)
        }
    }
}

fn secs_between(a: Instant, b: Instant) -> f64 {
    if b >= a {
        b.duration_since(a).as_secs_f64()
    } else {
        -a.duration_since(b).as_secs_f64()
    }
}

fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for d in chars.by_ref() {
                    if d.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// `seconds=` of the proxy's "copy done" log line.
fn copy_seconds_from_log(log: &Path) -> Option<f64> {
    let text = strip_ansi(&std::fs::read_to_string(log).ok()?);
    let line = text.lines().rev().find(|l| l.contains("copy done"))?;
    line.split_whitespace()
        .find_map(|t| t.strip_prefix("seconds="))
        .and_then(|v| v.trim_matches(|c: char| c == ',' || c == '"').parse().ok())
}

// ---------------------------------------------------------------------------------------
// Method 1: cutover

struct CutoverProc {
    proc: Proc,
    endpoint: String,
    admin: String,
}

/// Replica `i`: the same config as every other replica but for its ports.
fn start_cutover(
    i: usize,
    dir: &Path,
    src: &Etcd,
    dst: &Etcd,
    extra_yaml: &str,
    log_level: &str,
    gateway: Option<&gateway::GatewayTls>,
) -> CutoverProc {
    let port = free_port();
    let admin_port = free_port();
    // One token file per replica: rewriting a shared one while another replica starts
    // and reads it can show that replica an empty file.
    let token = dir.join(format!("admin-token-{i}"));
    std::fs::write(&token, ADMIN_TOKEN).expect("write the admin token");
    let config = dir.join(format!("cutover-{i}.yaml"));
    // A sidecar for the tenant, or a gateway serving it (the catalog is in the source).
    let mode = match gateway {
        None => format!("prefix: {TENANT}\n"),
        Some(tls) => format!(
            "mode: gateway\ntls:\n  certFile: {}\n  keyFile: {}\n  clientCAFile: {}\n",
            tls.server.0.display(),
            tls.server.1.display(),
            tls.ca.display()
        ),
    };
    let mut yaml = format!(
        "listen: 127.0.0.1:{port}\nadmin:\n  listen: 127.0.0.1:{admin_port}\n  tokenFile: {}\n\
         {mode}dataStore: default\ndataStores:\n  default:\n    endpoints: [\"{}\"]\n  \
         dedicated:\n    endpoints: [\"{}\"]\nlog:\n  level: \"{}\"\n",
        token.display(),
        src.endpoint,
        dst.endpoint,
        log_level
    );
    if !extra_yaml.trim().is_empty() {
        yaml.push_str(extra_yaml);
        if !yaml.ends_with('\n') {
            yaml.push('\n');
        }
    }
    std::fs::write(&config, yaml).expect("write the cutover config");
    let mut cmd = Command::new(cutover_binary());
    cmd.arg("serve").arg("--config").arg(&config).env_remove("RUST_LOG");
    CutoverProc {
        proc: Proc::spawn(
            &format!("cutover replica {i}"),
            cmd,
            dir.join(format!("cutover-{i}.log")),
            || Ok(()),
        ),
        endpoint: format!("127.0.0.1:{port}"),
        admin: format!("http://127.0.0.1:{admin_port}"),
    }
}

async fn wait_cutover_ready(p: &mut CutoverProc, http: &reqwest::Client) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        p.proc.check_alive()?;
        if let Ok(r) = http.get(format!("{}/readyz", p.admin)).send().await {
            if r.status().is_success() {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            return Err(format!(
                "cutover not ready after 30s; log tail:\n{}",
                p.proc.log_tail(40)
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn get_status(http: &reqwest::Client, admin: &str) -> Result<serde_json::Value, String> {
    let r = http
        .get(format!("{admin}/v1/status"))
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .map_err(|e| format!("GET /v1/status: {e}"))?;
    if r.status() == reqwest::StatusCode::NOT_FOUND {
        // A gateway: the tenant's view, in the shape of a sidecar's status.
        let path = format!("/v1/tenants/{}", gateway::BENCH_TENANT);
        let v: serde_json::Value = http
            .get(format!("{admin}{path}"))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .map_err(|e| format!("GET {path}: {e}"))?
            .json()
            .await
            .map_err(|e| format!("GET {path}: {e}"))?;
        return Ok(serde_json::json!({
            "migration": v["migration"],
            "dataStore": v["servingFrom"],
            "dataStoreSinceUnixMs": v["servingSinceUnixMs"],
        }));
    }
    r.json().await.map_err(|e| format!("GET /v1/status: {e}"))
}

/// How long the replicas that follow may take to serve from the target once the leader
/// reports success.
const FOLLOW_DEADLINE: Duration = Duration::from_secs(30);

/// Every replica, once the migration succeeded.
struct Follow {
    /// When the commit marker was written (Unix ms): the leader's `committedUnixMs`, or
    /// another replica's copy of it if the leader's view has none.
    committed_ms: Option<f64>,
    /// Per replica: `dataStoreSinceUnixMs` once it serves from `dedicated` (none: it did
    /// not within FOLLOW_DEADLINE, or the field is missing).
    since_ms: Vec<Option<f64>>,
    /// Per replica: the `migration.committedUnixMs` it published (when first seen on the
    /// target, then a second after the leader finished).
    their_committed_ms: Vec<Option<f64>>,
    /// Per replica, a second after the leader finished: its migration's id, phase, outcome.
    their_migration: Vec<String>,
    notes: Vec<String>,
}

impl Follow {
    /// Per replica: commit marker to serving from the target, in ms.
    fn delays(&self) -> Vec<Option<f64>> {
        self.since_ms
            .iter()
            .map(|s| Some(s.as_ref()? - self.committed_ms?))
            .collect()
    }
}

/// Polls every replica's status until each serves from `dedicated` (or FOLLOW_DEADLINE).
async fn await_replicas(http: &reqwest::Client, proxies: &mut [CutoverProc], view: &serde_json::Value) -> Follow {
    let n = proxies.len();
    let deadline = Instant::now() + FOLLOW_DEADLINE;
    let mut on = vec![false; n];
    let mut last: Vec<serde_json::Value> = vec![serde_json::Value::Null; n];
    let mut notes = Vec::new();
    loop {
        for i in 0..n {
            if on[i] {
                continue;
            }
            if let Err(e) = proxies[i].proc.check_alive() {
                notes.push(format!("replica {i}: {}", e.lines().next().unwrap_or("")));
                on[i] = true; // nothing more to wait for
                continue;
            }
            match get_status(http, &proxies[i].admin).await {
                Ok(st) => {
                    on[i] = st["dataStore"] == "dedicated";
                    last[i] = st;
                }
                Err(e) => last[i] = serde_json::Value::String(e),
            }
        }
        if on.iter().all(|&x| x) {
            break;
        }
        if Instant::now() > deadline {
            for i in (0..n).filter(|&i| !on[i]) {
                notes.push(format!(
                    "replica {i} did not serve from dedicated within {FOLLOW_DEADLINE:?}; last status: {}",
                    last[i]
                ));
            }
            break;
        }
        tokio::time::sleep(STATUS_POLL).await;
    }
    let since_ms = last
        .iter()
        .map(|st| {
            if st["dataStore"] == "dedicated" {
                st["dataStoreSinceUnixMs"].as_f64()
            } else {
                None
            }
        })
        .collect();
    let their_committed_ms: Vec<Option<f64>> = last
        .iter()
        .map(|st| {
            let m = &st["migration"];
            if m["id"] == view["id"] {
                m["committedUnixMs"].as_f64()
            } else {
                None
            }
        })
        .collect();
    let committed_ms = view["committedUnixMs"]
        .as_f64()
        .or_else(|| their_committed_ms.iter().flatten().next().copied());
    Follow {
        committed_ms,
        since_ms,
        their_committed_ms,
        their_migration: Vec::new(),
        notes,
    }
}

/// The cutover method: sidecar replicas, or (`as_gateway`) gateway replicas moving the
/// tenant among 50 idle ones.
async fn run_cutover(s: &Settings, data: &DataSet, dir: &Path, tag: &str, as_gateway: bool) -> RunResult {
    let Pair {
        src,
        dst,
        src_ch,
        dst_ch,
    } = fresh_pair(data, dir, tag).await;

    let tls = as_gateway.then(|| gateway::gateway_tls(dir));
    if as_gateway {
        gateway::write_catalog(src_ch.clone(), "default", 50).await;
    }
    let http = reqwest::Client::new();
    let mut proxies: Vec<CutoverProc> = (0..s.replicas)
        .map(|i| start_cutover(i, dir, &src, &dst, &s.cutover_yaml, &s.cutover_log, tls.as_ref()))
        .collect();
    let mut channels = Vec::new();
    for (i, p) in proxies.iter_mut().enumerate() {
        if let Err(e) = wait_cutover_ready(p, &http).await {
            return RunResult::failure(format!("replica {i}: {e}"));
        }
        let what = format!("cutover replica {i}");
        channels.push(match &tls {
            None => connect_ready(&what, &p.endpoint).await,
            Some(tls) => match gateway::connect_tls(&p.endpoint, &tls.client).await {
                Ok(c) => c,
                Err(e) => return RunResult::failure(format!("{what}: {e}")),
            },
        });
    }
    let start_path = if as_gateway {
        format!("/v1/tenants/{}/migrations", gateway::BENCH_TENANT)
    } else {
        "/v1/migrations".to_string()
    };

    // The load runs a second before, during, and a second after the migration.
    let load = Load::start(&channels, s.write_rate, s.writers);
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Replica 0 is asked, and leads.
    let clock = Clock::now();
    let posted = Instant::now();
    let resp = http
        .post(format!("{}{start_path}", proxies[0].admin))
        .bearer_auth(ADMIN_TOKEN)
        .json(&serde_json::json!({ "to": "dedicated" }))
        .send()
        .await;
    let (code, body) = match resp {
        Ok(r) => {
            let code = r.status().as_u16();
            (
                code,
                r.json::<serde_json::Value>().await.unwrap_or(serde_json::Value::Null),
            )
        }
        Err(e) => {
            let _ = load.finish().await;
            return RunResult::failure(format!("POST {start_path}: {e}"));
        }
    };
    if code != 202 {
        let _ = load.finish().await;
        return RunResult::failure(format!("POST {start_path} answered {code}: {body}"));
    }
    let id = body["id"].clone();

    // Follow it: the first time each phase was seen.
    let mut phases: Vec<(String, Instant)> = Vec::new();
    let mut last_status = serde_json::Value::Null;
    let mut poll_errors = 0;
    let view = loop {
        if let Some(e) = proxies.iter_mut().find_map(|p| p.proc.check_alive().err()) {
            let _ = load.finish().await;
            return RunResult::failure(format!("{e}\nlast status: {last_status}"));
        }
        match get_status(&http, &proxies[0].admin).await {
            Ok(st) => {
                let now = Instant::now();
                let m = &st["migration"];
                if m["id"] == id {
                    let phase = m["phase"].as_str().unwrap_or("?").to_string();
                    if phases.last().map(|p| &p.0) != Some(&phase) {
                        phases.push((phase, now));
                    }
                    if m["outcome"] != "Running" {
                        phases.push(("done".into(), now));
                        last_status = st.clone();
                        break m.clone();
                    }
                }
                last_status = st;
            }
            Err(_) => poll_errors += 1,
        }
        if posted.elapsed() > MIGRATION_DEADLINE {
            let _ = load.finish().await;
            return RunResult::failure(format!(
                "the migration did not end within {MIGRATION_DEADLINE:?}; last status: {last_status}\nproxy log tail:\n{}",
                proxies[0].proc.log_tail(40)
            ));
        }
        tokio::time::sleep(STATUS_POLL).await;
    };
    let seen_done = Instant::now();
    // Every replica, until it serves from the target (the load keeps running meanwhile).
    let follow = if view["outcome"] == "Succeeded" {
        Some(await_replicas(&http, &mut proxies, &view).await)
    } else {
        None
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let out = load.finish().await;
    // What each replica publishes of the migration, a second later.
    let mut follow = follow;
    if let Some(f) = follow.as_mut() {
        for (i, p) in proxies.iter().enumerate() {
            let st = get_status(&http, &p.admin).await.unwrap_or_default();
            let m = &st["migration"];
            f.their_committed_ms[i] = if m["id"] == view["id"] {
                m["committedUnixMs"].as_f64()
            } else {
                None
            };
            f.their_migration.push(if m.is_null() {
                "none".to_string()
            } else {
                format!("{} {} {}", m["id"], m["phase"], m["outcome"])
            });
        }
    }

    let mut r = RunResult {
        writes: out.recs.len() as u64,
        errors: out.errors.len() as u64,
        ..Default::default()
    };
    if view["outcome"] != "Succeeded" {
        r.failed = Some(format!(
            "outcome {}: status {}\nproxy log tail:\n{}",
            view["outcome"],
            serde_json::to_string_pretty(&last_status).unwrap_or_default(),
            proxies[0].proc.log_tail(40)
        ));
    }

    let started_ms = view["startedUnixMs"].as_f64();
    let finished_ms = view["finishedUnixMs"].as_f64();
    r.total_s = match (started_ms, finished_ms) {
        (Some(a), Some(b)) => (b - a) / 1000.0,
        _ => secs_between(posted, seen_done),
    };
    r.keys = view["keysCopied"].as_u64().unwrap_or(0);
    r.bytes = view["bytesCopied"].as_u64().unwrap_or(0);
    r.fence_ms = view["fenceMs"].as_f64();
    let first_seen = |names: &[&str]| phases.iter().find(|p| names.contains(&p.0.as_str())).map(|p| p.1);
    let polled_copy = match (
        first_seen(&["Copying"]).or(Some(posted)),
        first_seen(&["CatchingUp", "Fenced", "Committing", "Ready", "Failed", "done"]),
    ) {
        (Some(a), Some(b)) => Some(secs_between(a, b)),
        _ => None,
    };
    let logged_copy = copy_seconds_from_log(&proxies[0].proc.log);
    r.copy_s = logged_copy.or(polled_copy).unwrap_or(r.total_s);

    // The fence in this program's clock: it ends at the route switch, just before
    // finishedUnixMs (the lease revoke comes between).
    let fence = match (finished_ms, r.fence_ms) {
        (Some(fin), Some(f)) => {
            let end = clock.instant(fin);
            Some((end - Duration::from_secs_f64(f / 1000.0), end))
        }
        _ => None,
    };
    let margin = Duration::from_millis(50);
    let lat_ms = |w: &WriteRec| w.done.duration_since(w.issued).as_secs_f64() * 1000.0;
    // Longest gap between consecutive successful completions overlapping [from, to].
    let ok_recs: Vec<WriteRec> = out.recs.iter().filter(|w| w.ok).copied().collect();
    let max_gap = |from: Instant, to: Instant| -> Option<(f64, Instant, Instant)> {
        ok_recs
            .windows(2)
            .filter(|p| p[1].done >= from && p[0].done <= to)
            .map(|p| {
                (
                    p[1].done.duration_since(p[0].done).as_secs_f64() * 1000.0,
                    p[0].done,
                    p[1].done,
                )
            })
            .max_by(|a, b| a.0.partial_cmp(&b.0).unwrap())
    };
    let mut overlapping_fence = 0;
    if let Some((f0, f1)) = fence {
        if let Some((gap, a, b)) = max_gap(f0 - margin, f1 + margin) {
            r.blocked_ms = Some(gap);
            r.details.push(format!(
                "client-observed window: {gap:.1} ms between write completions at {:+.3}s and {:+.3}s (fence at {:+.3}s..{:+.3}s, from POST)",
                secs_between(posted, a),
                secs_between(posted, b),
                secs_between(posted, f0),
                secs_between(posted, f1)
            ));
        }
        let during: Vec<&WriteRec> = out.recs.iter().filter(|w| w.issued <= f1 && w.done >= f0).collect();
        overlapping_fence = during.len();
        r.fence_max_latency_ms = during
            .iter()
            .map(|w| lat_ms(w))
            .fold(None, |m, x| Some(m.map_or(x, |m: f64| m.max(x))));
    }

    // Context: write latency before, during the copy, the catch-up, the fence, after.
    let first = out.recs.iter().map(|w| w.issued).min().unwrap_or(posted);
    let copy_start = first_seen(&["Copying"]).unwrap_or(posted);
    let copy_end = first_seen(&["CatchingUp", "Fenced", "Committing", "Ready", "Failed", "done"]).unwrap_or(seen_done);
    let last = out.recs.iter().map(|w| w.done).max().unwrap_or(seen_done);
    let mut lines = Vec::new();
    let stats = |name: &str, v: &mut Vec<f64>| -> Option<String> {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let max = v.last().copied()?;
        Some(format!(
            "{name} n={} p50 {:.1} p99 {:.1} max {max:.1}",
            v.len(),
            percentile(v, 0.5).unwrap_or(f64::NAN),
            percentile(v, 0.99).unwrap_or(f64::NAN)
        ))
    };
    let mut before: Vec<f64> = out.recs.iter().filter(|w| w.issued < posted).map(lat_ms).collect();
    let mut copy: Vec<f64> = out
        .recs
        .iter()
        .filter(|w| w.issued >= copy_start && w.issued < copy_end)
        .map(lat_ms)
        .collect();
    // The catch-up without the fence: issued after the copy, done before the fence.
    let (f0, f1) = fence.unwrap_or((seen_done, seen_done));
    let mut catch_up: Vec<f64> = out
        .recs
        .iter()
        .filter(|w| w.issued >= copy_end && w.done < f0)
        .map(lat_ms)
        .collect();
    let mut fenced: Vec<f64> = out
        .recs
        .iter()
        .filter(|w| w.issued <= f1 && w.done >= f0)
        .map(lat_ms)
        .collect();
    let mut after: Vec<f64> = out.recs.iter().filter(|w| w.issued > f1).map(lat_ms).collect();
    for (name, v) in [
        ("before", &mut before),
        ("copy", &mut copy),
        ("catch-up (done before the fence)", &mut catch_up),
        ("overlapping the fence", &mut fenced),
        ("after the fence", &mut after),
    ] {
        lines.extend(stats(name, v));
    }
    let achieved = out.recs.len() as f64 / secs_between(first, last).max(1e-9);
    r.details.push(format!(
        "load: {} writes ({:.0}/s achieved), {} errors; latency ms (get+txn or put) {}",
        out.recs.len(),
        achieved,
        out.errors.len(),
        lines.join("; ")
    ));
    if let Some(l) = r.fence_max_latency_ms {
        r.details.push(format!(
            "writes overlapping the fence: {overlapping_fence}, longest {l:.1} ms"
        ));
    }

    // Commit marker to each replica serving from the target.
    let fmt_delay = |d: Option<f64>| d.map_or("-".to_string(), |d| format!("{d:+.0}"));
    if let Some(f) = &follow {
        let delays = f.delays();
        r.commit_to_last_ms = if delays.iter().all(Option::is_some) {
            Some(max_of(&delays.iter().flatten().copied().collect::<Vec<_>>()))
        } else {
            None
        };
        let each: Vec<String> = delays
            .iter()
            .enumerate()
            .map(|(i, d)| format!("r{i}{} {}", if i == 0 { " (leader)" } else { "" }, fmt_delay(*d)))
            .collect();
        r.details.push(format!(
            "commit marker to serving from the target, ms (dataStoreSinceUnixMs - committedUnixMs {}): {}; last replica {}",
            f.committed_ms.map_or("-".to_string(), |c| format!("{c:.0}")),
            each.join(", "),
            fmt_delay(r.commit_to_last_ms)
        ));
        let differ: Vec<String> = f
            .their_committed_ms
            .iter()
            .enumerate()
            .filter(|(_, c)| **c != f.committed_ms)
            .map(|(i, c)| {
                format!(
                    "r{i} {} (migration {})",
                    c.map_or("-".to_string(), |c| format!("{c:.0}")),
                    f.their_migration.get(i).map_or("?", String::as_str)
                )
            })
            .collect();
        if !differ.is_empty() {
            r.details.push(format!(
                "committedUnixMs published by the replicas a second after the leader finished differs from the leader's: {}",
                differ.join(", ")
            ));
        }
        r.details.extend(f.notes.iter().cloned());
        // Per replica, the writes through it from the fence to its own switch.
        if let Some((f0, _)) = fence {
            let mut per = Vec::new();
            for (i, since) in f.since_ms.iter().enumerate() {
                let Some(since) = since else { continue };
                let switched = clock.instant(*since);
                let mine: Vec<WriteRec> = out.recs.iter().filter(|w| w.replica == i).copied().collect();
                let gap = mine
                    .iter()
                    .filter(|w| w.ok)
                    .collect::<Vec<_>>()
                    .windows(2)
                    .filter(|p| p[1].done >= f0 - margin && p[0].done <= switched + margin)
                    .map(|p| p[1].done.duration_since(p[0].done).as_secs_f64() * 1000.0)
                    .fold(None, |m, x| Some(m.map_or(x, |m: f64| m.max(x))));
                let held = mine
                    .iter()
                    .filter(|w| w.issued <= switched && w.done >= f0)
                    .map(lat_ms)
                    .fold(None, |m, x| Some(m.map_or(x, |m: f64| m.max(x))));
                per.push(format!(
                    "r{i}: {} writes, {} errors, switch at {:+.3}s, longest gap {}, longest write {}",
                    mine.len(),
                    out.errors
                        .iter()
                        .filter(|e| e.1.starts_with(&format!("via replica {i}:")))
                        .count(),
                    secs_between(posted, switched),
                    gap.map_or("-".to_string(), |g| format!("{g:.1} ms")),
                    held.map_or("-".to_string(), |l| format!("{l:.1} ms"))
                ));
            }
            r.details.push(format!(
                "per replica, fence start (-50 ms) to its own switch (+50 ms): {}",
                per.join("; ")
            ));
        }
    }
    let timeline: Vec<String> = phases
        .iter()
        .map(|(p, t)| format!("{p} {:+.3}s", secs_between(posted, *t)))
        .collect();
    r.details.push(format!(
        "phases first seen (polled every 20 ms): {}",
        timeline.join(", ")
    ));
    r.details.push(format!(
        "copy: {} keys, {:.1} MiB in {:.3}s ({}); polled Copying phase {}",
        r.keys,
        r.bytes as f64 / MIB,
        r.copy_s,
        if logged_copy.is_some() {
            "from the proxy's `copy done` log line"
        } else {
            "from polling"
        },
        polled_copy.map_or("-".into(), |s| format!("{s:.3}s"))
    ));
    r.details.push(format!(
        "proxy: fenceMs {}, verifiedKeys {}, shadowReads {}, shadowMismatches {}, total {:.3}s",
        r.fence_ms.map_or("-".into(), |f| format!("{f:.1}")),
        view["verifiedKeys"],
        view["shadowReads"],
        view["shadowMismatches"],
        r.total_s
    ));
    if poll_errors > 0 {
        r.details.push(format!("{poll_errors} status polls failed"));
    }
    for (t, e) in out.errors.iter().take(10) {
        r.details
            .push(format!("client error at {:+.3}s: {e}", secs_between(posted, *t)));
    }
    // Sanity: every key of the data set is on the target.
    match count_tenant(&dst_ch).await {
        Ok(n) if n >= data.kvs.len() as i64 => {}
        Ok(n) if r.failed.is_none() => {
            r.failed = Some(format!(
                "the target holds {n} tenant keys, expected at least {}",
                data.kvs.len()
            ))
        }
        Err(e) if r.failed.is_none() => r.failed = Some(format!("counting the target: {e}")),
        _ => {}
    }
    if r.keys != data.kvs.len() as u64 && r.failed.is_none() {
        r.details.push(format!(
            "note: keysCopied {} != data set {} (the load's own keys are copied too)",
            r.keys,
            data.kvs.len()
        ));
    }
    drop(channels);
    drop(proxies);
    drop(src);
    drop(dst);
    r
}

// ---------------------------------------------------------------------------------------
// Method 2: Kamaji's stop-the-world copy

async fn run_kamaji(s: &Settings, data: &DataSet, dir: &Path, tag: &str) -> RunResult {
    let Pair {
        src,
        dst,
        src_ch,
        dst_ch,
    } = fresh_pair(data, dir, tag).await;

    // The freeze: from here on the tenant's writes are refused.
    let t0 = Instant::now();
    let mut kv = KvClient::new(src_ch.clone()).max_decoding_message_size(usize::MAX);
    let resp = match tokio::time::timeout(
        Duration::from_secs(300),
        kv.range(RangeRequest {
            key: Bytes::from_static(TENANT.as_bytes()),
            range_end: prefix_end(TENANT.as_bytes()),
            ..Default::default()
        }),
    )
    .await
    {
        Ok(Ok(r)) => r.into_inner(),
        Ok(Err(e)) => return RunResult::failure(format!("the prefix Get failed: {e}")),
        Err(_) => return RunResult::failure("the prefix Get took more than 300s".into()),
    };
    let got = t0.elapsed();
    let kvs = resp.kvs;
    let n = kvs.len() as u64;
    let bytes: u64 = kvs.iter().map(|kv| (kv.key.len() + kv.value.len()) as u64).sum();
    let put = |kv: cutover::proto::mvccpb::KeyValue| {
        let mut c = KvClient::new(dst_ch.clone());
        async move {
            timed(c.put(PutRequest {
                key: kv.key,
                value: kv.value,
                ..Default::default()
            }))
            .await
            .map(drop)
        }
    };
    let result = if s.kamaji_concurrency <= 1 {
        let mut r = Ok(());
        for kv in kvs {
            if let Err(e) = put(kv).await {
                r = Err(e);
                break;
            }
        }
        r
    } else {
        futures::stream::iter(kvs)
            .map(put)
            .buffer_unordered(s.kamaji_concurrency)
            .try_collect::<Vec<()>>()
            .await
            .map(drop)
    };
    let total = t0.elapsed();
    let mut r = RunResult {
        total_s: total.as_secs_f64(),
        copy_s: total.as_secs_f64(),
        keys: n,
        bytes,
        blocked_ms: Some(total.as_secs_f64() * 1000.0),
        ..Default::default()
    };
    if let Err(e) = result {
        r.failed = Some(format!("a Put to the target failed: {e}"));
    }
    r.details.push(format!(
        "prefix Get of {n} keys ({:.1} MiB) {:.3}s, {} Puts ({}) {:.3}s",
        bytes as f64 / MIB,
        got.as_secs_f64(),
        n,
        if s.kamaji_concurrency <= 1 {
            "sequential".to_string()
        } else {
            format!("{} in flight", s.kamaji_concurrency)
        },
        (total - got).as_secs_f64()
    ));
    match count_tenant(&dst_ch).await {
        Ok(c) if c == data.kvs.len() as i64 => {}
        Ok(c) if r.failed.is_none() => {
            r.failed = Some(format!("the target holds {c} keys, expected {}", data.kvs.len()))
        }
        Err(e) if r.failed.is_none() => r.failed = Some(format!("counting the target: {e}")),
        _ => {}
    }
    drop(src);
    drop(dst);
    r
}

// ---------------------------------------------------------------------------------------
// Method 3: etcdctl make-mirror

async fn run_mirror(data: &DataSet, dir: &Path, tag: &str) -> RunResult {
    let Pair {
        src,
        dst,
        src_ch: _,
        dst_ch,
    } = fresh_pair(data, dir, tag).await;

    let want = data.kvs.len() as i64;
    let t0 = Instant::now();
    let mut cmd = Command::new(etcdctl_bin());
    cmd.env("ETCDCTL_API", "3").args([
        format!("--endpoints=http://{}", src.endpoint),
        "make-mirror".into(),
        format!("--prefix={TENANT}"),
        format!("--dest-prefix={TENANT}"),
        format!("http://{}", dst.endpoint),
    ]);
    let mut mirror = Proc::spawn("etcdctl make-mirror", cmd, dir.join("make-mirror.log"), || Ok(()));
    let mut polls = 0u64;
    let result = loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        polls += 1;
        match count_prefix(&dst_ch, TENANT).await {
            Ok(n) if n >= want => break Ok(()),
            Ok(_) => {}
            Err(e) => break Err(format!("counting the target: {e}")),
        }
        if let Err(e) = mirror.check_alive() {
            break Err(e);
        }
        if t0.elapsed() > MIRROR_DEADLINE {
            break Err(format!("the target was not in sync after {MIRROR_DEADLINE:?}"));
        }
    };
    let total = t0.elapsed();
    let log = mirror.log_tail(5);
    drop(mirror);
    let mut r = RunResult {
        total_s: total.as_secs_f64(),
        copy_s: total.as_secs_f64(),
        keys: want as u64,
        bytes: data.bytes,
        ..Default::default()
    };
    r.details.push(format!(
        "in sync after {:.3}s ({polls} count polls every 100 ms; resolution 100 ms); make-mirror output: {}",
        total.as_secs_f64(),
        if log.trim().is_empty() {
            "(none)".to_string()
        } else {
            log.replace('\n', " | ")
        }
    ));
    if let Err(e) = result {
        r.failed = Some(e);
    }
    drop(src);
    drop(dst);
    r
}

// ---------------------------------------------------------------------------------------
// Report

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
        .filter(|(k, _)| k.starts_with("BENCH_") || ["CUTOVER_BIN", "ETCD_BIN", "ETCDCTL_BIN"].contains(&k.as_str()))
        .map(|(k, v)| format!("{k}={v:?}"))
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
            let parent = parent
                .split_once("cargo")
                .map_or(parent.clone(), |(_, r)| format!("cargo{r}"));
            format!("{env}{parent}")
        }
        _ => format!("{env}{me}"),
    }
}

fn version(bin: &str, args: &[&str]) -> String {
    Command::new(bin)
        .args(args)
        .env("ETCD_UNSUPPORTED_ARCH", "")
        .env("ETCDCTL_API", "3")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().next().map(str::to_string))
        .unwrap_or_else(|| "version unknown".into())
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn pass(ok: bool) -> &'static str {
    if ok {
        "PASS"
    } else {
        "MISS"
    }
}

fn fmt_ms(v: f64) -> String {
    if v.is_finite() {
        if v >= 10_000.0 {
            format!("{:.1}s", v / 1000.0)
        } else {
            format!("{v:.1}ms")
        }
    } else {
        "-".into()
    }
}

/// The rows of one (method, size) over its repetitions.
struct Agg {
    n: usize,
    failed: usize,
    total_s: f64,
    keys_s: f64,
    mib_s: f64,
    blocked_med: f64,
    blocked_max: f64,
    fence_med: f64,
    fence_max: f64,
    fence_lat_max: f64,
    last_med: f64,
    last_max: f64,
    errors: u64,
    writes: u64,
}

fn aggregate(runs: &[RunResult]) -> Agg {
    let ok: Vec<&RunResult> = runs.iter().filter(|r| r.failed.is_none()).collect();
    let col = |f: &dyn Fn(&RunResult) -> Option<f64>| -> Vec<f64> { ok.iter().filter_map(|r| f(r)).collect() };
    Agg {
        n: runs.len(),
        failed: runs.len() - ok.len(),
        total_s: median(&col(&|r| Some(r.total_s))),
        keys_s: median(&col(&|r| Some(r.keys_per_s()))),
        mib_s: median(&col(&|r| Some(r.mib_per_s()))),
        blocked_med: median(&col(&|r| r.blocked_ms)),
        blocked_max: max_of(&col(&|r| r.blocked_ms)),
        fence_med: median(&col(&|r| r.fence_ms)),
        fence_max: max_of(&col(&|r| r.fence_ms)),
        fence_lat_max: max_of(&col(&|r| r.fence_max_latency_ms)),
        last_med: median(&col(&|r| r.commit_to_last_ms)),
        last_max: max_of(&col(&|r| r.commit_to_last_ms)),
        errors: runs.iter().map(|r| r.errors).sum(),
        writes: runs.iter().map(|r| r.writes).sum(),
    }
}

fn main() {
    let began = Instant::now();
    let s = Settings::from_env();
    let command = invocation();
    let cutover_bin = cutover_binary();
    let root = tempfile::Builder::new()
        .prefix("cutover-migration-bench-")
        .tempdir()
        .expect("temp dir");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(std::thread::available_parallelism().map_or(2, |n| n.get()))
        .enable_all()
        .build()
        .expect("tokio runtime");

    println!("cutover migration bench");
    println!("command: {command}");
    println!(
        "etcd: {}; etcdctl: {}",
        version(&etcd_bin(), &["--version"]),
        version(&etcdctl_bin(), &["version"])
    );
    println!("cutover: {}", cutover_bin.display());
    println!(
        "settings: keys {:?}, {} B values, {} repetition(s), methods {}, cutover {} replica(s), load {} writes/s ({} writers spread over the replicas, {} kube-style get+txn, {} plain put), {} CPUs",
        s.sizes,
        s.value_bytes,
        s.reps,
        s.methods.iter().map(|&m| s.method_name(m)).collect::<Vec<_>>().join(","),
        s.replicas,
        s.write_rate,
        s.writers,
        kube_writers(s.writers),
        s.writers - kube_writers(s.writers),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    if !s.cutover_yaml.trim().is_empty() {
        println!("extra cutover config: {:?}", s.cutover_yaml);
    }
    println!("load average at start: {}", loadavg());
    println!();

    let mut results: BTreeMap<(usize, Method), Vec<RunResult>> = BTreeMap::new();
    let mut run_no = 0;
    for &size in &s.sizes {
        let data = dataset(size, s.value_bytes);
        eprintln!(
            "data set: {size} keys, {:.1} MiB (keys + values)",
            data.bytes as f64 / MIB
        );
        for rep in 0..s.reps {
            for &m in &s.methods {
                run_no += 1;
                let tag = format!("{} {size} keys rep {}", s.method_name(m), rep + 1);
                let dir = root.path().join(format!("run-{run_no}"));
                std::fs::create_dir_all(&dir).expect("run dir");
                let r = runtime.block_on(async {
                    match m {
                        Method::Cutover => run_cutover(&s, &data, &dir, &tag, false).await,
                        Method::Gateway => run_cutover(&s, &data, &dir, &tag, true).await,
                        Method::Kamaji => run_kamaji(&s, &data, &dir, &tag).await,
                        Method::MakeMirror => run_mirror(&data, &dir, &tag).await,
                    }
                });
                eprintln!(
                    "  {tag}: {} total {:.2}s, {:.0} keys/s{} ({:.0}s so far)",
                    if r.failed.is_some() { "FAILED," } else { "done," },
                    r.total_s,
                    r.keys_per_s(),
                    r.blocked_ms
                        .map_or(String::new(), |b| format!(", writes blocked {}", fmt_ms(b))),
                    began.elapsed().as_secs_f64()
                );
                if let Some(keep) = &s.log_dir {
                    let to = keep.join(format!("run-{run_no}-{}-{size}", s.method_name(m)));
                    let _ = std::fs::create_dir_all(&to);
                    for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                        if e.path().extension().is_some_and(|x| x == "log") {
                            let _ = std::fs::copy(e.path(), to.join(e.file_name()));
                        }
                    }
                }
                // The members of this run are gone; free their disk.
                let _ = std::fs::remove_dir_all(&dir);
                results.entry((size, m)).or_default().push(r);
            }
        }
    }

    // --- the table
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<12} {:>7} {:>2} | {:>9} {:>10} {:>8} | {:>14} {:>14} | {:>10} {:>10} {:>10} | {:>17} {:>17} | {:>9}",
        "method",
        "keys",
        "n",
        "total",
        "copy k/s",
        "MiB/s",
        "blocked (med)",
        "blocked (max)",
        "fence med",
        "fence max",
        "fence lat",
        "commit->last med",
        "commit->last max",
        "errors"
    );
    let _ = writeln!(out, "{}", "-".repeat(175));
    for &size in &s.sizes {
        for &m in &s.methods {
            let Some(runs) = results.get(&(size, m)) else { continue };
            let a = aggregate(runs);
            let (bmed, bmax) = match m {
                Method::MakeMirror => ("n/a".to_string(), "n/a".to_string()),
                _ => (fmt_ms(a.blocked_med), fmt_ms(a.blocked_max)),
            };
            let (fmed, fmax, flat, lmed, lmax) = match m {
                Method::Cutover | Method::Gateway => (
                    fmt_ms(a.fence_med),
                    fmt_ms(a.fence_max),
                    fmt_ms(a.fence_lat_max),
                    fmt_ms(a.last_med),
                    fmt_ms(a.last_max),
                ),
                _ => ("-".into(), "-".into(), "-".into(), "-".into(), "-".into()),
            };
            let errors = match m {
                Method::Cutover | Method::Gateway => format!("{}/{}", a.errors, a.writes),
                _ => "-".into(),
            };
            let failed = if a.failed > 0 {
                format!("  ({} FAILED)", a.failed)
            } else {
                String::new()
            };
            let _ = writeln!(
                out,
                "{:<12} {:>7} {:>2} | {:>8.2}s {:>10.0} {:>8.2} | {:>14} {:>14} | {:>10} {:>10} {:>10} | {:>17} {:>17} | {:>9}{failed}",
                s.method_name(m),
                size,
                a.n,
                a.total_s,
                a.keys_s,
                a.mib_s,
                bmed,
                bmax,
                fmed,
                fmax,
                flat,
                lmed,
                lmax,
                errors
            );
        }
    }
    let _ = writeln!(
        out,
        "total = whole migration (cutover: startedUnixMs..finishedUnixMs; kamaji: freeze..last put; make-mirror: start..target in sync)\n\
         copy k/s, MiB/s = keys and key+value bytes copied over the copy time (cutover: its Copying phase; baselines: their total)\n\
         blocked = writes blocked: cutover the client-observed window (longest gap between write completions overlapping the fence),\n  \
         kamaji the whole stop-the-world copy (a lower bound: the control plane restart is not counted); make-mirror blocks nothing but gives no cutover\n\
         fence = cutover's fenceMs (proxy-reported, leading replica); fence lat = the longest write (get+txn or put) overlapping the fence (max over reps)\n\
         commit->last = cutover: commit marker to the last of its {} replica(s) serving from the target (max over the replicas of\n  \
         dataStoreSinceUnixMs - the leader's committedUnixMs), median and max over reps\n\
         errors = client errors / writes of the load through the proxies",
        s.replicas
    );
    print!("{out}");

    // --- details
    println!();
    println!("details:");
    for &size in &s.sizes {
        for &m in &s.methods {
            let Some(runs) = results.get(&(size, m)) else { continue };
            for (i, r) in runs.iter().enumerate() {
                println!("  {} {size} keys, rep {}:", s.method_name(m), i + 1);
                for d in &r.details {
                    println!("    {d}");
                }
                if let Some(f) = &r.failed {
                    println!("    FAILED: {}", f.replace('\n', "\n      "));
                }
            }
        }
    }

    // --- ratios and targets
    println!();
    println!("ratios (medians):");
    let mut misses = Vec::new();
    let mut fences: Vec<(usize, f64, f64)> = Vec::new();
    for &size in &s.sizes {
        let get = |m: Method| results.get(&(size, m)).map(|r| aggregate(r)).filter(|a| a.failed < a.n);
        let Some(c) = get(Method::Cutover) else { continue };
        for m in [Method::Kamaji, Method::MakeMirror] {
            if let Some(b) = get(m) {
                let x = c.keys_s / b.keys_s;
                let ok = x >= 5.0;
                if !ok {
                    misses.push(format!("copy vs {} at {size}", s.method_name(m)));
                }
                println!(
                    "  {size:>7} keys: cutover copy {:.0} keys/s vs {} {:.0} keys/s = {:.1}x (total time {:.2}s vs {:.2}s = {:.1}x)  target >= 5x: {}",
                    c.keys_s,
                    s.method_name(m),
                    b.keys_s,
                    x,
                    c.total_s,
                    b.total_s,
                    b.total_s / c.total_s,
                    pass(ok)
                );
            }
        }
        if let Some(k) = get(Method::Kamaji) {
            println!(
                "  {size:>7} keys: stop-the-world window {} vs cutover's client-observed window {} = {:.0}x shorter (proxy fenceMs {} = {:.0}x)",
                fmt_ms(k.blocked_med),
                fmt_ms(c.blocked_med),
                k.blocked_med / c.blocked_med,
                fmt_ms(c.fence_med),
                k.blocked_med / c.fence_med
            );
        }
        let worst = c.blocked_max.max(c.fence_max);
        let ok = worst <= 100.0;
        if !ok {
            misses.push(format!("fence window at {size}"));
        }
        println!(
            "  {size:>7} keys: fence window: proxy fenceMs max {}, client-observed max {}  target <= 100 ms: {}",
            fmt_ms(c.fence_max),
            fmt_ms(c.blocked_max),
            pass(ok)
        );
        println!(
            "  {size:>7} keys: commit marker to the last of {} replica(s) serving from the target: median {}, max {} (no target)",
            s.replicas,
            fmt_ms(c.last_med),
            fmt_ms(c.last_max)
        );
        let ok = c.errors == 0;
        if !ok {
            misses.push(format!("client errors at {size}"));
        }
        println!(
            "  {size:>7} keys: client errors in hold mode {} of {} writes  target 0: {}",
            c.errors,
            c.writes,
            pass(ok)
        );
        fences.push((size, c.fence_med, c.blocked_med));
    }
    if fences.len() >= 2 {
        let (small, large) = (fences.first().unwrap(), fences.last().unwrap());
        // "Independent": the largest set's window is within 2x (or 25 ms) of the smallest's.
        let indep = |a: f64, b: f64| b <= 2.0 * a || b - a <= 25.0;
        let ok = indep(small.1, large.1) && indep(small.2, large.2);
        if !ok {
            misses.push("fence independent of key count".into());
        }
        println!(
            "  fence vs key count: {} keys {} (client {}), {} keys {} (client {}); independent = within 2x or 25 ms: {}",
            small.0,
            fmt_ms(small.1),
            fmt_ms(small.2),
            large.0,
            fmt_ms(large.1),
            fmt_ms(large.2),
            pass(ok)
        );
    }
    let failures: usize = results.values().flatten().filter(|r| r.failed.is_some()).count();
    if failures > 0 {
        misses.push(format!("{failures} run(s) failed"));
    }
    println!();
    if misses.is_empty() {
        println!("all targets met");
    } else {
        println!("targets missed: {}", misses.join("; "));
    }
    println!("load average at end: {}", loadavg());
    println!("total time {:.1}s", began.elapsed().as_secs_f64());
    drop(runtime);
    drop(root);
}
