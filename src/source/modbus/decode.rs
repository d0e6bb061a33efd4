//! Registers and bits → typed values: the gateway's half of the register layout.
//!
//! Layout (Modbus Application Protocol V1.1b3, 4.2: a register travels big endian, high byte
//! first). Bytes of a value are named A (most significant) … D (32 bit) or H (64 bit):
//! - `ABCD` — registers in order, high byte first in each: big endian (`ABCDEFGH` for 64 bit).
//! - `CDAB` — register order reversed, bytes in a register untouched (`GHEFCDAB`).
//! - `BADC` — register order kept, the two bytes of every register swapped (`BADCFEHG`).
//! - `DCBA` — both: little endian (`HGFEDCBA`).
//! - 16-bit types follow the same rule: `BADC` and `DCBA` swap their two bytes.
//! - Signed integers are two's complement, floats IEEE 754 (`float32` widens exactly to f64).
//! - `string`: ASCII, two characters per register, the first in the high byte; `order` does not
//!   apply. The text ends at the first NUL; bytes outside ASCII become `?`.
//! - `bool` from a coil or discrete input is the bit; `bool` with `bit: n` is bit `n` of the
//!   register, 0 = least significant.
//!
//! Written without looking at the simulator's encoder (`crate::sim::plc::registers`), so a
//! mistake in one does not cancel out in the other; both are checked against pymodbus.

use crate::config::tagmap::{DataType, WordOrder};
use crate::mapping::plan::ModbusAddress;
use crate::sample::RawValue;

