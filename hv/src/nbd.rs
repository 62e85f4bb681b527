//! A minimal synchronous NBD client (the NBD protocol, "fixed newstyle"
//! negotiation and simple replies) for the block exports of
//! [`crate::storage_daemon`]: read, write, write-zeroes, flush.
//!
//! It talks only to a `qemu-storage-daemon` that this process started, over
//! a unix socket in a private (0700) directory; one request is in flight at a
//! time. Every length the server sends is checked before it is used.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

const NBDMAGIC: u64 = 0x4e42_444d_4147_4943; // "NBDMAGIC"
const IHAVEOPT: u64 = 0x4948_4156_454F_5054; // "IHAVEOPT"
const REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
const REQUEST_MAGIC: u32 = 0x2560_9513;
const SIMPLE_REPLY_MAGIC: u32 = 0x6744_6698;

const FLAG_FIXED_NEWSTYLE: u16 = 1;
const FLAG_NO_ZEROES: u16 = 2;
const OPT_GO: u32 = 7;
const REP_ACK: u32 = 1;
const REP_INFO: u32 = 3;
const REP_ERR_BIT: u32 = 1 << 31;
const INFO_EXPORT: u16 = 0;
const TFLAG_READ_ONLY: u16 = 1 << 1;
const TFLAG_SEND_FLUSH: u16 = 1 << 2;
const TFLAG_SEND_WRITE_ZEROES: u16 = 1 << 6;

const CMD_READ: u16 = 0;
const CMD_WRITE: u16 = 1;
const CMD_DISC: u16 = 2;
const CMD_FLUSH: u16 = 3;
const CMD_WRITE_ZEROES: u16 = 6;

/// Largest option reply we accept during negotiation.
const MAX_OPTION_REPLY: u32 = 64 * 1024;
/// Largest single request we send (QEMU accepts up to 32 MiB).
pub const MAX_REQUEST: usize = 32 << 20;
/// How long one request may take.
const IO_TIMEOUT: Duration = Duration::from_secs(120);

/// NBD failures.
#[derive(Debug, thiserror::Error)]
pub enum NbdError {
    /// Socket I/O failed.
    #[error("NBD socket {path}: {source}; did the storage daemon exit?")]
    Io {
        /// Socket path.
        path: PathBuf,
        /// What the OS said.
        #[source]
        source: std::io::Error,
    },
    /// The server broke the protocol.
    #[error("NBD socket {path}: protocol error: {detail}")]
    Protocol {
        /// Socket path.
        path: PathBuf,
        /// What was wrong.
        detail: String,
    },
    /// The server refused the export.
    #[error("NBD socket {path}: export {export:?} refused (reply type {code:#x}): {message}")]
    Refused {
        /// Socket path.
        path: PathBuf,
        /// Export name.
        export: String,
        /// NBD reply type.
        code: u32,
        /// The server's text.
        message: String,
    },
    /// A request failed on the server (errno value from the server).
    #[error("NBD {what} at offset {offset} of {path}: the server answered errno {errno}")]
    Request {
        /// Socket path.
        path: PathBuf,
        /// The command.
        what: &'static str,
        /// Offset.
        offset: u64,
        /// Error number.
        errno: u32,
    },
    /// A request outside the export or too large.
    #[error("NBD {what} of {len} bytes at offset {offset} is outside the export of {size} bytes (or above {MAX_REQUEST})")]
    Range {
        /// The command.
        what: &'static str,
        /// Offset.
        offset: u64,
        /// Length.
        len: usize,
        /// Export size.
        size: u64,
    },
    /// The export is read-only.
    #[error("NBD export on {0} is read-only")]
    ReadOnly(PathBuf),
}

/// One NBD connection to one export.
#[derive(Debug)]
pub struct NbdClient {
    stream: UnixStream,
    path: PathBuf,
    size: u64,
    flags: u16,
    handle: u64,
}

