//! Faults on demand: what a real hub does on a bad day, switched on and off from tests or the
//! command line.
//!
//! - **throttle above N events/s or B bytes/s**: transfers that would take the current
//!   one-second window past N events (or B body bytes) are rejected with
//!   `com.microsoft:server-busy` (REST: 503), as a hub with too few throughput units does
//!   (1 TU: 1 000 events/s or 1 MB/s). A transfer arriving in an empty window is always
//!   admitted, so a batch larger than the limit still gets through once per second.
//! - **throttle a fraction**: each transfer is rejected the same way with probability p.
//! - **refuse every Nth transfer**: transfers N, 2N, 3N, … (counted over every connection and
//!   REST request) are rejected the same way; with a client that keeps several in flight this
//!   refuses one batch while accepting those sent behind it.
//! - **refuse the next K transfers**: the next K are rejected, then everything passes again (a
//!   refusal of the front batch of a window, reproducibly).
//! - **drop connections**: every open AMQP connection is cut (TCP closed, no AMQP close).
//! - **down for D**: connections are cut and new ones closed on accept until D has passed
//!   (REST answers 503).
//! - **delay dispositions by D**: accepted transfers are settled D later, or at `clear()`
//!   (the link keeps receiving meanwhile).
//! - **expire tokens after D**: every token, already granted or put later, expires at most D
//!   after the fault was set (or it was put); links relying on it are then closed with
//!   `amqp:unauthorized-access` unless the client renews.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::store::lock;
use super::Shared;

/// The fault switches (shared by every connection).
#[derive(Default)]
pub(crate) struct FaultState {
    /// Events per second above which transfers are refused; 0 = off.
    pub throttle_above: AtomicU64,
    /// Body bytes per second above which transfers are refused; 0 = off.
    pub throttle_bytes_above: AtomicU64,
    /// Probability (in millionths) that a transfer is refused regardless of rate.
    pub throttle_ppm: AtomicU64,
    /// Every Nth transfer is refused; 0 = off.
    pub refuse_every: AtomicU64,
    /// Transfers seen since `refuse_every` was set.
    transfers: AtomicU64,
    /// Transfers still to refuse before admitting again.
    pub refuse_next: AtomicU64,
    /// (start of the current window, events admitted in it, bytes admitted in it).
    window: Mutex<Option<(Instant, u64, u64)>>,
    pub down_until: Mutex<Option<Instant>>,
    pub delay_dispositions: Mutex<Duration>,
    /// Cancelled (and replaced) by `clear()`: settles every delayed disposition at once.
    release_delayed: Mutex<tokio_util::sync::CancellationToken>,
    /// The cap on token lifetimes; None = tokens live as long as they say.
    pub expire_tokens_after: Mutex<Option<Duration>>,
}

impl FaultState {
    /// Whether a transfer of `events` events with `bytes` body bytes may pass the throttle now.
    pub fn admit(&self, events: u64, bytes: u64) -> bool {
        let refuse_now = self
            .refuse_next
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok();
        if refuse_now {
            return false;
        }
        let every = self.refuse_every.load(Ordering::Relaxed);
        if every > 0 && (self.transfers.fetch_add(1, Ordering::Relaxed) + 1).is_multiple_of(every) {
            return false;
        }
        let ppm = self.throttle_ppm.load(Ordering::Relaxed);
        if ppm > 0 && rand::random::<u32>() % 1_000_000 < ppm as u32 {
            return false;
        }
        let limit = self.throttle_above.load(Ordering::Relaxed);
        let byte_limit = self.throttle_bytes_above.load(Ordering::Relaxed);
        if limit == 0 && byte_limit == 0 {
            return true;
        }
        let now = Instant::now();
        let mut window = lock(&self.window);
        let (start, count, sum) = window.get_or_insert((now, 0, 0));
        if now.duration_since(*start) >= Duration::from_secs(1) {
            *start = now;
            *count = 0;
            *sum = 0;
        }
        let fits = (limit == 0 || *count + events <= limit)
            && (byte_limit == 0 || *sum + bytes <= byte_limit);
        if *count == 0 || fits {
            *count += events;
            *sum += bytes;
            true
        } else {
            false
        }
    }

    pub fn is_down(&self) -> bool {
        matches!(*lock(&self.down_until), Some(until) if Instant::now() < until)
    }

    /// The current delay, and the token that ends it early.
    pub fn disposition_delay(&self) -> (Duration, tokio_util::sync::CancellationToken) {
        (
            *lock(&self.delay_dispositions),
            lock(&self.release_delayed).clone(),
        )
    }

    pub fn token_cap(&self) -> Option<Duration> {
        *lock(&self.expire_tokens_after)
    }
}

/// Switches faults on a running emulator. Cheap to clone.
#[derive(Clone)]
pub struct Faults {
    pub(crate) shared: Arc<Shared>,
}

