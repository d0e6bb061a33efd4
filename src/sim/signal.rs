//! Signal generators: deterministic values as a function of time since the simulator's epoch.
//!
//! Invariants:
//! - [`Signal::value_at`] is a pure function of the signal's configuration (seed included) and
//!   `t`, the time since the simulator's epoch ([`crate::sim::plc::PlcHandle::epoch`]). A test can
//!   therefore compute what the PLC held at any instant and compare it with what the gateway sent.
//! - Each signal has its own update period `update` (for `states`, `period`): the value only
//!   changes at whole multiples of it. The value at `t` is the value at
//!   `floor(t / update) * update`, so a value is held constant over `[k·update, (k+1)·update)`.
//! - Random walks are computed step by step from `t = 0`; a private cache makes monotonic reads
//!   (what a running simulator does) O(1) per call, but never changes the result.
//!
//! YAML shapes (one key naming the kind):
//! ```yaml
//! signal: {constant: 42}                     # or a float, true/false, or "text"
//! signal: {ramp: {from: 0, to: 100, period: 60s, update: 1s}}
//! signal: {sine: {offset: 50, amplitude: 10, period: 30s, update: 100ms}}
//! signal: {square: {low: 0, high: 1, period: 10s, duty: 0.5}}
//! signal: {random_walk: {seed: 7, start: 20, step: 0.5, min: 0, max: 40}}
//! signal: {counter: {start: 0, step: 1, wrap: 65536, update: 1s}}
//! signal: {states: {names: [Stopped, Running, Fault], period: 5s}}
//! ```
//! `update` defaults to 1s everywhere.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{de, Deserialize, Deserializer};

use crate::config::duration::HumanDuration;

/// Default update period of every signal.
pub const DEFAULT_UPDATE: Duration = Duration::from_secs(1);

/// A value a signal produces at one instant.
#[derive(Debug, Clone, PartialEq)]
pub enum SignalValue {
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
    /// A state of a `states` signal: its index in `names` and its name.
    State {
        index: u32,
        name: Arc<str>,
    },
}

impl SignalValue {
    /// As a number: booleans are 0/1, states their index, text parses or is 0.
    pub fn as_f64(&self) -> f64 {
        match self {
            SignalValue::Bool(b) => f64::from(u8::from(*b)),
            SignalValue::Int(i) => *i as f64,
            SignalValue::Float(f) => *f,
            SignalValue::Text(s) => s.trim().parse().unwrap_or(0.0),
            SignalValue::State { index, .. } => f64::from(*index),
        }
    }

    /// As an integer: floats round half away from zero and saturate (NaN is 0).
    pub fn as_i64(&self) -> i64 {
        match self {
            SignalValue::Int(i) => *i,
            other => other.as_f64().round() as i64,
        }
    }

    /// As a boolean: non-zero is true; text is true when it reads `true` or a non-zero number.
    pub fn as_bool(&self) -> bool {
        match self {
            SignalValue::Bool(b) => *b,
            SignalValue::Text(s) => s.trim() == "true" || self.as_f64() != 0.0,
            other => other.as_f64() != 0.0,
        }
    }

    /// As text: states give their name, numbers their shortest decimal form.
    pub fn as_text(&self) -> String {
        match self {
            SignalValue::Bool(b) => b.to_string(),
            SignalValue::Int(i) => i.to_string(),
            SignalValue::Float(f) => f.to_string(),
            SignalValue::Text(s) => s.clone(),
            SignalValue::State { name, .. } => name.to_string(),
        }
    }
}

impl<'de> Deserialize<'de> for SignalValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = SignalValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a number, true/false or a string")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<SignalValue, E> {
                Ok(SignalValue::Bool(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<SignalValue, E> {
                Ok(SignalValue::Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<SignalValue, E> {
                i64::try_from(v)
                    .map(SignalValue::Int)
                    .map_err(|_| E::custom(format!("{v} is too large for a constant")))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<SignalValue, E> {
                Ok(SignalValue::Float(v))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<SignalValue, E> {
                Ok(SignalValue::Text(v.to_string()))
            }
        }
        deserializer.deserialize_any(V)
    }
}

impl schemars::JsonSchema for SignalValue {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "SignalValue".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": ["boolean", "number", "string"],
            "description": "A constant: true/false, a number, or a text."
        })
    }
}

