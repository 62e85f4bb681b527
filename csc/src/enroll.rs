//! Enrolment: how a fresh node comes under one appliance.
//!
//! 1. The admin starts the node with a one-time token in a file
//!    (`--token-file`); the node prints its bootstrap certificate's fingerprint.
//! 2. The appliance connects over TLS pinning that fingerprint and calls
//!    `POST /v1/enroll/csr` with the token and the node's name; it gets a CSR
//!    for the node's key and the node's Noise public key.
//! 3. The appliance signs the CSR with its CA and calls `POST /v1/enroll/finish`
//!    with the token, certificate, CA and its own data-plane identity.
//! 4. The node stores them, deletes the token file and from then on only
//!    accepts clients with a certificate from that CA.
//!
//! This module holds the token and the step state; [`crate::node::Node`]
//! does the storing and the switch of the TLS configuration.

use std::io;
use std::path::{Path, PathBuf};

use proto::api::{EnrollBegin, EnrollFinish};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::state_dir::{self, StateDir, PUBLIC_MODE};

/// Shortest token accepted: anything shorter is guessable over the network.
pub const MIN_TOKEN_LEN: usize = 16;

/// Errors of the enrolment steps.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The node is not enrolled and has no token to enrol with.
    #[error(
        "this node is not enrolled and no enrolment token was given: \
         write a one-time token to a file (e.g. `(umask 077; head -c 32 /dev/urandom | base64 > token)`) \
         and pass --token-file"
    )]
    NoToken,
    /// The token file could not be read.
    #[error("cannot read the enrolment token file {0}")]
    TokenFile(PathBuf, #[source] io::Error),
    /// The token is too short to resist guessing.
    #[error(
        "the enrolment token in {0} is shorter than {MIN_TOKEN_LEN} characters; \
         use a random one, e.g. `head -c 32 /dev/urandom | base64`"
    )]
    TokenTooShort(PathBuf),
    /// The caller's token is not the node's.
    #[error("enrolment token does not match")]
    BadToken,
    /// Enrolment already happened.
    #[error("node is already enrolled")]
    AlreadyEnrolled,
    /// `finish` without a preceding `csr`.
    #[error("no enrolment in progress: call POST /v1/enroll/csr first (the node may have restarted since)")]
    NoPendingCsr,
    /// The name cannot be a certificate CN / node name.
    #[error("node name {0:?} is not usable: use 1 to 64 characters of A-Z a-z 0-9 . _ -, starting with a letter or digit")]
    BadName(String),
    /// The enrolment record could not be read or written.
    #[error(transparent)]
    State(#[from] state_dir::Error),
    /// The enrolment record is damaged.
    #[error("{0} is damaged ({1}); re-enrol the node")]
    Record(PathBuf, String),
}

/// The one-time enrolment token, kept only as its SHA-256: comparing digests
/// in constant time leaks neither content nor length.
pub struct Token {
    digest: [u8; 32],
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

impl Token {
    /// Reads the token from `path` (surrounding whitespace ignored).
    pub fn read(path: &Path) -> Result<Token, Error> {
        let raw = std::fs::read_to_string(path).map_err(|e| Error::TokenFile(path.to_path_buf(), e))?;
        if let Ok(meta) = std::fs::metadata(path) {
            use std::os::unix::fs::PermissionsExt;
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(path = %path.display(), "the enrolment token file is readable by other users; chmod 600 it");
            }
        }
        let t = raw.trim();
        if t.chars().count() < MIN_TOKEN_LEN {
            return Err(Error::TokenTooShort(path.to_path_buf()));
        }
        Ok(Token::new(t))
    }

    /// A token from its text.
    pub fn new(secret: &str) -> Token {
        Token {
            digest: Sha256::digest(secret.as_bytes()).into(),
        }
    }

    /// Constant-time check of a candidate.
    pub fn matches(&self, candidate: &str) -> bool {
        let d: [u8; 32] = Sha256::digest(candidate.as_bytes()).into();
        bool::from(self.digest.ct_eq(&d))
    }
}

/// Checks a node name: 1..=64 of `[A-Za-z0-9._-]`, first a letter or digit.
pub fn validate_name(name: &str) -> Result<(), Error> {
    let ok = (1..=64).contains(&name.len())
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(Error::BadName(name.to_string()))
    }
}

/// What `enrolled.json` holds. Written last: its presence means enrolled.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EnrolledRecord {
    /// The node's name (its certificate's CN).
    pub name: String,
    /// When enrolment finished, seconds since the Unix epoch.
    pub enrolled_at: u64,
}

impl EnrolledRecord {
    /// Loads the record; `None` when the node is not enrolled.
    pub fn load(state: &StateDir) -> Result<Option<Self>, Error> {
        let path = state.enrolled();
        match state.read_optional(&path)? {
            None => Ok(None),
            Some(b) => serde_json::from_slice(&b).map(Some).map_err(|e| Error::Record(path, e.to_string())),
        }
    }

