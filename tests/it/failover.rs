//! Endpoint failover: a 3-member etcd cluster behind the proxy, members killed with
//! SIGKILL while clients keep working through the proxy.
//!
//! The member killed is the one the proxy is using (its first endpoint, preferred while it
//! is healthy), and it is chosen to be a raft follower: then the cluster keeps its leader
//! and the test sees only what the proxy does about a dead endpoint, not etcd's own
//! behaviour during an election.

use std::time::{Duration, Instant};

use cutover::error::messages::NO_CONNECTION;
use etcd_client::{EventType, GetOptions, PutOptions, WatchOptions, WatchStream};
use tonic::Code;

use crate::support::{client, eventually, Etcd, Proxy};

/// A cluster and a proxy in front of it.
struct Setup {
    members: Vec<Etcd>,
    proxy: Proxy,
    /// The member behind the proxy's first endpoint: a follower.
    victim: usize,
    /// The raft leader.
    leader: usize,
}

/// Which member leads, as every member reports it.
async fn leader_of(members: &[Etcd]) -> usize {
    let mut leader_id = None;
    let mut ids = Vec::new();
    for m in members {
        let s = client(&m.endpoint).await.status().await.expect("status");
        ids.push(s.header().expect("header").member_id());
        match leader_id {
            None => leader_id = Some(s.leader()),
            Some(l) => assert_eq!(l, s.leader(), "members disagree about the leader"),
        }
    }
    let leader_id = leader_id.expect("members");
    ids.iter()
        .position(|&id| id == leader_id)
        .expect("the leader is a member")
}

async fn setup() -> Setup {
    let members = Etcd::cluster(3).await;
    let leader = leader_of(&members).await;
    let victim = (leader + 1) % 3;
    let other = (leader + 2) % 3;
    // The victim first: it is where the proxy sends everything while it is healthy.
    let proxy = Proxy::start_for(&[&members[victim], &members[other], &members[leader]]).await;
    Setup {
        members,
        proxy,
        victim,
        leader,
    }
}

fn status_code(e: &etcd_client::Error) -> Option<Code> {
    match e {
        etcd_client::Error::GRpcStatus(s) => Some(s.code()),
        _ => None,
    }
}

/// The proxy's view of its endpoints, from /v1/status: (url, healthy).
async fn endpoint_health(proxy: &Proxy) -> Vec<(String, bool)> {
    let v: serde_json::Value = reqwest::get(format!("{}/v1/status", proxy.admin))
        .await
        .expect("status")
        .json()
        .await
        .expect("status json");
    v["dataStores"][0]["endpoints"]
        .as_array()
        .expect("endpoints")
        .iter()
        .map(|e| (e["url"].as_str().unwrap().to_string(), e["healthy"].as_bool().unwrap()))
        .collect()
}

/// The value of a counter or gauge line in the metrics text, summed over its label sets.
fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn readyz(proxy: &Proxy) -> u16 {
    reqwest::get(format!("{}/readyz", proxy.admin))
        .await
        .expect("readyz answers")
        .status()
        .as_u16()
}

/// Longest a single call may take before it counts as hung.
const CALL: Duration = Duration::from_secs(10);

