//! What a migrated tenant costs every replica for as long as it lives: the key map K of
//! the revision translation, in memory and in the target, the time a replica takes to
//! load it, and what it adds to a large read.
//!
//!     cargo bench --bench keymap
//!     BENCH_KEYS=100000 cargo bench --bench keymap      # a quick run
//!
//! For each size N of `BENCH_KEYS` (default `100000,1000000`): a fresh etcd source and
//! target (`ETCD_BIN`, default `etcd`, each on its own loopback ports and temp dir) and two
//! cutover replicas (the release binary, one config but for the ports: tenant
//! `/registry/`, `migration.pruneInterval: 0s` so that nothing changes K while it is
//! measured). N kube-style keys (`/registry/<resource>/ns-<n>/<name>`, values of
//! `BENCH_VALUE_BYTES`, default 50) are written straight into the source, in Txns of 128
//! puts, 8 in flight. Then:
//!
//! 1. before: each replica's RSS, and the p50 of `BENCH_RANGES` (200) linearizable Ranges
//!    of 500 keys (each over 500 keys in a row from a random key of the data set) through
//!    replica 0, one at a time; the same Ranges straight to the source for reference;
//! 2. the migration, started on replica 0 (`POST /v1/migrations`); once it succeeded and
//!    replica 1 serves from the target too: each replica's RSS at once ("commit") and
//!    3 s later ("settled"); K's keys and bytes from each replica's metrics
//!    (`cutover_translation_keys`, `cutover_translation_memory_bytes`); the record's bytes
//!    on the target (the values under `/registry/\0cutover/translation/`);
//! 3. the same Ranges through replica 0 again, now translated, and straight to the target:
//!    the target is another etcd (same keys, its own history), so the slowdown is taken
//!    relative to the etcd each read goes to: (through cutover / straight) after over the
//!    same before. Each Range is sent straight and through cutover in turn;
//! 4. replica 1 restarted: the time it took to load the translation (its log's
//!    `load_ms`) and its RSS once ready and 3 s later;
//! 5. pruning: replica 1 restarted again with `pruneInterval: 2s` (it loads the whole K),
//!    every key deleted and written again through replica 0 (Txns of 64 deletes, then of
//!    64 puts, 8 in flight); the time until replica 1's K is empty, its RSS then, and the
//!    record's size on the target after its rewrite.
//!
//! It prints one table per size and PASS/MISS for the targets: at most 16 bytes of K per
//! key in memory, RSS after a migration of 1M keys under 64 MiB, a load of 1M keys under
//! 1 s, the 500-key Range at most 1.2x slower than before the migration. Nothing is
//! asserted. Every child process is killed when this program ends or panics.

#[path = "../tests/common/mod.rs"]
mod common;
use common::{bench_etcd, cutover_binary, env_parse, free_port, percentile, rss_kib, Proc};

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tonic::transport::Channel;

use cutover::proto::etcdserverpb::kv_client::KvClient;
use cutover::proto::etcdserverpb::request_op::Request as Op;
use cutover::proto::etcdserverpb::{RangeRequest, RequestOp};

const TENANT: &str = "/registry/";
const ADMIN_TOKEN: &str = "bench-admin-token";
const LOAD_TXN_OPS: usize = 128;
const REWRITE_TXN_OPS: usize = 64;
const LOAD_IN_FLIGHT: usize = 8;
const RANGE_KEYS: i64 = 500;
const MIB: f64 = 1024.0 * 1024.0;
const SETTLE: Duration = Duration::from_secs(3);

struct Etcd {
    _proc: Proc,
    endpoint: String,
}

fn start_etcd(dir: &Path, name: &str) -> Etcd {
    let bin = std::env::var("ETCD_BIN").unwrap_or_else(|_| "etcd".into());
    let port = free_port();
    let sub = dir.join(name);
    std::fs::create_dir_all(&sub).expect("etcd dir");
    Etcd {
        _proc: bench_etcd(&bin, port, &sub, || Ok(())),
        endpoint: format!("127.0.0.1:{port}"),
    }
}

