//! Datagram formats of the tunnel (see `PROTOCOL.md` beside `Cargo.toml`).
//!
//! Every datagram starts with a version byte and a message type byte. All
//! integers are little-endian. Parsing is total: any byte string either
//! parses into a [`Message`] or yields an [`Error`], never a panic.

/// Protocol version carried in the first byte of every datagram.
pub const VERSION: u8 = 1;

/// Length of the Noise part of a handshake initiation:
/// `e` (32) + encrypted `s` (32 + 16) + encrypted timestamp payload (8 + 16).
pub const INIT_NOISE_LEN: usize = 32 + 48 + TIMESTAMP_LEN + TAG_LEN;
/// Total length of a handshake initiation datagram.
pub const INIT_LEN: usize = 8 + INIT_NOISE_LEN;
/// Length of the Noise part of a handshake response: `e` (32) + encrypted empty payload (16).
pub const RESPONSE_NOISE_LEN: usize = 32 + TAG_LEN;
/// Total length of a handshake response datagram.
pub const RESPONSE_LEN: usize = 12 + RESPONSE_NOISE_LEN;
/// Length of the handshake initiation's encrypted payload: a 64-bit timestamp.
pub const TIMESTAMP_LEN: usize = 8;

/// Length of the (authenticated, unencrypted) data header.
pub const DATA_HEADER_LEN: usize = 16;
/// Length of the AES-GCM tag that ends every data datagram.
pub const TAG_LEN: usize = 16;
/// Bytes a data datagram adds to its plaintext.
pub const DATA_OVERHEAD: usize = DATA_HEADER_LEN + TAG_LEN;

/// Largest UDP payload we send: fits an IPv6 underlay of MTU 1500
/// (1500 - 40 IPv6 - 8 UDP); an IPv4 underlay then carries 1480-byte packets.
pub const MAX_DATAGRAM: usize = 1452;
/// Largest plaintext one data datagram carries.
pub const MAX_FRAGMENT_PAYLOAD: usize = MAX_DATAGRAM - DATA_OVERHEAD;
/// Largest Ethernet frame (without FCS) the tunnel carries: two fragments.
/// Covers 1518-byte VLAN-tagged frames with room to spare; larger frames
/// (jumbo, or GRO/GSO super-frames) are dropped and counted.
pub const MAX_FRAME: usize = 2 * MAX_FRAGMENT_PAYLOAD;

/// Message types (second byte of every datagram).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum MessageType {
    /// Noise IKpsk2 message 1.
    HandshakeInit = 1,
    /// Noise IKpsk2 message 2.
    HandshakeResponse = 2,
    /// Encrypted Ethernet frame, fragment of one, or keepalive.
    Data = 3,
}

/// Where a data datagram's plaintext belongs in its Ethernet frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fragment {
    /// A whole frame (or, with an empty plaintext, a keepalive).
    Whole,
    /// First half of a frame; the second half has the next counter.
    First,
    /// Second half of a frame; the first half has the previous counter.
    Second,
}

impl Fragment {
    /// Wire encoding: high nibble fragment index, low nibble fragment count.
    pub fn to_byte(self) -> u8 {
        match self {
            Fragment::Whole => 0x01,
            Fragment::First => 0x02,
            Fragment::Second => 0x12,
        }
    }

    /// Parses the wire encoding.
    pub fn from_byte(b: u8) -> Result<Self, Error> {
        match b {
            0x01 => Ok(Fragment::Whole),
            0x02 => Ok(Fragment::First),
            0x12 => Ok(Fragment::Second),
            other => Err(Error::BadFragment(other)),
        }
    }
}

/// Why a datagram was not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Shorter than the two-byte prefix.
    #[error("datagram of {0} bytes is too short for any message")]
    TooShort(usize),
    /// Another protocol version (or not our protocol at all).
    #[error("unsupported protocol version {0} (this build speaks version {VERSION})")]
    BadVersion(u8),
    /// Unknown message type byte.
    #[error("unknown message type {0}")]
    UnknownType(u8),
    /// Length does not match the message type.
    #[error("{kind:?} message has length {len}, expected {expected}")]
    BadLength {
        /// The message type.
        kind: MessageType,
        /// Received length.
        len: usize,
        /// Expected length (minimum for data).
        expected: usize,
    },
    /// Reserved bytes not zero.
    #[error("reserved header bytes are not zero")]
    Reserved,
    /// Invalid fragment byte.
    #[error("invalid fragment descriptor {0:#04x}")]
    BadFragment(u8),
}