#[tokio::test]
async fn writes_and_reads_continue_when_the_used_member_dies() {
    let mut s = setup().await;
    let mut c = client(&s.proxy.endpoint).await;
    let health = endpoint_health(&s.proxy).await;
    assert!(
        health.iter().all(|(_, h)| *h),
        "all endpoints healthy at the start: {health:?}"
    );

    const N: usize = 30;
    const KILL_AT: usize = 10;
    // Client-visible errors. Every put and get must succeed, at most after the test's own
    // retry, as a client would do on Unavailable.
    //
    // Reads: zero errors. The proxy resends a read after any connection failure.
    // Writes: at most one. The puts are sequential and the kill completes (the process is
    // reaped) between two of them, so the next put finds the connection refused, which
    // proves it was never sent, and the proxy sends it to the next member; that is what
    // happens in practice. The one window left is a put written onto the old connection in
    // the instant before the proxy sees it close: the proxy then cannot know whether etcd
    // applied it, and answers Unavailable ("request timed out") as etcd itself would.
    let mut put_errors: Vec<String> = Vec::new();
    let mut get_errors: Vec<String> = Vec::new();
    for i in 0..N {
        if i == KILL_AT {
            s.members[s.victim].kill();
        }
        let key = format!("f/{i:03}");
        let value = format!("v{i}");
        loop {
            let r = tokio::time::timeout(CALL, c.put(key.clone(), value.clone(), None))
                .await
                .unwrap_or_else(|_| panic!("put {key} hung"));
            match r {
                Ok(_) => break,
                Err(e) => {
                    assert_eq!(status_code(&e), Some(Code::Unavailable), "put {key}: {e}");
                    put_errors.push(format!("put {key}: {e}"));
                    assert!(put_errors.len() <= 1, "puts failed more than once: {put_errors:?}");
                }
            }
        }
        // A linearizable read (etcd-client's default) of what was just written.
        let r = tokio::time::timeout(CALL, c.get(key.clone(), None))
            .await
            .unwrap_or_else(|_| panic!("get {key} hung"));
        match r {
            Ok(r) => {
                assert_eq!(r.kvs().len(), 1, "get {key}");
                assert_eq!(r.kvs()[0].value(), value.as_bytes(), "get {key}");
            }
            Err(e) => get_errors.push(format!("get {key}: {e}")),
        }
    }
    assert!(
        get_errors.is_empty(),
        "reads failed across the failover: {get_errors:?}"
    );
    assert!(
        put_errors.len() <= 1,
        "writes failed across the failover: {put_errors:?}"
    );

    // Everything is there, read through the proxy and straight from the leader.
    let through = c
        .get("f/", Some(GetOptions::new().with_prefix()))
        .await
        .expect("get through the proxy");
    let mut leader = client(&s.members[s.leader].endpoint).await;
    let direct = leader
        .get("f/", Some(GetOptions::new().with_prefix()))
        .await
        .expect("get from the leader");
    for r in [&through, &direct] {
        assert_eq!(r.kvs().len(), N);
        for (i, kv) in r.kvs().iter().enumerate() {
            assert_eq!(kv.key_str().unwrap(), format!("f/{i:03}"));
            assert_eq!(kv.value_str().unwrap(), format!("v{i}"));
        }
    }

    // The proxy noticed: the dead endpoint is marked down, the others up.
    let victim_url = format!("http://{}", s.members[s.victim].endpoint);
    let health = endpoint_health(&s.proxy).await;
    assert!(health.contains(&(victim_url.clone(), false)), "{health:?}");
    assert_eq!(health.iter().filter(|(_, h)| *h).count(), 2, "{health:?}");
    let metrics = s.proxy.metrics().await;
    for (i, m) in s.members.iter().enumerate() {
        let line = metrics
            .lines()
            .find(|l| {
                l.starts_with("cutover_upstream_endpoint_up{") && l.contains(&format!("\"http://{}\"", m.endpoint))
            })
            .unwrap_or_else(|| panic!("no endpoint_up for {}: {metrics}", m.endpoint));
        let want = if i == s.victim { " 0" } else { " 1" };
        assert!(line.ends_with(want), "{line}");
    }
    assert_eq!(readyz(&s.proxy).await, 200);
}

