//! The process's background tasks (health probes, the marker follower, readiness, config
//! reload, the memory trimmer): spawned on one tracker, stopped by one token, and waited
//! for at shutdown. Tasks that serve one client stream or connection live and end with it
//! instead (see `server::stream::Driven`).

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Clone, Default)]
pub struct Background {
    tracker: TaskTracker,
    stop: CancellationToken,
}

impl Background {
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `task` until it returns or the process stops (it is then dropped at the
    /// await it waits at).
    pub fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) {
        let stop = self.stop.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = task => {}
            }
        });
    }

    /// Tasks of their own on the same tracker (waited for at shutdown), stopped with the
    /// process or by [`Background::stop`] on the child alone.
    pub fn child(&self) -> Self {
        Background {
            tracker: self.tracker.clone(),
            stop: self.stop.child_token(),
        }
    }

    /// Stops this one's tasks (a child's: see [`Background::child`]).
    pub fn stop(&self) {
        self.stop.cancel();
    }

    /// Cancelled when the process stops: for a task that must finish a step first.
    pub fn stopping(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Stops every task and waits for them, up to `grace`.
    pub async fn shutdown(&self, grace: Duration) {
        self.stop.cancel();
        self.tracker.close();
        if tokio::time::timeout(grace, self.tracker.wait()).await.is_err() {
            tracing::warn!(tasks = self.tracker.len(), "background tasks still running at shutdown");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn shutdown_stops_every_task_and_waits_for_them() {
        let bg = Background::new();
        let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
        // A task that would run for ever, holding a sender until it is dropped.
        bg.spawn(async move {
            let _held = tx;
            std::future::pending::<()>().await
        });
        bg.spawn(async {});
        bg.shutdown(Duration::from_secs(1)).await;
        assert!(rx.recv().await.is_none(), "the endless task was dropped");
        assert!(bg.tracker.is_empty());
    }
}
