//! The console's admin password: stored only as a salted PBKDF2-HMAC-SHA256
//! hash; checked in constant time.

use std::num::NonZeroU32;

use ring::pbkdf2;
use serde::{Deserialize, Serialize};

use crate::store::{Store, StoreError, META};

const KEY: &str = "admin.password";
const ITERATIONS: u32 = 100_000;

#[derive(Serialize, Deserialize)]
struct Hashed {
    salt: String,
    iterations: u32,
    hash: String,
}

/// True once a password is set.
pub fn is_set(store: &Store) -> Result<bool, StoreError> {
    Ok(store.get(&META, KEY)?.is_some())
}

/// Sets the admin password (hash only is stored).
pub fn set_password(store: &Store, password: &str) -> Result<(), StoreError> {
    let mut salt = [0u8; 16];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut salt);
    let mut out = [0u8; 32];
    let iters = NonZeroU32::new(ITERATIONS).expect("non-zero");
    pbkdf2::derive(pbkdf2::PBKDF2_HMAC_SHA256, iters, &salt, password.as_bytes(), &mut out);
    let h = Hashed {
        salt: hex::encode(salt),
        iterations: ITERATIONS,
        hash: hex::encode(out),
    };
    store.put(&META, KEY, &serde_json::to_value(h).expect("serializes"))
}

/// Checks a login (user must be `admin`).
pub fn verify(store: &Store, user: &str, password: &str) -> bool {
    let Ok(Some(v)) = store.get(&META, KEY) else { return false };
    let Ok(h) = serde_json::from_value::<Hashed>(v) else { return false };
    let (Ok(salt), Ok(hash), Some(iters)) = (hex::decode(&h.salt), hex::decode(&h.hash), NonZeroU32::new(h.iterations)) else {
        return false;
    };
    let ok = pbkdf2::verify(pbkdf2::PBKDF2_HMAC_SHA256, iters, &salt, password.as_bytes(), &hash).is_ok();
    ok && user == "admin"
}

/// A fresh one-time password for first start: 20 characters from an
/// alphabet without look-alikes.
pub fn generate_password() -> String {
    const ALPHABET: &[u8] = b"abcdefghjkmnpqrstuvwxyzACDEFGHJKLMNPQRTUVWXY346789";
    let mut bytes = [0u8; 20];
    rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
    bytes.iter().map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_then_verify() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("s.redb")).unwrap();
        assert!(!verify(&s, "admin", "x"), "no password set: nobody gets in");
        set_password(&s, "correct horse").unwrap();
        assert!(verify(&s, "admin", "correct horse"));
        assert!(!verify(&s, "admin", "correct hors"));
        assert!(!verify(&s, "root", "correct horse"));
        let raw = serde_json::to_string(&s.get(&META, KEY).unwrap()).unwrap();
        assert!(!raw.contains("correct horse"), "plaintext stored: {raw}");
        assert_eq!(generate_password().len(), 20);
        assert_ne!(generate_password(), generate_password());
    }
}