/// A signal generator. See the module docs for the YAML shapes.
#[derive(Debug, Clone, PartialEq, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Signal {
    /// Always the same value.
    Constant(SignalValue),
    /// A sawtooth: rises linearly from `from` to `to` over `period`, then starts again.
    Ramp {
        from: f64,
        to: f64,
        period: HumanDuration,
        /// Update period. Default 1s.
        update: Option<HumanDuration>,
    },
    /// `offset + amplitude · sin(2π t / period)`.
    Sine {
        #[serde(default)]
        offset: f64,
        amplitude: f64,
        period: HumanDuration,
        update: Option<HumanDuration>,
    },
    /// `high` for the first `duty` fraction of each `period`, `low` for the rest.
    Square {
        #[serde(default)]
        low: f64,
        #[serde(default = "one")]
        high: f64,
        period: HumanDuration,
        /// Fraction of the period spent high, 0..=1. Default 0.5.
        duty: Option<f64>,
        update: Option<HumanDuration>,
    },
    /// Starts at `start`; every update adds a seeded pseudo-random step in `[-step, step]`,
    /// reflected back into `[min, max]`.
    RandomWalk {
        seed: u64,
        #[serde(default)]
        start: f64,
        #[serde(default = "one")]
        step: f64,
        #[serde(default = "neg_inf")]
        min: f64,
        #[serde(default = "inf")]
        max: f64,
        update: Option<HumanDuration>,
        /// Speeds up monotonic reads; never part of the value.
        #[serde(skip)]
        cache: WalkCache,
    },
    /// `start + k · step` after `k` updates, modulo `wrap` when given (integers).
    Counter {
        #[serde(default)]
        start: i64,
        #[serde(default = "one_i")]
        step: i64,
        /// The counter wraps to 0 on reaching this (e.g. 65536 for a 16-bit counter).
        wrap: Option<u64>,
        update: Option<HumanDuration>,
    },
    /// Cycles through `names`, each held for `period`.
    States {
        names: Vec<String>,
        period: HumanDuration,
    },
}

fn one() -> f64 {
    1.0
}
fn one_i() -> i64 {
    1
}
fn inf() -> f64 {
    f64::INFINITY
}
fn neg_inf() -> f64 {
    f64::NEG_INFINITY
}

/// Last computed step of a random walk. Cloning gives an empty cache; equality ignores it.
#[derive(Default)]
pub struct WalkCache(Mutex<Option<(u64, f64)>>);

impl Clone for WalkCache {
    fn clone(&self) -> Self {
        WalkCache::default()
    }
}
impl PartialEq for WalkCache {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl fmt::Debug for WalkCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WalkCache")
    }
}

/// SplitMix64 (Steele, Lea, Flood 2014): a well-mixed 64-bit hash of `x`.
fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// The `k`-th step of a walk with `seed`, uniform in [-1, 1).
fn walk_step(seed: u64, k: u64) -> f64 {
    let h = splitmix64(seed ^ splitmix64(k));
    // 53 random bits -> [0, 1).
    let unit = (h >> 11) as f64 / (1u64 << 53) as f64;
    unit * 2.0 - 1.0
}

/// Reflects `v` into `[min, max]` (once per side is enough for steps smaller than the range).
fn reflect(mut v: f64, min: f64, max: f64) -> f64 {
    if max <= min {
        return min;
    }
    for _ in 0..4 {
        if v > max {
            v = max - (v - max);
        } else if v < min {
            v = min + (min - v);
        } else {
            break;
        }
    }
    v.clamp(min, max)
}

impl Signal {
    /// The update period: the value only changes at whole multiples of it.
    pub fn update_period(&self) -> Duration {
        let span = match self {
            Signal::Constant(_) => return Duration::MAX,
            Signal::States { period, .. } => Some(*period),
            Signal::Ramp { update, .. }
            | Signal::Sine { update, .. }
            | Signal::Square { update, .. }
            | Signal::RandomWalk { update, .. }
            | Signal::Counter { update, .. } => *update,
        };
        span.map_or(DEFAULT_UPDATE, |s| s.0)
            .max(Duration::from_micros(1))
    }

    /// Number of whole update periods in `t`.
    fn step_index(&self, t: Duration) -> u64 {
        let period = self.update_period();
        if period == Duration::MAX {
            return 0;
        }
        (t.as_nanos() / period.as_nanos()) as u64
    }

