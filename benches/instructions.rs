//! Instructions per forwarded request, counted by callgrind: a measure of what cutover
//! spends per request that the machine's noise does not move, so that a regression shows
//! in one run.
//!
//!     cargo bench --bench instructions
//!
//! It starts a private etcd (natively), then, for each proxy (cutover, and the h2-relay
//! of `benches/support/relay.rs` as the reference: HTTP/2 terminated on both sides, no
//! gRPC or protobuf work) and each op, runs the proxy twice under
//! `valgrind --tool=callgrind`, with one tokio worker: once for `BENCH_WARMUP +
//! BENCH_REQUESTS` requests, sent one after another over one HTTP/2 connection, and once
//! for `BENCH_WARMUP` requests followed by as long with nothing sent as the other run's
//! `BENCH_REQUESTS` took. The difference of the two runs' instruction totals, divided by
//! `BENCH_REQUESTS`, is the proxy's cost of one request: start-up, connection set-up,
//! shutdown and the work a proxy does by the clock (cutover's health probes and status
//! reads) are in both runs and cancel out. The ops are those of the overhead
//! bench: `range` (linearizable, one key), `put`, `txn` (kube-style: compare mod_revision,
//! put, else range) and `rotxn` (compare mod_revision, range in both branches), and
//! `list`, a linearizable Range over 100 keys (kube's LIST of a small collection).
//!
//! Environment: `BENCH_OPS` (default `range,put,txn,rotxn,list`), `BENCH_REQUESTS` (default
//! 2000), `BENCH_WARMUP` (default 200), `BENCH_VALUE_BYTES` (default 1024), `CUTOVER_BIN`,
//! `ETCD_BIN` (default `etcd`), `BENCH_ANNOTATE=1` (also print callgrind_annotate's top
//! functions of cutover's longer run of each op), `BENCH_OUT_DIR` (keep callgrind's files
//! there, e.g. for `callgrind_annotate --tree=caller`). Needs `valgrind` on the PATH; without
//! it, the bench says so and exits.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support/relay.rs"]
mod relay;
use common::{bench_etcd, cutover_binary, env_parse, free_port, Proc};

use bytes::Bytes;
use tonic::transport::{Channel, Endpoint};

use cutover::proto::etcdserverpb::compare::{CompareResult, CompareTarget, TargetUnion};
use cutover::proto::etcdserverpb::kv_client::KvClient;
use cutover::proto::etcdserverpb::request_op::Request as Op1;
use cutover::proto::etcdserverpb::{Compare, PutRequest, RangeRequest, RequestOp, TxnRequest};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Op {
    Range,
    Put,
    Txn,
    ReadTxn,
    List,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::Range => "range",
            Op::Put => "put",
            Op::Txn => "txn",
            Op::ReadTxn => "rotxn",
            Op::List => "list",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Proxy {
    Cutover,
    H2Relay,
}

impl Proxy {
    fn name(self) -> &'static str {
        match self {
            Proxy::Cutover => "cutover",
            Proxy::H2Relay => "h2-relay",
        }
    }
}

const KEY: &[u8] = b"/registry/bench/instructions";
/// The `list` op reads this many keys under this prefix: a kube LIST of a small collection.
const LIST_KEYS: usize = 100;
const LIST_PREFIX: &str = "/registry/bench/list/";

