//! Measurements the benchmark examples share: CPU time and resident memory of this process
//! and of the children a bench starts.
//! Included with `#[path]` (a folder without `main.rs` is not an example of its own); each
//! example uses what it needs.
#![allow(dead_code)]

pub mod children;

/// User + system CPU time of this process, in seconds.
pub fn cpu_seconds() -> f64 {
    // SAFETY: getrusage only writes into the struct we pass.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF with a valid pointer.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return f64::NAN;
    }
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(usage.ru_utime) + t(usage.ru_stime)
}

/// What this process did over one measuring window: items counted, CPU seconds, wall seconds.
pub struct Window {
    pub items: f64,
    pub cpu: f64,
    pub wall: f64,
}

impl Window {
    /// Waits `seconds` and returns what `count` and this process's CPU time moved by meanwhile.
    pub async fn measure(count: &std::sync::atomic::AtomicU64, seconds: u64) -> Window {
        use std::sync::atomic::Ordering;
        let (n0, c0, t0) = (
            count.load(Ordering::Relaxed),
            cpu_seconds(),
            std::time::Instant::now(),
        );
        tokio::time::sleep(std::time::Duration::from_secs(seconds)).await;
        Window {
            items: count.load(Ordering::Relaxed).saturating_sub(n0) as f64,
            cpu: cpu_seconds() - c0,
            wall: t0.elapsed().as_secs_f64(),
        }
    }

    /// Items per second.
    pub fn rate(&self) -> f64 {
        self.items / self.wall
    }

    /// CPU µs per item (NaN when nothing was counted).
    pub fn cpu_us_per_item(&self) -> f64 {
        if self.items > 0.0 {
            self.cpu * 1e6 / self.items
        } else {
            f64::NAN
        }
    }

    /// CPU as % of one core.
    pub fn cpu_pct(&self) -> f64 {
        self.cpu / self.wall * 100.0
    }
}

/// Resident memory sampled every 250 ms over a window: a gateway fed in bursts (every tag
/// changing once a second) holds each burst in its queues for a moment, so one reading at the
/// window's end lands anywhere between the trough and the crest.
pub struct RssSamples(Vec<f64>);

impl RssSamples {
    /// Samples `pid` (`None`: this process) for `seconds`.
    pub async fn over(pid: Option<u32>, seconds: u64) -> RssSamples {
        let step = std::time::Duration::from_millis(250);
        let end = tokio::time::Instant::now() + std::time::Duration::from_secs(seconds);
        let mut samples = Vec::new();
        let mut next = tokio::time::Instant::now();
        while next < end {
            samples.push(pid.map_or_else(rss_mb, process_rss_mb));
            next += step;
            tokio::time::sleep_until(next.min(end)).await;
        }
        RssSamples(samples)
    }

    /// The median sample, MB.
    pub fn median(&self) -> f64 {
        let mut sorted: Vec<f64> = self.0.iter().copied().filter(|v| v.is_finite()).collect();
        sorted.sort_by(f64::total_cmp);
        sorted.get(sorted.len() / 2).copied().unwrap_or(f64::NAN)
    }

    /// The highest sample, MB.
    pub fn max(&self) -> f64 {
        self.0
            .iter()
            .copied()
            .filter(|v| v.is_finite())
            .fold(f64::NAN, f64::max)
    }
}

/// Resident memory of this process, in MB (NaN where /proc is missing).
pub fn rss_mb() -> f64 {
    status_kb("self", "VmRSS:").map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Resident memory of process `pid` (a child the bench started), in MB.
pub fn process_rss_mb(pid: u32) -> f64 {
    status_kb(&pid.to_string(), "VmRSS:").map_or(f64::NAN, |kb| kb / 1024.0)
}

/// User + system CPU seconds of process `pid` (`/proc/<pid>/stat`, in clock ticks of 1/100 s).
pub fn process_cpu_seconds(pid: u32) -> f64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return f64::NAN;
    };
    // Fields after the command name (which may hold spaces) start at field 3, the state.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(Vec::new(), |(_, rest)| rest.split_whitespace().collect());
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
    match (ticks(11), ticks(12)) {
        (Some(user), Some(system)) => (user + system) / 100.0,
        _ => f64::NAN,
    }
}

/// Peak resident memory of this process since it started or since [`reset_peak_rss`], in MB.
pub fn peak_rss_mb() -> f64 {
    status_kb("self", "VmHWM:").map_or(f64::NAN, |kb| kb / 1024.0)
}

/// Starts a new peak for [`peak_rss_mb`] (Linux: `5` into `/proc/self/clear_refs`); false where
/// the kernel does not offer it.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

fn status_kb(process: &str, field: &str) -> Option<f64> {
    std::fs::read_to_string(format!("/proc/{process}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
}
