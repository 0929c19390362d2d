//! Gives memory back to the system after many streams have closed. Each open stream holds
//! a few KiB in many small allocations; glibc keeps freed memory in its arenas, so a burst
//! of ten thousand watches would leave the process at its peak size for good. When the
//! number of open streams has fallen, the allocator is asked to return what it can.

use std::sync::Arc;
use std::time::Duration;

use crate::metrics::Metrics;

/// How often the open streams are counted.
const EVERY: Duration = Duration::from_secs(5);
/// Streams that must have closed since the last trim for another to be worth it.
const CLOSED_ENOUGH: u64 = 256;

/// Whether to trim at a tick, from the streams closed since the last trim; and whether
/// the next tick must trim too. A trim that a burst of closes earned is followed by one
/// more at the next tick, whatever closes by then: a stream's memory is freed a little
/// after it counts as closed (its connection's state, its buffers), so a trim right after
/// the last close would leave the burst's tail with the allocator for good.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Trimming {
    follow_up: bool,
}

impl Trimming {
    fn tick(&mut self, closed_since: u64) -> bool {
        let earned = closed_since >= CLOSED_ENOUGH;
        let trim = earned || self.follow_up;
        self.follow_up = earned;
        trim
    }
}

/// Allocations of at least this size get pages of their own, which go back to the system
/// when freed. glibc otherwise raises that bound to the largest block freed so far (up to
/// 32 MiB), and a key map built or loaded once (megabytes) would then leave its memory in
/// the heap, where later small allocations pin it.
const OWN_PAGES_FROM: i32 = 1 << 20;

/// Sets the allocator up (once, at start).
pub fn configure() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes a tunable of the allocator; called before the runtime
    // starts its threads.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, OWN_PAGES_FROM);
    }
}

/// Runs until the process stops.
pub fn spawn_trimmer(metrics: Arc<Metrics>, background: &crate::tasks::Background) {
    background.spawn(async move {
        let mut trimmed_at = metrics.streams_closed.get();
        let mut trimming = Trimming::default();
        loop {
            tokio::time::sleep(EVERY).await;
            let closed = metrics.streams_closed.get();
            if trimming.tick(closed - trimmed_at) {
                // It walks the heap: off the runtime's threads.
                let _ = tokio::task::spawn_blocking(trim).await;
                tracing::debug!(
                    streams = closed - trimmed_at,
                    "streams closed; returned free memory to the system"
                );
                trimmed_at = closed;
            }
        }
    });
}

/// Gives the allocator's free memory back now: after a large structure was dropped (a
/// migration's working key map, a pruned one).
pub async fn return_free_memory() {
    let _ = tokio::task::spawn_blocking(trim).await;
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim() {
    // SAFETY: malloc_trim only releases free memory of the allocator; it touches no
    // memory the program owns.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim() {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_trimmed_while_it_closes_and_once_more_after() {
        let mut t = Trimming::default();
        // Quiet: nothing to give back.
        assert!(!t.tick(0));
        assert!(!t.tick(CLOSED_ENOUGH - 1));
        // A burst closes over two ticks, then nothing more closes.
        assert!(t.tick(5_000));
        assert!(t.tick(5_000));
        assert!(t.tick(0), "once more after the burst: its last frees come late");
        assert!(!t.tick(0));
        assert!(!t.tick(3));
    }
}
