//! What a tag map does to one raw value: states, scale and offset, rounding. Pure functions; the
//! per-tag memory (deadband, heartbeat) lives in [`super::stage`].
//!
//! Order: a tag with `states` maps the raw integer or boolean to its name and stops there.
//! Otherwise booleans become 1/0, then `scale`, then `offset`, then `decimals`. Integers stay
//! exact integers unless scale or offset is set (then the arithmetic is f64). A raw value with
//! no entry in `states` is sent as the number's text (e.g. `"7"`), so the tag's readings are
//! always strings.

use std::sync::Arc;

use crate::config::tagmap::StateKey;
use crate::reading::{Number, Value};
use crate::sample::RawValue;

use super::plan::Transform;

/// Why a value was not turned into a reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// NaN or ±Inf (raw, or after scaling): JSON has no such number.
    NonFinite,
}

impl Transform {
    pub fn apply(&self, raw: &RawValue) -> Result<Value, Skip> {
        if let Some(states) = &self.states {
            let key = match raw {
                RawValue::Bool(b) => Some(StateKey::Bool(*b)),
                RawValue::Int(i) => Some(StateKey::Int(*i)),
                RawValue::UInt(u) => i64::try_from(*u).ok().map(StateKey::Int),
                RawValue::Float(f) if f.fract() == 0.0 && f.abs() < 9.0e15 => {
                    Some(StateKey::Int(*f as i64))
                }
                RawValue::Float(_) | RawValue::Text(_) => None,
            };
            // A boolean also matches states written as 0/1.
            let fallback = match raw {
                RawValue::Bool(b) => Some(StateKey::Int(i64::from(*b))),
                _ => None,
            };
            let name = key
                .and_then(|k| states.get(&k))
                .or_else(|| fallback.and_then(|k| states.get(&k)));
            return match (name, raw) {
                (Some(name), _) => Ok(Value::Text(name.clone())),
                (None, RawValue::Text(t)) => Ok(Value::Text(t.clone())),
                (None, other) => Ok(Value::Text(Arc::from(self.number(other)?.to_string()))),
            };
        }
        match raw {
            RawValue::Text(t) => Ok(Value::Text(t.clone())),
            other => self.number(other),
        }
    }

    fn number(&self, raw: &RawValue) -> Result<Value, Skip> {
        let exact = match raw {
            RawValue::Bool(b) => Some(Number::Int(i64::from(*b))),
            RawValue::Int(i) => Some(Number::Int(*i)),
            RawValue::UInt(u) => Some(Number::UInt(*u)),
            RawValue::Float(_) | RawValue::Text(_) => None,
        };
        let scaled = self.scale.is_some() || self.offset.is_some();
        if let (Some(n), false) = (exact, scaled) {
            return Ok(Value::Number(n));
        }
        let mut x = match raw {
            RawValue::Float(f) => *f,
            _ => exact.map(Number::as_f64).unwrap_or(f64::NAN),
        };
        x = x * self.scale.unwrap_or(1.0) + self.offset.unwrap_or(0.0);
        if let Some(d) = self.decimals {
            x = round_to(x, d);
        }
        Number::float(x).map(Value::Number).ok_or(Skip::NonFinite)
    }
}

/// Rounds half away from zero to `decimals` places.
fn round_to(x: f64, decimals: u8) -> f64 {
    let factor = 10f64.powi(i32::from(decimals));
    let rounded = (x * factor).round() / factor;
    // Values too large to scale keep their precision as they are.
    if rounded.is_finite() {
        rounded
    } else {
        x
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn num(v: &Value) -> f64 {
        match v {
            Value::Number(n) => n.as_f64(),
            other => panic!("expected a number, got {other}"),
        }
    }

    fn states() -> Transform {
        let states: BTreeMap<StateKey, Arc<str>> = [
            (StateKey::Int(0), "Stopped".into()),
            (StateKey::Int(1), "Running".into()),
            (StateKey::Int(2), "Fault".into()),
        ]
        .into_iter()
        .collect();
        Transform {
            states: Some(states),
            ..Default::default()
        }
    }

    #[test]
    fn integers_pass_exactly_without_scaling() {
        let t = Transform::default();
        assert_eq!(
            t.apply(&RawValue::Int(i64::MAX)),
            Ok(Value::Number(Number::Int(i64::MAX)))
        );
        assert_eq!(
            t.apply(&RawValue::UInt(u64::MAX)),
            Ok(Value::Number(Number::UInt(u64::MAX)))
        );
    }

    #[test]
    fn booleans_become_one_and_zero() {
        let t = Transform::default();
        assert_eq!(t.apply(&RawValue::Bool(true)), Ok(Value::from(1)));
        assert_eq!(t.apply(&RawValue::Bool(false)), Ok(Value::from(0)));
    }

    #[test]
    fn scale_then_offset_then_decimals() {
        let t = Transform {
            scale: Some(0.1),
            offset: Some(-40.0),
            decimals: Some(1),
            ..Default::default()
        };
        assert_eq!(num(&t.apply(&RawValue::Int(655)).unwrap()), 25.5);
        let t = Transform {
            decimals: Some(2),
            ..Default::default()
        };
        assert_eq!(num(&t.apply(&RawValue::Float(1.23456)).unwrap()), 1.23);
        assert_eq!(
            num(&t.apply(&RawValue::Float(-2.675_000_1)).unwrap()),
            -2.68
        );
    }

    #[test]
    fn states_map_numbers_and_booleans() {
        let t = states();
        assert_eq!(t.apply(&RawValue::Int(1)), Ok(Value::from("Running")));
        assert_eq!(t.apply(&RawValue::UInt(2)), Ok(Value::from("Fault")));
        assert_eq!(t.apply(&RawValue::Float(0.0)), Ok(Value::from("Stopped")));
        // A bool matches 0/1 keys when no true/false keys exist.
        assert_eq!(t.apply(&RawValue::Bool(true)), Ok(Value::from("Running")));
        // An unmapped value keeps the tag's readings strings.
        assert_eq!(t.apply(&RawValue::Int(7)), Ok(Value::from("7")));
        let b = Transform {
            states: Some(
                [
                    (StateKey::Bool(true), "Open".into()),
                    (StateKey::Bool(false), "Closed".into()),
                ]
                .into_iter()
                .collect(),
            ),
            ..Default::default()
        };
        assert_eq!(b.apply(&RawValue::Bool(false)), Ok(Value::from("Closed")));
    }

    #[test]
    fn non_finite_values_are_skipped() {
        let t = Transform::default();
        assert_eq!(t.apply(&RawValue::Float(f64::NAN)), Err(Skip::NonFinite));
        assert_eq!(
            t.apply(&RawValue::Float(f64::NEG_INFINITY)),
            Err(Skip::NonFinite)
        );
        // Finite input overflowing through scaling is skipped too.
        let t = Transform {
            scale: Some(1e300),
            ..Default::default()
        };
        assert_eq!(t.apply(&RawValue::Float(1e300)), Err(Skip::NonFinite));
    }

    #[test]
    fn text_passes_through() {
        assert_eq!(
            Transform::default().apply(&RawValue::Text("Auto".into())),
            Ok(Value::from("Auto"))
        );
        assert_eq!(
            states().apply(&RawValue::Text("Auto".into())),
            Ok(Value::from("Auto"))
        );
    }
}
