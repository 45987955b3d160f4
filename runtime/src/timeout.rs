//! Timeouts of the futures that wait for a command's answer.
//!
//! A timer per command costs a wake-up of the timer thread per command (the
//! global timer of `futures-timer` is woken on each registration), which at
//! 100,000s of commands per second was the largest single cost of a
//! buffered command. Instead, every waiting caller shares the timer of the
//! current *epoch* ([`TIMEOUT_EPOCH`]); when it fires, those whose deadline
//! has passed give up and the others wait on the next epoch's. A timeout
//! therefore fires up to one epoch late, and one timer is armed per epoch
//! on each thread that waits (kept per thread: no lock shared by the
//! threads of the shards, which each wait for thousands of answers a
//! second).

use futures::FutureExt;
use futures::future::Shared;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

/// Length of an epoch: a caller's timeout fires at most this late.
pub(crate) const TIMEOUT_EPOCH: Duration = Duration::from_millis(50);

type Epoch = Shared<futures_timer::Delay>;

thread_local! {
    /// This thread's current epoch: when it ends, and its timer.
    static CURRENT: std::cell::RefCell<Option<(Instant, Epoch)>> =
        const { std::cell::RefCell::new(None) };
}

/// The timer of the epoch running at `now` (a new one if the last has ended).
fn epoch(now: Instant) -> Epoch {
    CURRENT.with_borrow_mut(|current| match current {
        Some((end, epoch)) if *end > now && epoch.peek().is_none() => epoch.clone(),
        _ => {
            let epoch = futures_timer::Delay::new(TIMEOUT_EPOCH).shared();
            *current = Some((now + TIMEOUT_EPOCH, epoch.clone()));
            epoch
        }
    })
}

/// `timeout` after `from`, or a year after it when that is past what an
/// `Instant` can hold (a timeout of `Duration::MAX` means no timeout).
pub(crate) fn deadline(from: Instant, timeout: Duration) -> Instant {
    from.checked_add(timeout)
        .unwrap_or(from + Duration::from_secs(86_400 * 365))
}

/// Waits for `reply` until `deadline`: `None` when the deadline came first
/// (noticed within one [`TIMEOUT_EPOCH`]). Runs on any executor.
pub(crate) struct Deadline<F> {
    reply: F,
    deadline: Instant,
    epoch: Option<Epoch>,
    /// A reading of the clock taken just before the first poll, used by
    /// it instead of another.
    now: Option<Instant>,
}

impl<F> Deadline<F> {
    /// Waits for `reply` at most `timeout` from now.
    pub(crate) fn after(reply: F, timeout: Duration) -> Self {
        let now = Instant::now();
        Self::until(reply, deadline(now, timeout), now)
    }

    /// Waits for `reply` until `deadline`; `now` is a reading of the clock
    /// taken just before.
    pub(crate) fn until(reply: F, deadline: Instant, now: Instant) -> Self {
        Self {
            reply,
            deadline,
            epoch: None,
            now: Some(now),
        }
    }
}

impl<F: Future + Unpin> Future for Deadline<F> {
    type Output = Option<F::Output>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        if let Poll::Ready(result) = Pin::new(&mut this.reply).poll(cx) {
            return Poll::Ready(Some(result));
        }
        loop {
            let now = this.now.take().unwrap_or_else(Instant::now);
            if now >= this.deadline {
                return Poll::Ready(None);
            }
            let epoch = this.epoch.get_or_insert_with(|| epoch(now));
            match Pin::new(epoch).poll(cx) {
                Poll::Pending => return Poll::Pending,
                // That epoch has ended: wait on the next one.
                Poll::Ready(()) => this.epoch = None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_in_time_is_returned() {
        let (tx, rx) = oneshot::channel::<u32>();
        tx.send(7).ok();
        let got = futures::executor::block_on(Deadline::after(rx, Duration::from_secs(5)));
        assert_eq!(got.map(Result::ok), Some(Some(7)));
    }

    #[test]
    fn no_reply_times_out_within_an_epoch() {
        let (_tx, rx) = oneshot::channel::<u32>();
        let started = Instant::now();
        let got = futures::executor::block_on(Deadline::after(rx, Duration::from_millis(120)));
        assert!(got.is_none());
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(120), "{waited:?}");
    }

    #[test]
    fn many_waiters_share_epochs_and_each_times_out() {
        let waiters: Vec<_> = (0..100)
            .map(|i| {
                let (tx, rx) = oneshot::channel::<u32>();
                (tx, Deadline::after(rx, Duration::from_millis(10 + i)))
            })
            .collect();
        let (senders, futures): (Vec<_>, Vec<_>) = waiters.into_iter().unzip();
        let results = futures::executor::block_on(futures::future::join_all(futures));
        assert!(results.iter().all(Option::is_none));
        drop(senders);
    }
}
