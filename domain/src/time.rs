//! Wall-clock timestamps with microsecond resolution.

use serde::{Deserialize, Serialize};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Microseconds since the Unix epoch (UTC).
///
/// The store stamps each event with the time its batch was written
/// (`recorded_at`) and never lets that time go backwards within one store, so
/// that temporal queries can stop at the first event recorded after a point.
/// The default is the epoch.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Timestamp(u64);

impl Timestamp {
    /// The epoch itself.
    pub const EPOCH: Timestamp = Timestamp(0);

    /// A timestamp this many microseconds after the epoch.
    pub const fn from_micros(micros: u64) -> Self {
        Self(micros)
    }

    /// Microseconds since the epoch.
    pub const fn as_micros(self) -> u64 {
        self.0
    }

    /// The current time of the system clock; the epoch if the clock is set
    /// before 1970, and saturated far in the future.
    pub fn now() -> Self {
        let since = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or(Duration::ZERO);
        Self(u64::try_from(since.as_micros()).unwrap_or(u64::MAX))
    }
}

impl Timestamp {
    /// This timestamp moved forward by `duration` (saturating).
    pub fn plus(self, duration: Duration) -> Self {
        Self(
            self.0
                .saturating_add(u64::try_from(duration.as_micros()).unwrap_or(u64::MAX)),
        )
    }

    /// How long after `earlier` this is (zero when it is not after it).
    pub fn since(self, earlier: Timestamp) -> Duration {
        Duration::from_micros(self.0.saturating_sub(earlier.0))
    }
}

/// Where the runtime reads the time for process-manager timers.
///
/// [`SystemClock`] in production; [`VirtualClock`] in tests, which only moves
/// when told to.
pub trait Clock: Send + Sync + 'static {
    /// The current time.
    fn now(&self) -> Timestamp;
}

/// The system's wall clock.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

/// A clock for tests: it stands still until advanced. Clones share the time.
///
/// ```
/// use eventfold_domain::{Clock, Timestamp, VirtualClock};
/// use std::time::Duration;
/// let clock = VirtualClock::new(Timestamp::from_micros(1_000));
/// clock.advance(Duration::from_millis(2));
/// assert_eq!(clock.now(), Timestamp::from_micros(3_000));
/// ```
#[derive(Clone, Debug, Default)]
pub struct VirtualClock(std::sync::Arc<std::sync::atomic::AtomicU64>);

impl VirtualClock {
    /// A clock showing `start`.
    pub fn new(start: Timestamp) -> Self {
        Self(std::sync::Arc::new(std::sync::atomic::AtomicU64::new(
            start.as_micros(),
        )))
    }

    /// Moves the time forward by `duration`.
    pub fn advance(&self, duration: Duration) {
        let micros = u64::try_from(duration.as_micros()).unwrap_or(u64::MAX);
        let _ = self.0.fetch_update(
            std::sync::atomic::Ordering::SeqCst,
            std::sync::atomic::Ordering::SeqCst,
            |now| Some(now.saturating_add(micros)),
        );
    }
}

impl Clock for VirtualClock {
    fn now(&self) -> Timestamp {
        Timestamp(self.0.load(std::sync::atomic::Ordering::SeqCst))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn virtual_clock_moves_only_when_advanced_and_clones_share_it() {
        let clock = VirtualClock::new(Timestamp::from_micros(10));
        let other = clock.clone();
        assert_eq!(clock.now(), Timestamp::from_micros(10));
        other.advance(Duration::from_micros(5));
        assert_eq!(clock.now(), Timestamp::from_micros(15));
        assert_eq!(
            clock.now().since(Timestamp::from_micros(20)),
            Duration::ZERO
        );
        assert_eq!(
            Timestamp::from_micros(1).plus(Duration::from_micros(2)),
            Timestamp::from_micros(3)
        );
    }

    #[test]
    fn now_is_after_2020() {
        assert!(Timestamp::now() > Timestamp::from_micros(1_577_836_800_000_000));
    }
}
