//! A reading guard for AMQP 1.0 byte streams: checks every frame header before fe2o3's decoder
//! sees it, so a hostile peer cannot crash it (a frame whose size field is 4 panicked inside the
//! decoder). Used by the sink's client connections and by every listener of the emulator.
//!
//! The stream is a sequence of protocol headers (`AMQP` + 4 bytes: AMQP 1.0 part 2, 2.2; again
//! after SASL, part 5, 5.3.2) and frames (part 2, 2.3.1: 4-byte size, DOFF, type, channel, then
//! the rest). A frame is refused unless `8 <= size <= max_frame`, `DOFF >= 2` and
//! `DOFF * 4 <= size`; the read then fails with `InvalidData` and nothing of it is passed on.
//! The guard only watches: bytes are passed through unchanged, with no buffering of its own.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Frames larger than this are refused whatever was negotiated (bounds what a peer can make the
/// decoder allocate).
pub const MAX_FRAME: u32 = 64 * 1024 * 1024;

/// Where the scan stands.
#[derive(Debug, Clone, Copy)]
enum Scan {
    /// Collecting the 8 bytes of a protocol header or frame header.
    Header { bytes: [u8; 8], have: usize },
    /// Inside a frame body: this many bytes still to pass.
    Body { left: u64 },
    /// A bad header was seen: every further read fails.
    Broken,
}

/// Checks frame headers on the read side; writes pass through.
pub struct FrameGuard<Io> {
    inner: Io,
    scan: Scan,
    max_frame: u32,
}

impl<Io> FrameGuard<Io> {
    pub fn new(inner: Io) -> Self {
        FrameGuard::with_max_frame(inner, MAX_FRAME)
    }

    pub fn with_max_frame(inner: Io, max_frame: u32) -> Self {
        FrameGuard {
            inner,
            scan: Scan::Header {
                bytes: [0; 8],
                have: 0,
            },
            max_frame,
        }
    }
}

impl<Io> std::fmt::Debug for FrameGuard<Io> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameGuard")
            .field("scan", &self.scan)
            .finish_non_exhaustive()
    }
}

/// Why a header is refused, if it is.
pub fn check_header(header: &[u8; 8], max_frame: u32) -> Result<u64, String> {
    if &header[..4] == b"AMQP" {
        return Ok(0);
    }
    let size = u32::from_be_bytes([header[0], header[1], header[2], header[3]]);
    let doff = header[4];
    if size < 8 {
        return Err(format!(
            "AMQP frame size {size} is below the 8-byte minimum"
        ));
    }
    if size > max_frame {
        return Err(format!(
            "AMQP frame size {size} is over the {max_frame}-byte limit"
        ));
    }
    if doff < 2 || u32::from(doff) * 4 > size {
        return Err(format!(
            "AMQP frame data offset {doff} does not fit a {size}-byte frame"
        ));
    }
    Ok(u64::from(size) - 8)
}

