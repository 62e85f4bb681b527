//! The underlay UDP socket.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsFd, BorrowedFd};

use nix::sys::socket::{setsockopt, sockopt};

/// Socket buffer size asked for (capped by `net.core.*mem_max`).
const SOCKET_BUFFER: usize = 4 << 20;

/// Why the underlay socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// bind(2) failed.
    #[error("cannot bind UDP {addr} (address in use, or not an address of this host/namespace?)")]
    Bind {
        /// The listen address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// Could not make the socket non-blocking.
    #[error("cannot configure UDP socket {addr}")]
    Configure {
        /// The listen address.
        addr: SocketAddr,
        /// The OS error.
        #[source]
        source: io::Error,
    },
}

/// A non-blocking UDP socket for the tunnel's datagrams.
#[derive(Debug)]
pub struct Udp {
    sock: UdpSocket,
}

impl AsFd for Udp {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.sock.as_fd()
    }
}

impl Udp {
    /// Binds `addr` and makes the socket non-blocking with large buffers.
    pub fn bind(addr: SocketAddr) -> Result<Self, Error> {
        let sock = UdpSocket::bind(addr).map_err(|source| Error::Bind { addr, source })?;
        sock.set_nonblocking(true).map_err(|source| Error::Configure { addr, source })?;
        // Best effort: a burst of frames should not overflow the default buffers.
        let _ = setsockopt(&sock, sockopt::RcvBuf, &SOCKET_BUFFER);
        let _ = setsockopt(&sock, sockopt::SndBuf, &SOCKET_BUFFER);
        Ok(Udp { sock })
    }

    /// The bound address (with the actual port if 0 was asked for).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.sock.local_addr()
    }

    /// Receives one datagram; `Ok(None)` if none is queued.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<Option<(usize, SocketAddr)>> {
        loop {
            return match self.sock.recv_from(buf) {
                Ok(r) => Ok(Some(r)),
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted) => Ok(None),
                // An ICMP error for an earlier send is reported once, here;
                // it is not fatal, and datagrams may be queued behind it.
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => continue,
                Err(e) => Err(e),
            };
        }
    }

    /// Sends one datagram.
    pub fn send(&self, d: &[u8], to: SocketAddr) -> io::Result<()> {
        self.sock.send_to(d, to).map(|_| ())
    }
}