    /// The value at `t` since the simulator's epoch. Pure and deterministic (see module docs).
    pub fn value_at(&self, t: Duration) -> SignalValue {
        let k = self.step_index(t);
        // The instant the value was last updated, in nanoseconds: the phase within a period is
        // taken in integers, so an edge at an exact multiple is never missed by a rounding
        // (in floating-point seconds, 0.3 % 0.2 is just under 0.1).
        let tq = if k == 0 {
            0
        } else {
            self.update_period().as_nanos() * u128::from(k)
        };
        let phase = |period: &HumanDuration| {
            let p = period.0.as_nanos().max(1);
            (tq % p) as f64 / p as f64
        };
        match self {
            Signal::Constant(v) => v.clone(),
            Signal::Ramp {
                from, to, period, ..
            } => {
                let phase = phase(period);
                SignalValue::Float(from + (to - from) * phase)
            }
            Signal::Sine {
                offset,
                amplitude,
                period,
                ..
            } => {
                let phase = phase(period);
                SignalValue::Float(offset + amplitude * (std::f64::consts::TAU * phase).sin())
            }
            Signal::Square {
                low,
                high,
                period,
                duty,
                ..
            } => {
                let phase = phase(period);
                let duty = duty.unwrap_or(0.5).clamp(0.0, 1.0);
                SignalValue::Float(if phase < duty { *high } else { *low })
            }
            Signal::RandomWalk {
                seed,
                start,
                step,
                min,
                max,
                cache,
                ..
            } => {
                let mut guard = cache.0.lock().unwrap_or_else(|p| p.into_inner());
                let (mut i, mut v) = match *guard {
                    Some((ck, cv)) if ck <= k => (ck, cv),
                    _ => (0, reflect(*start, *min, *max)),
                };
                while i < k {
                    v = reflect(v + step * walk_step(*seed, i), *min, *max);
                    i += 1;
                }
                *guard = Some((k, v));
                SignalValue::Float(v)
            }
            Signal::Counter {
                start, step, wrap, ..
            } => {
                let raw = (*start as i128) + (*step as i128) * (k as i128);
                let v = match wrap {
                    Some(w) if *w > 0 => raw.rem_euclid(*w as i128),
                    _ => raw.clamp(i64::MIN as i128, i64::MAX as i128),
                };
                SignalValue::Int(v as i64)
            }
            Signal::States { names, .. } => {
                if names.is_empty() {
                    return SignalValue::Text(String::new());
                }
                let index = (k % names.len() as u64) as u32;
                SignalValue::State {
                    index,
                    name: Arc::from(names[index as usize].as_str()),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(ms: u64) -> Duration {
        Duration::from_millis(ms)
    }

    fn parse(yaml: &str) -> Signal {
        let crate::config::de::Parsed {
            value: v, problems, ..
        } = crate::config::parse_str::<Signal>(yaml);
        assert!(problems.is_empty(), "{problems:?}");
        v.unwrap()
    }

    #[test]
    fn a_square_wave_changes_at_every_edge_whatever_its_period_in_binary() {
        // 200 ms and 100 ms updates: high, low, high, low … at every step. With the phase in
        // floating-point seconds, 0.3 % 0.2 came out just under 0.1 and step 3 stayed high.
        for (period, update) in [(200, 100), (600, 100), (700, 350), (100, 10)] {
            let sig = parse(&format!(
                "square: {{low: 0, high: 1, period: {period}ms, update: {update}ms}}"
            ));
            let per_period = period / update;
            for k in 0..2_000u64 {
                let expected = if (k % per_period) < per_period / 2 {
                    1.0
                } else {
                    0.0
                };
                assert_eq!(
                    sig.value_at(s(k * update)).as_f64(),
                    expected,
                    "period {period} ms, update {update} ms, step {k}"
                );
            }
        }
    }

    #[test]
    fn constant_never_changes() {
        let sig = parse("constant: 42");
        assert_eq!(sig.value_at(s(0)), SignalValue::Int(42));
        assert_eq!(sig.value_at(s(999_999_999)), SignalValue::Int(42));
        assert_eq!(parse("constant: hello").value_at(s(5)).as_text(), "hello");
        assert!(parse("constant: true").value_at(s(5)).as_bool());
        assert_eq!(
            parse("constant: 1.5").value_at(s(5)),
            SignalValue::Float(1.5)
        );
    }

    #[test]
    fn ramp_is_a_sawtooth_held_between_updates() {
        let sig = parse("ramp: {from: 0, to: 100, period: 10s}");
        assert_eq!(sig.value_at(s(0)).as_f64(), 0.0);
        assert_eq!(sig.value_at(s(999)).as_f64(), 0.0);
        assert_eq!(sig.value_at(s(1000)).as_f64(), 10.0);
        assert_eq!(sig.value_at(s(5500)).as_f64(), 50.0);
        assert_eq!(sig.value_at(s(10_000)).as_f64(), 0.0);
    }

    #[test]
    fn sine_follows_its_formula() {
        let sig = parse("sine: {offset: 50, amplitude: 10, period: 4s, update: 500ms}");
        assert!((sig.value_at(s(0)).as_f64() - 50.0).abs() < 1e-9);
        assert!((sig.value_at(s(1000)).as_f64() - 60.0).abs() < 1e-9);
        assert!((sig.value_at(s(1499)).as_f64() - 60.0).abs() < 1e-9);
        assert!((sig.value_at(s(3000)).as_f64() - 40.0).abs() < 1e-9);
        assert_eq!(sig.update_period(), s(500));
    }

    #[test]
    fn square_spends_duty_high() {
        let sig = parse("square: {low: 2, high: 7, period: 4s, duty: 0.25}");
        assert_eq!(sig.value_at(s(0)).as_f64(), 7.0);
        assert_eq!(sig.value_at(s(1000)).as_f64(), 2.0);
        assert_eq!(sig.value_at(s(3999)).as_f64(), 2.0);
        assert_eq!(sig.value_at(s(4000)).as_f64(), 7.0);
        let default = parse("square: {period: 2s}");
        assert!(default.value_at(s(0)).as_bool());
        assert!(!default.value_at(s(1000)).as_bool());
    }

    #[test]
    fn random_walk_is_deterministic_bounded_and_seeded() {
        let a = parse("random_walk: {seed: 7, start: 20, step: 0.5, min: 0, max: 40}");
        let b = a.clone();
        let other = parse("random_walk: {seed: 8, start: 20, step: 0.5, min: 0, max: 40}");
        // Forward, backward and out of order give the same values.
        let forward: Vec<f64> = (0..200).map(|i| a.value_at(s(i * 1000)).as_f64()).collect();
        let backward: Vec<f64> = (0..200)
            .rev()
            .map(|i| b.value_at(s(i * 1000)).as_f64())
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        assert_eq!(forward, backward);
        assert_eq!(forward[0], 20.0);
        assert!(forward.iter().all(|v| (0.0..=40.0).contains(v)));
        for w in forward.windows(2) {
            assert!((w[1] - w[0]).abs() <= 0.5 + 1e-12);
        }
        assert!(forward.windows(2).any(|w| w[0] != w[1]), "the walk moves");
        let theirs: Vec<f64> = (0..200)
            .map(|i| other.value_at(s(i * 1000)).as_f64())
            .collect();
        assert_ne!(forward, theirs, "another seed, another walk");
        assert_eq!(a.value_at(s(150_500)).as_f64(), forward[150]);
    }

    #[test]
    fn counter_counts_updates_and_wraps() {
        let sig = parse("counter: {start: 65530, step: 2, wrap: 65536, update: 250ms}");
        assert_eq!(sig.value_at(s(0)), SignalValue::Int(65530));
        assert_eq!(sig.value_at(s(249)), SignalValue::Int(65530));
        assert_eq!(sig.value_at(s(250)), SignalValue::Int(65532));
        assert_eq!(sig.value_at(s(750)), SignalValue::Int(0));
    }

    #[test]
    fn states_cycle_through_names() {
        let sig = parse("states: {names: [Stopped, Running, Fault], period: 5s}");
        let at = |ms| sig.value_at(s(ms));
        assert_eq!(at(0).as_text(), "Stopped");
        assert_eq!(at(4999).as_text(), "Stopped");
        assert_eq!(at(5000).as_text(), "Running");
        assert_eq!(at(5000).as_i64(), 1);
        assert_eq!(at(10_000).as_text(), "Fault");
        assert_eq!(at(15_000).as_text(), "Stopped");
    }

    #[test]
    fn unknown_kinds_and_fields_are_refused() {
        let crate::config::de::Parsed {
            value: _, problems, ..
        } = crate::config::parse_str::<Signal>("triangle: {period: 1s}");
        assert!(!problems.is_empty());
        let crate::config::de::Parsed { problems, .. } =
            crate::config::parse_str::<Signal>("sine: {amplitude: 1, period: 1s, phase: 2}");
        assert!(!problems.is_empty());
    }

    #[test]
    fn conversions_are_documented_ones() {
        assert_eq!(SignalValue::Float(2.5).as_i64(), 3);
        assert_eq!(SignalValue::Float(-2.5).as_i64(), -3);
        assert_eq!(SignalValue::Float(1e30).as_i64(), i64::MAX);
        assert!(!SignalValue::Float(0.0).as_bool());
        assert_eq!(SignalValue::Bool(true).as_f64(), 1.0);
    }
}