impl Scan {
    /// Scans `data`; an error names the first bad header.
    fn feed(&mut self, mut data: &[u8], max_frame: u32) -> Result<(), String> {
        while !data.is_empty() {
            match self {
                Scan::Broken => return Err("the stream is broken".into()),
                Scan::Body { left } => {
                    let n = (*left).min(data.len() as u64) as usize;
                    *left -= n as u64;
                    data = &data[n..];
                    if *left == 0 {
                        *self = Scan::Header {
                            bytes: [0; 8],
                            have: 0,
                        };
                    }
                }
                Scan::Header { bytes, have } => {
                    let n = (8 - *have).min(data.len());
                    bytes[*have..*have + n].copy_from_slice(&data[..n]);
                    *have += n;
                    data = &data[n..];
                    if *have == 8 {
                        match check_header(bytes, max_frame) {
                            Ok(0) => {
                                *self = Scan::Header {
                                    bytes: [0; 8],
                                    have: 0,
                                }
                            }
                            Ok(left) => *self = Scan::Body { left },
                            Err(why) => {
                                *self = Scan::Broken;
                                return Err(why);
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

impl<Io: AsyncRead + Unpin> AsyncRead for FrameGuard<Io> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if matches!(self.scan, Scan::Broken) {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "the peer sent a malformed AMQP frame",
            )));
        }
        let before = buf.filled().len();
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let fresh = &buf.filled()[before..];
                match this.scan.feed(fresh, this.max_frame) {
                    Ok(()) => Poll::Ready(Ok(())),
                    Err(why) => {
                        buf.set_filled(before);
                        Poll::Ready(Err(io::Error::new(io::ErrorKind::InvalidData, why)))
                    }
                }
            }
            other => other,
        }
    }
}

impl<Io: AsyncWrite + Unpin> AsyncWrite for FrameGuard<Io> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// One generated variant of `valid` for fuzz-style tests and the fuzz example: bit flips, cut
/// or inserted bytes, an overwritten frame size or data offset, or random bytes appended.
pub fn mutate(valid: &[u8], rng: &mut impl rand::Rng) -> Vec<u8> {
    let mut out = valid.to_vec();
    for _ in 0..rng.gen_range(1..4) {
        let at = rng.gen_range(0..out.len().max(1));
        match rng.gen_range(0..6) {
            0 => {
                if let Some(b) = out.get_mut(at) {
                    *b ^= 1 << rng.gen_range(0..8);
                }
            }
            1 => out.truncate(at),
            2 => out.insert(at.min(out.len()), rng.gen()),
            3 => {
                // The first frame's size field (after the 8-byte protocol header).
                let size: u32 = match rng.gen_range(0..4) {
                    0 => rng.gen_range(0..8),
                    1 => rng.gen(),
                    2 => MAX_FRAME + rng.gen_range(1..1000),
                    _ => rng.gen_range(8..64),
                };
                if out.len() >= 12 {
                    out[8..12].copy_from_slice(&size.to_be_bytes());
                }
            }
            4 => {
                if out.len() >= 13 {
                    out[12] = rng.gen_range(0..4);
                }
            }
            _ => {
                let n = rng.gen_range(0..64);
                out.extend((0..n).map(|_| rng.gen::<u8>()));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(size: u32, doff: u8, body: usize) -> Vec<u8> {
        let mut f = size.to_be_bytes().to_vec();
        f.extend_from_slice(&[doff, 1, 0, 0]);
        f.extend(std::iter::repeat_n(0u8, body));
        f
    }

    #[test]
    fn headers_and_frames_pass_in_any_fragmentation() {
        let mut stream = b"AMQP\x03\x01\x00\x00".to_vec();
        stream.extend(frame(8, 2, 0));
        stream.extend(frame(20, 2, 12));
        stream.extend(b"AMQP\x00\x01\x00\x00");
        stream.extend(frame(12, 3, 4));
        for chunk in 1..stream.len() {
            let mut scan = Scan::Header {
                bytes: [0; 8],
                have: 0,
            };
            for piece in stream.chunks(chunk) {
                scan.feed(piece, MAX_FRAME).unwrap();
            }
            assert!(matches!(scan, Scan::Header { have: 0, .. }), "{chunk}");
        }
    }

    #[test]
    fn bad_headers_are_refused() {
        for (header, why) in [
            (frame(4, 2, 0), "below"),
            (frame(0, 2, 0), "below"),
            (frame(8, 0, 0), "offset"),
            (frame(8, 1, 0), "offset"),
            (frame(8, 3, 0), "offset"),
            (frame(MAX_FRAME + 1, 2, 0), "limit"),
        ] {
            let mut scan = Scan::Header {
                bytes: [0; 8],
                have: 0,
            };
            let error = scan.feed(&header, MAX_FRAME).unwrap_err();
            assert!(error.contains(why), "{error}");
            assert!(scan.feed(b"x", MAX_FRAME).is_err(), "broken stays broken");
        }
    }

    #[tokio::test]
    async fn a_bad_frame_fails_the_read() {
        use tokio::io::AsyncReadExt;
        let mut bytes = b"AMQP\x03\x01\x00\x00".to_vec();
        bytes.extend(frame(4, 2, 0));
        let mut guard = FrameGuard::new(&bytes[..]);
        let mut out = Vec::new();
        let error = guard.read_to_end(&mut out).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
    }

    /// Generated streams never panic the scan, and it refuses exactly what `check_header` does.
    #[test]
    fn generated_streams_are_scanned_without_panics() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        let mut valid = b"AMQP\x03\x01\x00\x00".to_vec();
        valid.extend(frame(21, 2, 13));
        for _ in 0..20_000 {
            let input = mutate(&valid, &mut rng);
            let mut scan = Scan::Header {
                bytes: [0; 8],
                have: 0,
            };
            let chunk = rng.gen_range(1..=input.len().max(1));
            for piece in input.chunks(chunk) {
                if scan.feed(piece, 4096).is_err() {
                    break;
                }
            }
        }
    }
}
