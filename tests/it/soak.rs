//! The fault-schedule soak: three cutover replicas under a mixed load (put, linearizable
//! get, delete with prev_kv, kube-style Txn, prefix list, read-only Txn, prev_kv watchers,
//! a kept-alive lease per replica), migrations default -> b -> default -> c -> ... back to
//! back, and a seeded random schedule of faults: replicas SIGKILLed (and restarted) or
//! SIGSTOPped, a member of the source cluster killed, a replica cut from a datastore
//! through its own TCP relay, failpoints (errors, delays, crashes, lost answers). Every
//! operation is recorded and the whole history is checked afterwards (history.rs).
//!
//! `CUTOVER_SOAK_SEED` (a number, or `random`) and `CUTOVER_SOAK_SECS` choose one run;
//! without them CI runs a short schedule with fixed seeds. `make soak SEED=... DURATION=...`
//! runs long ones. A failure prints its seed; the same seed replays the same schedule
//! (the faults and their order; the machine's timing still varies).
//!
//! `CUTOVER_SOAK_VERBOSE=1` prints why a replica refused a migration request;
//! `CUTOVER_TEST_LOGS=<dir>` keeps every spawned process's log there (support.rs).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_client::{
    Compare, CompareOp, DeleteOptions, EventType, GetOptions, PutOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use parking_lot::Mutex;
use serde_json::json;

use crate::history::{self, Answer, Call, Event, History, KeptLease, Kv, Op, Outcome, WatchSession};
use crate::support::{client, free_port, Etcd, Forwarder, Proxy, ADMIN_TOKEN};

const PREFIX: &str = "/registry/soak/";
/// Keys the writers share (contention makes Txn compares fail, as in kube-apiserver).
const KEYS: usize = 16;
const REPLICAS: usize = 3;
/// The seeds CI runs, and for how long each.
const CI_SEEDS: &[u64] = &[0x5eed_0001, 0x5eed_0002];
const CI_SECS: u64 = 45;

fn kv_of(kv: &etcd_client::KeyValue) -> Kv {
    Kv {
        key: kv.key_str().unwrap_or_default().to_string(),
        value: kv.value_str().unwrap_or_default().to_string(),
        create: kv.create_revision(),
        modified: kv.mod_revision(),
        version: kv.version(),
        lease: kv.lease(),
    }
}

/// Whether a failed write certainly was not applied: refused before it was sent (no
/// endpoint, a stranded replica), or refused by the fence.
fn failed_for_sure(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(s) => {
            (s.code() == tonic::Code::Unavailable
                && (s.message() == "there is no connection available"
                    || s.message().starts_with("the current Control Plane is in freezing mode")))
                || s.code() == tonic::Code::PermissionDenied
        }
        _ => false,
    }
}

/// Records the operations of every client on one clock.
struct Recorder {
    base: Instant,
    ops: Mutex<Vec<Op>>,
    stop: AtomicBool,
    next_client: AtomicUsize,
}

impl Recorder {
    fn now(&self) -> u64 {
        self.base.elapsed().as_nanos() as u64
    }

    fn record(&self, client: usize, start: u64, call: Call, outcome: Outcome) {
        let end = match outcome {
            Outcome::Unknown(_) => None,
            _ => Some(self.now()),
        };
        self.ops.lock().push(Op {
            client,
            start,
            end,
            call,
            outcome,
        });
    }

    fn client_id(&self) -> usize {
        self.next_client.fetch_add(1, Ordering::SeqCst)
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::SeqCst)
    }
}

fn write_outcome(r: Result<Answer, etcd_client::Error>) -> Outcome {
    match r {
        Ok(a) => Outcome::Ok(a),
        Err(e) if failed_for_sure(&e) => Outcome::Failed(e.to_string()),
        Err(e) => Outcome::Unknown(e.to_string()),
    }
}

/// Pacing between a client's operations (the load's rate, not a wait for anything).
async fn pace(rng: &mut fastrand::Rng) {
    tokio::time::sleep(Duration::from_millis(5 + rng.u64(0..15))).await;
}