struct Replica {
    proc: Proc,
    config: std::path::PathBuf,
    endpoint: String,
    admin: String,
}

fn start_replica(i: usize, dir: &Path, src: &Etcd, dst: &Etcd) -> Replica {
    let port = free_port();
    let admin_port = free_port();
    let token = dir.join(format!("admin-token-{i}"));
    std::fs::write(&token, ADMIN_TOKEN).expect("write the admin token");
    let config = dir.join(format!("cutover-{i}.yaml"));
    let yaml = format!(
        "listen: 127.0.0.1:{port}\nadmin:\n  listen: 127.0.0.1:{admin_port}\n  tokenFile: {}\n\
         prefix: {TENANT}\ndataStore: default\ndataStores:\n  default:\n    endpoints: [\"{}\"]\n  \
         dedicated:\n    endpoints: [\"{}\"]\nmigration:\n  pruneInterval: 0s\nlog:\n  format: json\n  level: info\n",
        token.display(),
        src.endpoint,
        dst.endpoint,
    );
    std::fs::write(&config, yaml).expect("write the cutover config");
    Replica {
        proc: spawn_cutover(
            &format!("cutover replica {i}"),
            &config,
            &dir.join(format!("cutover-{i}.log")),
        ),
        config,
        endpoint: format!("127.0.0.1:{port}"),
        admin: format!("http://127.0.0.1:{admin_port}"),
    }
}

fn spawn_cutover(name: &str, config: &Path, log: &Path) -> Proc {
    let mut cmd = Command::new(cutover_binary());
    cmd.arg("serve").arg("--config").arg(config).env_remove("RUST_LOG");
    Proc::spawn(name, cmd, log.to_path_buf(), || Ok(()))
}

impl Replica {
    fn rss_mib(&self) -> f64 {
        rss_kib(self.proc.pid()) as f64 / 1024.0
    }

    fn restart(&mut self, i: usize, dir: &Path) {
        let _ = self.proc.child.kill();
        let _ = self.proc.child.wait();
        let log = dir.join(format!("cutover-{i}-restarted.log"));
        self.proc = spawn_cutover(&format!("cutover replica {i} (restarted)"), &self.config, &log);
    }

