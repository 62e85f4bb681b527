//! The guest's serial console (ttyS0) as a unix stream socket.
//!
//! QEMU listens on `serial.sock` in the run directory (one client at a time)
//! and also logs everything the guest writes to `serial.log`. The socket is
//! a plain byte stream: the appliance proxies it as is (a WebSocket frame
//! per read), and tests use [`SerialConsole::run`] to type shell commands.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The serial console failed.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// Connecting failed.
    #[error("cannot connect to serial console {path}: {source}; is the guest running (another client may hold the console)?")]
    Connect {
        /// Socket path.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// Reading or writing failed.
    #[error("serial console {path}: {source}")]
    Io {
        /// Socket path.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// QEMU closed the socket (it exited).
    #[error("serial console {path} closed while waiting for {what}; last output:\n{tail}")]
    Closed {
        /// Socket path.
        path: PathBuf,
        /// What we waited for.
        what: String,
        /// The last output.
        tail: String,
    },
    /// Nothing matching in time.
    #[error("serial console {path}: no {what} within {secs} s; last output:\n{tail}")]
    Timeout {
        /// Socket path.
        path: PathBuf,
        /// What we waited for.
        what: String,
        /// Seconds waited.
        secs: u64,
        /// The last output.
        tail: String,
    },
}

/// What a shell command printed and how it exited.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CommandOutput {
    /// Exit status (`$?`).
    pub status: i32,
    /// Its output, `\r` and terminal escape sequences removed.
    pub output: String,
}

/// A connection to a guest's serial console.
#[derive(Debug)]
pub struct SerialConsole {
    stream: UnixStream,
    path: PathBuf,
    seen: Vec<u8>,
    seq: u64,
}

