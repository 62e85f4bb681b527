//! The Noise IKpsk2 handshake (via `snow`): two messages that authenticate
//! both static keys and the pre-shared key and yield a [`Session`].
//!
//! The initiator knows the responder's static public key in advance (IK);
//! the responder learns the initiator's from message 1 and accepts only the
//! one configured peer. Message 1 carries an encrypted 64-bit timestamp that
//! must grow from one initiation to the next, so a captured initiation cannot
//! be replayed to make the responder redo its work or reset its sessions.

use std::time::Instant;

use snow::params::NoiseParams;
use snow::HandshakeState;

use crate::keys::StaticKeypair;
use crate::session::{Session, TransportKeys};
use crate::wire::{INIT_NOISE_LEN, RESPONSE_NOISE_LEN, TIMESTAMP_LEN};

/// Why a handshake step failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// `NOISE_PARAMS` did not parse or snow cannot build the handshake.
    #[error("cannot set up the Noise handshake {params}")]
    Setup {
        /// The pattern name.
        params: &'static str,
        /// snow's error.
        #[source]
        source: snow::Error,
    },
    /// The Noise message did not decrypt or authenticate (wrong responder key,
    /// wrong pre-shared key, corrupted or forged message).
    #[error("Noise handshake message rejected")]
    Rejected(#[source] snow::Error),
    /// Message 1 authenticated a static key that is not the configured peer.
    #[error("handshake from a static key that is not the configured peer")]
    WrongPeer,
    /// Message 1's timestamp is not newer than one already accepted.
    #[error("handshake initiation timestamp {got} not newer than {last}: replayed")]
    Stale {
        /// Timestamp in the message.
        got: u64,
        /// Latest accepted timestamp.
        last: u64,
    },
    /// A handshake message or payload had an unexpected size.
    #[error("handshake payload of unexpected size {0}")]
    Payload(usize),
}

/// Who we are and whom we accept: the inputs of every handshake.
#[derive(Clone)]
pub struct Identity {
    params: NoiseParams,
    local: StaticKeypair,
    peer_public: [u8; 32],
    psk: [u8; 32],
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("local_public", &self.local.public)
            .field("peer_public", &self.peer_public)
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// Our static key pair, the one peer public key we accept, and the PSK.
    pub fn new(local: StaticKeypair, peer_public: [u8; 32], psk: [u8; 32]) -> Result<Self, Error> {
        let params = crate::NOISE_PARAMS.parse().map_err(|source| Error::Setup {
            params: crate::NOISE_PARAMS,
            source,
        })?;
        Ok(Identity {
            params,
            local,
            peer_public,
            psk,
        })
    }

    /// The configured peer's public key.
    pub fn peer_public(&self) -> &[u8; 32] {
        &self.peer_public
    }

    fn builder(&self) -> snow::Builder<'_> {
        snow::Builder::new(self.params.clone())
            .local_private_key(&self.local.private)
            .psk(2, &self.psk)
    }
}

/// An initiation we sent and whose response we wait for.
pub struct Initiation {
    state: HandshakeState,
    local_index: u32,
    sent_at: Instant,
}

impl std::fmt::Debug for Initiation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Initiation")
            .field("local_index", &self.local_index)
            .finish_non_exhaustive()
    }
}

/// Starts a handshake: writes Noise message 1 (with `timestamp` as payload)
/// into `out`.
pub fn initiate(
    id: &Identity,
    local_index: u32,
    timestamp: u64,
    now: Instant,
    out: &mut [u8; INIT_NOISE_LEN],
) -> Result<Initiation, Error> {
    let setup = |source| Error::Setup {
        params: crate::NOISE_PARAMS,
        source,
    };
    let mut state = id.builder().remote_public_key(&id.peer_public).build_initiator().map_err(setup)?;
    let n = state.write_message(&timestamp.to_le_bytes(), out).map_err(setup)?;
    if n != INIT_NOISE_LEN {
        return Err(Error::Payload(n));
    }
    Ok(Initiation {
        state,
        local_index,
        sent_at: now,
    })
}

impl Initiation {
    /// Our index for the session this handshake will make.
    pub fn local_index(&self) -> u32 {
        self.local_index
    }

    /// When message 1 was sent.
    pub fn sent_at(&self) -> Instant {
        self.sent_at
    }

    /// Reads the responder's message 2 and completes the handshake. On error
    /// the initiation is unchanged and may still accept the genuine response.
    pub fn complete(&mut self, remote_index: u32, noise: &[u8], now: Instant) -> Result<Session, Error> {
        if noise.len() != RESPONSE_NOISE_LEN {
            return Err(Error::Payload(noise.len()));
        }
        let mut payload = [0u8; RESPONSE_NOISE_LEN];
        let n = self.state.read_message(noise, &mut payload).map_err(Error::Rejected)?;
        if n != 0 {
            return Err(Error::Payload(n));
        }
        let (send, recv) = self.state.dangerously_get_raw_split();
        Ok(Session::new(
            self.local_index,
            remote_index,
            TransportKeys { send, recv },
            now,
            true,
        ))
    }
}