    async fn wait_ready(&mut self, http: &reqwest::Client) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            if let Err(e) = self.proc.check_alive() {
                panic!("{e}");
            }
            if let Ok(r) = http.get(format!("{}/readyz", self.admin)).send().await {
                if r.status().is_success() {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "{} not ready in 120 s", self.proc.name);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn status(&self, http: &reqwest::Client) -> serde_json::Value {
        match http.get(format!("{}/v1/status", self.admin)).send().await {
            Ok(r) => r.json().await.unwrap_or_default(),
            Err(_) => serde_json::Value::Null,
        }
    }

    async fn metric(&self, http: &reqwest::Client, name: &str) -> Option<f64> {
        let text = http
            .get(format!("{}/metrics", self.admin))
            .send()
            .await
            .ok()?
            .text()
            .await
            .ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
    }

    /// `load_ms` of the last "loaded the revision translation" line of the (JSON) log.
    fn load_ms(&self) -> Option<f64> {
        let text = std::fs::read_to_string(&self.proc.log).ok()?;
        text.lines().rev().find_map(|line| {
            let v: serde_json::Value = serde_json::from_str(line).ok()?;
            let fields = &v["fields"];
            (fields["message"] == "loaded the revision translation")
                .then(|| fields["load_ms"].as_f64())
                .flatten()
        })
    }
}

/// A channel to `endpoint`, once something answers there (etcd takes a moment to start).
async fn channel(endpoint: &str) -> Channel {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match common::connect_channel(endpoint).await {
            Ok(ch) => return ch,
            Err(e) if Instant::now() > deadline => panic!("{endpoint}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

fn data_set(n: usize, value_bytes: usize) -> Vec<(Bytes, Bytes)> {
    let resources = ["pods", "configmaps", "secrets", "services", "events", "leases"];
    let value = Bytes::from(vec![b'v'; value_bytes]);
    let mut kvs: Vec<(Bytes, Bytes)> = (0..n)
        .map(|i| {
            let key = format!(
                "{TENANT}{}/ns-{:04}/object-{:08x}",
                resources[i % resources.len()],
                (i / resources.len()) % 2_000,
                (i as u64).wrapping_mul(0x9e37_79b9) & 0xffff_ffff
            );
            (Bytes::from(key), value.clone())
        })
        .collect();
    kvs.sort();
    kvs.dedup_by(|a, b| a.0 == b.0);
    kvs
}

async fn load(ch: &Channel, kvs: &[(Bytes, Bytes)], per_txn: usize) {
    common::send_txns(ch, common::put_txns(kvs, per_txn), LOAD_IN_FLIGHT)
        .await
        .unwrap_or_else(|e| panic!("writing every key: {e}"));
}

/// p50s of Ranges of 500 keys, [start, end) each, one at a time, sent to `direct` and
/// through `proxy` in turn (so both see the same moments of a noisy machine), in µs. (A
/// range of exactly those keys: with a limit over a longer range, etcd counts the whole
/// range, which would hide the proxy's part.)
async fn range_p50s(direct: &Channel, proxy: &Channel, spans: &[(Bytes, Bytes)]) -> (f64, f64) {
    let mut kvs = [KvClient::new(direct.clone()), KvClient::new(proxy.clone())];
    let mut took = [Vec::with_capacity(spans.len()), Vec::with_capacity(spans.len())];
    for (start, end) in spans {
        for (kv, took) in kvs.iter_mut().zip(&mut took) {
            let t0 = Instant::now();
            let r = kv
                .range(RangeRequest {
                    key: start.clone(),
                    range_end: end.clone(),
                    ..Default::default()
                })
                .await
                .unwrap_or_else(|e| panic!("a 500-key Range: {e}"))
                .into_inner();
            took.push(t0.elapsed().as_secs_f64() * 1e6);
            assert_eq!(r.kvs.len() as i64, RANGE_KEYS, "a Range of {RANGE_KEYS} keys");
        }
    }
    let p50 = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        percentile(v, 0.5).unwrap_or(f64::NAN)
    };
    let [d, p] = &mut took;
    (p50(d), p50(p))
}

/// Deletes every key, then writes each again, through cutover at `ch`: Txns of 64 ops (a
/// Txn through cutover travels nested in the guard Txn, and etcd counts a nested Txn's
/// ops against what its parent leaves of --max-txn-ops), 8 in flight.
async fn rewrite_all(ch: &Channel, kvs: &[(Bytes, Bytes)]) {
    use cutover::proto::etcdserverpb::DeleteRangeRequest;
    let deletes = kvs.iter().map(|(k, _)| RequestOp {
        request: Some(Op::RequestDeleteRange(DeleteRangeRequest {
            key: k.clone(),
            ..Default::default()
        })),
    });
    common::send_txns(ch, common::txns_of(deletes, REWRITE_TXN_OPS), LOAD_IN_FLIGHT)
        .await
        .unwrap_or_else(|e| panic!("deleting every key: {e}"));
    load(ch, kvs, REWRITE_TXN_OPS).await;
}

/// Bytes of the translation record on the target.
async fn record_bytes(ch: &Channel) -> usize {
    let prefix = format!("{TENANT}\0cutover/translation/");
    let mut end = prefix.clone().into_bytes();
    *end.last_mut().unwrap() += 1;
    let r = KvClient::new(ch.clone())
        .max_decoding_message_size(usize::MAX)
        .range(RangeRequest {
            key: Bytes::from(prefix),
            range_end: Bytes::from(end),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("reading the record: {e}"))
        .into_inner();
    r.kvs.iter().map(|kv| kv.value.len()).sum()
}

struct Row {
    keys: usize,
    rss_before: [f64; 2],
    rss_commit: [f64; 2],
    rss_settled: [f64; 2],
    k_keys: [f64; 2],
    k_bytes: [f64; 2],
    persisted: usize,
    migration_s: f64,
    fence_ms: f64,
    load_ms_follow: Option<f64>,
    load_ms_restart: Option<f64>,
    rss_restart: f64,
    rss_restart_settled: f64,
    /// Seconds from the start of the rewrite of every key until replica 1's K was empty.
    pruned_after_s: f64,
    rss_pruned: f64,
    rss_pruned_settled: f64,
    persisted_pruned: usize,
    /// (straight to the source, through cutover) before; (straight to the target, through
    /// cutover) after.
    range_before: (f64, f64),
    range_after: (f64, f64),
}

async fn run(n: usize, value_bytes: usize, ranges: usize, http: &reqwest::Client) -> Row {
    let dir = tempfile::tempdir().expect("temp dir");
    let src = start_etcd(dir.path(), "source");
    let dst = start_etcd(dir.path(), "target");
    let src_ch = channel(&src.endpoint).await;
    let dst_ch = channel(&dst.endpoint).await;
    let kvs = data_set(n, value_bytes);
    let t0 = Instant::now();
    load(&src_ch, &kvs, LOAD_TXN_OPS).await;
    eprintln!("  {n} keys: source loaded in {:.1} s", t0.elapsed().as_secs_f64());
    let mut replicas = [
        start_replica(0, dir.path(), &src, &dst),
        start_replica(1, dir.path(), &src, &dst),
    ];
    for r in &mut replicas {
        r.wait_ready(http).await;
    }
    let mut rng = fastrand::Rng::with_seed(7);
    let span = RANGE_KEYS as usize;
    let starts: Vec<(Bytes, Bytes)> = (0..ranges)
        .map(|_| {
            let at = rng.usize(..kvs.len() - span);
            (kvs[at].0.clone(), kvs[at + span].0.clone())
        })
        .collect();
    let via0 = channel(&replicas[0].endpoint).await;
    // Warm both paths, then measure.
    range_p50s(&src_ch, &via0, &starts[..starts.len().min(20)]).await;
    let range_before = range_p50s(&src_ch, &via0, &starts).await;
    let rss_before = [replicas[0].rss_mib(), replicas[1].rss_mib()];

    let started = Instant::now();
    let resp = http
        .post(format!("{}/v1/migrations", replicas[0].admin))
        .bearer_auth(ADMIN_TOKEN)
        .json(&serde_json::json!({"to": "dedicated"}))
        .send()
        .await
        .expect("POST /v1/migrations");
    assert_eq!(resp.status().as_u16(), 202, "{:?}", resp.text().await);
    let deadline = Instant::now() + Duration::from_secs(1800);
    let view = loop {
        let st = replicas[0].status(http).await;
        if st["migration"]["outcome"].as_str().is_some_and(|o| o != "Running") {
            break st["migration"].clone();
        }
        assert!(Instant::now() < deadline, "the migration did not end: {st}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(view["outcome"], "Succeeded", "{view}");
    loop {
        if replicas[1].status(http).await["dataStore"] == "dedicated" {
            break;
        }
        assert!(Instant::now() < deadline, "replica 1 did not follow the commit");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let migration_s = started.elapsed().as_secs_f64();
    let rss_commit = [replicas[0].rss_mib(), replicas[1].rss_mib()];
    tokio::time::sleep(SETTLE).await;
    let rss_settled = [replicas[0].rss_mib(), replicas[1].rss_mib()];
    let mut k_keys = [0.0; 2];
    let mut k_bytes = [0.0; 2];
    for (i, r) in replicas.iter().enumerate() {
        k_keys[i] = r.metric(http, "cutover_translation_keys").await.unwrap_or(f64::NAN);
        k_bytes[i] = r
            .metric(http, "cutover_translation_memory_bytes")
            .await
            .unwrap_or(f64::NAN);
    }
    let persisted = record_bytes(&dst_ch).await;
    let load_ms_follow = replicas[1].load_ms();
    range_p50s(&dst_ch, &via0, &starts[..starts.len().min(20)]).await;
    let range_after = range_p50s(&dst_ch, &via0, &starts).await;

    replicas[1].restart(1, dir.path());
    replicas[1].wait_ready(http).await;
    let rss_restart = replicas[1].rss_mib();
    tokio::time::sleep(SETTLE).await;
    let rss_restart_settled = replicas[1].rss_mib();
    let load_ms_restart = replicas[1].load_ms();

    // Every key rewritten (deleted, then written again: a new incarnation) through
    // replica 0, while replica 1, restarted to prune every 2 s, loads the whole K first.
    let yaml = std::fs::read_to_string(&replicas[1].config).expect("config");
    std::fs::write(
        &replicas[1].config,
        yaml.replace("pruneInterval: 0s", "pruneInterval: 2s"),
    )
    .expect("config");
    replicas[1].restart(1, dir.path());
    replicas[1].wait_ready(http).await;
    let rewritten = Instant::now();
    rewrite_all(&via0, &kvs).await;
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        if replicas[1].metric(http, "cutover_translation_keys").await == Some(0.0) {
            break;
        }
        assert!(Instant::now() < deadline, "K was not pruned to nothing");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let pruned_after_s = rewritten.elapsed().as_secs_f64();
    let rss_pruned = replicas[1].rss_mib();
    tokio::time::sleep(SETTLE).await;
    let rss_pruned_settled = replicas[1].rss_mib();
    let persisted_pruned = record_bytes(&dst_ch).await;
    Row {
        pruned_after_s,
        rss_pruned,
        rss_pruned_settled,
        persisted_pruned,
        keys: kvs.len(),
        rss_before,
        rss_commit,
        rss_settled,
        k_keys,
        k_bytes,
        persisted,
        migration_s,
        fence_ms: view["fenceMs"].as_f64().unwrap_or(f64::NAN),
        load_ms_follow,
        load_ms_restart,
        rss_restart,
        rss_restart_settled,
        range_before,
        range_after,
    }
}

/// In process, no servers: ns per lookup in K as it is now (fst and packed columns) and as
/// a hash map (as K was before), over random keys of the data set; and the packed form's
/// build and decode times.
fn lookups(kvs: &[(Bytes, Bytes)]) -> Lookups {
    use cutover::route::keymap::{CopiedKey, KeyMap};
    let mut rng = fastrand::Rng::with_seed(11);
    let entries: std::collections::HashMap<Bytes, CopiedKey> = kvs
        .iter()
        .enumerate()
        .map(|(i, (k, _))| {
            let sc = 2 + (i / LOAD_TXN_OPS) as i64;
            let tc = 9 + rng.i64(0..(kvs.len() / LOAD_TXN_OPS) as i64 + 1);
            let copied = CopiedKey {
                target_create: tc,
                target_mod: tc,
                target_version: 1,
                source_create: sc,
                source_mod: sc,
                source_version: 1,
            };
            (k.clone(), copied)
        })
        .collect();
    let t0 = Instant::now();
    let map = KeyMap::from_map(&entries);
    let build_ms = t0.elapsed().as_secs_f64() * 1000.0;
    let packed = map.encode_base();
    let t0 = Instant::now();
    let decoded = KeyMap::decode_base(&packed).expect("decode");
    let decode_ms = t0.elapsed().as_secs_f64() * 1000.0;
    assert_eq!(decoded.len(), map.len());
    let probes: Vec<&Bytes> = (0..200_000).map(|_| &kvs[rng.usize(..kvs.len())].0).collect();
    let t0 = Instant::now();
    let mut hits = 0usize;
    for k in &probes {
        hits += usize::from(std::hint::black_box(map.get(k)).is_some());
    }
    let fst_ns = t0.elapsed().as_secs_f64() * 1e9 / probes.len() as f64;
    let t0 = Instant::now();
    for k in &probes {
        hits += usize::from(std::hint::black_box(entries.get(*k)).is_some());
    }
    let hash_ns = t0.elapsed().as_secs_f64() * 1e9 / probes.len() as f64;
    assert_eq!(hits, 2 * probes.len());
    // As a Range's answer asks: 500 keys in a row.
    let mut sorted: Vec<&Bytes> = entries.keys().collect();
    sorted.sort();
    let windows: Vec<Vec<&[u8]>> = (0..400)
        .map(|_| {
            let at = rng.usize(..sorted.len().saturating_sub(RANGE_KEYS as usize).max(1));
            sorted[at..(at + RANGE_KEYS as usize).min(sorted.len())]
                .iter()
                .map(|k| &k[..])
                .collect()
        })
        .collect();
    let asked: usize = windows.iter().map(Vec::len).sum();
    let t0 = Instant::now();
    for w in &windows {
        std::hint::black_box(map.get_sorted(w));
    }
    let batch_ns = t0.elapsed().as_secs_f64() * 1e9 / asked as f64;
    let t0 = Instant::now();
    for w in &windows {
        for k in w {
            std::hint::black_box(map.get(k));
        }
    }
    let seq_ns = t0.elapsed().as_secs_f64() * 1e9 / asked as f64;
    eprintln!("  (K, one lookup per key of 500 in a row: {seq_ns:.0} ns)");
    let t0 = Instant::now();
    for w in &windows {
        for k in w {
            std::hint::black_box(entries.get(*k));
        }
    }
    let hash_batch_ns = t0.elapsed().as_secs_f64() * 1e9 / asked as f64;
    Lookups {
        fst_ns,
        hash_ns,
        batch_ns,
        hash_batch_ns,
        build_ms,
        decode_ms,
    }
}

struct Lookups {
    fst_ns: f64,
    hash_ns: f64,
    batch_ns: f64,
    hash_batch_ns: f64,
    build_ms: f64,
    decode_ms: f64,
}

/// How much slower a 500-key Range through cutover got with the migration, each time
/// relative to the etcd it reads (before: the source; after: the target, another etcd
/// with the same keys but its own history and layout).
fn range_slowdown(r: &Row) -> f64 {
    (r.range_after.1 / r.range_after.0) / (r.range_before.1 / r.range_before.0)
}

fn pass(ok: bool) -> &'static str {
    if ok {
        "PASS"
    } else {
        "MISS"
    }
}

fn ms(v: Option<f64>) -> String {
    v.map_or("-".into(), |v| format!("{v:.0} ms"))
}

fn main() {
    let sizes: Vec<usize> = std::env::var("BENCH_KEYS")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| "100000,1000000".into())
        .split(',')
        .map(|s| s.trim().parse().expect("BENCH_KEYS: comma-separated key counts"))
        .collect();
    let value_bytes: usize = env_parse("BENCH_VALUE_BYTES", 50);
    let ranges: usize = env_parse("BENCH_RANGES", 200);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let http = reqwest::Client::new();
    println!("keymap bench: sizes {sizes:?}, values of {value_bytes} B, {ranges} Ranges of {RANGE_KEYS} keys");
    println!("\nin process: a lookup in K (fst + packed columns) against a hash map, over random keys");
    println!(
        "| keys | K, one key | hash map, one key | ratio | K, per key of 500 in a row | hash map, same | ratio | K built from the hash map | packed form decoded |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for &n in &sizes {
        let l = lookups(&data_set(n, 0));
        println!(
            "| {n} | {:.0} ns | {:.0} ns | {:.1}x | {:.0} ns | {:.0} ns | {:.1}x | {:.0} ms | {:.0} ms |",
            l.fst_ns,
            l.hash_ns,
            l.fst_ns / l.hash_ns,
            l.batch_ns,
            l.hash_batch_ns,
            l.batch_ns / l.hash_batch_ns,
            l.build_ms,
            l.decode_ms
        );
    }
    if std::env::var_os("BENCH_IN_PROCESS_ONLY").is_some() {
        return;
    }
    let mut rows = Vec::new();
    for &n in &sizes {
        eprintln!("== {n} keys");
        let r = runtime.block_on(run(n, value_bytes, ranges, &http));
        let per_key = |b: f64| b / r.keys as f64;
        println!(
            "\n{} keys (migration {:.1} s, fence {:.1} ms)",
            r.keys, r.migration_s, r.fence_ms
        );
        println!("| | replica 0 (led the migration) | replica 1 (followed it) |");
        println!("|---|---|---|");
        println!(
            "| RSS before | {:.1} MiB | {:.1} MiB |",
            r.rss_before[0], r.rss_before[1]
        );
        println!(
            "| RSS right after the commit | {:.1} MiB | {:.1} MiB |",
            r.rss_commit[0], r.rss_commit[1]
        );
        println!(
            "| RSS {} s later | {:.1} MiB | {:.1} MiB |",
            SETTLE.as_secs(),
            r.rss_settled[0],
            r.rss_settled[1]
        );
        println!(
            "| RSS after a restart (ready / {} s later) | | {:.1} / {:.1} MiB |",
            SETTLE.as_secs(),
            r.rss_restart,
            r.rss_restart_settled
        );
        println!("| keys in K | {:.0} | {:.0} |", r.k_keys[0], r.k_keys[1]);
        println!(
            "| K in memory | {:.1} MiB, {:.1} B/key | {:.1} MiB, {:.1} B/key |",
            r.k_bytes[0] / MIB,
            per_key(r.k_bytes[0]),
            r.k_bytes[1] / MIB,
            per_key(r.k_bytes[1])
        );
        println!(
            "| K persisted in the target | {:.1} MiB, {:.1} B/key | |",
            r.persisted as f64 / MIB,
            per_key(r.persisted as f64)
        );
        println!(
            "| load of the record | | {} at the commit, {} at a restart |",
            ms(r.load_ms_follow),
            ms(r.load_ms_restart)
        );
        println!(
            "| 500-key Range p50, through cutover (straight to its datastore) | before {:.0} µs ({:.0} µs), after {:.0} µs ({:.0} µs) | |",
            r.range_before.1, r.range_before.0, r.range_after.1, r.range_after.0
        );
        println!(
            "| 500-key Range, after / before | {:.2}x through cutover; {:.2}x relative to the datastore it reads; cutover adds {:.0} µs before, {:.0} µs after | |",
            r.range_after.1 / r.range_before.1,
            range_slowdown(&r),
            r.range_before.1 - r.range_before.0,
            r.range_after.1 - r.range_after.0
        );
        println!(
            "| every key deleted and written again through replica 0 | | K empty {:.1} s after the rewrite began; RSS then {:.1} MiB, {} s later {:.1} MiB; record {:.1} KiB |",
            r.pruned_after_s,
            r.rss_pruned,
            SETTLE.as_secs(),
            r.rss_pruned_settled,
            r.persisted_pruned as f64 / 1024.0
        );
        rows.push(r);
    }
    println!("\ntargets:");
    for r in &rows {
        let worst_bytes = r.k_bytes[0].max(r.k_bytes[1]) / r.keys as f64;
        println!(
            "  {} keys: K <= 16 B/key in memory: {worst_bytes:.1} {}; Range after/before <= 1.2: {:.2} {}",
            r.keys,
            pass(worst_bytes <= 16.0),
            range_slowdown(r),
            pass(range_slowdown(r) <= 1.2)
        );
        if r.keys >= 1_000_000 {
            let rss = r.rss_settled[0].max(r.rss_settled[1]).max(r.rss_restart_settled);
            let load = r
                .load_ms_follow
                .unwrap_or(f64::NAN)
                .max(r.load_ms_restart.unwrap_or(f64::NAN));
            println!(
                "  {} keys: RSS after the migration < 64 MiB: {rss:.1} MiB {}; load < 1 s: {load:.0} ms {}",
                r.keys,
                pass(rss < 64.0),
                pass(load < 1000.0)
            );
        }
    }
}