impl SerialConsole {
    /// Connects, retrying for up to `patience` while the socket is missing
    /// or refuses (QEMU not listening yet).
    pub fn connect(path: &Path, patience: Duration) -> Result<SerialConsole, ConsoleError> {
        let deadline = Instant::now() + patience;
        loop {
            match UnixStream::connect(path) {
                Ok(stream) => {
                    return Ok(SerialConsole {
                        stream,
                        path: path.to_path_buf(),
                        seen: Vec::new(),
                        seq: 0,
                    })
                }
                Err(e) if Instant::now() < deadline && matches!(e.kind(), ErrorKind::NotFound | ErrorKind::ConnectionRefused) => {
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(source) => {
                    return Err(ConsoleError::Connect {
                        path: path.to_path_buf(),
                        source,
                    })
                }
            }
        }
    }

    /// The socket, for a proxy that copies bytes both ways.
    pub fn stream(&self) -> &UnixStream {
        &self.stream
    }

    /// Sends bytes to the guest (keystrokes).
    pub fn send(&mut self, bytes: &[u8]) -> Result<(), ConsoleError> {
        self.stream.write_all(bytes).map_err(|source| ConsoleError::Io {
            path: self.path.clone(),
            source,
        })
    }

    /// Reads until the output since the last match contains `pattern`;
    /// returns that output (up to and including the pattern).
    pub fn read_until(&mut self, pattern: &str, timeout: Duration) -> Result<String, ConsoleError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(pos) = find(&self.seen, pattern.as_bytes()) {
                let upto: Vec<u8> = self.seen.drain(..pos + pattern.len()).collect();
                return Ok(String::from_utf8_lossy(&upto).into_owned());
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ConsoleError::Timeout {
                    path: self.path.clone(),
                    what: format!("{pattern:?}"),
                    secs: timeout.as_secs(),
                    tail: self.tail(),
                });
            }
            self.read_some(left, pattern)?;
        }
    }

    /// Runs one shell command on the guest's root shell and returns its
    /// output and exit status. The command must not read from the terminal.
    pub fn run(&mut self, command: &str, timeout: Duration) -> Result<CommandOutput, ConsoleError> {
        self.seq += 1;
        let n = self.seq;
        // The markers are split by quotes in what we type, so the shell's
        // echo of the command line never matches them; only the output does.
        let begin = format!("__ISTHMUS_BEGIN_{n}__");
        let end = format!("__ISTHMUS_END_{n}_");
        let line = format!("echo \"__ISTHMUS\"\"_BEGIN_{n}__\"; {command}; echo \"__ISTHMUS\"\"_END_{n}_\"$?\"__\"\n");
        self.send(line.as_bytes())?;
        self.read_until(&format!("{begin}\r\n"), timeout)
            .or_else(|_| self.read_until(&format!("{begin}\n"), Duration::ZERO))?;
        let out = self.read_until(&end, timeout)?;
        let status_text = self.read_until("__", timeout)?;
        let status = status_text.trim_end_matches("__").trim().parse().unwrap_or(-1);
        let output = clean(&out[..out.len() - end.len()]);
        Ok(CommandOutput { status, output })
    }

    fn read_some(&mut self, left: Duration, what: &str) -> Result<(), ConsoleError> {
        let io = |source| ConsoleError::Io {
            path: self.path.clone(),
            source,
        };
        self.stream.set_read_timeout(Some(left)).map_err(io)?;
        let mut buf = [0u8; 4096];
        match self.stream.read(&mut buf) {
            Ok(0) => Err(ConsoleError::Closed {
                path: self.path.clone(),
                what: what.to_string(),
                tail: self.tail(),
            }),
            Ok(k) => {
                self.seen.extend_from_slice(&buf[..k]);
                Ok(())
            }
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted) => Ok(()),
            Err(e) => Err(ConsoleError::Io {
                path: self.path.clone(),
                source: e,
            }),
        }
    }

    fn tail(&self) -> String {
        let s = clean(&String::from_utf8_lossy(&self.seen));
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(12)..].join("\n")
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Removes `\r` and ANSI escape sequences (busy box ash asks the cursor
/// position with `ESC[6n` after each prompt).
fn clean(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\r' => {}
            '\u{1b}' => {
                if chars.peek() == Some(&'[') {
                    chars.next();
                    // Parameters and intermediates, then one final byte @..~.
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                }
            }
            c => out.push(c),
        }
    }
    out.trim_matches('\n').to_string()
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader};
    use std::os::unix::net::UnixListener;

    use super::*;

    /// A fake tty: echoes each line (as a terminal does), then runs it through
    /// `sh` and writes the output with `\r\n` and a cursor query.
    #[test]
    fn run_parses_output_and_status_around_the_echo() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("serial.sock");
        let l = UnixListener::bind(&path).unwrap();
        let server = std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let mut w = s.try_clone().unwrap();
            let mut r = BufReader::new(s);
            let mut line = String::new();
            while r.read_line(&mut line).unwrap() > 0 {
                let out = std::process::Command::new("sh").arg("-c").arg(&line).output().unwrap();
                let text = String::from_utf8_lossy(&out.stdout).replace('\n', "\r\n");
                let echo = line.replace('\n', "\r\n");
                // The client may hang up after its last marker: stop then.
                if [echo.as_bytes(), text.as_bytes(), b"web1# \x1b[6n"]
                    .iter()
                    .any(|b| w.write_all(b).is_err())
                {
                    break;
                }
                line.clear();
            }
        });
        let mut c = SerialConsole::connect(&path, Duration::from_secs(1)).unwrap();
        let r = c.run("printf 'a\\nb\\n'; false", Duration::from_secs(5)).unwrap();
        assert_eq!(
            r,
            CommandOutput {
                status: 1,
                output: "a\nb".into()
            }
        );
        let r = c.run("echo \"x\"\"y\"", Duration::from_secs(5)).unwrap();
        assert_eq!(
            r,
            CommandOutput {
                status: 0,
                output: "xy".into()
            }
        );
        drop(c);
        server.join().unwrap();
    }

    #[test]
    fn clean_strips_escapes() {
        assert_eq!(clean("a\r\n\x1b[6nb\x1b[0;32mc\r\n"), "a\nbc");
    }
}