/// Header of a data datagram; its 16 encoded bytes are the AEAD's associated data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataHeader {
    /// The receiver's session index.
    pub receiver: u32,
    /// Per-session packet counter, also the AEAD nonce.
    pub counter: u64,
    /// Position of the plaintext in its frame.
    pub fragment: Fragment,
}

impl DataHeader {
    /// Encodes the header.
    pub fn encode(&self) -> [u8; DATA_HEADER_LEN] {
        let mut h = [0u8; DATA_HEADER_LEN];
        h[0] = VERSION;
        h[1] = MessageType::Data as u8;
        h[2] = self.fragment.to_byte();
        h[4..8].copy_from_slice(&self.receiver.to_le_bytes());
        h[8..16].copy_from_slice(&self.counter.to_le_bytes());
        h
    }
}

/// A parsed datagram. Handshake messages borrow their Noise bytes; a data
/// message only describes its header (the tunnel decrypts in place).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Message<'a> {
    /// Handshake initiation.
    Init {
        /// Initiator's session index.
        sender: u32,
        /// Noise message 1.
        noise: &'a [u8],
    },
    /// Handshake response.
    Response {
        /// Responder's session index.
        sender: u32,
        /// Initiator's session index this answers.
        receiver: u32,
        /// Noise message 2.
        noise: &'a [u8],
    },
    /// Data datagram: header, then `ciphertext || tag` from byte 16 on.
    Data(DataHeader),
}

/// Parses a datagram.
pub fn parse(d: &[u8]) -> Result<Message<'_>, Error> {
    if d.len() < 4 {
        return Err(Error::TooShort(d.len()));
    }
    if d[0] != VERSION {
        return Err(Error::BadVersion(d[0]));
    }
    let kind = match d[1] {
        1 => MessageType::HandshakeInit,
        2 => MessageType::HandshakeResponse,
        3 => MessageType::Data,
        t => return Err(Error::UnknownType(t)),
    };
    let expect_len = |expected: usize, exact: bool| {
        let ok = if exact { d.len() == expected } else { d.len() >= expected };
        if ok {
            Ok(())
        } else {
            Err(Error::BadLength {
                kind,
                len: d.len(),
                expected,
            })
        }
    };
    match kind {
        MessageType::HandshakeInit => {
            expect_len(INIT_LEN, true)?;
            if d[2..4] != [0, 0] {
                return Err(Error::Reserved);
            }
            Ok(Message::Init {
                sender: le32(&d[4..8]),
                noise: &d[8..],
            })
        }
        MessageType::HandshakeResponse => {
            expect_len(RESPONSE_LEN, true)?;
            if d[2..4] != [0, 0] {
                return Err(Error::Reserved);
            }
            Ok(Message::Response {
                sender: le32(&d[4..8]),
                receiver: le32(&d[8..12]),
                noise: &d[12..],
            })
        }
        MessageType::Data => {
            expect_len(DATA_OVERHEAD, false)?;
            if d.len() > MAX_DATAGRAM {
                return Err(Error::BadLength {
                    kind,
                    len: d.len(),
                    expected: MAX_DATAGRAM,
                });
            }
            let fragment = Fragment::from_byte(d[2])?;
            if d[3] != 0 {
                return Err(Error::Reserved);
            }
            let mut counter = [0u8; 8];
            counter.copy_from_slice(&d[8..16]);
            Ok(Message::Data(DataHeader {
                receiver: le32(&d[4..8]),
                counter: u64::from_le_bytes(counter),
                fragment,
            }))
        }
    }
}

/// Writes a handshake initiation into `out`; returns its length.
pub fn write_init(out: &mut [u8; INIT_LEN], sender: u32, noise: &[u8; INIT_NOISE_LEN]) -> usize {
    out[0] = VERSION;
    out[1] = MessageType::HandshakeInit as u8;
    out[2..4].fill(0);
    out[4..8].copy_from_slice(&sender.to_le_bytes());
    out[8..].copy_from_slice(noise);
    INIT_LEN
}