    /// Writes the record atomically: the commit point of enrolment.
    pub fn store(&self, state: &StateDir) -> Result<(), Error> {
        let json = serde_json::to_vec_pretty(self).map_err(|e| Error::Record(state.enrolled(), e.to_string()))?;
        state.write_atomic(&state.enrolled(), &json, PUBLIC_MODE)?;
        Ok(())
    }
}

/// Where enrolment stands. Pure state; the caller stores files.
#[derive(Debug)]
pub struct Enrolment {
    token: Option<Token>,
    token_file: Option<PathBuf>,
    pending: Option<String>,
    done: bool,
}

impl Enrolment {
    /// A node that is already enrolled: every step answers "already enrolled".
    pub fn enrolled() -> Self {
        Enrolment {
            token: None,
            token_file: None,
            pending: None,
            done: true,
        }
    }

    /// A node waiting for enrolment with `token` (read from `token_file`).
    pub fn waiting(token: Token, token_file: Option<PathBuf>) -> Self {
        Enrolment {
            token: Some(token),
            token_file,
            pending: None,
            done: false,
        }
    }

    /// True once enrolment finished.
    pub fn is_done(&self) -> bool {
        self.done
    }

    fn check_token(&self, candidate: &str) -> Result<(), Error> {
        if self.done {
            return Err(Error::AlreadyEnrolled);
        }
        match &self.token {
            Some(t) if t.matches(candidate) => Ok(()),
            _ => Err(Error::BadToken),
        }
    }

    /// Step 1: checks token and name; remembers the name for step 2.
    pub fn begin(&mut self, req: &EnrollBegin) -> Result<(), Error> {
        self.check_token(&req.token)?;
        validate_name(&req.name)?;
        self.pending = Some(req.name.clone());
        Ok(())
    }

    /// Step 2, before anything is stored: checks the token and returns the
    /// name step 1 was given.
    pub fn check_finish(&self, req: &EnrollFinish) -> Result<String, Error> {
        self.check_token(&req.token)?;
        self.pending.clone().ok_or(Error::NoPendingCsr)
    }

    /// Step 2, after everything is stored: forget the token and delete its
    /// file. Returns the file that could not be deleted, if any.
    pub fn complete(&mut self) -> Option<(PathBuf, io::Error)> {
        self.done = true;
        self.token = None;
        self.pending = None;
        let path = self.token_file.take()?;
        match std::fs::remove_file(&path) {
            Ok(()) => None,
            Err(e) if e.kind() == io::ErrorKind::NotFound => None,
            Err(e) => Some((path, e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn begin(token: &str, name: &str) -> EnrollBegin {
        EnrollBegin {
            token: token.into(),
            name: name.into(),
        }
    }

    fn finish(token: &str) -> EnrollFinish {
        EnrollFinish {
            token: token.into(),
            cert_pem: String::new(),
            ca_pem: String::new(),
            appliance_noise_public: String::new(),
            bridge_psk: String::new(),
        }
    }

    #[test]
    fn token_compare() {
        let t = Token::new("correct horse battery staple");
        assert!(t.matches("correct horse battery staple"));
        assert!(!t.matches("correct horse battery stapl"));
        assert!(!t.matches(""));
    }

    #[test]
    fn token_file_rules() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("t");
        std::fs::write(&p, "short\n").unwrap();
        assert!(matches!(Token::read(&p), Err(Error::TokenTooShort(_))));
        std::fs::write(&p, "  0123456789abcdef0123\n").unwrap();
        assert!(Token::read(&p).unwrap().matches("0123456789abcdef0123"));
        assert!(matches!(Token::read(&d.path().join("nope")), Err(Error::TokenFile(..))));
    }

    #[test]
    fn steps() {
        let d = tempfile::tempdir().unwrap();
        let tf = d.path().join("token");
        std::fs::write(&tf, "x").unwrap();
        let mut e = Enrolment::waiting(Token::new("good-token-0123456"), Some(tf.clone()));
        assert!(matches!(e.check_finish(&finish("good-token-0123456")), Err(Error::NoPendingCsr)));
        assert!(matches!(e.begin(&begin("bad", "n1")), Err(Error::BadToken)));
        assert!(matches!(e.begin(&begin("good-token-0123456", "../x")), Err(Error::BadName(_))));
        e.begin(&begin("good-token-0123456", "node-1")).unwrap();
        assert!(matches!(e.check_finish(&finish("bad")), Err(Error::BadToken)));
        assert_eq!(e.check_finish(&finish("good-token-0123456")).unwrap(), "node-1");
        assert!(e.complete().is_none());
        assert!(!tf.exists());
        assert!(matches!(e.begin(&begin("good-token-0123456", "n")), Err(Error::AlreadyEnrolled)));
    }

    #[test]
    fn names() {
        for ok in ["n", "node-1", "Node_1.dc2", &"a".repeat(64)] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", ".a", "a/b", "a b", &"a".repeat(65), "é"] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }
}
