//! The simulator's own Modbus register layout: how a typed value becomes 16-bit registers.
//!
//! Written independently of the gateway's decoder on purpose: if both shared one function, a bug
//! in it would cancel out in the end-to-end tests. The layout is proven against pymodbus's own
//! `convert_from_registers` in `tests/python/sim_modbus_read.py`.
//!
//! Layout (Modbus Application Protocol V1.1b3, 4.2: registers are sent big endian):
//! - A value is first written big endian, bytes `A B C D` (32 bit) or `A B C D E F G H` (64 bit),
//!   one register per two bytes: `ABCD` = registers `[AB, CD]`.
//! - `CDAB` reverses the order of the registers (`[CD, AB]`; 64 bit: `GH EF CD AB`).
//! - `BADC` swaps the two bytes inside every register (`[BA, DC]`; 64 bit: `BA DC FE HG`).
//! - `DCBA` does both (`[DC, BA]`; 64 bit: `HG FE DC BA`), i.e. little endian.
//! - The same rule applies to 16-bit types: `BADC` and `DCBA` swap their two bytes.
//! - Signed integers are two's complement; floats IEEE 754.
//! - Integers from a float signal are rounded half away from zero and saturate at the type's
//!   bounds ([`crate::sim::signal::SignalValue::as_i64`], then clamped).
//! - `string(length)`: ASCII, two characters per register, the first in the high byte, padded
//!   with NUL bytes and cut to `2 · length` characters; `order` does not apply. Non-ASCII
//!   characters become `?`.
//! - A packed `bool` with `bit: n` sets bit `n` (0 = least significant) of its register; several
//!   packed bools may share a register. A `bool` without `bit` fills its register with 0 or 1.

use crate::config::tagmap::{DataType, WordOrder};
use crate::sim::signal::SignalValue;

/// Registers `value` occupies as `data_type` in `order`. `length` is used by strings only.
pub fn encode(value: &SignalValue, data_type: DataType, order: WordOrder, length: u16) -> Vec<u16> {
    let be: Vec<u8> = match data_type {
        DataType::Bool => u16::from(value.as_bool()).to_be_bytes().to_vec(),
        DataType::Int16 => (value.as_i64().clamp(i16::MIN.into(), i16::MAX.into()) as i16)
            .to_be_bytes()
            .to_vec(),
        DataType::Uint16 => (value.as_i64().clamp(0, u16::MAX.into()) as u16)
            .to_be_bytes()
            .to_vec(),
        DataType::Int32 => (value.as_i64().clamp(i32::MIN.into(), i32::MAX.into()) as i32)
            .to_be_bytes()
            .to_vec(),
        DataType::Uint32 => (value.as_i64().clamp(0, u32::MAX.into()) as u32)
            .to_be_bytes()
            .to_vec(),
        DataType::Int64 => value.as_i64().to_be_bytes().to_vec(),
        DataType::Uint64 => {
            let v = match value {
                SignalValue::Float(f) => f.round().max(0.0) as u64,
                other => other.as_i64().max(0) as u64,
            };
            v.to_be_bytes().to_vec()
        }
        DataType::Float32 => (value.as_f64() as f32).to_be_bytes().to_vec(),
        DataType::Float64 => value.as_f64().to_be_bytes().to_vec(),
        DataType::String => return encode_string(&value.as_text(), length),
    };
    let mut words: Vec<[u8; 2]> = be.chunks_exact(2).map(|c| [c[0], c[1]]).collect();
    if matches!(order, WordOrder::CDAB | WordOrder::DCBA) {
        words.reverse();
    }
    if matches!(order, WordOrder::BADC | WordOrder::DCBA) {
        for w in &mut words {
            w.swap(0, 1);
        }
    }
    words.into_iter().map(u16::from_be_bytes).collect()
}

fn encode_string(text: &str, length: u16) -> Vec<u16> {
    let mut bytes: Vec<u8> = text
        .chars()
        .map(|c| if c.is_ascii() { c as u8 } else { b'?' })
        .take(usize::from(length) * 2)
        .collect();
    bytes.resize(usize::from(length) * 2, 0);
    bytes
        .chunks_exact(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(v: f64) -> SignalValue {
        SignalValue::Float(v)
    }
    fn i(v: i64) -> SignalValue {
        SignalValue::Int(v)
    }

    #[test]
    fn thirty_two_bit_orders_place_bytes_as_named() {
        // 0x11223344: A=11 B=22 C=33 D=44.
        let v = i(0x1122_3344);
        assert_eq!(
            encode(&v, DataType::Uint32, WordOrder::ABCD, 0),
            [0x1122, 0x3344]
        );
        assert_eq!(
            encode(&v, DataType::Uint32, WordOrder::CDAB, 0),
            [0x3344, 0x1122]
        );
        assert_eq!(
            encode(&v, DataType::Uint32, WordOrder::BADC, 0),
            [0x2211, 0x4433]
        );
        assert_eq!(
            encode(&v, DataType::Uint32, WordOrder::DCBA, 0),
            [0x4433, 0x2211]
        );
    }

    #[test]
    fn sixty_four_bit_orders_place_bytes_as_named() {
        let v = i(0x1122_3344_5566_7788);
        let e = |o| encode(&v, DataType::Int64, o, 0);
        assert_eq!(e(WordOrder::ABCD), [0x1122, 0x3344, 0x5566, 0x7788]);
        assert_eq!(e(WordOrder::CDAB), [0x7788, 0x5566, 0x3344, 0x1122]);
        assert_eq!(e(WordOrder::BADC), [0x2211, 0x4433, 0x6655, 0x8877]);
        assert_eq!(e(WordOrder::DCBA), [0x8877, 0x6655, 0x4433, 0x2211]);
    }

    #[test]
    fn floats_are_ieee754() {
        // 1.5f32 = 0x3FC00000; 1.5f64 = 0x3FF8000000000000.
        assert_eq!(
            encode(&f(1.5), DataType::Float32, WordOrder::ABCD, 0),
            [0x3FC0, 0]
        );
        assert_eq!(
            encode(&f(1.5), DataType::Float32, WordOrder::CDAB, 0),
            [0, 0x3FC0]
        );
        assert_eq!(
            encode(&f(1.5), DataType::Float64, WordOrder::ABCD, 0),
            [0x3FF8, 0, 0, 0]
        );
    }

    #[test]
    fn integers_round_and_saturate() {
        assert_eq!(
            encode(&f(-1.0), DataType::Int16, WordOrder::ABCD, 0),
            [0xFFFF]
        );
        assert_eq!(
            encode(&f(70000.0), DataType::Int16, WordOrder::ABCD, 0),
            [0x7FFF]
        );
        assert_eq!(encode(&f(-5.0), DataType::Uint16, WordOrder::ABCD, 0), [0]);
        assert_eq!(encode(&f(2.5), DataType::Uint16, WordOrder::ABCD, 0), [3]);
        assert_eq!(
            encode(&i(0x1234), DataType::Uint16, WordOrder::BADC, 0),
            [0x3412]
        );
        assert_eq!(
            encode(&f(1e300), DataType::Uint64, WordOrder::ABCD, 0),
            [0xFFFF; 4]
        );
    }

    #[test]
    fn strings_are_ascii_high_byte_first_and_padded() {
        let s = SignalValue::Text("ABC".into());
        assert_eq!(
            encode(&s, DataType::String, WordOrder::DCBA, 3),
            [0x4142, 0x4300, 0]
        );
        assert_eq!(encode(&s, DataType::String, WordOrder::ABCD, 1), [0x4142]);
    }
}