fn main() {
    relay::run_if_asked();
    if Command::new("valgrind").arg("--version").output().is_err() {
        println!("instructions bench: valgrind is not installed (apt-get install valgrind); nothing measured");
        return;
    }
    let ops: Vec<Op> = std::env::var("BENCH_OPS")
        .unwrap_or_else(|_| "range,put,txn,rotxn,list".into())
        .split(',')
        .map(|s| match s.trim() {
            "range" => Op::Range,
            "put" => Op::Put,
            "txn" => Op::Txn,
            "rotxn" => Op::ReadTxn,
            "list" => Op::List,
            other => panic!("BENCH_OPS: unknown op {other:?} (range, put, txn, rotxn, list)"),
        })
        .collect();
    let requests: u64 = env_parse("BENCH_REQUESTS", 2000u64).max(1);
    let warmup: u64 = env_parse("BENCH_WARMUP", 200u64);
    let value = Bytes::from(vec![b'v'; env_parse("BENCH_VALUE_BYTES", 1024usize)]);
    let annotate = env_parse("BENCH_ANNOTATE", 0u8) != 0;
    let etcd_bin = std::env::var("ETCD_BIN").unwrap_or_else(|_| "etcd".into());
    let cutover_bin = cutover_binary();
    let dir = tempfile::Builder::new()
        .prefix("cutover-instructions-")
        .tempdir()
        .expect("temp dir");

    // Where callgrind's files go: kept in BENCH_OUT_DIR (for callgrind_annotate), else
    // removed with the temp dir.
    let out_dir = std::env::var_os("BENCH_OUT_DIR").map_or_else(|| dir.path().to_path_buf(), PathBuf::from);
    std::fs::create_dir_all(&out_dir).expect("BENCH_OUT_DIR");
    let etcd_port = free_port();
    let _etcd = bench_etcd(&etcd_bin, etcd_port, dir.path(), || Ok(()));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let etcd_addr = format!("127.0.0.1:{etcd_port}");
    runtime.block_on(async {
        let channel = connect(&etcd_addr, Duration::from_secs(30)).await;
        KvClient::new(channel.clone())
            .put(PutRequest {
                key: Bytes::from_static(KEY),
                value: value.clone(),
                ..Default::default()
            })
            .await
            .expect("create the key the requests use");
        for i in 0..LIST_KEYS {
            KvClient::new(channel.clone())
                .put(PutRequest {
                    key: Bytes::from(format!("{LIST_PREFIX}{i:03}")),
                    value: value.clone(),
                    ..Default::default()
                })
                .await
                .expect("create the keys the list reads");
        }
    });

    println!("cutover instructions bench");
    println!(
        "callgrind, one tokio worker per proxy; {requests} requests per count after {warmup}, one at a time over one connection"
    );
    println!("cutover: {}", cutover_bin.display());
    println!();
    let mut counts: BTreeMap<(Op, Proxy), f64> = BTreeMap::new();
    for &op in &ops {
        for proxy in [Proxy::Cutover, Proxy::H2Relay] {
            // The long run first: how long its requests took is how long the short one
            // then idles, so that work a proxy does by the clock (health probes, status
            // reads, timers) is in both counts and cancels out with the rest.
            let long = out_dir.join(format!(
                "{}-{}-{}.callgrind",
                proxy.name(),
                op.name(),
                warmup + requests
            ));
            let (long_total, took) = runtime.block_on(count(
                proxy,
                op,
                (warmup, requests),
                Duration::ZERO,
                &value,
                &etcd_addr,
                &cutover_bin,
                dir.path(),
                &long,
            ));
            if annotate && proxy == Proxy::Cutover {
                print_annotation(op, &long);
            }
            let short = out_dir.join(format!("{}-{}-{warmup}.callgrind", proxy.name(), op.name()));
            let (short_total, _) = runtime.block_on(count(
                proxy,
                op,
                (warmup, 0),
                took,
                &value,
                &etcd_addr,
                &cutover_bin,
                dir.path(),
                &short,
            ));
            let totals = [short_total, long_total];
            let per = (totals[1] as f64 - totals[0] as f64) / requests as f64;
            eprintln!("  {} {}: {:.0} instructions per request", op.name(), proxy.name(), per);
            counts.insert((op, proxy), per);
        }
    }

    println!(
        "{:<6} {:>14} {:>14} {:>16}",
        "op", "cutover", "h2-relay", "cutover/relay"
    );
    for &op in &ops {
        let c = counts[&(op, Proxy::Cutover)];
        let r = counts[&(op, Proxy::H2Relay)];
        println!("{:<6} {:>14.0} {:>14.0} {:>16.2}", op.name(), c, r, c / r);
    }
}

