//! The QEMU guest agent (`qemu-ga`) seen from the host: one `guest-sync`
//! round trip over the agent's socket proves the agent in the guest runs.
//!
//! QEMU exposes the guest's `org.qemu.guest_agent.0` virtio-serial port as a
//! unix socket in the run directory ([`crate::run_dir::RunDir::agent_socket`]).
//! The protocol is QMP-like JSON, one object per line, without a greeting or
//! capabilities negotiation. An answer may be left over from an earlier,
//! timed-out request (the agent answers late once it runs again), so every
//! request carries a fresh id and only the matching `{"return": id}` counts.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

/// Longest line accepted from the agent; anything longer is not an answer
/// to `guest-sync` and ends the exchange.
const MAX_LINE: usize = 64 * 1024;

/// Asking the guest agent failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The agent socket is missing or refused (QEMU not running, or started
    /// without a guest-agent channel: `LaunchOptions::guest_agent`).
    #[error("cannot connect to the guest agent socket {path}: {source}; was the guest started with a guest-agent channel?")]
    Connect {
        /// Socket path.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// Reading or writing failed.
    #[error("guest agent socket {path}: {source}")]
    Io {
        /// Socket path.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// No matching answer in time: the agent is stopped, hung, not
    /// installed in the guest, or the guest itself is frozen.
    #[error("guest agent {path}: no answer to guest-sync within {timeout:?} (agent not running in the guest, or the guest is hung)")]
    NoAnswer {
        /// Socket path.
        path: PathBuf,
        /// How long we waited.
        timeout: Duration,
    },
    /// The agent sent something that is not its protocol.
    #[error("guest agent {path}: unexpected answer: {detail}")]
    Protocol {
        /// Socket path.
        path: PathBuf,
        /// What was wrong.
        detail: String,
    },
}

/// A fresh id per request (process-wide), so late answers never match.
fn next_id() -> u64 {
    static N: AtomicU64 = AtomicU64::new(0);
    let base = u64::from(std::process::id()) << 32;
    base | (N.fetch_add(1, Ordering::Relaxed) & 0xffff_ffff)
}

/// Sends `guest-sync` with a fresh id over the agent socket at `path` and
/// waits up to `timeout` for the matching answer. `Ok(())` means the agent
/// in the guest read the request and answered it just now.
pub fn ping(path: &Path, timeout: Duration) -> Result<(), AgentError> {
    let io = |source| AgentError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut s = UnixStream::connect(path).map_err(|source| AgentError::Connect {
        path: path.to_path_buf(),
        source,
    })?;
    let id = next_id();
    // A leading 0xFF resets the agent's JSON parser after a half-sent request
    // from an earlier client (qemu-ga docs: guest-sync-delimited).
    let mut req = vec![0xff];
    req.extend_from_slice(json!({ "execute": "guest-sync", "arguments": { "id": id } }).to_string().as_bytes());
    req.push(b'\n');
    s.set_write_timeout(Some(timeout)).map_err(io)?;
    match s.write_all(&req) {
        Ok(()) => {}
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
            return Err(AgentError::NoAnswer {
                path: path.to_path_buf(),
                timeout,
            })
        }
        Err(e) => return Err(io(e)),
    }
    let deadline = Instant::now() + timeout;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        while let Some(pos) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            if is_sync_answer(&line, id) {
                return Ok(());
            }
        }
        if buf.len() > MAX_LINE {
            return Err(AgentError::Protocol {
                path: path.to_path_buf(),
                detail: format!("a line longer than {MAX_LINE} bytes"),
            });
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(AgentError::NoAnswer {
                path: path.to_path_buf(),
                timeout,
            });
        }
        s.set_read_timeout(Some(left)).map_err(io)?;
        match s.read(&mut chunk) {
            Ok(0) => {
                // QEMU's chardev closed (QEMU exit); nothing more will come.
                return Err(AgentError::NoAnswer {
                    path: path.to_path_buf(),
                    timeout,
                });
            }
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted) => {}
            Err(e) => return Err(io(e)),
        }
    }
}

/// True when `line` (from the guest: untrusted) is the agent's
/// `{"return": id}` for our request. Other lines (late answers, errors of
/// other clients' requests, a stray 0xFF delimiter) do not count.
pub fn is_sync_answer(line: &[u8], id: u64) -> bool {
    let text = line.strip_prefix(&[0xff]).unwrap_or(line);
    serde_json::from_slice::<Value>(text).is_ok_and(|v| v.get("return").and_then(Value::as_u64) == Some(id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_our_id_is_an_answer() {
        assert!(is_sync_answer(b"{\"return\": 42}\n", 42));
        assert!(is_sync_answer(b"\xff{\"return\": 42}\n", 42));
        assert!(!is_sync_answer(b"{\"return\": 41}\n", 42));
        assert!(!is_sync_answer(b"{\"return\": {}}\n", 42));
        assert!(!is_sync_answer(b"{\"error\": {\"class\": \"GenericError\"}}\n", 42));
        assert!(!is_sync_answer(b"not json\n", 42));
    }

    #[test]
    fn ids_differ() {
        assert_ne!(next_id(), next_id());
    }

    #[test]
    fn missing_socket_is_a_connect_error() {
        let dir = tempfile::tempdir().unwrap();
        let e = ping(&dir.path().join("qga.sock"), Duration::from_millis(100)).unwrap_err();
        assert!(matches!(e, AgentError::Connect { .. }), "{e}");
    }
}
