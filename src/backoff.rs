//! The one backoff: waits that double from a first delay up to a ceiling, on tokio's clock
//! (so tests can run it on paused time).

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Backoff {
    first: Duration,
    max: Duration,
    next: Duration,
    /// Waits so far since the last reset.
    pub attempts: u32,
}

impl Backoff {
    pub fn new(first: Duration, max: Duration) -> Self {
        Backoff {
            first,
            max,
            next: first,
            attempts: 0,
        }
    }

    /// The delay the next [`Backoff::wait`] will take.
    pub fn peek(&self) -> Duration {
        self.next
    }

    /// Takes the next delay without waiting (for callers that wait on something else too).
    pub fn step(&mut self) -> Duration {
        let d = self.next;
        self.next = (self.next * 2).min(self.max);
        self.attempts += 1;
        d
    }

    pub async fn wait(&mut self) {
        let d = self.step();
        tokio::time::sleep(d).await;
    }

    /// Something worked: start again from the first delay.
    pub fn reset(&mut self) {
        self.next = self.first;
        self.attempts = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn delays_double_up_to_the_ceiling_and_reset() {
        let mut b = Backoff::new(Duration::from_millis(5), Duration::from_millis(100));
        let start = tokio::time::Instant::now();
        for _ in 0..7 {
            b.wait().await;
        }
        // 5 + 10 + 20 + 40 + 80 + 100 + 100
        assert_eq!(start.elapsed(), Duration::from_millis(355));
        assert_eq!(b.attempts, 7);
        b.reset();
        assert_eq!(b.peek(), Duration::from_millis(5));
        assert_eq!(b.attempts, 0);
    }
}
