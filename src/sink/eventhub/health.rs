//! The sink's connection health, the same for every transport: how long to wait before the
//! next attempt and what `/readyz` says meanwhile. Pure state, unit-tested transition by
//! transition.
//!
//! Invariants:
//! - A failure streak (refused credentials, unreachable hub, lost links) ends only when the hub
//!   accepts a batch. Opening a link does not end it: an HTTPS "link" never contacts the hub, and
//!   an AMQP link may open and then fail at once.
//! - Waits double with the streak, from 0.5 s up to [`MAX_BACKOFF`] (30 s) while the hub is
//!   unreachable and up to [`MAX_AUTH_BACKOFF`] (60 s) while it refuses the credentials, with up
//!   to 20 % jitter taken off (never beyond the limit), so a fleet does not retry in step.
//! - A refused credential is a state: the sink reports `Unauthorized` with the reason, even
//!   across new links, until a batch is accepted.

use std::time::Duration;

use super::stats::SinkState;

/// Longest wait between attempts while the hub cannot be reached.
pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// Longest wait between attempts while the hub refuses the credentials.
pub const MAX_AUTH_BACKOFF: Duration = Duration::from_secs(60);
/// The first wait of a streak is twice this.
const BACKOFF_UNIT: Duration = Duration::from_millis(250);

/// Failure streak and credential state. See the module doc.
#[derive(Debug, Default, Clone)]
pub struct Health {
    /// Failures since the hub last accepted a batch.
    failures: u32,
    /// Why the credentials were last refused; cleared only by an accepted batch.
    refused: Option<String>,
}

impl Health {
    /// Failures in the current streak.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Whether the credentials are refused (until a batch is accepted).
    pub fn refused(&self) -> bool {
        self.refused.is_some()
    }

    /// The hub refused the credentials: the wait before the next attempt, and the state.
    pub fn on_refused(&mut self, why: String) -> (Duration, SinkState) {
        self.failures = self.failures.saturating_add(1);
        let wait = jittered(backoff(self.failures, MAX_AUTH_BACKOFF));
        self.refused = Some(why.clone());
        (wait, SinkState::Unauthorized(why))
    }

    /// The hub could not be reached or the link was lost: the wait and the state. While the
    /// credentials are refused the state stays `Unauthorized` and the longer limit applies.
    pub fn on_down(&mut self, why: String) -> (Duration, SinkState) {
        self.failures = self.failures.saturating_add(1);
        match &self.refused {
            Some(refused) => (
                jittered(backoff(self.failures, MAX_AUTH_BACKOFF)),
                SinkState::Unauthorized(refused.clone()),
            ),
            None => (
                jittered(backoff(self.failures, MAX_BACKOFF)),
                SinkState::Down(why),
            ),
        }
    }

    /// A link opened: `Connected`, unless the credentials are still refused.
    pub fn on_opened(&self) -> SinkState {
        match &self.refused {
            Some(why) => SinkState::Unauthorized(why.clone()),
            None => SinkState::Connected,
        }
    }

    /// The hub accepted a batch: the streak ends. `Some(Connected)` if that changes the state.
    pub fn on_accepted(&mut self) -> Option<SinkState> {
        let changed = self.failures > 0 || self.refused.is_some();
        self.failures = 0;
        self.refused = None;
        changed.then_some(SinkState::Connected)
    }
}

/// The wait after `failures` failures in a row, without jitter: 0.5 s, 1 s, 2 s, … up to `max`.
pub fn backoff(failures: u32, max: Duration) -> Duration {
    BACKOFF_UNIT
        .saturating_mul(1 << failures.clamp(1, 16))
        .min(max)
}

/// Takes up to 20 % off, at random.
fn jittered(wait: Duration) -> Duration {
    wait.mul_f64(1.0 - rand::random::<f64>() * 0.2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_credentials_back_off_to_a_minute_and_stay_refused_across_links() {
        let mut h = Health::default();
        let mut waits = Vec::new();
        for _ in 0..12 {
            let (wait, state) = h.on_refused("key `send` refused".into());
            assert!(matches!(state, SinkState::Unauthorized(_)));
            // An HTTPS "link" opens without asking the hub: still refused.
            assert!(matches!(h.on_opened(), SinkState::Unauthorized(_)));
            waits.push(wait);
        }
        assert!(
            waits.windows(2).all(|w| w[1] >= w[0].mul_f64(0.79)),
            "{waits:?}"
        );
        assert!(waits.iter().all(|w| *w <= MAX_AUTH_BACKOFF), "{waits:?}");
        assert!(waits[11] >= MAX_AUTH_BACKOFF.mul_f64(0.8), "{waits:?}");
        let expected: Vec<u64> = (1..=9)
            .map(|f| backoff(f, MAX_AUTH_BACKOFF).as_millis() as u64)
            .collect();
        assert_eq!(
            expected,
            vec![500, 1000, 2000, 4000, 8000, 16000, 32000, 60000, 60000]
        );
        assert_eq!(h.on_accepted(), Some(SinkState::Connected));
        assert_eq!(h.on_opened(), SinkState::Connected);
        assert_eq!(h.failures(), 0);
        assert_eq!(h.on_accepted(), None);
    }

    #[test]
    fn outages_back_off_to_thirty_seconds_and_only_an_acceptance_resets() {
        let mut h = Health::default();
        for _ in 0..10 {
            let (wait, state) = h.on_down("refused".into());
            assert!(matches!(state, SinkState::Down(_)));
            assert!(wait <= MAX_BACKOFF);
            assert_eq!(h.on_opened(), SinkState::Connected);
        }
        assert_eq!(h.failures(), 10, "opening a link does not end the streak");
        let (wait, _) = h.on_down("again".into());
        assert!(wait >= MAX_BACKOFF.mul_f64(0.8));
        h.on_accepted();
        let (wait, _) = h.on_down("again".into());
        assert!(wait <= Duration::from_millis(500));
    }

    #[test]
    fn a_lost_link_while_refused_keeps_the_refusal_and_its_limit() {
        let mut h = Health::default();
        h.on_refused("401".into());
        let (_, state) = h.on_down("connection reset".into());
        assert_eq!(state, SinkState::Unauthorized("401".into()));
    }
}