/// A completed responder handshake.
#[derive(Debug)]
pub struct Response {
    /// The new session (unconfirmed until the initiator's first datagram on it).
    pub session: Session,
    /// The initiation's timestamp, to remember as the latest accepted.
    pub timestamp: u64,
}

/// Reads Noise message 1 from the initiator with index `remote_index`, checks
/// the peer's static key and the timestamp against `last_timestamp`, and
/// writes message 2 into `out`. Nothing is learned or kept on error.
pub fn respond(
    id: &Identity,
    remote_index: u32,
    noise: &[u8],
    last_timestamp: Option<u64>,
    local_index: u32,
    now: Instant,
    out: &mut [u8; RESPONSE_NOISE_LEN],
) -> Result<Response, Error> {
    if noise.len() != INIT_NOISE_LEN {
        return Err(Error::Payload(noise.len()));
    }
    let setup = |source| Error::Setup {
        params: crate::NOISE_PARAMS,
        source,
    };
    let mut state = id.builder().build_responder().map_err(setup)?;
    let mut payload = [0u8; INIT_NOISE_LEN];
    let n = state.read_message(noise, &mut payload).map_err(Error::Rejected)?;
    if state.get_remote_static() != Some(&id.peer_public[..]) {
        return Err(Error::WrongPeer);
    }
    if n != TIMESTAMP_LEN {
        return Err(Error::Payload(n));
    }
    let mut ts = [0u8; TIMESTAMP_LEN];
    ts.copy_from_slice(&payload[..TIMESTAMP_LEN]);
    let timestamp = u64::from_le_bytes(ts);
    if let Some(last) = last_timestamp {
        if timestamp <= last {
            return Err(Error::Stale { got: timestamp, last });
        }
    }
    let n = state.write_message(&[], out).map_err(setup)?;
    if n != RESPONSE_NOISE_LEN {
        return Err(Error::Payload(n));
    }
    // Noise Split(): the first key protects initiator -> responder.
    let (to_responder, to_initiator) = state.dangerously_get_raw_split();
    let keys = TransportKeys {
        send: to_initiator,
        recv: to_responder,
    };
    Ok(Response {
        session: Session::new(local_index, remote_index, keys, now, false),
        timestamp,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{parse, Fragment, Message};

    struct Peers {
        init: Identity,
        resp: Identity,
    }

    fn peers() -> Peers {
        let a = StaticKeypair::generate();
        let b = StaticKeypair::generate();
        let psk = [9u8; 32];
        Peers {
            init: Identity::new(a.clone(), b.public, psk).unwrap(),
            resp: Identity::new(b, a.public, psk).unwrap(),
        }
    }

    fn handshake(p: &Peers, ts: u64, last: Option<u64>) -> Result<(Session, Session, u64), Error> {
        let now = Instant::now();
        let mut m1 = [0u8; INIT_NOISE_LEN];
        let mut ini = initiate(&p.init, 11, ts, now, &mut m1)?;
        let mut m2 = [0u8; RESPONSE_NOISE_LEN];
        let r = respond(&p.resp, 11, &m1, last, 22, now, &mut m2)?;
        let s = ini.complete(22, &m2, now)?;
        Ok((s, r.session, r.timestamp))
    }

    fn exchange(from: &mut Session, to: &mut Session, msg: &[u8]) -> Result<Vec<u8>, crate::session::Error> {
        let now = Instant::now();
        let mut buf = vec![0u8; msg.len() + 32];
        buf[16..16 + msg.len()].copy_from_slice(msg);
        let n = from.seal(now, Fragment::Whole, &mut buf, msg.len())?;
        buf.truncate(n);
        let Ok(Message::Data(h)) = parse(&buf) else { panic!("data") };
        to.open(now, &h, &mut buf).map(|p| p.to_vec())
    }

    #[test]
    fn good_peer_gets_working_sessions() {
        let p = peers();
        let (mut i, mut r, ts) = handshake(&p, 5, None).unwrap();
        assert_eq!(ts, 5);
        assert_eq!((i.local_index(), i.remote_index()), (11, 22));
        assert_eq!((r.local_index(), r.remote_index()), (22, 11));
        assert_eq!(exchange(&mut i, &mut r, b"to responder").unwrap(), b"to responder");
        assert_eq!(exchange(&mut r, &mut i, b"to initiator").unwrap(), b"to initiator");
    }

    #[test]
    fn wrong_static_key_is_rejected_by_responder() {
        let p = peers();
        let intruder = StaticKeypair::generate();
        // Knows the responder's public key and even the PSK, but is not the peer.
        let bad = Identity::new(intruder, *p.init.peer_public(), [9u8; 32]).unwrap();
        let now = Instant::now();
        let mut m1 = [0u8; INIT_NOISE_LEN];
        initiate(&bad, 1, 1, now, &mut m1).unwrap();
        let mut m2 = [0u8; RESPONSE_NOISE_LEN];
        let err = respond(&p.resp, 1, &m1, None, 2, now, &mut m2).unwrap_err();
        assert!(matches!(err, Error::WrongPeer), "{err}");
        assert_eq!(m2, [0u8; RESPONSE_NOISE_LEN], "nothing written");
    }

    #[test]
    fn wrong_responder_key_is_rejected() {
        let p = peers();
        // Initiator addresses some other responder key: message 1 does not decrypt.
        let other = StaticKeypair::generate();
        let lost = Identity::new(p.init.local.clone(), other.public, [9u8; 32]).unwrap();
        let now = Instant::now();
        let mut m1 = [0u8; INIT_NOISE_LEN];
        initiate(&lost, 1, 1, now, &mut m1).unwrap();
        let mut m2 = [0u8; RESPONSE_NOISE_LEN];
        assert!(matches!(respond(&p.resp, 1, &m1, None, 2, now, &mut m2), Err(Error::Rejected(_))));
    }

    #[test]
    fn wrong_psk_is_rejected_by_initiator() {
        let p = peers();
        let wrong = Identity::new(p.resp.local.clone(), p.resp.peer_public, [8u8; 32]).unwrap();
        let now = Instant::now();
        let mut m1 = [0u8; INIT_NOISE_LEN];
        let mut ini = initiate(&p.init, 1, 1, now, &mut m1).unwrap();
        let mut m2 = [0u8; RESPONSE_NOISE_LEN];
        // IKpsk2 mixes the PSK in after message 1: the responder cannot tell yet...
        let r = respond(&wrong, 1, &m1, None, 2, now, &mut m2).unwrap();
        // ...but the initiator can, and the responder's session never opens
        // anything the genuine initiator would send.
        assert!(matches!(ini.complete(2, &m2, now), Err(Error::Rejected(_))));
        let (mut good_i, _, _) = handshake(&p, 2, None).unwrap();
        let mut wrong_r = r.session;
        assert_eq!(exchange(&mut good_i, &mut wrong_r, b"x"), Err(crate::session::Error::Auth));
    }

    #[test]
    fn failed_response_leaves_initiation_usable() {
        let p = peers();
        let now = Instant::now();
        let mut m1 = [0u8; INIT_NOISE_LEN];
        let mut ini = initiate(&p.init, 1, 1, now, &mut m1).unwrap();
        let mut m2 = [0u8; RESPONSE_NOISE_LEN];
        let r = respond(&p.resp, 1, &m1, None, 2, now, &mut m2).unwrap();
        let mut forged = m2;
        forged[40] ^= 1;
        assert!(ini.complete(2, &forged, now).is_err());
        let mut s = ini.complete(2, &m2, now).unwrap();
        let mut rs = r.session;
        assert_eq!(exchange(&mut s, &mut rs, b"ok").unwrap(), b"ok");
    }

    #[test]
    fn replayed_initiation_is_stale() {
        let p = peers();
        assert!(matches!(handshake(&p, 10, Some(10)), Err(Error::Stale { got: 10, last: 10 })));
        assert!(matches!(handshake(&p, 9, Some(10)), Err(Error::Stale { .. })));
        assert!(handshake(&p, 11, Some(10)).is_ok());
    }

    #[test]
    fn tampered_initiation_is_rejected() {
        let p = peers();
        let now = Instant::now();
        let mut m1 = [0u8; INIT_NOISE_LEN];
        initiate(&p.init, 1, 1, now, &mut m1).unwrap();
        for i in [0, 31, 32, 60, 79, 80, 100, INIT_NOISE_LEN - 1] {
            let mut t = m1;
            t[i] ^= 0x80;
            let mut m2 = [0u8; RESPONSE_NOISE_LEN];
            assert!(respond(&p.resp, 1, &t, None, 2, now, &mut m2).is_err(), "flip at {i} accepted");
        }
    }

    #[test]
    fn sizes_are_exact() {
        let p = peers();
        assert!(matches!(
            respond(&p.resp, 1, &[0u8; 10], None, 2, Instant::now(), &mut [0u8; RESPONSE_NOISE_LEN]),
            Err(Error::Payload(10))
        ));
    }
}