/// Reads watch responses until `want` more events have arrived, checking every response
/// belongs to watch `id` and is neither a cancel nor a new create.
async fn collect_events(stream: &mut WatchStream, id: i64, want: usize, out: &mut Vec<(String, String, i64)>) {
    let target = out.len() + want;
    while out.len() < target {
        let resp = tokio::time::timeout(Duration::from_secs(15), stream.message())
            .await
            .unwrap_or_else(|_| panic!("no watch event for 15s; have {out:?}"))
            .expect("the watch stream failed")
            .expect("the watch stream ended");
        assert_eq!(resp.watch_id(), id, "a response for another watch id");
        assert!(!resp.canceled(), "the watch was cancelled: {:?}", resp.cancel_reason());
        assert!(!resp.created(), "a second created response reached the client");
        for ev in resp.events() {
            assert_eq!(ev.event_type(), EventType::Put);
            let kv = ev.kv().expect("kv");
            out.push((
                kv.key_str().unwrap().to_string(),
                kv.value_str().unwrap().to_string(),
                kv.mod_revision(),
            ));
        }
    }
}

#[tokio::test]
async fn an_open_watch_survives_the_death_of_its_member() {
    let mut s = setup().await;
    let mut c = client(&s.proxy.endpoint).await;
    let (watcher, mut stream) = c
        .watch("w/", Some(WatchOptions::new().with_prefix()))
        .await
        .expect("watch through the proxy");
    let id = watcher.watch_id();
    // Writes go straight to the leader, so that only the watch depends on the proxy.
    let mut writer = client(&s.members[s.leader].endpoint).await;

    let mut seen = Vec::new();
    for i in 0..5 {
        writer.put(format!("w/{i}"), format!("v{i}"), None).await.unwrap();
    }
    collect_events(&mut stream, id, 5, &mut seen).await;

    s.members[s.victim].kill();
    // Written while the proxy's stream to the dead member is broken or being re-attached.
    for i in 5..10 {
        writer.put(format!("w/{i}"), format!("v{i}"), None).await.unwrap();
    }
    collect_events(&mut stream, id, 5, &mut seen).await;
    // One more after everything, to show nothing else (a duplicate) was queued before it.
    writer.put("w/end", "end", None).await.unwrap();
    collect_events(&mut stream, id, 1, &mut seen).await;

    let keys: Vec<&str> = seen.iter().map(|(k, _, _)| k.as_str()).collect();
    let mut want: Vec<String> = (0..10).map(|i| format!("w/{i}")).collect();
    want.push("w/end".into());
    assert_eq!(keys, want, "each event exactly once, in order");
    for (k, v, _) in &seen[..10] {
        assert_eq!(v, &format!("v{}", &k[2..]));
    }
    assert!(seen.windows(2).all(|w| w[0].2 < w[1].2), "revisions increase: {seen:?}");

    // The watch really was on the member that died, and was re-attached.
    eventually("the proxy logs the re-attach", Duration::from_secs(5), || {
        let log = s.proxy.log();
        async move { log.contains("watch stream to the datastore broke; re-attaching") }
    })
    .await;
    // Still one watch, still open.
    let metrics = s.proxy.metrics().await;
    assert_eq!(metric_sum(&metrics, "cutover_open_watches"), 1.0, "{metrics}");
    drop(watcher);
}

