//! A small synchronous QMP client (QEMU Machine Protocol, docs/interop/qmp-spec.rst).
//!
//! One JSON object per line each way. The server greets with `{"QMP": ...}`;
//! the client must send `qmp_capabilities` before any other command. Each
//! command gets either `{"return": ...}` or `{"error": {"class", "desc"}}`;
//! asynchronous `{"event": ...}` messages may arrive at any time in between:
//! they are kept (the last [`MAX_EVENTS`]) for callers to inspect.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Deserialize;
use serde_json::{json, Value};

/// How many asynchronous events are kept.
pub const MAX_EVENTS: usize = 256;

/// Default time to wait for an answer.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Talking to QEMU's monitor failed.
#[derive(Debug, thiserror::Error)]
pub enum QmpError {
    /// Could not connect to the socket.
    #[error("cannot connect to QMP socket {path}: {source}; is QEMU running with -qmp on that path?")]
    Connect {
        /// Socket path.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// Reading or writing failed.
    #[error("QMP socket {path}: {source}")]
    Io {
        /// Socket path.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// No answer in time.
    #[error("QMP socket {path}: no answer to {what} within {timeout:?}; QEMU may be hung or another client holds the monitor")]
    Timeout {
        /// Socket path.
        path: PathBuf,
        /// What we waited for.
        what: String,
        /// How long.
        timeout: Duration,
    },
    /// QEMU closed the connection (usually: it exited).
    #[error("QMP socket {path}: QEMU closed the connection while we waited for {what}")]
    Closed {
        /// Socket path.
        path: PathBuf,
        /// What we waited for.
        what: String,
    },
    /// A line that is not a QMP message.
    #[error("QMP socket {path}: unexpected message {line:?}: {source}")]
    Protocol {
        /// Socket path.
        path: PathBuf,
        /// The line.
        line: String,
        /// Why it did not parse.
        #[source]
        source: serde_json::Error,
    },
    /// The first message was not a greeting.
    #[error("QMP socket {path}: expected the QMP greeting, got {line:?}")]
    Greeting {
        /// Socket path.
        path: PathBuf,
        /// What came instead.
        line: String,
    },
    /// QEMU refused the command.
    #[error("QEMU refused {command}: {class}: {desc}")]
    Command {
        /// Command name.
        command: String,
        /// QMP error class (`GenericError`, `CommandNotFound`, ...).
        class: String,
        /// QEMU's description.
        desc: String,
    },
    /// The answer did not have the expected shape.
    #[error("QMP {command}: unexpected answer {value}: {source}")]
    Answer {
        /// Command name.
        command: String,
        /// The `return` value.
        value: Value,
        /// Why it did not fit.
        #[source]
        source: serde_json::Error,
    },
}

/// An asynchronous QMP event.
#[derive(Clone, Debug, PartialEq)]
pub struct Event {
    /// Event name (`SHUTDOWN`, `POWERDOWN`, `STOP`, ...).
    pub name: String,
    /// Event data, `null` when absent.
    pub data: Value,
}

/// QEMU's run state (`query-status`), as QAPI `RunState` names it.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
pub struct StatusInfo {
    /// True when the vCPUs run.
    pub running: bool,
    /// Run state (`running`, `paused`, `shutdown`, `prelaunch`, ...).
    pub status: String,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Message {
    Return {
        #[serde(rename = "return")]
        value: Value,
        #[serde(default)]
        id: Value,
    },
    Error {
        error: ErrorBody,
        #[serde(default)]
        id: Value,
    },
    Event {
        event: String,
        #[serde(default)]
        data: Value,
    },
    Greeting {
        #[serde(rename = "QMP")]
        _qmp: Value,
    },
}

#[derive(Deserialize)]
struct ErrorBody {
    class: String,
    desc: String,
}

/// A QMP connection in command mode.
#[derive(Debug)]
pub struct Qmp {
    stream: UnixStream,
    path: PathBuf,
    pending: Vec<u8>,
    events: VecDeque<Event>,
    next_id: u64,
    timeout: Duration,
}

impl Qmp {
    /// Connects, reads the greeting and negotiates capabilities.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Qmp, QmpError> {
        let stream = UnixStream::connect(path).map_err(|source| QmpError::Connect {
            path: path.to_path_buf(),
            source,
        })?;
        let mut q = Qmp {
            stream,
            path: path.to_path_buf(),
            pending: Vec::new(),
            events: VecDeque::new(),
            next_id: 1,
            timeout,
        };
        let deadline = Instant::now() + timeout;
        let line = q.read_line(deadline, "the greeting")?;
        match serde_json::from_str::<Message>(&line) {
            Ok(Message::Greeting { .. }) => {}
            _ => {
                return Err(QmpError::Greeting {
                    path: q.path.clone(),
                    line,
                })
            }
        }
        q.execute("qmp_capabilities", None)?;
        Ok(q)
    }

    /// Like [`Qmp::connect`], retrying while the socket does not exist yet or
    /// refuses connections, until `patience` has passed.
    pub fn connect_retry(path: &Path, patience: Duration) -> Result<Qmp, QmpError> {
        let deadline = Instant::now() + patience;
        loop {
            match Qmp::connect(path, DEFAULT_TIMEOUT) {
                Err(QmpError::Connect { source, .. })
                    if Instant::now() < deadline && matches!(source.kind(), ErrorKind::NotFound | ErrorKind::ConnectionRefused) =>
                {
                    std::thread::sleep(Duration::from_millis(50));
                }
                r => return r,
            }
        }
    }

    /// Sets how long each command waits for its answer.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// The socket path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Runs a command and returns its `return` value.
    pub fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value, QmpError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut msg = json!({ "execute": command, "id": id });
        if let Some(a) = arguments {
            msg["arguments"] = a;
        }
        let mut bytes = msg.to_string().into_bytes();
        bytes.push(b'\n');
        self.send_and_wait(&bytes, id, command)
    }

    /// `object-add` of a `secret` object holding `secret` (base64 on the
    /// wire). The message is assembled in a buffer that is wiped afterwards,
    /// and neither it nor the secret is logged. `id` must be a plain QOM id
    /// (`[A-Za-z0-9_-]`).
    pub fn add_secret(&mut self, id: &str, secret: &[u8]) -> Result<(), QmpError> {
        use base64::Engine as _;
        const COMMAND: &str = "object-add";
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
            return Err(QmpError::Command {
                command: COMMAND.into(),
                class: "InvalidId".into(),
                desc: format!("secret id {id:?} must be [A-Za-z0-9_-]+"),
            });
        }
        let qid = self.next_id;
        self.next_id += 1;
        let mut b64 = zeroize::Zeroizing::new(vec![0u8; secret.len().div_ceil(3) * 4]);
        let n = base64::engine::general_purpose::STANDARD
            .encode_slice(secret, &mut b64[..])
            .map_err(|e| QmpError::Command {
                command: COMMAND.into(),
                class: "Encoding".into(),
                desc: e.to_string(),
            })?;
        let mut msg = zeroize::Zeroizing::new(Vec::with_capacity(160 + n));
        msg.extend_from_slice(br#"{"execute":"object-add","id":"#);
        msg.extend_from_slice(qid.to_string().as_bytes());
        msg.extend_from_slice(br#","arguments":{"qom-type":"secret","format":"base64","id":""#);
        msg.extend_from_slice(id.as_bytes());
        msg.extend_from_slice(br#"","data":""#);
        msg.extend_from_slice(&b64[..n]);
        msg.extend_from_slice(b"\"}}\n");
        self.send_and_wait(&msg, qid, COMMAND).map(drop)
    }

    /// Writes one command line and waits for the answer with id `id`,
    /// recording events that arrive meanwhile.
    fn send_and_wait(&mut self, bytes: &[u8], id: u64, command: &str) -> Result<Value, QmpError> {
        self.stream.write_all(bytes).map_err(|source| self.io_error(source, command))?;
        let deadline = Instant::now() + self.timeout;
        loop {
            let line = self.read_line(deadline, command)?;
            let parsed = serde_json::from_str::<Message>(&line).map_err(|source| QmpError::Protocol {
                path: self.path.clone(),
                line: line.clone(),
                source,
            })?;
            match parsed {
                Message::Event { event, data } => self.record(Event { name: event, data }),
                Message::Return { value, id: rid } if rid == json!(id) => return Ok(value),
                Message::Error { error, id: rid } if rid == json!(id) => {
                    return Err(QmpError::Command {
                        command: command.to_string(),
                        class: error.class,
                        desc: error.desc,
                    })
                }
                // An answer to an earlier command that timed out: skip it.
                Message::Return { .. } | Message::Error { .. } | Message::Greeting { .. } => {}
            }
        }
    }

    /// Runs a command and decodes its `return` value.
    pub fn execute_as<T: serde::de::DeserializeOwned>(&mut self, command: &str, arguments: Option<Value>) -> Result<T, QmpError> {
        let value = self.execute(command, arguments)?;
        serde_json::from_value(value.clone()).map_err(|source| QmpError::Answer {
            command: command.to_string(),
            value,
            source,
        })
    }

    /// `query-status`.
    pub fn query_status(&mut self) -> Result<StatusInfo, QmpError> {
        self.execute_as("query-status", None)
    }

    /// `system_powerdown`: presses the ACPI power button.
    pub fn system_powerdown(&mut self) -> Result<(), QmpError> {
        self.execute("system_powerdown", None).map(drop)
    }

    /// `quit`: QEMU exits at once. A connection closed before the answer
    /// arrived counts as success.
    pub fn quit(&mut self) -> Result<(), QmpError> {
        match self.execute("quit", None) {
            Ok(_) | Err(QmpError::Closed { .. }) => Ok(()),
            Err(QmpError::Io { source, .. }) if source.kind() == ErrorKind::BrokenPipe => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Reads pending events for up to `wait` (returns early at the first
    /// one), then returns everything recorded so far, oldest first.
    pub fn poll_events(&mut self, wait: Duration) -> Result<Vec<Event>, QmpError> {
        let deadline = Instant::now() + wait;
        if self.events.is_empty() {
            match self.read_line(deadline, "events") {
                Ok(line) => {
                    if let Ok(Message::Event { event, data }) = serde_json::from_str::<Message>(&line) {
                        self.record(Event { name: event, data });
                    }
                }
                Err(QmpError::Timeout { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(self.events.drain(..).collect())
    }

    /// Events recorded so far (oldest first), without consuming them.
    pub fn events(&self) -> impl Iterator<Item = &Event> {
        self.events.iter()
    }

    fn record(&mut self, e: Event) {
        if self.events.len() == MAX_EVENTS {
            self.events.pop_front();
        }
        tracing::debug!(event = %e.name, data = %e.data, "QMP event");
        self.events.push_back(e);
    }

    fn io_error(&self, source: std::io::Error, what: &str) -> QmpError {
        match source.kind() {
            ErrorKind::BrokenPipe | ErrorKind::ConnectionReset => QmpError::Closed {
                path: self.path.clone(),
                what: what.to_string(),
            },
            _ => QmpError::Io {
                path: self.path.clone(),
                source,
            },
        }
    }

    /// Next complete line, waiting until `deadline`. Partial lines stay
    /// buffered across timeouts.
    fn read_line(&mut self, deadline: Instant, what: &str) -> Result<String, QmpError> {
        loop {
            if let Some(pos) = self.pending.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = self.pending.drain(..=pos).collect();
                let line = String::from_utf8_lossy(&line).trim().to_string();
                if line.is_empty() {
                    continue;
                }
                return Ok(line);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(QmpError::Timeout {
                    path: self.path.clone(),
                    what: what.to_string(),
                    timeout: self.timeout,
                });
            }
            self.stream
                .set_read_timeout(Some(left))
                .map_err(|source| self.io_error(source, what))?;
            let mut buf = [0u8; 4096];
            match self.stream.read(&mut buf) {
                Ok(0) => {
                    return Err(QmpError::Closed {
                        path: self.path.clone(),
                        what: what.to_string(),
                    })
                }
                Ok(n) => self.pending.extend_from_slice(&buf[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted) => {}
                Err(e) => return Err(self.io_error(e, what)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader};
    use std::os::unix::net::UnixListener;

    use super::*;

    /// A scripted QMP server: greets, then answers each command from `script`
    /// (command name → lines to send), echoing the id.
    fn serve(listener: UnixListener, script: Vec<(&'static str, Vec<&'static str>)>) -> std::thread::JoinHandle<()> {
        std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            let mut w = s.try_clone().unwrap();
            w.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\r\n").unwrap();
            let mut r = BufReader::new(s);
            for (cmd, replies) in script {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap() == 0 {
                    return;
                }
                let v: Value = serde_json::from_str(&line).unwrap();
                assert_eq!(v["execute"], cmd);
                for reply in replies {
                    let reply = reply.replace("ID", &v["id"].to_string());
                    w.write_all(reply.as_bytes()).unwrap();
                    w.write_all(b"\r\n").unwrap();
                }
            }
        })
    }

    #[test]
    fn commands_events_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let l = UnixListener::bind(&path).unwrap();
        let server = serve(
            l,
            vec![
                ("qmp_capabilities", vec![r#"{"return": {}, "id": ID}"#]),
                (
                    "query-status",
                    vec![
                        r#"{"event": "POWERDOWN", "timestamp": {"seconds": 1, "microseconds": 2}}"#,
                        r#"{"return": {"status": "running", "singlestep": false, "running": true}, "id": ID}"#,
                    ],
                ),
                (
                    "frobnicate",
                    vec![r#"{"error": {"class": "CommandNotFound", "desc": "The command frobnicate has not been found"}, "id": ID}"#],
                ),
                ("quit", vec![]),
            ],
        );
        let mut q = Qmp::connect(&path, Duration::from_secs(5)).unwrap();
        let st = q.query_status().unwrap();
        assert_eq!(
            st,
            StatusInfo {
                running: true,
                status: "running".into()
            }
        );
        assert_eq!(q.events().map(|e| e.name.as_str()).collect::<Vec<_>>(), ["POWERDOWN"]);
        let e = q.execute("frobnicate", None).unwrap_err();
        assert!(matches!(&e, QmpError::Command { class, .. } if class == "CommandNotFound"), "{e}");
        // The server reads quit and hangs up without answering.
        q.quit().unwrap();
        server.join().unwrap();
        assert_eq!(q.poll_events(Duration::ZERO).unwrap().len(), 1);
    }

    #[test]
    fn silent_server_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("qmp.sock");
        let _l = UnixListener::bind(&path).unwrap();
        // The kernel accepts into the backlog; nobody ever greets.
        let e = Qmp::connect(&path, Duration::from_millis(200)).unwrap_err();
        assert!(matches!(e, QmpError::Timeout { .. }), "{e}");
    }

    #[test]
    fn missing_socket_is_a_connect_error() {
        let dir = tempfile::tempdir().unwrap();
        let e = Qmp::connect_retry(&dir.path().join("none"), Duration::from_millis(100)).unwrap_err();
        assert!(matches!(e, QmpError::Connect { .. }), "{e}");
        assert!(e.to_string().contains("none"), "{e}");
    }
}