/// One client of one kind, through one replica, until the recorder stops.
async fn run_client(rec: Arc<Recorder>, endpoint: String, kind: &'static str, seed: u64) {
    let me = rec.client_id();
    let mut rng = fastrand::Rng::with_seed(seed ^ (me as u64).wrapping_mul(0x9e37_79b9));
    let mut c = client(&endpoint).await;
    let mut n = 0u64;
    while !rec.stopped() {
        n += 1;
        let key = format!("{PREFIX}k{:02}", rng.usize(0..KEYS));
        let value = format!("c{me}-{n}");
        let start = rec.now();
        match kind {
            "put" => {
                let r = c.put(key.as_str(), value.as_str(), None).await.map(|p| Answer::Write {
                    revision: p.header().map_or(0, |h| h.revision()),
                    deleted: vec![],
                    succeeded: true,
                    read: None,
                });
                rec.record(me, start, Call::Put { key, value, lease: 0 }, write_outcome(r));
            }
            "delete" => {
                let r = c
                    .delete(key.as_str(), Some(DeleteOptions::new().with_prev_key()))
                    .await
                    .map(|d| Answer::Write {
                        revision: d.header().map_or(0, |h| h.revision()),
                        deleted: d.prev_kvs().iter().map(kv_of).collect(),
                        succeeded: true,
                        read: None,
                    });
                rec.record(me, start, Call::Delete { key }, write_outcome(r));
            }
            "kube" => {
                // kube-apiserver's GuaranteedUpdate: read, then update on what was read.
                let got = c.get(key.as_str(), None).await;
                let expect = match &got {
                    Ok(g) => {
                        let kvs: Vec<Kv> = g.kvs().iter().map(kv_of).collect();
                        let expect = kvs.first().map_or(0, |kv| kv.modified);
                        rec.record(
                            me,
                            start,
                            Call::Get { key: key.clone() },
                            Outcome::Ok(Answer::Read {
                                revision: g.header().map_or(0, |h| h.revision()),
                                kvs,
                                succeeded: true,
                            }),
                        );
                        expect
                    }
                    Err(_) => {
                        pace(&mut rng).await;
                        continue;
                    }
                };
                let start = rec.now();
                let txn = Txn::new()
                    .when([Compare::mod_revision(key.as_str(), CompareOp::Equal, expect)])
                    .and_then([TxnOp::put(key.as_str(), value.as_str(), None)])
                    .or_else([TxnOp::get(key.as_str(), None)]);
                let r = c.txn(txn).await.map(|t| {
                    let read = t.op_responses().into_iter().find_map(|r| match r {
                        TxnOpResponse::Get(g) => Some(g.kvs().first().map(kv_of)),
                        _ => None,
                    });
                    Answer::Write {
                        revision: t.header().map_or(0, |h| h.revision()),
                        deleted: vec![],
                        succeeded: t.succeeded(),
                        read: read.flatten(),
                    }
                });
                rec.record(me, start, Call::KubeTxn { key, expect, value }, write_outcome(r));
            }
            "get" => {
                if let Ok(g) = c.get(key.as_str(), None).await {
                    rec.record(
                        me,
                        start,
                        Call::Get { key },
                        Outcome::Ok(Answer::Read {
                            revision: g.header().map_or(0, |h| h.revision()),
                            kvs: g.kvs().iter().map(kv_of).collect(),
                            succeeded: true,
                        }),
                    );
                }
            }
            "list" => {
                if let Ok(g) = c.get(PREFIX, Some(GetOptions::new().with_prefix())).await {
                    rec.record(
                        me,
                        start,
                        Call::List { prefix: PREFIX.into() },
                        Outcome::Ok(Answer::Read {
                            revision: g.header().map_or(0, |h| h.revision()),
                            kvs: g.kvs().iter().map(kv_of).collect(),
                            succeeded: true,
                        }),
                    );
                }
            }
            "readtxn" => {
                // Compares against a recent revision that may or may not be the key's.
                let expect = rng.i64(0..64);
                let txn = Txn::new()
                    .when([Compare::mod_revision(key.as_str(), CompareOp::Equal, expect)])
                    .and_then([TxnOp::get(key.as_str(), None)])
                    .or_else([TxnOp::get(key.as_str(), None)]);
                if let Ok(t) = c.txn(txn).await {
                    let kvs = t
                        .op_responses()
                        .into_iter()
                        .find_map(|r| match r {
                            TxnOpResponse::Get(g) => Some(g.kvs().iter().map(kv_of).collect()),
                            _ => None,
                        })
                        .unwrap_or_default();
                    rec.record(
                        me,
                        start,
                        Call::ReadTxn { key, expect },
                        Outcome::Ok(Answer::Read {
                            revision: t.header().map_or(0, |h| h.revision()),
                            kvs,
                            succeeded: t.succeeded(),
                        }),
                    );
                }
            }
            other => panic!("no client kind {other}"),
        }
        pace(&mut rng).await;
    }
}

