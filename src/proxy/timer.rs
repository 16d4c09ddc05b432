//! hyper's timer on Pingora's shared coarse timer instead of tokio's timer wheel.
//!
//! hyper arms `header_read_timeout` for every request of a keep-alive connection. On tokio's
//! timer, a deadline earlier than the one the runtime's driver will next wake for unparks that
//! driver: an `eventfd` write on most requests (0.57 per request under `bench/syscalls.sh`
//! before this timer). Pingora's fast timers share one `Notify` per 10 ms slot, fired by one
//! clock thread, so arming one touches no runtime at all; the request body and upstream
//! deadlines use the same timers (`fast_timeout`).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::rt::{Sleep, Timer};
use pingora::time::fast_timeout::fast_sleep;

/// A [`Timer`] for hyper's server connections whose sleeps are Pingora fast timers.
#[derive(Clone, Copy, Debug, Default)]
pub struct FastTimer;

/// One of [`FastTimer`]'s sleeps.
struct FastSleep(Pin<Box<dyn Future<Output = ()> + Send + Sync>>);

impl Future for FastSleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.0.as_mut().poll(cx)
    }
}

impl Sleep for FastSleep {}

impl Timer for FastTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Sleep>> {
        // At least 1 ms: pingora-timeout 0.9 rounds a deadline up with `ms - 1`, which
        // underflows for a zero deadline in the timer's first millisecond. Every deadline
        // fires on a 10 ms tick anyway.
        let duration = duration.max(Duration::from_millis(1));
        Box::pin(FastSleep(Box::pin(fast_sleep(duration))))
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn Sleep>> {
        self.sleep(deadline.saturating_duration_since(Instant::now()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_sleep_ends_after_its_duration_not_before() {
        let started = Instant::now();
        FastTimer.sleep(Duration::from_millis(30)).await;
        assert!(
            started.elapsed() >= Duration::from_millis(25),
            "{:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn a_deadline_in_the_past_ends_at_once() {
        let started = Instant::now();
        FastTimer
            .sleep_until(Instant::now() - Duration::from_secs(1))
            .await;
        assert!(started.elapsed() < Duration::from_secs(1));
    }
}