/// What a response held for one tag.
#[derive(Debug, Clone, Copy)]
pub enum Data<'a> {
    /// Coils or discrete inputs, starting at the tag's address.
    Bits(&'a [bool]),
    /// Registers, starting at the tag's address.
    Words(&'a [u16]),
}

/// The response did not hold what the tag needs (a device answering fewer items than asked).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{data_type} needs {needed} item(s), the response held {got}")]
pub struct ShortResponse {
    pub data_type: &'static str,
    pub needed: usize,
    pub got: usize,
}

/// Decodes one tag's value from the items of a response that start at its address.
pub fn decode(tag: &ModbusAddress, data: Data<'_>) -> Result<RawValue, ShortResponse> {
    let short = |got: usize| ShortResponse {
        data_type: tag.data_type.name(),
        needed: usize::from(tag.count()),
        got,
    };
    let words = match data {
        Data::Bits(bits) => return bits.first().map(|b| RawValue::Bool(*b)).ok_or(short(0)),
        Data::Words(words) => words,
    };
    let needed = usize::from(tag.count());
    let Some(words) = words.get(..needed) else {
        return Err(short(words.len()));
    };
    Ok(match tag.data_type {
        DataType::Bool => {
            let bit = tag.bit.unwrap_or(0) & 0x0F;
            RawValue::Bool(words[0] >> bit & 1 == 1)
        }
        DataType::String => RawValue::Text(text(words).into()),
        DataType::Int16 => RawValue::Int(i64::from(bits(words, tag.order) as u16 as i16)),
        DataType::Uint16 => RawValue::UInt(bits(words, tag.order)),
        DataType::Int32 => RawValue::Int(i64::from(bits(words, tag.order) as u32 as i32)),
        DataType::Uint32 => RawValue::UInt(bits(words, tag.order)),
        DataType::Int64 => RawValue::Int(bits(words, tag.order) as i64),
        DataType::Uint64 => RawValue::UInt(bits(words, tag.order)),
        DataType::Float32 => {
            RawValue::Float(f64::from(f32::from_bits(bits(words, tag.order) as u32)))
        }
        DataType::Float64 => RawValue::Float(f64::from_bits(bits(words, tag.order))),
    })
}

/// The value's bits, most significant first, from 1, 2 or 4 registers in `order`.
fn bits(words: &[u16], order: WordOrder) -> u64 {
    let reverse_words = matches!(order, WordOrder::CDAB | WordOrder::DCBA);
    let swap_bytes = matches!(order, WordOrder::BADC | WordOrder::DCBA);
    let mut value = 0u64;
    for i in 0..words.len() {
        let w = if reverse_words {
            words[words.len() - 1 - i]
        } else {
            words[i]
        };
        let w = if swap_bytes { w.swap_bytes() } else { w };
        value = value << 16 | u64::from(w);
    }
    value
}

fn text(words: &[u16]) -> String {
    words
        .iter()
        .flat_map(|w| [(w >> 8) as u8, (w & 0xFF) as u8])
        .take_while(|b| *b != 0)
        .map(|b| if b.is_ascii() { char::from(b) } else { '?' })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tagmap::Table;

    fn tag(data_type: DataType, order: WordOrder) -> ModbusAddress {
        ModbusAddress {
            unit: 1,
            table: Table::HoldingRegister,
            address: 0,
            data_type,
            order,
            bit: None,
            length: if data_type == DataType::String { 3 } else { 1 },
        }
    }

    fn d(dt: DataType, order: WordOrder, words: &[u16]) -> RawValue {
        decode(&tag(dt, order), Data::Words(words)).unwrap()
    }

    #[test]
    fn thirty_two_bit_orders() {
        // 0x11223344 laid out four ways.
        for (order, words) in [
            (WordOrder::ABCD, [0x1122, 0x3344]),
            (WordOrder::CDAB, [0x3344, 0x1122]),
            (WordOrder::BADC, [0x2211, 0x4433]),
            (WordOrder::DCBA, [0x4433, 0x2211]),
        ] {
            assert_eq!(
                d(DataType::Uint32, order, &words),
                RawValue::UInt(0x1122_3344),
                "{order:?}"
            );
        }
    }

    #[test]
    fn sixty_four_bit_orders() {
        for (order, words) in [
            (WordOrder::ABCD, [0x1122, 0x3344, 0x5566, 0x7788]),
            (WordOrder::CDAB, [0x7788, 0x5566, 0x3344, 0x1122]),
            (WordOrder::BADC, [0x2211, 0x4433, 0x6655, 0x8877]),
            (WordOrder::DCBA, [0x8877, 0x6655, 0x4433, 0x2211]),
        ] {
            assert_eq!(
                d(DataType::Int64, order, &words),
                RawValue::Int(0x1122_3344_5566_7788),
                "{order:?}"
            );
        }
    }

    #[test]
    fn signs_and_floats() {
        assert_eq!(
            d(DataType::Int16, WordOrder::ABCD, &[0xFFFE]),
            RawValue::Int(-2)
        );
        assert_eq!(
            d(DataType::Int16, WordOrder::BADC, &[0xFEFF]),
            RawValue::Int(-2)
        );
        assert_eq!(
            d(DataType::Uint16, WordOrder::ABCD, &[0xFFFE]),
            RawValue::UInt(0xFFFE)
        );
        assert_eq!(
            d(DataType::Int32, WordOrder::ABCD, &[0xFFFF, 0xFFFF]),
            RawValue::Int(-1)
        );
        assert_eq!(
            d(DataType::Uint64, WordOrder::ABCD, &[0xFFFF; 4]),
            RawValue::UInt(u64::MAX)
        );
        // 1.5f32 = 0x3FC00000, 1.5f64 = 0x3FF8000000000000.
        assert_eq!(
            d(DataType::Float32, WordOrder::CDAB, &[0, 0x3FC0]),
            RawValue::Float(1.5)
        );
        assert_eq!(
            d(DataType::Float64, WordOrder::DCBA, &[0, 0, 0, 0xF83F]),
            RawValue::Float(1.5)
        );
    }

    #[test]
    fn strings_stop_at_nul_and_mask_non_ascii() {
        assert_eq!(
            d(DataType::String, WordOrder::DCBA, &[0x4142, 0x4300, 0x4444]),
            RawValue::Text("ABC".into())
        );
        assert_eq!(
            d(DataType::String, WordOrder::ABCD, &[0x41C3, 0x4243, 0x4445]),
            RawValue::Text("A?BCDE".into())
        );
    }

    #[test]
    fn bits_of_registers_and_bit_tables() {
        let mut t = tag(DataType::Bool, WordOrder::ABCD);
        t.bit = Some(15);
        assert_eq!(
            decode(&t, Data::Words(&[0x8000])).unwrap(),
            RawValue::Bool(true)
        );
        t.bit = Some(0);
        assert_eq!(
            decode(&t, Data::Words(&[0x8000])).unwrap(),
            RawValue::Bool(false)
        );
        t.table = Table::Coil;
        assert_eq!(
            decode(&t, Data::Bits(&[true, false])).unwrap(),
            RawValue::Bool(true)
        );
        assert!(decode(&t, Data::Bits(&[])).is_err());
    }

    #[test]
    fn short_responses_are_errors_not_panics() {
        let err = decode(
            &tag(DataType::Float64, WordOrder::ABCD),
            Data::Words(&[1, 2]),
        )
        .unwrap_err();
        assert_eq!(err.needed, 4);
        assert_eq!(err.got, 2);
    }
}