/// One proxy under callgrind for `warm` then `n` requests of `op`, then `idle` with
/// nothing sent: its instruction total, and how long the `n` requests took.
#[allow(clippy::too_many_arguments)]
async fn count(
    proxy: Proxy,
    op: Op,
    (warm, n): (u64, u64),
    idle: Duration,
    value: &Bytes,
    etcd_addr: &str,
    cutover_bin: &Path,
    dir: &Path,
    out: &Path,
) -> (u64, Duration) {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut cmd = Command::new("valgrind");
    cmd.arg("--tool=callgrind")
        .arg(format!("--callgrind-out-file={}", out.display()))
        .env("TOKIO_WORKER_THREADS", "1")
        .env_remove("RUST_LOG");
    match proxy {
        Proxy::Cutover => {
            let config = dir.join(format!("cutover-{port}.yaml"));
            std::fs::write(
                &config,
                format!(
                    "listen: {listen}\nadmin:\n  listen: 127.0.0.1:{}\nworkerThreads: 1\n\
                     dataStore: bench\ndataStores:\n  bench:\n    endpoints: [\"{etcd_addr}\"]\n\
                     log:\n  level: warn\n",
                    free_port()
                ),
            )
            .expect("write the cutover config");
            cmd.arg(cutover_bin).arg("serve").arg("--config").arg(&config);
        }
        Proxy::H2Relay => {
            cmd.arg(std::env::current_exe().expect("own path"))
                .env(relay::RELAY_ENV, relay::spec(true, &listen, etcd_addr));
        }
    }
    let log = dir.join(format!("{}-{}-{n}.log", proxy.name(), op.name()));
    let mut child = Proc::spawn(proxy.name(), cmd, log.clone(), || Ok(()));
    // Under valgrind a start takes seconds. A refused connect costs the proxy nothing, so
    // polling does not change its count.
    let channel = connect(&listen, Duration::from_secs(120)).await;
    let mut kv = KvClient::new(channel);
    let mut known_rev = kv
        .range(RangeRequest {
            key: Bytes::from_static(KEY),
            ..Default::default()
        })
        .await
        .expect("first range")
        .into_inner()
        .kvs
        .first()
        .map_or(0, |kv| kv.mod_revision);
    for _ in 0..warm {
        known_rev = send(&mut kv, op, value, known_rev).await;
    }
    let started = Instant::now();
    for _ in 0..n {
        known_rev = send(&mut kv, op, value, known_rev).await;
    }
    let took = started.elapsed();
    // Not a wait for anything: the idle stretch the proxy's clock-driven work is counted in.
    tokio::time::sleep(idle).await;
    // SIGTERM: both shut down and callgrind writes its counts on the way out.
    // SAFETY: kill(2) with a pid this process started and still owns.
    unsafe {
        libc::kill(child.pid() as i32, libc::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while child.exited().is_none() {
        assert!(Instant::now() < deadline, "{} did not exit after SIGTERM", proxy.name());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let total = total_instructions(out).unwrap_or_else(|| {
        panic!(
            "no instruction total in {} (log: {})",
            out.display(),
            common::log_tail(&log, 20)
        )
    });
    (total, took)
}

/// Connects and waits until a Range answers through `addr`.
async fn connect(addr: &str, within: Duration) -> Channel {
    let deadline = Instant::now() + within;
    loop {
        // A bare TCP connect first: until the proxy listens, it is refused by the kernel.
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            if let Ok(channel) = Endpoint::from_shared(format!("http://{addr}"))
                .expect("endpoint")
                .tcp_nodelay(true)
                .connect()
                .await
            {
                return channel;
            }
        }
        assert!(Instant::now() < deadline, "nothing answers at {addr}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sends one request of `op`; returns the key's mod_revision as known after it.
async fn send(kv: &mut KvClient<Channel>, op: Op, value: &Bytes, known_rev: i64) -> i64 {
    let key = Bytes::from_static(KEY);
    let compare = || Compare {
        result: CompareResult::Equal as i32,
        target: CompareTarget::Mod as i32,
        key: key.clone(),
        target_union: Some(TargetUnion::ModRevision(known_rev)),
        ..Default::default()
    };
    let range = || RequestOp {
        request: Some(Op1::RequestRange(RangeRequest {
            key: key.clone(),
            ..Default::default()
        })),
    };
    match op {
        Op::Range => {
            let r = kv
                .range(RangeRequest {
                    key,
                    ..Default::default()
                })
                .await
                .expect("range");
            assert_eq!(r.get_ref().kvs.len(), 1, "the range finds its key");
            known_rev
        }
        Op::List => {
            let r = kv
                .range(RangeRequest {
                    key: Bytes::from_static(LIST_PREFIX.as_bytes()),
                    range_end: Bytes::from_static(b"/registry/bench/list0"),
                    ..Default::default()
                })
                .await
                .expect("list");
            assert_eq!(r.get_ref().kvs.len(), LIST_KEYS, "the list finds its keys");
            known_rev
        }
        Op::Put => {
            let r = kv
                .put(PutRequest {
                    key,
                    value: value.clone(),
                    ..Default::default()
                })
                .await
                .expect("put");
            r.into_inner().header.map_or(known_rev, |h| h.revision)
        }
        Op::Txn => {
            let r = kv
                .txn(TxnRequest {
                    compare: vec![compare()],
                    success: vec![RequestOp {
                        request: Some(Op1::RequestPut(PutRequest {
                            key: key.clone(),
                            value: value.clone(),
                            ..Default::default()
                        })),
                    }],
                    failure: vec![range()],
                })
                .await
                .expect("txn")
                .into_inner();
            assert!(r.succeeded, "the txn's compare holds (nobody else writes the key)");
            r.header.map_or(known_rev, |h| h.revision)
        }
        Op::ReadTxn => {
            let r = kv
                .txn(TxnRequest {
                    compare: vec![compare()],
                    success: vec![range()],
                    failure: vec![range()],
                })
                .await
                .expect("read-only txn")
                .into_inner();
            assert!(r.succeeded, "the read-only txn's compare holds");
            known_rev
        }
    }
}

/// The instruction total callgrind wrote in `out` (its `summary:` or `totals:` line).
fn total_instructions(out: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(out).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("summary:").or_else(|| l.strip_prefix("totals:")))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

fn print_annotation(op: Op, out: &PathBuf) {
    let annotated = Command::new("callgrind_annotate")
        .arg("--inclusive=no")
        .arg(out)
        .output();
    match annotated {
        Ok(o) => {
            let text = String::from_utf8_lossy(&o.stdout);
            println!(
                "--- cutover, {}: functions by own instructions (whole run) ---",
                op.name()
            );
            for line in text.lines().skip_while(|l| !l.contains("file:function")).take(30) {
                println!("{line}");
            }
            println!();
        }
        Err(e) => println!("callgrind_annotate: {e}"),
    }
}
