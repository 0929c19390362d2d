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

/// Runs until the process stops.
pub fn spawn_trimmer(metrics: Arc<Metrics>, background: &crate::tasks::Background) {
    background.spawn(async move {
        let mut trimmed_at = metrics.streams_closed.get();
        // After a trim, the next tick trims again if more streams have closed since: a
        // burst's last streams would otherwise keep its memory until the next burst.
        let mut follow_up = false;
        loop {
            tokio::time::sleep(EVERY).await;
            let closed = metrics.streams_closed.get();
            let since = closed - trimmed_at;
            if since >= CLOSED_ENOUGH || (follow_up && since > 0) {
                // It walks the heap: off the runtime's threads.
                let _ = tokio::task::spawn_blocking(trim).await;
                tracing::debug!(
                    streams = closed - trimmed_at,
                    "streams closed; returned free memory to the system"
                );
                trimmed_at = closed;
                follow_up = since >= CLOSED_ENOUGH;
            }
        }
    });
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