/// A watcher of the whole soak prefix through one replica: a new stream from the
/// revision after its last event whenever one breaks.
async fn run_watcher(
    endpoint: String,
    watcher: usize,
    from: i64,
    sessions: Arc<Mutex<Vec<WatchSession>>>,
    cancels: Arc<Mutex<Vec<String>>>,
    relists: Arc<Mutex<Vec<String>>>,
    end_key: String,
) {
    let mut next = from;
    let mut c = client(&endpoint).await;
    loop {
        let opts = WatchOptions::new()
            .with_prefix()
            .with_prev_key()
            .with_start_revision(next);
        let mut session = WatchSession {
            watcher,
            prefix: PREFIX.into(),
            prev_kv: true,
            start_revision: next,
            events: vec![],
            complete_through: next - 1,
        };
        let opened = tokio::time::timeout(Duration::from_secs(5), c.watch(PREFIX, Some(opts))).await;
        let (_w, mut stream) = match opened {
            Ok(Ok(s)) => s,
            _ => {
                // The replica is down or paused: try again in a moment.
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let mut done = false;
        while let Ok(Some(r)) = stream.message().await {
            if r.canceled() {
                if session.events.is_empty() && r.compact_revision() > 0 {
                    // Re-opened after its replica died, from a revision the tenant's
                    // new datastore never had (changed on the old one before a
                    // commit): etcd's answer for a compacted revision, and the client
                    // relists, as kube-apiserver does. Its events up to then were
                    // missed by this watcher only.
                    relists.lock().push(format!(
                        "watcher {watcher}: from {next}, compacted below {}",
                        r.compact_revision()
                    ));
                    next = r.compact_revision();
                } else {
                    cancels.lock().push(format!(
                        "watcher {watcher}: a watch open since {} canceled after {} events: {}",
                        session.start_revision,
                        session.events.len(),
                        r.cancel_reason()
                    ));
                }
                break;
            }
            for e in r.events() {
                let Some(kv) = e.kv() else { continue };
                let put = e.event_type() == EventType::Put;
                let mut kv = kv_of(kv);
                if !put {
                    kv.value.clear();
                }
                next = next.max(kv.modified + 1);
                if kv.key == end_key {
                    done = true;
                }
                session.complete_through = session.complete_through.max(kv.modified);
                session.events.push(Event {
                    put,
                    kv,
                    prev: e.prev_kv().map(kv_of),
                });
            }
            // Progress notifications are not taken as proof of what was delivered:
            // etcd 3.4 itself may send one ahead of events still on their way.
            if done {
                break;
            }
        }
        sessions.lock().push(session);
        if done {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A lease kept alive through one replica, its keep-alive stream opened again when it
/// breaks. Returns the TTLs it was answered with that were not positive.
async fn run_lease_keeper(rec: Arc<Recorder>, endpoint: String, id: i64) -> Vec<String> {
    let mut c = client(&endpoint).await;
    let mut problems = Vec::new();
    while !rec.stopped() {
        let Ok((mut keeper, mut answers)) = c.lease_keep_alive(id).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        while !rec.stopped() {
            if keeper.keep_alive().await.is_err() {
                break;
            }
            match tokio::time::timeout(Duration::from_secs(5), answers.message()).await {
                Ok(Ok(Some(a))) if a.ttl() > 0 => {}
                Ok(Ok(Some(a))) => {
                    problems.push(format!("lease {id:x}: keep-alive answered TTL {}", a.ttl()));
                    break;
                }
                _ => break,
            }
            // Pacing: a keep-alive every 500 ms, as clients send them.
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
    problems
}

/// The datastores, the relays in front of b and c for each replica, and the replicas.
struct Cluster {
    source: Vec<Etcd>,
    /// The two other datastores (kept running; the replicas reach them through relays).
    _b: Etcd,
    _c: Etcd,
    /// relays[replica] = (relay to b, relay to c)
    relays: Vec<(Forwarder, Forwarder)>,
    configs: Vec<String>,
    proxies: Vec<Proxy>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    async fn start() -> Cluster {
        let source = Etcd::cluster(3).await;
        let b = Etcd::start().await;
        let c = Etcd::start().await;
        let dir = tempfile::tempdir().expect("tempdir");
        let token = dir.path().join("admin-token");
        std::fs::write(&token, ADMIN_TOKEN).expect("token");
        let mut relays = Vec::new();
        let mut configs = Vec::new();
        let source_eps: Vec<String> = source.iter().map(|m| format!("\"{}\"", m.endpoint)).collect();
        for _ in 0..REPLICAS {
            let (rb, rc) = (Forwarder::start(&b.endpoint), Forwarder::start(&c.endpoint));
            configs.push(format!(
                "listen: 127.0.0.1:{}\nadmin:\n  listen: 127.0.0.1:{}\n  tokenFile: {}\nprefix: /registry/\nmigration: {{leaseTTL: 2s}}\ndataStore: default\ndataStores:\n  default:\n    endpoints: [{}]\n  b:\n    endpoints: [\"{}\"]\n  c:\n    endpoints: [\"{}\"]\n",
                free_port(),
                free_port(),
                token.display(),
                source_eps.join(", "),
                rb.addr,
                rc.addr
            ));
            relays.push((rb, rc));
        }
        let mut proxies = Vec::new();
        for cfg in &configs {
            proxies.push(Proxy::start(cfg).await);
        }
        Cluster {
            source,
            _b: b,
            _c: c,
            relays,
            configs,
            proxies,
            _dir: dir,
        }
    }

    /// Starts replica `i` again (same ports and config), without waiting for readiness
    /// (it may be cut from the tenant's datastore).
    async fn restart(&mut self, i: usize) {
        self.proxies[i].kill();
        self.proxies[i] = Proxy::launch(&self.configs[i], &[]);
        self.proxies[i].wait_alive().await;
    }

    fn exited(&mut self, i: usize) -> bool {
        self.proxies[i].try_exit().is_some()
    }
}

/// What the schedule did.
#[derive(Default, Debug)]
struct Tally {
    faults: BTreeMap<&'static str, usize>,
    migrations: BTreeMap<String, usize>,
    /// (replica, failpoint) set, to clear at the end.
    points: Vec<(usize, &'static str)>,
}

const FAILPOINTS: &[(&str, &[&str])] = &[
    (
        "migrate.copy.page",
        &["1*return", "1*return(sleep:200)", "1*return(crash)"],
    ),
    ("migrate.catchup.apply", &["1*return", "1*return(sleep:100)"]),
    (
        "migrate.fence.after_write",
        &["1*return", "1*return(sleep:300)", "1*return(crash)"],
    ),
    ("migrate.drain", &["1*return", "1*return(sleep:200)"]),
    ("migrate.verify.round", &["1*return"]),
    ("migrate.record.persist", &["1*return(crash)", "1*return"]),
    ("migrate.commit.before_send", &["1*return(crash)"]),
    ("migrate.commit.after_send", &["1*return(crash)", "1*return(sleep:500)"]),
    ("migrate.commit.answer", &["1*return(lost)"]),
    ("migrate.switch", &["1*return(crash)", "1*return(sleep:300)"]),
    ("migrate.release.before_delete", &["1*return(crash)"]),
    ("follower.switch", &["1*return(sleep:500)", "1*return(sleep:1500)"]),
    ("server.watch.reattach", &["2*return(sleep:300)"]),
    ("server.read.before_send", &["3*return(sleep:200)"]),
    ("server.write.answer", &["1*return(lost)"]),
];

/// One fault of the schedule; returns once it is over (undone, or the process restarted).
async fn inject(cl: &mut Cluster, rng: &mut fastrand::Rng, tally: &mut Tally) {
    let i = rng.usize(0..REPLICAS);
    let kind = rng.usize(0..6);
    let name = match kind {
        0 => {
            cl.proxies[i].kill();
            tokio::time::sleep(Duration::from_millis(200 + rng.u64(0..1500))).await;
            cl.restart(i).await;
            "replica SIGKILL"
        }
        1 => {
            cl.proxies[i].signal(libc::SIGSTOP);
            tokio::time::sleep(Duration::from_millis(100 + rng.u64(0..1200))).await;
            cl.proxies[i].signal(libc::SIGCONT);
            "replica SIGSTOP"
        }
        2 => {
            let m = rng.usize(0..cl.source.len());
            cl.source[m].kill();
            tokio::time::sleep(Duration::from_millis(300 + rng.u64(0..2000))).await;
            cl.source[m].relaunch();
            cl.source[m].wait_ready().await;
            "source member killed"
        }
        3 => {
            let to_b = rng.bool();
            {
                let (rb, rc) = &mut cl.relays[i];
                if to_b {
                    rb.cut()
                } else {
                    rc.cut()
                }
            }
            tokio::time::sleep(Duration::from_millis(200 + rng.u64(0..2000))).await;
            let (rb, rc) = &mut cl.relays[i];
            if to_b {
                rb.restore()
            } else {
                rc.restore()
            }
            "replica cut from a datastore"
        }
        _ => {
            let (point, actions) = FAILPOINTS[rng.usize(0..FAILPOINTS.len())];
            let action = actions[rng.usize(0..actions.len())];
            if cl.proxies[i].try_exit().is_none() {
                let r = reqwest::Client::new()
                    .put(format!("{}/v1/failpoints/{point}", cl.proxies[i].admin))
                    .bearer_auth(ADMIN_TOKEN)
                    .body(action.to_string())
                    .send()
                    .await;
                if r.is_err() {
                    return;
                }
                tally.points.push((i, point));
            }
            tokio::time::sleep(Duration::from_millis(500 + rng.u64(0..1500))).await;
            "failpoint"
        }
    };
    *tally.faults.entry(name).or_default() += 1;
}

/// Restarts replicas that a failpoint crashed.
async fn revive(cl: &mut Cluster, tally: &mut Tally) {
    for i in 0..REPLICAS {
        if cl.exited(i) {
            cl.restart(i).await;
            *tally.faults.entry("replica crashed at a failpoint").or_default() += 1;
        }
    }
}

/// A replica's status, if it answers.
async fn try_status(p: &Proxy) -> Option<serde_json::Value> {
    let r = reqwest::Client::new()
        .get(format!("{}/v1/status", p.admin))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()?;
    r.json::<serde_json::Value>().await.ok()
}

/// Status of the first replica that answers.
async fn any_status(cl: &Cluster) -> Option<serde_json::Value> {
    for p in &cl.proxies {
        if let Some(v) = try_status(p).await {
            return Some(v);
        }
    }
    None
}

/// Asks a random replica to migrate to `to`; true if one accepted.
async fn ask_migration(cl: &Cluster, rng: &mut fastrand::Rng, to: &str) -> bool {
    let i = rng.usize(0..REPLICAS);
    let r = reqwest::Client::new()
        .post(format!("{}/v1/migrations", cl.proxies[i].admin))
        .bearer_auth(ADMIN_TOKEN)
        .timeout(Duration::from_secs(5))
        .json(&json!({ "to": to, "overwrite": true }))
        .send()
        .await;
    match r {
        Ok(r) if r.status().as_u16() == 202 => true,
        Ok(r) => {
            if std::env::var_os("CUTOVER_SOAK_VERBOSE").is_some() {
                eprintln!("soak: migration to {to} refused by replica {i}: {:?}", r.text().await);
            }
            false
        }
        Err(_) => false,
    }
}

/// Runs one soak with `seed` for `secs`; returns the report, or panics with the seed.
async fn soak(seed: u64, secs: u64) -> history::Report {
    eprintln!(
        "soak: seed {seed:#x}, {secs} s (replay: CUTOVER_SOAK_SEED={seed:#x} CUTOVER_SOAK_SECS={secs} make soak)"
    );
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut cl = Cluster::start().await;
    let endpoints: Vec<String> = cl.proxies.iter().map(|p| p.endpoint.clone()).collect();

    // Seed the keys, and a kept-alive lease with a key per replica.
    let mut setup = client(&endpoints[0]).await;
    for k in 0..KEYS {
        setup.put(format!("{PREFIX}k{k:02}"), "seed", None).await.unwrap();
    }
    let mut leases = Vec::new();
    for (i, ep) in endpoints.iter().enumerate() {
        let mut c = client(ep).await;
        let id = c.lease_grant(10, None).await.unwrap().id();
        let key = format!("{PREFIX}lease-{i}");
        c.put(key.as_str(), "held", Some(PutOptions::new().with_lease(id)))
            .await
            .unwrap();
        leases.push(KeptLease { id, key });
    }
    let initial = setup.get(PREFIX, Some(GetOptions::new().with_prefix())).await.unwrap();
    let initial_revision = initial.header().unwrap().revision();
    let initial: BTreeMap<String, Kv> = initial
        .kvs()
        .iter()
        .map(|kv| (kv.key_str().unwrap().to_string(), kv_of(kv)))
        .collect();

    let rec = Arc::new(Recorder {
        base: Instant::now(),
        ops: Mutex::new(Vec::new()),
        stop: AtomicBool::new(false),
        next_client: AtomicUsize::new(0),
    });
    let sessions = Arc::new(Mutex::new(Vec::new()));
    let cancels = Arc::new(Mutex::new(Vec::new()));
    let relists = Arc::new(Mutex::new(Vec::new()));
    let end_key = format!("{PREFIX}zz-end");
    let mut tasks = Vec::new();
    let mut watchers = Vec::new();
    let mut keepers = Vec::new();
    for (i, ep) in endpoints.iter().enumerate() {
        for kind in ["put", "delete", "kube", "kube", "get", "list", "readtxn"] {
            tasks.push(tokio::spawn(run_client(rec.clone(), ep.clone(), kind, seed)));
        }
        watchers.push(tokio::spawn(run_watcher(
            ep.clone(),
            i,
            initial_revision + 1,
            sessions.clone(),
            cancels.clone(),
            relists.clone(),
            end_key.clone(),
        )));
        keepers.push(tokio::spawn(run_lease_keeper(rec.clone(), ep.clone(), leases[i].id)));
    }

    // The schedule: migrations back to back, faults in between.
    let mut tally = Tally::default();
    let route = ["b", "default", "c", "default"];
    let mut next_target = 0;
    let started = Instant::now();
    let mut running_since: Option<Instant> = None;
    while started.elapsed() < Duration::from_secs(secs) {
        revive(&mut cl, &mut tally).await;
        let st = any_status(&cl).await;
        let home = st.as_ref().map(|s| s["dataStore"].as_str().unwrap_or("").to_string());
        let running = st.as_ref().is_some_and(|s| s["phase"] != "Ready");
        if !running {
            running_since = None;
            let to = route[next_target % route.len()];
            if home.as_deref() == Some(to) {
                *tally.migrations.entry(format!("to {to}")).or_default() += 1;
                next_target += 1;
            } else if ask_migration(&cl, &mut rng, to).await {
                running_since = Some(Instant::now());
            } else {
                *tally.migrations.entry(format!("refused to {to}")).or_default() += 1;
            }
        } else if running_since.is_some_and(|t| t.elapsed() > Duration::from_secs(60)) {
            panic!("seed {seed:#x}: a migration has run for a minute: {st:?}");
        }
        inject(&mut cl, &mut rng, &mut tally).await;
    }

    // The end: everything restored (failpoints cleared), the last migration over, every
    // replica on one home.
    revive(&mut cl, &mut tally).await;
    for (i, point) in std::mem::take(&mut tally.points) {
        let _ = reqwest::Client::new()
            .delete(format!("{}/v1/failpoints/{point}", cl.proxies[i].admin))
            .bearer_auth(ADMIN_TOKEN)
            .timeout(Duration::from_secs(2))
            .send()
            .await;
    }
    for p in &cl.proxies {
        p.signal(libc::SIGCONT);
    }
    let deadline = Instant::now() + Duration::from_secs(90);
    let home = loop {
        revive(&mut cl, &mut tally).await;
        let mut homes = Vec::new();
        let mut statuses = Vec::new();
        for p in &cl.proxies {
            // A replica may crash meanwhile (a failpoint set late): revived above.
            let st = try_status(p).await.unwrap_or_default();
            homes.push((
                st["dataStore"].as_str().unwrap_or("").to_string(),
                st["phase"] == "Ready",
                st["ready"] == true,
            ));
            statuses.push(st);
        }
        if homes.iter().all(|h| h.1 && h.2 && h.0 == homes[0].0) {
            break homes[0].0.clone();
        }
        assert!(
            Instant::now() < deadline,
            "seed {seed:#x}: the replicas did not settle on one datastore: {homes:?}; their status: {}",
            serde_json::to_string_pretty(&statuses).unwrap_or_default()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // A last round of every client, then stop.
    tokio::time::sleep(Duration::from_secs(1)).await;
    rec.stop.store(true, Ordering::SeqCst);
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(30), t).await;
    }
    let mut lease_problems = Vec::new();
    for k in keepers {
        if let Ok(Ok(p)) = tokio::time::timeout(Duration::from_secs(30), k).await {
            lease_problems.extend(p);
        }
    }
    // The end marker closes every watcher's last session.
    let mut last_client = client(&endpoints[0]).await;
    last_client.put(end_key.as_str(), "end", None).await.unwrap();
    for (i, w) in watchers.into_iter().enumerate() {
        if tokio::time::timeout(Duration::from_secs(30), w).await.is_err() {
            let sessions: Vec<String> = sessions
                .lock()
                .iter()
                .filter(|s| s.watcher == i)
                .rev()
                .take(5)
                .map(|s| {
                    format!(
                        "from {} through {} ({} events)",
                        s.start_revision,
                        s.complete_through,
                        s.events.len()
                    )
                })
                .collect();
            let log = cl.proxies[i].log();
            let tail: Vec<&str> = log.lines().filter(|l| l.contains("watch")).collect();
            panic!(
                "seed {seed:#x}: watcher {i} never saw the end marker; its ended sessions: {sessions:?}; status {}; its replica's watch log:\n{}",
                try_status(&cl.proxies[i]).await.unwrap_or_default(),
                tail[tail.len().saturating_sub(20)..].join("\n")
            );
        }
    }
    let last = last_client
        .get(PREFIX, Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    let last_revision = last.header().unwrap().revision();
    let last: BTreeMap<String, Kv> = last
        .kvs()
        .iter()
        .map(|kv| (kv.key_str().unwrap().to_string(), kv_of(kv)))
        .collect();

    let history = History {
        initial,
        initial_revision,
        ops: std::mem::take(&mut *rec.ops.lock()),
        watches: std::mem::take(&mut *sessions.lock()),
        leases,
        last: Some((last_revision, last)),
    };
    let report = history::check(&history);
    eprintln!(
        "soak {seed:#x}: {} ops ({} writes acknowledged, {} of unknown outcome, {} reads checked), {} events in {} watch sessions; faults {:?}; migrations {:?}; the tenant ends on {home}",
        report.ops,
        report.acknowledged_writes,
        report.unknown_writes,
        report.reads_checked,
        report.events,
        report.sessions,
        tally.faults,
        tally.migrations
    );
    let relists = relists.lock().clone();
    if !relists.is_empty() {
        eprintln!("soak {seed:#x}: watches re-opened after a replica died and relisted: {relists:?}");
    }
    let cancels = cancels.lock().clone();
    assert!(
        cancels.is_empty(),
        "seed {seed:#x}: I4: open watches canceled: {cancels:?}"
    );
    assert!(lease_problems.is_empty(), "seed {seed:#x}: I5: {lease_problems:?}");
    if !report.violations.is_empty() {
        dump(seed, &history, &report.violations);
    }
    assert!(
        report.violations.is_empty(),
        "seed {seed:#x}: {} violations, the first: {:#?}",
        report.violations.len(),
        &report.violations[..report.violations.len().min(10)]
    );
    drop(cl);
    report
}

fn seeds_and_secs() -> Vec<(u64, u64)> {
    let secs = std::env::var("CUTOVER_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(CI_SECS);
    match std::env::var("CUTOVER_SOAK_SEED").ok().as_deref() {
        None | Some("") => CI_SEEDS.iter().map(|s| (*s, secs)).collect(),
        Some("random") => vec![(fastrand::u64(..), secs)],
        Some(s) => {
            let s = s.trim_start_matches("0x");
            vec![(
                u64::from_str_radix(s, 16).expect("CUTOVER_SOAK_SEED: a hex number or random"),
                secs,
            )]
        }
    }
}

#[tokio::test]
async fn a_seeded_fault_schedule_keeps_every_promise() {
    let mut total = history::Report::default();
    for (seed, secs) in seeds_and_secs() {
        let r = soak(seed, secs).await;
        total.ops += r.ops;
        total.events += r.events;
    }
    eprintln!("soak: {} ops and {} events checked in all", total.ops, total.events);
}

/// Writes every violation and the whole recorded history to a file beside the processes'
/// logs (`CUTOVER_TEST_LOGS`, else the temp dir), for reading a failure after the fact.
fn dump(seed: u64, history: &History, violations: &[history::Violation]) {
    use std::fmt::Write as _;
    let dir = std::env::var_os("CUTOVER_TEST_LOGS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let path = dir.join(format!("soak-{seed:#x}.history.txt"));
    let mut out = String::new();
    for v in violations {
        let _ = writeln!(out, "violation {v:?}");
    }
    let _ = writeln!(out, "initial at {}: {:?}", history.initial_revision, history.initial);
    for s in &history.watches {
        let _ = writeln!(
            out,
            "session watcher {} from {} prefix {} prev_kv {} complete_through {}",
            s.watcher, s.start_revision, s.prefix, s.prev_kv, s.complete_through
        );
        for e in &s.events {
            let _ = writeln!(out, "  event {e:?}");
        }
    }
    for op in &history.ops {
        let _ = writeln!(out, "op {op:?}");
    }
    let _ = std::fs::create_dir_all(&dir);
    match std::fs::write(&path, out) {
        Ok(()) => eprintln!(
            "soak {seed:#x}: the history and every violation are in {}",
            path.display()
        ),
        Err(e) => eprintln!("soak {seed:#x}: could not write {}: {e}", path.display()),
    }
}