impl NbdClient {
    /// Connects to `socket` and opens `export` (`NBD_OPT_GO`).
    pub fn connect(socket: &Path, export: &str) -> Result<NbdClient, NbdError> {
        let io = |source| NbdError::Io {
            path: socket.to_path_buf(),
            source,
        };
        let stream = UnixStream::connect(socket).map_err(io)?;
        stream.set_read_timeout(Some(IO_TIMEOUT)).map_err(io)?;
        stream.set_write_timeout(Some(IO_TIMEOUT)).map_err(io)?;
        let mut c = NbdClient {
            stream,
            path: socket.to_path_buf(),
            size: 0,
            flags: 0,
            handle: 0,
        };
        c.negotiate(export)?;
        Ok(c)
    }

    fn proto(&self, detail: impl Into<String>) -> NbdError {
        NbdError::Protocol {
            path: self.path.clone(),
            detail: detail.into(),
        }
    }

    fn io(&self, source: std::io::Error) -> NbdError {
        NbdError::Io {
            path: self.path.clone(),
            source,
        }
    }

    fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), NbdError> {
        self.stream.read_exact(buf).map_err(|e| self.io(e))
    }

    fn read_u16(&mut self) -> Result<u16, NbdError> {
        let mut b = [0u8; 2];
        self.read_exact(&mut b)?;
        Ok(u16::from_be_bytes(b))
    }

    fn read_u32(&mut self) -> Result<u32, NbdError> {
        let mut b = [0u8; 4];
        self.read_exact(&mut b)?;
        Ok(u32::from_be_bytes(b))
    }

    fn read_u64(&mut self) -> Result<u64, NbdError> {
        let mut b = [0u8; 8];
        self.read_exact(&mut b)?;
        Ok(u64::from_be_bytes(b))
    }

    fn negotiate(&mut self, export: &str) -> Result<(), NbdError> {
        if self.read_u64()? != NBDMAGIC || self.read_u64()? != IHAVEOPT {
            return Err(self.proto("not a newstyle NBD server"));
        }
        let hs = self.read_u16()?;
        if hs & FLAG_FIXED_NEWSTYLE == 0 {
            return Err(self.proto("server does not speak fixed newstyle"));
        }
        let client_flags = u32::from(FLAG_FIXED_NEWSTYLE | (hs & FLAG_NO_ZEROES));
        let mut msg = client_flags.to_be_bytes().to_vec();
        msg.extend_from_slice(&IHAVEOPT.to_be_bytes());
        msg.extend_from_slice(&OPT_GO.to_be_bytes());
        msg.extend_from_slice(&((4 + export.len() + 2) as u32).to_be_bytes());
        msg.extend_from_slice(&(export.len() as u32).to_be_bytes());
        msg.extend_from_slice(export.as_bytes());
        msg.extend_from_slice(&0u16.to_be_bytes());
        self.stream.write_all(&msg).map_err(|e| self.io(e))?;
        loop {
            if self.read_u64()? != REPLY_MAGIC {
                return Err(self.proto("bad option reply magic"));
            }
            let opt = self.read_u32()?;
            let kind = self.read_u32()?;
            let len = self.read_u32()?;
            if opt != OPT_GO {
                return Err(self.proto(format!("reply to option {opt}, expected {OPT_GO}")));
            }
            if len > MAX_OPTION_REPLY {
                return Err(self.proto(format!("option reply of {len} bytes")));
            }
            let mut data = vec![0u8; len as usize];
            self.read_exact(&mut data)?;
            match kind {
                REP_ACK => break,
                REP_INFO if data.len() >= 12 && u16::from_be_bytes([data[0], data[1]]) == INFO_EXPORT => {
                    self.size = u64::from_be_bytes(data[2..10].try_into().expect("8 bytes"));
                    self.flags = u16::from_be_bytes([data[10], data[11]]);
                }
                k if k & REP_ERR_BIT != 0 => {
                    return Err(NbdError::Refused {
                        path: self.path.clone(),
                        export: export.to_string(),
                        code: k,
                        message: String::from_utf8_lossy(&data).into_owned(),
                    })
                }
                _ => {} // other informational replies
            }
        }
        Ok(())
    }

    /// Size of the export in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// True when the export refuses writes.
    pub fn read_only(&self) -> bool {
        self.flags & TFLAG_READ_ONLY != 0
    }

    fn check(&self, what: &'static str, offset: u64, len: usize) -> Result<(), NbdError> {
        if len > MAX_REQUEST || offset.checked_add(len as u64).is_none_or(|end| end > self.size) {
            return Err(NbdError::Range {
                what,
                offset,
                len,
                size: self.size,
            });
        }
        Ok(())
    }

    fn request(&mut self, cmd: u16, offset: u64, len: u32, payload: &[u8]) -> Result<u64, NbdError> {
        self.handle += 1;
        let mut h = [0u8; 28];
        h[..4].copy_from_slice(&REQUEST_MAGIC.to_be_bytes());
        h[6..8].copy_from_slice(&cmd.to_be_bytes());
        h[8..16].copy_from_slice(&self.handle.to_be_bytes());
        h[16..24].copy_from_slice(&offset.to_be_bytes());
        h[24..28].copy_from_slice(&len.to_be_bytes());
        self.stream.write_all(&h).map_err(|e| self.io(e))?;
        if !payload.is_empty() {
            self.stream.write_all(payload).map_err(|e| self.io(e))?;
        }
        Ok(self.handle)
    }

    /// Reads a simple reply header for `handle`; errors carry the server's errno.
    fn reply(&mut self, handle: u64, what: &'static str, offset: u64) -> Result<(), NbdError> {
        let mut r = [0u8; 16];
        self.read_exact(&mut r)?;
        if u32::from_be_bytes(r[..4].try_into().expect("4 bytes")) != SIMPLE_REPLY_MAGIC {
            return Err(self.proto("bad reply magic (structured replies were not negotiated)"));
        }
        if u64::from_be_bytes(r[8..16].try_into().expect("8 bytes")) != handle {
            return Err(self.proto("reply for another request"));
        }
        match u32::from_be_bytes(r[4..8].try_into().expect("4 bytes")) {
            0 => Ok(()),
            errno => Err(NbdError::Request {
                path: self.path.clone(),
                what,
                offset,
                errno,
            }),
        }
    }

    /// Reads `buf.len()` bytes at `offset`.
    pub fn read_at(&mut self, buf: &mut [u8], offset: u64) -> Result<(), NbdError> {
        self.check("read", offset, buf.len())?;
        let h = self.request(CMD_READ, offset, buf.len() as u32, &[])?;
        self.reply(h, "read", offset)?;
        self.read_exact(buf)
    }

    /// Writes `data` at `offset`.
    pub fn write_at(&mut self, data: &[u8], offset: u64) -> Result<(), NbdError> {
        self.check("write", offset, data.len())?;
        if self.read_only() {
            return Err(NbdError::ReadOnly(self.path.clone()));
        }
        let h = self.request(CMD_WRITE, offset, data.len() as u32, data)?;
        self.reply(h, "write", offset)
    }

    /// Makes `len` bytes at `offset` read as zeros.
    pub fn write_zeroes(&mut self, offset: u64, len: usize) -> Result<(), NbdError> {
        self.check("write-zeroes", offset, len)?;
        if self.flags & TFLAG_SEND_WRITE_ZEROES == 0 {
            return self.write_at(&vec![0u8; len], offset);
        }
        let h = self.request(CMD_WRITE_ZEROES, offset, len as u32, &[])?;
        self.reply(h, "write-zeroes", offset)
    }

    /// Asks the server to make every write so far durable.
    pub fn flush(&mut self) -> Result<(), NbdError> {
        if self.flags & TFLAG_SEND_FLUSH == 0 {
            return Ok(());
        }
        let h = self.request(CMD_FLUSH, 0, 0, &[])?;
        self.reply(h, "flush", 0)
    }
}

impl Drop for NbdClient {
    fn drop(&mut self) {
        // A polite disconnect; the server needs no reply.
        let _ = self.request(CMD_DISC, 0, 0, &[]);
    }
}
