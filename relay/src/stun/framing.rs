//! Framing of STUN messages and ChannelData on a stream (TURN over TCP or TLS).
//!
//! A stream carries STUN messages and ChannelData messages back to back, with nothing
//! in between (RFC 8656 section 3.1; the same rules as RFC 6062 section 4): a STUN
//! message is its 20-byte header plus the length in that header (always a multiple of
//! 4); a ChannelData message is its 4-byte header plus its length, padded with zeros
//! to a multiple of 4 on streams (RFC 8656 section 12.5). The first two bits tell them
//! apart (`00` STUN, `01` ChannelData, RFC 7983); anything else on a TURN stream means
//! the peer does not speak TURN (or the framing was lost), so the connection is
//! closed.
//!
//! [`next_frame`] is pure: it looks at the bytes received so far and says how long the
//! first message is and how many bytes to drop after handling it, or that more bytes
//! are needed. It never reads past what it was given.

use super::{channel_data, HEADER_LEN};

/// Why a stream cannot be read further.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// The first two bits are neither STUN (`00`) nor ChannelData (`01`).
    #[error("neither STUN nor ChannelData (first byte {0:#04x})")]
    NotTurn(u8),
    /// A STUN length that is not a multiple of 4.
    #[error("STUN length {0} is not a multiple of 4")]
    BadStunLength(usize),
    /// A message longer than the configured maximum.
    #[error("message of {len} bytes exceeds the maximum of {max}")]
    TooLarge { len: usize, max: usize },
}

/// The first message on a stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame {
    /// Length of the message (header included, ChannelData padding excluded): the
    /// message is `buf[..len]`.
    pub len: usize,
    /// Bytes to drop from the front of the buffer once the message is handled
    /// (`len` plus the ChannelData padding).
    pub consumed: usize,
}

/// The first complete message in `buf`, `Ok(None)` if more bytes are needed, or an
/// error if the stream cannot be framed. `max` bounds `consumed`, so a reader never
/// needs a buffer longer than `max`.
pub fn next_frame(buf: &[u8], max: usize) -> Result<Option<Frame>, FrameError> {
    let Some(h) = buf.first_chunk::<4>() else {
        return Ok(None);
    };
    let body = usize::from(u16::from_be_bytes([h[2], h[3]]));
    let (len, consumed) = match h[0] >> 6 {
        0 => {
            if body % 4 != 0 {
                return Err(FrameError::BadStunLength(body));
            }
            (HEADER_LEN + body, HEADER_LEN + body)
        }
        1 => {
            let len = channel_data::HEADER_LEN + body;
            (len, len.next_multiple_of(4))
        }
        _ => return Err(FrameError::NotTurn(h[0])),
    };
    if consumed > max {
        return Err(FrameError::TooLarge { len: consumed, max });
    }
    if buf.len() < consumed {
        return Ok(None);
    }
    Ok(Some(Frame { len, consumed }))
}

/// Bytes of zero padding after a ChannelData message of `len` bytes (header
/// included) sent on a stream.
pub fn stream_padding(len: usize) -> usize {
    len.next_multiple_of(4) - len
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn stun_and_padded_channel_data_back_to_back() {
        let mut s = vec![0x00, 0x01, 0x00, 0x04];
        s.extend_from_slice(&[0x21, 0x12, 0xA4, 0x42]);
        s.extend_from_slice(&[7; 12]);
        s.extend_from_slice(&[0, 0, 0, 0]);
        // ChannelData with 5 bytes of data, padded to 12 bytes.
        s.extend_from_slice(&[0x40, 0x00, 0x00, 0x05, 1, 2, 3, 4, 5, 0, 0, 0]);
        let f = next_frame(&s, 4096).unwrap().unwrap();
        assert_eq!(
            f,
            Frame {
                len: 24,
                consumed: 24
            }
        );
        let rest = s.get(f.consumed..).unwrap();
        let g = next_frame(rest, 4096).unwrap().unwrap();
        assert_eq!(
            g,
            Frame {
                len: 9,
                consumed: 12
            }
        );
        // Every strict prefix needs more bytes.
        for n in 0..rest.len() {
            assert_eq!(next_frame(rest.get(..n).unwrap(), 4096), Ok(None), "{n}");
        }
    }

    #[test]
    fn bad_streams_are_errors() {
        assert_eq!(
            next_frame(&[0x80, 0, 0, 0], 4096),
            Err(FrameError::NotTurn(0x80))
        );
        assert_eq!(
            next_frame(&[0xC0, 0, 0, 0], 4096),
            Err(FrameError::NotTurn(0xC0))
        );
        assert_eq!(
            next_frame(&[0x00, 0x01, 0x00, 0x05], 4096),
            Err(FrameError::BadStunLength(5))
        );
        assert_eq!(
            next_frame(&[0x40, 0x00, 0xFF, 0xFF], 4096),
            Err(FrameError::TooLarge {
                len: 65_540,
                max: 4096
            })
        );
        // A header whose message would exceed the maximum is refused before its
        // body arrives, so nobody can make the reader buffer more than `max`.
        assert!(next_frame(&[0x00, 0x03, 0x10, 0x00], 4096).is_err());
    }

    #[test]
    fn padding() {
        assert_eq!(stream_padding(4), 0);
        assert_eq!(stream_padding(5), 3);
        assert_eq!(stream_padding(8), 0);
        assert_eq!(stream_padding(124), 0);
        assert_eq!(stream_padding(127), 1);
    }
}