/// Writes a handshake response into `out`; returns its length.
pub fn write_response(out: &mut [u8; RESPONSE_LEN], sender: u32, receiver: u32, noise: &[u8; RESPONSE_NOISE_LEN]) -> usize {
    out[0] = VERSION;
    out[1] = MessageType::HandshakeResponse as u8;
    out[2..4].fill(0);
    out[4..8].copy_from_slice(&sender.to_le_bytes());
    out[8..12].copy_from_slice(&receiver.to_le_bytes());
    out[12..].copy_from_slice(noise);
    RESPONSE_LEN
}

fn le32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_le_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_header_roundtrip() {
        for fragment in [Fragment::Whole, Fragment::First, Fragment::Second] {
            let h = DataHeader {
                receiver: 0xdead_beef,
                counter: 0x0102_0304_0506_0708,
                fragment,
            };
            let mut d = h.encode().to_vec();
            d.extend_from_slice(&[0u8; TAG_LEN]);
            assert_eq!(parse(&d), Ok(Message::Data(h)));
            // Little-endian on the wire.
            assert_eq!(&d[4..8], &[0xef, 0xbe, 0xad, 0xde]);
            assert_eq!(d[8], 0x08);
        }
    }

    #[test]
    fn handshake_roundtrip() {
        let mut out = [0u8; INIT_LEN];
        write_init(&mut out, 7, &[0xaa; INIT_NOISE_LEN]);
        assert_eq!(
            parse(&out),
            Ok(Message::Init {
                sender: 7,
                noise: &[0xaa; INIT_NOISE_LEN]
            })
        );
        let mut out = [0u8; RESPONSE_LEN];
        write_response(&mut out, 8, 9, &[0xbb; RESPONSE_NOISE_LEN]);
        assert_eq!(
            parse(&out),
            Ok(Message::Response {
                sender: 8,
                receiver: 9,
                noise: &[0xbb; RESPONSE_NOISE_LEN]
            })
        );
    }

    #[test]
    fn rejects_malformed() {
        let data_ok = {
            let mut d = DataHeader {
                receiver: 1,
                counter: 2,
                fragment: Fragment::Whole,
            }
            .encode()
            .to_vec();
            d.extend_from_slice(&[0; TAG_LEN]);
            d
        };
        let table: Vec<(Vec<u8>, Error)> = vec![
            (vec![], Error::TooShort(0)),
            (vec![1, 3, 1], Error::TooShort(3)),
            (vec![2, 3, 1, 0], Error::BadVersion(2)),
            (vec![1, 9, 0, 0], Error::UnknownType(9)),
            (
                vec![1, 1, 0, 0, 0, 0, 0, 0],
                Error::BadLength {
                    kind: MessageType::HandshakeInit,
                    len: 8,
                    expected: INIT_LEN,
                },
            ),
            (
                vec![1, 2, 0, 0],
                Error::BadLength {
                    kind: MessageType::HandshakeResponse,
                    len: 4,
                    expected: RESPONSE_LEN,
                },
            ),
            (
                data_ok[..DATA_OVERHEAD - 1].to_vec(),
                Error::BadLength {
                    kind: MessageType::Data,
                    len: 31,
                    expected: 32,
                },
            ),
            (
                [data_ok.clone(), vec![0; MAX_DATAGRAM]].concat(),
                Error::BadLength {
                    kind: MessageType::Data,
                    len: MAX_DATAGRAM + 32,
                    expected: MAX_DATAGRAM,
                },
            ),
            (
                {
                    let mut d = data_ok.clone();
                    d[2] = 0x22;
                    d
                },
                Error::BadFragment(0x22),
            ),
            (
                {
                    let mut d = data_ok.clone();
                    d[3] = 1;
                    d
                },
                Error::Reserved,
            ),
            (
                {
                    let mut d = vec![0u8; INIT_LEN];
                    d[0] = 1;
                    d[1] = 1;
                    d[2] = 1;
                    d
                },
                Error::Reserved,
            ),
        ];
        for (d, e) in table {
            assert_eq!(parse(&d), Err(e.clone()), "{d:?}");
        }
    }

    #[test]
    fn size_budget() {
        assert_eq!(MAX_FRAGMENT_PAYLOAD, 1420);
        const { assert!(MAX_FRAME >= 1518) };
        // IPv4 (20) or IPv6 (40) + UDP (8) headers: fits an MTU 1500 underlay.
        const { assert!(MAX_DATAGRAM + 28 <= 1500) };
        const { assert!(MAX_DATAGRAM + 48 <= 1500) };
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(d in proptest::collection::vec(proptest::num::u8::ANY, 0..1600)) {
            let _ = parse(&d);
        }
    }
}
