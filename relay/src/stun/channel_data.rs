//! ChannelData messages (RFC 8656 section 12.4).

use super::message::DecodeError;

/// Size of the ChannelData header (channel number + length).
pub const HEADER_LEN: usize = 4;

/// Valid channel numbers (RFC 8656 section 12).
pub fn is_valid_number(n: u16) -> bool {
    (0x4000..=0x4FFF).contains(&n)
}

/// The wider range of RFC 5766 (0x4000-0x7FFF), still used by some clients (coturn's
/// own test client picks numbers up to 0x7FFF). RFC 8656 reserves 0x5000-0xFFFF.
pub fn is_legacy_number(n: u16) -> bool {
    (0x4000..=0x7FFF).contains(&n)
}

/// A ChannelData message borrowed from a datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelData<'a> {
    pub number: u16,
    pub data: &'a [u8],
}

impl<'a> ChannelData<'a> {
    /// Decode a ChannelData datagram. Numbers 0x4000-0x7FFF are accepted here: the
    /// server only relays on numbers it bound, and which numbers ChannelBind accepts
    /// (RFC 5766's range by default, RFC 8656's in strict mode) is decided there. Over UDP the padding to a multiple of 4 is
    /// optional, so any bytes after `length` are accepted and ignored as long as they
    /// are fewer than 4 (a longer tail is not padding and the datagram is dropped).
    pub fn decode(packet: &'a [u8]) -> Result<Self, DecodeError> {
        let (h, rest) = packet
            .split_first_chunk::<HEADER_LEN>()
            .ok_or(DecodeError::TooShort)?;
        let number = u16::from_be_bytes([h[0], h[1]]);
        if !is_legacy_number(number) {
            return Err(DecodeError::BadChannelNumber);
        }
        let len = usize::from(u16::from_be_bytes([h[2], h[3]]));
        let (data, tail) = rest
            .split_at_checked(len)
            .ok_or(DecodeError::LengthMismatch)?;
        if tail.len() > 3 {
            return Err(DecodeError::LengthMismatch);
        }
        Ok(ChannelData { number, data })
    }

    /// Write a ChannelData header for `len` payload bytes.
    pub fn write_header(out: &mut [u8; HEADER_LEN], number: u16, len: u16) {
        out[..2].copy_from_slice(&number.to_be_bytes());
        out[2..].copy_from_slice(&len.to_be_bytes());
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn decode_rules() {
        assert_eq!(
            ChannelData::decode(&[0x40, 0x00, 0x00, 0x02, 9, 9]).unwrap(),
            ChannelData {
                number: 0x4000,
                data: &[9, 9]
            }
        );
        // Padded over UDP.
        assert!(ChannelData::decode(&[0x40, 0x00, 0x00, 0x02, 9, 9, 0, 0]).is_ok());
        // Too much tail.
        assert!(ChannelData::decode(&[0x40, 0x00, 0x00, 0x00, 0, 0, 0, 0]).is_err());
        // Truncated.
        assert!(ChannelData::decode(&[0x40, 0x00, 0x00, 0x05, 1]).is_err());
        // Reserved range.
        assert!(ChannelData::decode(&[0x80, 0x00, 0x00, 0x00]).is_err());
        assert!(ChannelData::decode(&[0x3F, 0xFF, 0x00, 0x00]).is_err());
        assert!(is_valid_number(0x4FFF) && !is_valid_number(0x5000));
        assert!(is_legacy_number(0x7FFF));
        assert!(ChannelData::decode(&[0x40, 0x00, 0x00]).is_err());
    }
}
