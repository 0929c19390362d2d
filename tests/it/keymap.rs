//! The translation's key map K after a migration: its entries go as the copied keys they
//! describe go, and no answer changes when they do.

use std::time::Duration;

use etcd_client::{Compare, CompareOp, Txn, TxnOp};

use crate::migrate::{migrate, tenant_state, two_stores, TENANT};
use crate::support::{client, eventually, Etcd, Proxy};

const KEYS: usize = 300;

/// A sample's value from the proxy's metrics.
async fn metric(proxy: &Proxy, name: &str) -> i64 {
    let text = proxy.metrics().await;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
        .unwrap_or_else(|| panic!("no sample {name} in the metrics:\n{text}"))
}

/// Keys in the key map the proxy translates with, once it has one.
pub(crate) async fn translation_keys(proxy: &Proxy) -> i64 {
    eventually(
        "the proxy translates with a key map",
        Duration::from_secs(20),
        || async { metric(proxy, "cutover_translation_keys").await > 0 },
    )
    .await;
    metric(proxy, "cutover_translation_keys").await
}

async fn wait_for_keys(proxy: &Proxy, what: &str, expected: i64) {
    eventually(what, Duration::from_secs(20), || async {
        metric(proxy, "cutover_translation_keys").await == expected
    })
    .await;
}

