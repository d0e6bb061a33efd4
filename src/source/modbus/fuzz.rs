//! Fuzz target for the Modbus response path: a server on loopback answers one read with
//! arbitrary bytes, and [`super::link::Link::read`] must neither panic nor hang nor hand back
//! anything but exactly the items asked for; every other answer is an exception or a link error.
//! `examples/fuzz.rs --target modbus_response` runs it for minutes; the unit test below runs a
//! few hundred generated and mutated answers in `cargo test`. Items must come from a frame whose
//! MBAP length, byte count and data agree, and must be that data, bit for bit.
//!
//! Input layout: byte 0 chooses the table (bits 0–1), whether the server copies the request's
//! transaction id into the first two answer bytes (bit 2, so mutated frames get past the id
//! check and reach the decoder) and whether it writes the answer a byte at a time (bit 3);
//! byte 1 is the count asked for (1 + byte mod 16); the rest is what the server sends back.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::config::tagmap::Table;
use crate::mapping::plan::ModbusTransport;

use super::link::{self, Items};

/// How long one read may take before the answer counts as silence.
const TIMEOUT: Duration = Duration::from_millis(100);

/// The oracle: whether an answer frame's parts agree about its length. Modbus Messaging on
/// TCP/IP V1.0b, 3.1.3: the MBAP length is the unit byte plus the PDU; Modbus Application
/// Protocol V1.1b3, 6.1 to 6.4: a read answer's PDU is its function, its byte count and exactly
/// that many bytes.
fn check_frame(frame: &[u8]) -> Result<(), String> {
    let pdu = frame.get(7..).unwrap_or_default();
    match pdu {
        [0x01..=0x04, count, data @ ..] if data.len() == usize::from(*count) => Ok(()),
        _ => Err(format!(
            "PDU {pdu:02X?} is not a read answer of its byte count"
        )),
    }
}