#[tokio::test]
async fn a_lease_keep_alive_stream_survives_the_death_of_its_member() {
    let mut s = setup().await;
    let mut c = client(&s.proxy.endpoint).await;
    const TTL: i64 = 3;
    let lease = c.lease_grant(TTL, None).await.expect("lease grant").id();
    c.put("l/key", "v", Some(PutOptions::new().with_lease(lease)))
        .await
        .expect("put with lease");
    // etcd-client sends the first keep-alive and waits for its answer here.
    let (mut keeper, mut answers) = c.lease_keep_alive(lease).await.expect("keep-alive stream");

    s.members[s.victim].kill();
    let killed = Instant::now();
    // Keep the lease alive on the same stream for twice its TTL: had keep-alives stopped
    // working, the lease and its key would be gone by the end.
    let mut pace = tokio::time::interval(Duration::from_millis(500));
    let mut answered = 0;
    while killed.elapsed() < Duration::from_secs(2 * TTL as u64) {
        pace.tick().await;
        keeper.keep_alive().await.expect("send a keep-alive");
        let r = tokio::time::timeout(Duration::from_secs(TTL as u64), answers.message())
            .await
            .expect("no keep-alive answer within the TTL")
            .expect("the keep-alive stream failed")
            .expect("the keep-alive stream ended");
        assert_eq!(r.id(), lease);
        assert!(r.ttl() > 0, "the lease expired: {r:?}");
        answered += 1;
    }
    assert!(answered >= 6, "only {answered} keep-alives answered");

    let ttl = c.lease_time_to_live(lease, None).await.expect("time to live").ttl();
    assert!(ttl > 0, "lease TTL after the failover: {ttl}");
    let mut leader = client(&s.members[s.leader].endpoint).await;
    assert_eq!(
        leader.get("l/key", None).await.unwrap().count(),
        1,
        "the leased key is gone"
    );
    assert!(
        s.proxy
            .log()
            .contains("keep-alive stream to the datastore broke; reopening"),
        "the keep-alive stream was not on the killed member"
    );
}

#[tokio::test]
async fn with_every_member_down_requests_fail_fast_and_recover() {
    let mut members = Etcd::cluster(3).await;
    let mut proxy = Proxy::start_for(&members.iter().collect::<Vec<_>>()).await;
    let mut c = client(&proxy.endpoint).await;
    c.put("d/kept", "1", None).await.expect("put before the outage");

    for m in &mut members {
        m.kill();
    }
    for _ in 0..2 {
        let started = Instant::now();
        let err = tokio::time::timeout(CALL, c.get("d/kept", None))
            .await
            .expect("a get with every member down hung")
            .expect_err("a get succeeded with every member down");
        assert_eq!(status_code(&err), Some(Code::Unavailable), "{err}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the get took {:?}",
            started.elapsed()
        );

        let started = Instant::now();
        let err = tokio::time::timeout(CALL, c.put("d/new", "x", None))
            .await
            .expect("a put with every member down hung")
            .expect_err("a put succeeded with every member down");
        // Refused connections prove the put was never sent: the retry-safe answer.
        match &err {
            etcd_client::Error::GRpcStatus(st) => {
                assert_eq!((st.code(), st.message()), (Code::Unavailable, NO_CONNECTION))
            }
            other => panic!("put: {other}"),
        }
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the put took {:?}",
            started.elapsed()
        );
    }
    eventually("readyz turns 503", Duration::from_secs(10), || async {
        readyz(&proxy).await == 503
    })
    .await;
    let health = endpoint_health(&proxy).await;
    assert!(health.iter().all(|(_, h)| !h), "{health:?}");
    assert!(proxy.try_exit().is_none(), "the proxy exited");

    // The members come back (same data, same ports); the proxy follows without a restart.
    for m in &mut members {
        m.relaunch();
    }
    for m in &members {
        m.wait_ready().await;
    }
    eventually("readyz turns 200 again", Duration::from_secs(15), || async {
        readyz(&proxy).await == 200
    })
    .await;
    eventually(
        "a get through the proxy succeeds again",
        Duration::from_secs(15),
        || {
            let mut c = c.clone();
            async move { c.get("d/kept", None).await.is_ok() }
        },
    )
    .await;
    let r = c.get("d/kept", None).await.expect("get after the recovery");
    assert_eq!(r.kvs()[0].value(), b"1", "the data written before the outage");
    assert_eq!(
        c.get("d/new", None).await.unwrap().count(),
        0,
        "a refused put was applied"
    );
    c.put("d/after", "2", None).await.expect("put after the recovery");
    eventually("every endpoint is healthy again", Duration::from_secs(10), || {
        let p = &proxy;
        async move { endpoint_health(p).await.iter().all(|(_, h)| *h) }
    })
    .await;
}