impl Faults {
    /// Rejects transfers with `com.microsoft:server-busy` above `events_per_s` (0 turns it off).
    pub fn throttle_above(&self, events_per_s: u64) {
        self.shared
            .faults
            .throttle_above
            .store(events_per_s, Ordering::Relaxed);
    }

    /// Rejects transfers with `com.microsoft:server-busy` above `bytes_per_s` body bytes per
    /// second (0 turns it off).
    pub fn throttle_bytes_above(&self, bytes_per_s: u64) {
        self.shared
            .faults
            .throttle_bytes_above
            .store(bytes_per_s, Ordering::Relaxed);
    }

    /// Rejects each transfer with `com.microsoft:server-busy` with probability `p` (0..=1).
    pub fn throttle_fraction(&self, p: f64) {
        let ppm = (p.clamp(0.0, 1.0) * 1_000_000.0).round() as u64;
        self.shared
            .faults
            .throttle_ppm
            .store(ppm, Ordering::Relaxed);
    }

    /// Rejects every `n`th transfer from now on with `com.microsoft:server-busy` (0 turns it
    /// off).
    pub fn refuse_every(&self, n: u64) {
        let f = &self.shared.faults;
        f.transfers.store(0, Ordering::Relaxed);
        f.refuse_every.store(n, Ordering::Relaxed);
    }

    /// Rejects the next `k` transfers with `com.microsoft:server-busy`, then admits again.
    pub fn refuse_next(&self, k: u64) {
        self.shared.faults.refuse_next.store(k, Ordering::Relaxed);
    }

    /// Cuts every open AMQP connection now.
    pub fn drop_connections(&self) {
        self.shared.cut_all_connections();
    }

    /// Cuts every connection and refuses new ones for `period`.
    pub fn down_for(&self, period: Duration) {
        *lock(&self.shared.faults.down_until) = Some(Instant::now() + period);
        self.shared.cut_all_connections();
    }

    /// Settles accepted transfers `delay` late.
    pub fn delay_dispositions(&self, delay: Duration) {
        *lock(&self.shared.faults.delay_dispositions) = delay;
    }

    /// Makes every token expire at most `after` from now (or from when it is put).
    pub fn expire_tokens_after(&self, after: Duration) {
        *lock(&self.shared.faults.expire_tokens_after) = Some(after);
        self.shared.cap_all_grants(after);
    }

    /// Turns every fault off and settles delayed dispositions now (tokens already shortened
    /// stay short).
    pub fn clear(&self) {
        let f = &self.shared.faults;
        f.throttle_above.store(0, Ordering::Relaxed);
        f.throttle_bytes_above.store(0, Ordering::Relaxed);
        f.throttle_ppm.store(0, Ordering::Relaxed);
        f.refuse_every.store(0, Ordering::Relaxed);
        f.refuse_next.store(0, Ordering::Relaxed);
        *lock(&f.down_until) = None;
        *lock(&f.delay_dispositions) = Duration::ZERO;
        let released = std::mem::take(&mut *lock(&f.release_delayed));
        released.cancel();
        *lock(&f.expire_tokens_after) = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttle_windows() {
        let f = FaultState::default();
        assert!(f.admit(1_000_000, 1 << 30), "off by default");
        f.throttle_above.store(10, Ordering::Relaxed);
        assert!(f.admit(25, 0), "an empty window admits any one transfer");
        assert!(!f.admit(1, 0));
        let f = FaultState::default();
        f.throttle_above.store(10, Ordering::Relaxed);
        assert!(f.admit(6, 0));
        assert!(f.admit(4, 0));
        assert!(!f.admit(1, 0));
    }

    #[test]
    fn byte_throttle_and_fractions() {
        let f = FaultState::default();
        f.throttle_bytes_above.store(1000, Ordering::Relaxed);
        assert!(f.admit(1, 600));
        assert!(f.admit(1, 400));
        assert!(!f.admit(1, 1));
        let f = FaultState::default();
        f.throttle_ppm.store(1_000_000, Ordering::Relaxed);
        assert!(!f.admit(1, 1), "p = 1 refuses everything");
        f.throttle_ppm.store(0, Ordering::Relaxed);
        assert!(f.admit(1, 1));
    }

    #[test]
    fn refuse_every_nth_and_the_next_k() {
        let f = FaultState::default();
        f.refuse_every.store(3, Ordering::Relaxed);
        let admitted: Vec<bool> = (0..7).map(|_| f.admit(1, 1)).collect();
        assert_eq!(admitted, [true, true, false, true, true, false, true]);
        let f = FaultState::default();
        f.refuse_next.store(2, Ordering::Relaxed);
        let admitted: Vec<bool> = (0..4).map(|_| f.admit(1, 1)).collect();
        assert_eq!(admitted, [false, false, true, true]);
    }

    #[test]
    fn down_is_timed() {
        let f = FaultState::default();
        assert!(!f.is_down());
        *lock(&f.down_until) = Some(Instant::now() + Duration::from_secs(60));
        assert!(f.is_down());
        *lock(&f.down_until) = Some(Instant::now());
        assert!(!f.is_down());
    }
}