/// Runs one read against a server that answers with `data[2..]`; panics only on a bug.
///
/// # Panics
/// When the read returns items of another table or count than asked, or the runtime cannot
/// start (which is not a finding about the input).
pub fn response(data: &[u8]) {
    let flags = data.first().copied().unwrap_or(0);
    let count = 1 + u16::from(data.get(1).copied().unwrap_or(0) % 16);
    let answer = data.get(2..).unwrap_or_default().to_vec();
    let table = match flags & 3 {
        0 => Table::Coil,
        1 => Table::DiscreteInput,
        2 => Table::InputRegister,
        _ => Table::HoldingRegister,
    };
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime for the fuzz target");
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port");
        let addr = listener.local_addr().expect("its address");
        // What the server sent, for the checks below.
        let sent = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let record = std::sync::Arc::clone(&sent);
        let server = tokio::spawn(async move {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            let mut request = [0u8; 12];
            if stream.read_exact(&mut request).await.is_err() {
                return;
            }
            let mut answer = answer;
            if flags & 4 != 0 && answer.len() >= 2 {
                answer[..2].copy_from_slice(&request[..2]);
            }
            if let Ok(mut record) = record.lock() {
                record.clone_from(&answer);
            }
            if flags & 8 != 0 {
                for b in &answer {
                    if stream.write_all(&[*b]).await.is_err() {
                        return;
                    }
                }
            } else {
                let _ = stream.write_all(&answer).await;
            }
            // Keep the socket open until the client is done, so a short answer is silence.
            let _ = stream.read(&mut [0u8; 1]).await;
        });
        let mut link = link::connect(&ModbusTransport::Tcp(addr.to_string()), TIMEOUT)
            .await
            .expect("connect to the loopback server");
        let result = link.read(1, table, 0, count, TIMEOUT).await;
        let sent = sent.lock().map(|s| s.clone()).unwrap_or_default();
        if let Ok(Ok(items)) = result {
            match (table.is_bits(), &items) {
                (true, Items::Bits(bits)) => assert_eq!(bits.len(), usize::from(count)),
                (false, Items::Words(words)) => assert_eq!(words.len(), usize::from(count)),
                (_, other) => panic!("asked for {count} of {table:?}, got {other:?}"),
            }
            // Items only come from a frame whose lengths agree, and they are its data.
            let header = sent.get(..7).expect("a whole MBAP header was sent");
            let length = usize::from(u16::from_be_bytes([header[4], header[5]]));
            let frame = sent.get(..6 + length).expect("a whole frame was sent");
            if let Err(why) = check_frame(frame) {
                panic!("items {items:?} from a malformed frame ({why}): {frame:02X?}");
            }
            let data = &frame[9..];
            let expected = match items {
                Items::Bits(bits) => bits
                    .iter()
                    .enumerate()
                    .all(|(i, b)| (data[i / 8] >> (i % 8)) & 1 == u8::from(*b)),
                Items::Words(words) => words
                    .iter()
                    .enumerate()
                    .all(|(i, w)| [data[2 * i], data[2 * i + 1]] == w.to_be_bytes()),
            };
            assert!(
                expected,
                "values differ from the frame's data: {frame:02X?}"
            );
        }
        drop(link);
        server.abort();
    });
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    /// A well-formed answer to a read of `count` items of the table chosen by `flags`.
    fn good_answer(flags: u8, count: u16) -> Vec<u8> {
        let (function, data): (u8, Vec<u8>) = match flags & 3 {
            0 => (1, vec![0x55; usize::from(count).div_ceil(8)]),
            1 => (2, vec![0xAA; usize::from(count).div_ceil(8)]),
            2 => (4, vec![0x12; usize::from(count) * 2]),
            _ => (3, vec![0x34; usize::from(count) * 2]),
        };
        let mut pdu = vec![function, data.len() as u8];
        pdu.extend(data);
        let mut frame = vec![0, 0, 0, 0];
        frame.extend(((pdu.len() + 1) as u16).to_be_bytes());
        frame.push(1);
        frame.extend(pdu);
        frame
    }

    #[test]
    fn a_well_formed_answer_reads_back() {
        for flags in 0..16u8 {
            let mut data = vec![flags | 4, 4];
            data.extend(good_answer(flags, 5));
            super::response(&data);
        }
    }

    /// A frame whose MBAP length covers more data than its byte count announces (the count
    /// itself matching the read) is refused, not read up to the byte count.
    #[test]
    fn data_beyond_the_byte_count_is_refused() {
        for flags in 0..4u8 {
            let mut answer = good_answer(flags, 5);
            answer.extend([0xDE, 0xAD]);
            let length = u16::from_be_bytes([answer[4], answer[5]]) + 2;
            answer[4..6].copy_from_slice(&length.to_be_bytes());
            let mut data = vec![flags | 4, 4];
            data.extend(answer);
            super::response(&data);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

        /// Answers with a few bytes changed, cut, or grown: never a panic or a wrong count.
        #[test]
        fn mutated_answers_are_refused_or_exact(
            flags in any::<u8>(),
            count in 0u8..16,
            edits in proptest::collection::vec((any::<u16>(), any::<u8>()), 0..4),
            cut in proptest::option::of(0usize..40),
            tail in proptest::collection::vec(any::<u8>(), 0..8),
        ) {
            let mut answer = good_answer(flags, 1 + u16::from(count));
            for (at, byte) in edits {
                let i = usize::from(at) % answer.len();
                answer[i] = byte;
            }
            if let Some(cut) = cut {
                answer.truncate(cut);
            }
            answer.extend(tail);
            let mut data = vec![flags | 4, count];
            data.extend(answer);
            super::response(&data);
        }

        /// Arbitrary bytes.
        #[test]
        fn random_answers_never_panic(data in proptest::collection::vec(any::<u8>(), 0..64)) {
            super::response(&data);
        }
    }
}