/// A log as text, without the terminal colour codes around its fields.
fn without_colours(log: &str) -> String {
    let mut out = String::with_capacity(log.len());
    let mut chars = log.chars();
    while let Some(c) = chars.next() {
        if c == '\x1b' {
            // An escape sequence runs to its final letter (`m` for colours).
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn key(i: usize) -> String {
    format!("{TENANT}pods/ns/p{i:04}")
}

/// Two replicas of one tenant, one pruning every second and one never: after the copied
/// keys are deleted (or deleted and created again), the pruning one drops their entries,
/// a key only updated keeps its own (its create_revision and version still come from
/// the source), and the two replicas answer every read and compare alike throughout.
/// At the end every copied key is gone and K holds nothing.
#[tokio::test]
async fn entries_go_with_their_copies_and_no_answer_changes() {
    let a = Etcd::start().await;
    let b = Etcd::start().await;
    let pruning = Proxy::start(&two_stores(&a, &b, "migration:\n  pruneInterval: 1s\n")).await;
    let keeping = Proxy::start(&two_stores(&a, &b, "migration:\n  pruneInterval: 0s\n")).await;
    let mut c = client(&pruning.endpoint).await;
    let mut k = client(&keeping.endpoint).await;
    for i in 0..KEYS {
        c.put(key(i), "v1", None).await.unwrap();
        c.put(key(i), "v2", None).await.unwrap();
    }
    let view = migrate(&pruning, "dedicated").await;
    assert_eq!(view["outcome"], "Succeeded", "{view}");
    eventually(
        "the other replica follows the commit",
        Duration::from_secs(20),
        || async { keeping.status().await["dataStore"] == "dedicated" },
    )
    .await;
    wait_for_keys(&pruning, "K holds every copied key", KEYS as i64).await;
    wait_for_keys(&keeping, "K holds every copied key on the other replica", KEYS as i64).await;
    let copied = tenant_state(&pruning.endpoint).await;
    assert_eq!(copied.len(), KEYS);

    // A third updated, a third deleted, a third deleted and created again.
    for i in 0..KEYS {
        match i % 3 {
            0 => {
                c.put(key(i), "v3", None).await.unwrap();
            }
            1 => {
                c.delete(key(i), None).await.unwrap();
            }
            _ => {
                c.delete(key(i), None).await.unwrap();
                c.put(key(i), "again", None).await.unwrap();
            }
        }
    }
    wait_for_keys(&pruning, "K keeps only the updated keys", (KEYS / 3) as i64).await;
    assert_eq!(metric(&keeping, "cutover_translation_keys").await, KEYS as i64);
    // The record in the target is rewritten too, once a tenth of it is gone: a replica
    // that starts now loads what the last rewrite left, which is within a tenth of what
    // the pruning replica holds. (Pruning takes rounds, 300 -> 282 -> 108 -> 100 in one
    // run, and the last one may be too small to rewrite for. The pruning replica reports
    // its K only after a pass's rewrite, so the last rewrite is logged by now.)
    let rewritten: i64 = without_colours(&pruning.log())
        .lines()
        .rfind(|l| l.contains("rewrote the translation record's key map"))
        .and_then(|l| l.split("keys=").nth(1)?.split_whitespace().next()?.parse().ok())
        .expect("the pruning replica rewrote the record");
    let left = (KEYS / 3) as i64;
    assert!(
        rewritten >= left && (rewritten - left) * 10 < rewritten,
        "the record holds {rewritten} keys, K {left}"
    );
    let fresh = Proxy::start(&two_stores(&a, &b, "migration:\n  pruneInterval: 0s\n")).await;
    wait_for_keys(&fresh, "a new replica loads the pruned record", rewritten).await;
    assert_eq!(
        tenant_state(&fresh.endpoint).await,
        tenant_state(&keeping.endpoint).await,
        "a replica that loaded the pruned record answers as one with the whole K"
    );
    drop(fresh);
    let pruned_state = tenant_state(&pruning.endpoint).await;
    assert_eq!(
        pruned_state,
        tenant_state(&keeping.endpoint).await,
        "a replica with a pruned K answers as one with the whole K"
    );
    for i in (0..KEYS).step_by(3) {
        let (_, create, _, version) = copied[&key(i)];
        let (value, create_now, _, version_now) = &pruned_state[&key(i)];
        assert_eq!(value, "v3");
        assert_eq!(*create_now, create, "an updated key keeps the source's create_revision");
        assert_eq!(*version_now, version + 1, "and counts its version on from the source's");
    }

    // Compares on revisions from before the migration, as kube-apiserver makes them,
    // answer alike on both replicas.
    for i in 0..12 {
        let (_, create, modified, version) = copied[&key(i)];
        let txn = || {
            Txn::new()
                .when([
                    Compare::mod_revision(key(i), CompareOp::Equal, modified),
                    Compare::create_revision(key(i), CompareOp::Equal, create),
                    Compare::version(key(i), CompareOp::Greater, version - 1),
                ])
                .and_then([TxnOp::get(key(i), None)])
        };
        let on_keeping = k.txn(txn()).await.unwrap().succeeded();
        let on_pruning = c.txn(txn()).await.unwrap().succeeded();
        assert_eq!(on_pruning, on_keeping, "{}", key(i));
        let create_only = || Txn::new().when([Compare::create_revision(key(i), CompareOp::Equal, create)]);
        let on_pruning = c.txn(create_only()).await.unwrap().succeeded();
        assert_eq!(
            on_pruning,
            k.txn(create_only()).await.unwrap().succeeded(),
            "{}",
            key(i)
        );
        assert_eq!(
            on_pruning,
            i % 3 == 0,
            "only an updated key is still the copied one: {}",
            key(i)
        );
    }

    // The updated keys go too: K is empty, and so is its memory.
    for i in (0..KEYS).step_by(3) {
        c.delete(key(i), None).await.unwrap();
        c.put(key(i), "again", None).await.unwrap();
    }
    wait_for_keys(&pruning, "K holds nothing", 0).await;
    let bytes = metric(&pruning, "cutover_translation_memory_bytes").await;
    assert!(bytes < 1024, "an empty K holds {bytes} bytes");
    assert_eq!(
        tenant_state(&pruning.endpoint).await,
        tenant_state(&keeping.endpoint).await
    );
    assert!(pruning.log().contains("pruned the translation's key map"));
    let fresh = Proxy::start(&two_stores(&a, &b, "migration:\n  pruneInterval: 0s\n")).await;
    wait_for_keys(&fresh, "a new replica loads an empty K", 0).await;
    assert_eq!(
        tenant_state(&fresh.endpoint).await,
        tenant_state(&keeping.endpoint).await
    );
}
