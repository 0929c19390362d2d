//! The migration as an explicit state machine: the phases, the events that move between
//! them (one table, [`next`]), and the driver that runs a migration's steps through it.
//!
//! The driver owns every rule about time and cancellation, so that they can be tested on
//! tokio's paused clock without a datastore:
//! - an abort is honoured in every phase before Committing, and ignored from then on;
//! - CatchingUp has `catchUpTimeout`, and the fenced steps before the commit have
//!   `fenceTimeout`;
//! - once the commit Txn is sent, nothing abandons it: the Committing step runs until its
//!   outcome is known, whatever the time;
//! - after any failure the Release step runs, and it may find that the commit happened
//!   after all (then the migration rolls forward);
//! - a source compacted under the copy or the catch-up restarts the copy, a few times.

use std::time::Duration;

use tokio::sync::watch;

use super::catchup::CatchUpError;
use super::copy::CopyError;
use super::verify::VerifyError;
use super::{Outcome, Phase};
use crate::error::ProxyError;

/// Why a migration failed.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    #[error("aborted by request")]
    Aborted,
    #[error("{0}")]
    Copy(#[from] CopyError),
    #[error("catch-up: {0}")]
    CatchUp(#[from] CatchUpError),
    #[error("{side}: {source}")]
    Datastore {
        side: &'static str,
        #[source]
        source: ProxyError,
    },
    #[error("another migration holds the source: {0}")]
    Locked(String),
    #[error("datastores {from:?} and {to:?} are the same etcd cluster (a key written on one showed on the other); the tenant's data was not touched")]
    SameCluster { from: String, to: String },
    #[error("the catch-up did not get within {max} revisions of the source in {secs} s")]
    CatchUpTimeout { max: i64, secs: u64 },
    #[error("the fence was held longer than {0:?}; released")]
    FenceTimeout(Duration),
    #[error("verification: {0}")]
    Verify(#[from] VerifyError),
    #[error("the migration's lease is gone from the source (expired, or revoked), or no refresh of it was answered for a whole TTL: the lock and any fence went with it; the tenant stays on the source")]
    LeaseLost,
    #[error("the fence was lost before the commit (the migration's lease expired?): the source holds {0:?}")]
    FenceLost(String),
    #[error("translation record: {0}")]
    Record(#[from] super::record::RecordError),
    #[error("the catch-up task ended unexpectedly: {0}")]
    Task(String),
    #[error(transparent)]
    Injected(#[from] crate::failpoint::Injected),
}

impl Failure {
    /// The source compacted a revision the copy or the catch-up still needed.
    pub fn is_compaction(&self) -> bool {
        let source_compacted = |side: &str, e: &ProxyError| side == "source" && e.is_compacted();
        match self {
            Failure::CatchUp(CatchUpError::Compacted(_)) => true,
            Failure::Copy(CopyError::Datastore { side, source })
            | Failure::CatchUp(CatchUpError::Copy(CopyError::Datastore { side, source }))
            | Failure::Verify(VerifyError::Datastore { side, source })
            | Failure::Datastore { side, source } => source_compacted(side, source),
            _ => false,
        }
    }
}

/// What ends a step; [`next`] says where each leads.
#[derive(Debug)]
pub enum Event {
    /// Preparing is done: the lock is ours and the target's range is claimed and empty.
    Prepared,
    /// The copy at a pinned revision is on the target.
    Copied,
    /// The target is close behind the source and verified: time to fence.
    CaughtUp,
    /// Fenced: the last changes are on the target, verified, and the translation is
    /// persisted there. The commit Txn goes next.
    Drained,
    /// The commit Txn was applied: the source says "moved".
    Committed,
    /// The source compacted what the copy or the catch-up needed: copy again.
    SourceCompacted,
    /// A step failed (or was aborted, or timed out) before the commit.
    Failed(Failure),
    /// The release undid the migration; the tenant stays on the source.
    Released,
    /// The release found the commit marker after all: the tenant is on the target.
    RolledForward,
}

/// The one table of transitions. `None`: that event cannot happen in that phase (a bug).
pub fn next(phase: Phase, event: &Event) -> Option<Phase> {
    use Event as E;
    use Phase as P;
    Some(match (phase, event) {
        (P::Preparing, E::Prepared) => P::Copying,
        (P::Copying, E::Copied) => P::CatchingUp,
        (P::Copying | P::CatchingUp, E::SourceCompacted) => P::Copying,
        (P::CatchingUp, E::CaughtUp) => P::Fenced,
        (P::Fenced, E::Drained) => P::Committing,
        (P::Committing, E::Committed) => P::Ready,
        // Only a commit refused by the source (the fence was no longer ours) fails here.
        (P::Preparing | P::Copying | P::CatchingUp | P::Fenced | P::Committing, E::Failed(_)) => P::Failed,
        (P::Failed, E::Released | E::RolledForward) => P::Ready,
        _ => return None,
    })
}

/// Whether an abort request is honoured in `phase`.
pub fn abortable(phase: Phase) -> bool {
    matches!(
        phase,
        Phase::Preparing | Phase::Copying | Phase::CatchingUp | Phase::Fenced
    )
}

/// The steps of one migration, one per phase. Each runs to its end; the driver decides
/// about time, aborts and what comes next.
pub trait Steps {
    /// Called on entering each phase (status, metrics, logs).
    fn entered(&mut self, phase: Phase);
    async fn prepare(&mut self) -> Result<(), Failure>;
    async fn copy(&mut self) -> Result<(), Failure>;
    async fn catch_up(&mut self) -> Result<(), Failure>;
    /// Writes the fence, drains, verifies and persists the translation.
    async fn fence(&mut self) -> Result<(), Failure>;
    /// Sends the commit Txn and finds out whether it was applied; returns only once that
    /// is known (Err: the source refused it), then switches the route.
    async fn commit(&mut self) -> Result<(), Failure>;
    /// Undoes what a failed migration holds. Returns true if it found the commit marker
    /// after all (and rolled forward).
    async fn release(&mut self, why: &Failure) -> bool;
    /// Before copying again after a source compaction: forget the partial copy.
    async fn reset_copy(&mut self) -> Result<(), Failure>;
}

/// How long the timed phases may take.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub catch_up: Duration,
    /// The lag the catch-up must reach (named when it times out).
    pub max_lag: i64,
    pub fence: Duration,
    /// Copies started in all, when the source is compacted under them.
    pub copy_attempts: u32,
}

/// How a migration ended.
#[derive(Debug)]
pub struct End {
    pub outcome: Outcome,
    /// Why it failed (also kept when the release rolled forward).
    pub failure: Option<Failure>,
    /// The phases it went through, in order (the last is Ready).
    pub path: Vec<Phase>,
}

/// Runs `step` unless `abort` comes first (or has come).
async fn or_abort<T>(
    abort: &mut watch::Receiver<bool>,
    step: impl std::future::Future<Output = Result<T, Failure>>,
) -> Result<T, Failure> {
    if *abort.borrow() {
        return Err(Failure::Aborted);
    }
    tokio::select! {
        r = step => r,
        _ = abort.wait_for(|a| *a) => Err(Failure::Aborted),
    }
}

/// Runs `step` for at most `limit`; `on_timeout` names the failure.
async fn within<T>(
    limit: Duration,
    on_timeout: impl FnOnce() -> Failure,
    step: impl std::future::Future<Output = Result<T, Failure>>,
) -> Result<T, Failure> {
    match tokio::time::timeout(limit, step).await {
        Ok(r) => r,
        Err(_) => Err(on_timeout()),
    }
}

fn event(result: Result<(), Failure>, done: Event) -> Event {
    match result {
        Ok(()) => done,
        Err(f) => Event::Failed(f),
    }
}

/// Runs a migration from Preparing to Ready through the table.
pub async fn drive<S: Steps>(steps: &mut S, limits: Limits, mut abort: watch::Receiver<bool>) -> End {
    let mut phase = Phase::Preparing;
    let mut path = vec![phase];
    let mut copies = 0;
    let mut failure: Option<Failure> = None;
    let mut outcome = Outcome::Failed;
    steps.entered(phase);
    while phase != Phase::Ready {
        let ev = match phase {
            Phase::Preparing => event(or_abort(&mut abort, steps.prepare()).await, Event::Prepared),
            Phase::Copying => {
                copies += 1;
                event(or_abort(&mut abort, steps.copy()).await, Event::Copied)
            }
            Phase::CatchingUp => {
                let step = within(
                    limits.catch_up,
                    || Failure::CatchUpTimeout {
                        max: limits.max_lag,
                        secs: limits.catch_up.as_secs(),
                    },
                    steps.catch_up(),
                );
                event(or_abort(&mut abort, step).await, Event::CaughtUp)
            }
            Phase::Fenced => {
                let step = within(limits.fence, || Failure::FenceTimeout(limits.fence), steps.fence());
                event(or_abort(&mut abort, step).await, Event::Drained)
            }
            // No abort and no deadline: the commit's outcome is never guessed.
            Phase::Committing => event(steps.commit().await, Event::Committed),
            Phase::Failed => {
                let why = failure.as_ref().unwrap_or(&Failure::Aborted);
                if steps.release(why).await {
                    Event::RolledForward
                } else {
                    Event::Released
                }
            }
            Phase::Ready => unreachable!("the loop ends at Ready"),
        };
        let ev = match ev {
            Event::Failed(f) if f.is_compaction() && copies < limits.copy_attempts => {
                tracing::warn!(error = %f, attempt = copies, "the source was compacted under the migration; copying again from a newer revision");
                match steps.reset_copy().await {
                    Ok(()) => Event::SourceCompacted,
                    Err(e) => Event::Failed(e),
                }
            }
            other => other,
        };
        let Some(to) = next(phase, &ev) else {
            // A step reported something its phase cannot: treat it as a failure.
            tracing::error!(phase = phase.as_str(), event = ?ev, "a migration step ended with an event its phase does not allow");
            if phase == Phase::Failed {
                break;
            }
            failure = Some(Failure::Task(format!("unexpected {ev:?} in {}", phase.as_str())));
            phase = Phase::Failed;
            path.push(phase);
            steps.entered(phase);
            continue;
        };
        match ev {
            Event::Committed | Event::RolledForward => outcome = Outcome::Succeeded,
            Event::Released => {
                outcome = match &failure {
                    Some(Failure::Aborted) => Outcome::Aborted,
                    _ => Outcome::Failed,
                }
            }
            Event::Failed(f) => failure = Some(f),
            _ => {}
        }
        phase = to;
        path.push(phase);
        steps.entered(phase);
    }
    End { outcome, failure, path }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use tokio::time::Instant;

    /// Each step takes its time (on the paused clock) and gives its result.
    #[derive(Default)]
    struct Script {
        took: HashMap<&'static str, Duration>,
        fails: HashMap<&'static str, fn() -> Failure>,
        /// Copy attempts that fail with a source compaction.
        compactions: u32,
        release_finds_commit: bool,
        calls: Vec<&'static str>,
        entered: Vec<Phase>,
        released_because: Option<String>,
    }

    impl Script {
        async fn run(&mut self, name: &'static str) -> Result<(), Failure> {
            self.calls.push(name);
            if let Some(d) = self.took.get(name) {
                tokio::time::sleep(*d).await;
            }
            match self.fails.get(name) {
                Some(f) => Err(f()),
                None => Ok(()),
            }
        }
    }

    fn compacted() -> Failure {
        Failure::Datastore {
            side: "source",
            source: ProxyError::Etcd(tonic::Status::out_of_range(crate::error::messages::COMPACTED)),
        }
    }

    impl Steps for Script {
        fn entered(&mut self, phase: Phase) {
            self.entered.push(phase);
        }
        async fn prepare(&mut self) -> Result<(), Failure> {
            self.run("prepare").await
        }
        async fn copy(&mut self) -> Result<(), Failure> {
            if self.compactions > 0 {
                self.compactions -= 1;
                self.calls.push("copy");
                return Err(compacted());
            }
            self.run("copy").await
        }
        async fn catch_up(&mut self) -> Result<(), Failure> {
            self.run("catch_up").await
        }
        async fn fence(&mut self) -> Result<(), Failure> {
            self.run("fence").await
        }
        async fn commit(&mut self) -> Result<(), Failure> {
            self.run("commit").await
        }
        async fn release(&mut self, why: &Failure) -> bool {
            self.calls.push("release");
            self.released_because = Some(why.to_string());
            self.release_finds_commit
        }
        async fn reset_copy(&mut self) -> Result<(), Failure> {
            self.calls.push("reset_copy");
            Ok(())
        }
    }

    const LIMITS: Limits = Limits {
        catch_up: Duration::from_secs(600),
        max_lag: 20,
        fence: Duration::from_secs(10),
        copy_attempts: 3,
    };

    fn no_abort() -> watch::Receiver<bool> {
        // The sender is leaked so the receiver never sees it closed.
        let (tx, rx) = watch::channel(false);
        std::mem::forget(tx);
        rx
    }

    use Phase::*;

    #[tokio::test(start_paused = true)]
    async fn a_migration_goes_through_every_phase_in_order() {
        let mut s = Script::default();
        let end = drive(&mut s, LIMITS, no_abort()).await;
        assert_eq!(end.outcome, Outcome::Succeeded);
        assert_eq!(end.path, [Preparing, Copying, CatchingUp, Fenced, Committing, Ready]);
        assert_eq!(s.entered, end.path);
        assert_eq!(s.calls, ["prepare", "copy", "catch_up", "fence", "commit"]);
        assert!(end.failure.is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn an_abort_in_any_phase_before_the_commit_releases_and_leaves_the_tenant() {
        for (phase, step) in [
            (Preparing, "prepare"),
            (Copying, "copy"),
            (CatchingUp, "catch_up"),
            (Fenced, "fence"),
        ] {
            let mut s = Script::default();
            s.took.insert(step, Duration::from_secs(5));
            let (tx, rx) = watch::channel(false);
            let aborter = tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(1)).await;
                tx.send(true).unwrap();
                tx
            });
            let started = Instant::now();
            let end = drive(&mut s, LIMITS, rx).await;
            let _tx = aborter.await.unwrap();
            assert_eq!(end.outcome, Outcome::Aborted, "abort in {phase:?}");
            assert_eq!(*end.path.last().unwrap(), Ready);
            assert_eq!(end.path[end.path.len() - 3], phase, "{:?}", end.path);
            assert_eq!(end.path[end.path.len() - 2], Failed);
            assert_eq!(s.calls.last(), Some(&"release"));
            assert!(!s.calls.contains(&"commit"));
            assert_eq!(
                started.elapsed(),
                Duration::from_secs(1),
                "the step is dropped at the abort"
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_abort_during_the_commit_is_ignored() {
        let mut s = Script::default();
        s.took.insert("commit", Duration::from_secs(30));
        let (tx, rx) = watch::channel(false);
        let drive = drive(&mut s, LIMITS, rx);
        let abort = async {
            // Into the commit (the earlier steps take no time), then abort.
            tokio::time::sleep(Duration::from_secs(1)).await;
            tx.send(true).unwrap();
        };
        let (end, ()) = tokio::join!(drive, abort);
        assert_eq!(end.outcome, Outcome::Succeeded);
        assert!(!s.calls.contains(&"release"));
        assert!(abortable(Fenced) && !abortable(Committing));
    }

    #[tokio::test(start_paused = true)]
    async fn fenced_steps_longer_than_the_fence_timeout_fail_and_release() {
        let mut s = Script::default();
        s.took.insert("fence", Duration::from_secs(11));
        let started = Instant::now();
        let end = drive(&mut s, LIMITS, no_abort()).await;
        assert_eq!(end.outcome, Outcome::Failed);
        assert!(matches!(end.failure, Some(Failure::FenceTimeout(_))));
        assert_eq!(started.elapsed(), LIMITS.fence);
        assert_eq!(s.calls.last(), Some(&"release"));
        assert!(s.released_because.unwrap().contains("fence was held longer"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_commit_is_never_abandoned_however_long_it_takes() {
        let mut s = Script::default();
        s.took.insert("commit", Duration::from_secs(3600));
        let started = Instant::now();
        let end = drive(&mut s, LIMITS, no_abort()).await;
        assert_eq!(end.outcome, Outcome::Succeeded);
        assert_eq!(started.elapsed(), Duration::from_secs(3600));
        assert!(!s.calls.contains(&"release"));
    }

    #[tokio::test(start_paused = true)]
    async fn a_commit_refused_by_the_source_fails_and_releases() {
        let mut s = Script::default();
        s.fails.insert("commit", || Failure::FenceLost(String::new()));
        let end = drive(&mut s, LIMITS, no_abort()).await;
        assert_eq!(end.outcome, Outcome::Failed);
        assert_eq!(
            end.path,
            [Preparing, Copying, CatchingUp, Fenced, Committing, Failed, Ready]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_release_that_finds_the_commit_rolls_forward() {
        let mut s = Script {
            release_finds_commit: true,
            ..Default::default()
        };
        s.fails.insert("fence", || {
            Failure::Verify(VerifyError::Mismatch(crate::migrate::verify::Difference::Injected(
                "x".into(),
            )))
        });
        let end = drive(&mut s, LIMITS, no_abort()).await;
        assert_eq!(end.outcome, Outcome::Succeeded);
        assert!(matches!(end.failure, Some(Failure::Verify(_))));
        assert_eq!(end.path, [Preparing, Copying, CatchingUp, Fenced, Failed, Ready]);
    }

    #[tokio::test(start_paused = true)]
    async fn the_catch_up_has_its_own_deadline() {
        let mut s = Script::default();
        s.took.insert("catch_up", Duration::from_secs(601));
        let end = drive(&mut s, LIMITS, no_abort()).await;
        assert!(matches!(end.failure, Some(Failure::CatchUpTimeout { .. })));
        assert_eq!(end.outcome, Outcome::Failed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_source_compaction_restarts_the_copy_a_few_times_only() {
        let mut s = Script {
            compactions: 2,
            ..Default::default()
        };
        let end = drive(&mut s, LIMITS, no_abort()).await;
        assert_eq!(end.outcome, Outcome::Succeeded);
        assert_eq!(
            s.calls,
            [
                "prepare",
                "copy",
                "reset_copy",
                "copy",
                "reset_copy",
                "copy",
                "catch_up",
                "fence",
                "commit"
            ]
        );

        let mut s = Script {
            compactions: 3,
            ..Default::default()
        };
        let end = drive(&mut s, LIMITS, no_abort()).await;
        assert_eq!(end.outcome, Outcome::Failed);
        assert!(end.failure.unwrap().is_compaction());
    }

    #[test]
    fn the_table_refuses_every_transition_it_does_not_name() {
        let phases = [Ready, Preparing, Copying, CatchingUp, Fenced, Committing, Failed];
        let events = || {
            vec![
                Event::Prepared,
                Event::Copied,
                Event::CaughtUp,
                Event::Drained,
                Event::Committed,
                Event::SourceCompacted,
                Event::Failed(Failure::Aborted),
                Event::Released,
                Event::RolledForward,
            ]
        };
        let mut allowed = 0;
        for p in phases {
            for e in events() {
                if let Some(to) = next(p, &e) {
                    allowed += 1;
                    // Nothing leads back before Copying, and Ready is only reached by
                    // committing or releasing.
                    assert_ne!(to, Preparing);
                    if to == Ready {
                        assert!(matches!(e, Event::Committed | Event::Released | Event::RolledForward));
                    }
                }
            }
        }
        assert_eq!(allowed, 14);
        assert_eq!(next(Ready, &Event::Prepared), None);
        assert_eq!(next(Committing, &Event::Released), None);
        assert_eq!(next(Fenced, &Event::Committed), None, "only the commit step commits");
    }
}
