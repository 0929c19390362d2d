//! What a replica has proven about its route's store still being the tenant's home, for
//! what the store sends without the fence guard: watch events and serializable reads.
//!
//! A guarded request reads the fence key in the same Txn, so etcd itself tells whether the
//! tenant left. A watch event carries no such proof, and a store the tenant left is not
//! quiet forever: a later migration back to it clears the tenant's old copy there and
//! copies into it. A replica that has not switched yet (slow, paused, partitioned) would
//! hand those writes to its clients as the tenant's own events.
//!
//! Two proofs let an answer through, and neither costs a request per answer:
//! - by revision: a read of the fence key answered at header revision H without the
//!   "moved" marker proves every change up to H was made while the tenant lived there;
//! - by time: a migration waits [`LEFT_STORE_QUIET`] after it sees a "moved" marker on its
//!   target before it writes into the tenant's range there. The marker was written after
//!   the proving read was sent, so anything received less than [`PROOF_TTL`] (half the
//!   quiet time) after that read was sent was written before the migration's first write.
//!
//! Anything else waits for a new read of the fence key (one at a time per route).

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// How long after its read was sent a proof covers whatever arrives.
pub const PROOF_TTL: Duration = Duration::from_millis(500);

/// How long a migration leaves a store the tenant left alone after seeing its "moved"
/// marker, before writing into the tenant's range there: twice [`PROOF_TTL`], so clocks
/// that run at slightly different rates still agree.
pub const LEFT_STORE_QUIET: Duration = Duration::from_secs(1);

/// The proofs one route holds. Starts with none.
#[derive(Debug)]
pub struct Proof {
    base: Instant,
    /// Every revision up to this one was written while the tenant lived on the store.
    proven_rev: AtomicI64,
    /// Until this many microseconds after `base`, whatever arrives is proven (0: never).
    proven_until_us: AtomicU64,
    /// One proving read at a time per route.
    reading: tokio::sync::Mutex<()>,
}

impl Default for Proof {
    fn default() -> Self {
        Proof {
            base: Instant::now(),
            proven_rev: AtomicI64::new(0),
            proven_until_us: AtomicU64::new(0),
            reading: tokio::sync::Mutex::new(()),
        }
    }
}

impl Proof {
    /// Whether an answer at store revision `rev`, arriving now, is proven.
    pub fn covers(&self, rev: i64) -> bool {
        rev <= self.proven_rev.load(Ordering::Acquire)
            || self.micros(Instant::now()) < self.proven_until_us.load(Ordering::Acquire)
    }

    /// A read sent at `sent` found no "moved" marker at header revision `rev`.
    pub fn record(&self, sent: Instant, rev: i64) {
        self.proven_rev.fetch_max(rev, Ordering::AcqRel);
        let until = self.micros(sent + PROOF_TTL);
        self.proven_until_us.fetch_max(until, Ordering::AcqRel);
    }

    /// Taken while a proving read is in flight, so that callers waiting for the same
    /// proof share one read.
    pub async fn reading(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.reading.lock().await
    }

    fn micros(&self, at: Instant) -> u64 {
        // +1: a proof recorded at `base` itself must still count.
        at.saturating_duration_since(self.base).as_micros() as u64 + 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn nothing_is_proven_before_a_read() {
        let p = Proof::default();
        assert!(!p.covers(1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_read_proves_its_revision_for_ever_and_anything_for_a_while() {
        let p = Proof::default();
        let sent = Instant::now();
        tokio::time::advance(Duration::from_millis(100)).await;
        p.record(sent, 40);
        assert!(p.covers(40));
        assert!(p.covers(1000), "within the TTL anything arriving is proven");
        tokio::time::advance(PROOF_TTL - Duration::from_millis(101)).await;
        assert!(p.covers(1000));
        tokio::time::advance(Duration::from_millis(2)).await;
        assert!(!p.covers(41), "the TTL runs from when the read was sent");
        assert!(p.covers(40), "what the read answered for stays proven");
    }

    #[tokio::test(start_paused = true)]
    async fn a_late_answer_never_takes_a_proof_back() {
        let p = Proof::default();
        let early = Instant::now();
        tokio::time::advance(Duration::from_millis(300)).await;
        p.record(Instant::now(), 90);
        p.record(early, 50);
        assert!(p.covers(90));
        tokio::time::advance(Duration::from_millis(400)).await;
        assert!(p.covers(5000), "the later read's TTL still runs");
    }

    #[test]
    fn a_migration_waits_longer_than_a_proof_lasts() {
        assert!(LEFT_STORE_QUIET >= PROOF_TTL * 2);
    }
}
