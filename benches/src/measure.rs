//! What a load run measures besides its own counts: latency histograms,
//! memory of the process, progress and throughput over time.

use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Largest latency a histogram records (60 s, in microseconds); longer ones
/// are recorded as this.
pub const LATENCY_US_MAX: u64 = 60_000_000;

/// How often the progress bar and the throughput timeline are sampled.
pub const SAMPLE_EVERY: Duration = Duration::from_millis(100);

/// An empty latency histogram in microseconds, 3 significant figures.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).expect("static histogram bounds are valid")
}

fn status_kib(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Peak resident set size of this process so far (`VmHWM`), on Linux.
pub fn peak_rss_bytes() -> Option<u64> {
    status_kib("VmHWM:").map(|kib| kib * 1024)
}

/// Resident set size of this process now (`VmRSS`), on Linux.
pub fn rss_bytes() -> Option<u64> {
    status_kib("VmRSS:").map(|kib| kib * 1024)
}

/// Clock ticks per second of `/proc/<pid>/stat`'s times (Linux's `USER_HZ`,
/// 100 on every architecture it runs on).
const USER_HZ: f64 = 100.0;

/// CPU time this process (all its threads) has used so far, user plus
/// system, in seconds (10 ms resolution), on Linux. On a shared machine
/// the CPU a phase uses varies less than its wall-clock time.
pub fn cpu_seconds() -> Option<f64> {
    cpu_seconds_from("/proc/self/stat")
}

/// CPU time (user + system) process `pid` has used so far, in seconds
/// (`None` where `/proc` is not available or the process is gone).
pub fn process_cpu_seconds(pid: u32) -> Option<f64> {
    cpu_seconds_from(&format!("/proc/{pid}/stat"))
}

fn cpu_seconds_from(path: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(path).ok()?;
    // Fields after the command name, which is in parentheses and may hold
    // spaces: state is field 3, utime 14 and stime 15.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let user: u64 = fields.next()?.parse().ok()?;
    let system: u64 = fields.next()?.parse().ok()?;
    Some((user + system) as f64 / USER_HZ)
}

/// A progress bar of `total` steps, hidden when `quiet`.
pub fn progress(total: u64, label: &str, quiet: bool) -> ProgressBar {
    if quiet {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    let style =
        ProgressStyle::with_template("{msg:>10} [{bar:40}] {pos}/{len} {per_sec} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
    bar.set_style(style);
    bar.set_message(label.to_owned());
    bar
}

/// Completed operations sampled every [`SAMPLE_EVERY`]: seconds since the
/// start and the count at that time.
pub type Timeline = Vec<(f64, u64)>;

/// A thread that samples a counter every [`SAMPLE_EVERY`] into a timeline
/// and moves a progress bar, until stopped.
pub struct Sampler {
    running: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Timeline>,
}

impl Sampler {
    /// Starts sampling `done` (from now) into a timeline shown on `bar`.
    pub fn start(done: Arc<AtomicU64>, bar: ProgressBar) -> Self {
        Self::start_with(move || done.load(Ordering::Relaxed), bar)
    }

    /// Starts sampling whatever `count` returns.
    pub fn start_with(count: impl Fn() -> u64 + Send + 'static, bar: ProgressBar) -> Self {
        let running = Arc::new(AtomicBool::new(true));
        let thread = {
            let running = Arc::clone(&running);
            std::thread::spawn(move || {
                let started = Instant::now();
                let mut timeline = vec![(0.0, count())];
                while running.load(Ordering::Relaxed) {
                    std::thread::sleep(SAMPLE_EVERY);
                    let now = count();
                    bar.set_position(now);
                    timeline.push((started.elapsed().as_secs_f64(), now));
                }
                bar.finish();
                timeline
            })
        };
        Self { running, thread }
    }

    /// Stops sampling and returns the timeline (empty if the thread died).
    pub fn stop(self) -> Timeline {
        self.running.store(false, Ordering::Relaxed);
        self.thread.join().unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_seconds_counts_this_process_spinning() {
        let start = cpu_seconds().expect("/proc/self/stat is readable on Linux");
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut spins = 0u64;
        while cpu_seconds().is_some_and(|now| now - start < 0.05) {
            spins = std::hint::black_box(spins.wrapping_add(1));
            assert!(Instant::now() < deadline, "CPU time did not move");
        }
        assert!(cpu_seconds().is_some_and(|now| now >= start + 0.05));
    }
}
