//! The underlay UDP socket.

use std::io::{self, IoSlice, IoSliceMut};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};

use nix::errno::Errno;
use nix::sys::socket::{recvmsg, sendmsg, setsockopt, sockopt, ControlMessage, ControlMessageOwned, MsgFlags, SockaddrStorage};

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

/// Most datagrams one UDP GSO send may carry (`UDP_MAX_SEGMENTS` is 64 in
/// older kernels, 128 since 5.x: take the smaller).
pub const GSO_MAX_SEGMENTS: usize = 64;
/// Most bytes one UDP GSO send may carry (an IP packet's payload limit).
const GSO_MAX_BYTES: usize = 65_000;
/// Receive buffer for one read: a whole GRO super-datagram.
pub const RECV_BUFFER: usize = 65_536;

/// A non-blocking UDP socket for the tunnel's datagrams, with a send batch.
///
/// Datagrams are queued with [`Udp::queue`] and leave with [`Udp::flush`]
/// (or when the batch is full): consecutive datagrams of the same size to the
/// same address go out as ONE `sendmsg` with `UDP_SEGMENT` (UDP GSO, Linux 4.18
/// and later), which the kernel cuts into datagrams as late as possible. On
/// receive, `UDP_GRO` lets the kernel hand over runs of datagrams of one
/// flow in one read; [`Udp::recv`] reports the segment size so the caller can
/// take them apart. Without kernel support both fall back to one datagram
/// per call. Measured in `PERFORMANCE.md`.
#[derive(Debug)]
pub struct Udp {
    sock: UdpSocket,
    /// Queued datagrams, back to back.
    batch: Vec<u8>,
    batch_to: Option<SocketAddr>,
    /// Size of every queued datagram but possibly the last.
    seg: usize,
    count: usize,
    /// The last queued datagram was shorter than `seg`: the run is closed.
    closed: bool,
    gso: bool,
    cmsg: Vec<u8>,
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
        Self::configure(sock, addr)
    }

    /// The first of a bridge's [`Udp::bind_shared`] sockets for `addr`: a
    /// plain bind first, so an address in use (by another bridge, even one
    /// that also set `SO_REUSEPORT`) fails as with [`Udp::bind`] instead of
    /// silently sharing its datagrams, and port 0 becomes one actual port
    /// that the other workers then bind too.
    pub fn bind_shared_first(addr: SocketAddr) -> Result<Self, Error> {
        let probe = UdpSocket::bind(addr).map_err(|source| Error::Bind { addr, source })?;
        let actual = probe.local_addr().map_err(|source| Error::Configure { addr, source })?;
        drop(probe);
        Self::bind_shared(actual)
    }

    /// Like [`Udp::bind`], with `SO_REUSEPORT` set before the bind, so that
    /// every worker of a bridge binds its own socket to the same address
    /// (`crate::worker`). The kernel hashes each sender's 4-tuple to one of
    /// the sockets, so one peer's datagrams all arrive at one worker.
    pub fn bind_shared(addr: SocketAddr) -> Result<Self, Error> {
        use nix::sys::socket::{bind, socket, AddressFamily, SockFlag, SockType};
        let io_err = |e: Errno| Error::Bind { addr, source: e.into() };
        let family = if addr.is_ipv4() {
            AddressFamily::Inet
        } else {
            AddressFamily::Inet6
        };
        let fd = socket(family, SockType::Datagram, SockFlag::SOCK_CLOEXEC, None).map_err(io_err)?;
        setsockopt(&fd, sockopt::ReusePort, &true).map_err(io_err)?;
        bind(fd.as_raw_fd(), &SockaddrStorage::from(addr)).map_err(io_err)?;
        Self::configure(UdpSocket::from(fd), addr)
    }

    fn configure(sock: UdpSocket, addr: SocketAddr) -> Result<Self, Error> {
        sock.set_nonblocking(true).map_err(|source| Error::Configure { addr, source })?;
        // Best effort: a burst of frames should not overflow the default buffers.
        let _ = setsockopt(&sock, sockopt::RcvBuf, &SOCKET_BUFFER);
        let _ = setsockopt(&sock, sockopt::SndBuf, &SOCKET_BUFFER);
        // NETBRIDGE_UDP_OFFLOAD=0 turns UDP GSO/GRO off (for measurements
        // and for kernels or paths where they misbehave).
        let offload = std::env::var_os("NETBRIDGE_UDP_OFFLOAD").is_none_or(|v| v != "0");
        // Best effort: without GRO every datagram is its own read.
        if offload {
            let _ = setsockopt(&sock, sockopt::UdpGroSegment, &true);
        }
        Ok(Udp {
            sock,
            batch: Vec::with_capacity(GSO_MAX_BYTES + crate::wire::MAX_DATAGRAM),
            batch_to: None,
            seg: 0,
            count: 0,
            closed: false,
            gso: offload,
            cmsg: nix::cmsg_space!(libc::c_int),
        })
    }

    /// The bound address (with the actual port if 0 was asked for).
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.sock.local_addr()
    }

    /// Receives one datagram, or with GRO a run of datagrams of `seg` bytes
    /// each (the last may be shorter) from one sender, into `buf` (at least
    /// [`RECV_BUFFER`] bytes for GRO runs to fit). `Ok(None)` if none is
    /// queued. Returns (length, sender, segment size if a run).
    pub fn recv(&mut self, buf: &mut [u8]) -> io::Result<Option<(usize, SocketAddr, Option<usize>)>> {
        loop {
            let mut iov = [IoSliceMut::new(buf)];
            let r = recvmsg::<SockaddrStorage>(self.sock.as_raw_fd(), &mut iov, Some(&mut self.cmsg), MsgFlags::empty());
            return match r {
                Ok(msg) => {
                    let mut seg = None;
                    if let Ok(cmsgs) = msg.cmsgs() {
                        for c in cmsgs {
                            if let ControlMessageOwned::UdpGroSegments(s) = c {
                                seg = usize::try_from(s).ok().filter(|&s| s > 0);
                            }
                        }
                    }
                    let src = msg.address.as_ref().and_then(|a| {
                        a.as_sockaddr_in()
                            .map(|v4| SocketAddr::from(std::net::SocketAddrV4::from(*v4)))
                            .or_else(|| a.as_sockaddr_in6().map(|v6| SocketAddr::from(std::net::SocketAddrV6::from(*v6))))
                    });
                    match src {
                        Some(src) => Ok(Some((msg.bytes, src, seg))),
                        None => continue,
                    }
                }
                Err(Errno::EAGAIN | Errno::EINTR) => Ok(None),
                // An ICMP error for an earlier send is reported once, here;
                // it is not fatal, and datagrams may be queued behind it.
                Err(Errno::ECONNREFUSED) => continue,
                Err(e) => Err(e.into()),
            };
        }
    }

    /// Queues one datagram to `to`; sends the batch first if `d` cannot
    /// join it. Returns how many queued datagrams failed to send (0 or the
    /// count of the batch sent now) and the error.
    pub fn queue(&mut self, d: &[u8], to: SocketAddr) -> Result<(), (usize, io::Error)> {
        let fits = self.count > 0
            && self.batch_to == Some(to)
            && !self.closed
            && d.len() <= self.seg
            && self.count < GSO_MAX_SEGMENTS
            && self.batch.len() + d.len() <= GSO_MAX_BYTES;
        let mut r = Ok(());
        if !fits {
            r = self.flush();
            self.batch_to = Some(to);
            self.seg = d.len();
        }
        self.batch.extend_from_slice(d);
        self.count += 1;
        self.closed = d.len() < self.seg;
        r
    }

    /// Sends what is queued. On failure, returns how many datagrams were lost.
    pub fn flush(&mut self) -> Result<(), (usize, io::Error)> {
        let (count, to) = (self.count, self.batch_to);
        self.count = 0;
        self.closed = false;
        let Some(to) = to.filter(|_| count > 0) else {
            self.batch.clear();
            return Ok(());
        };
        let r = if count == 1 || !self.gso {
            self.send_each(to)
        } else {
            let seg = u16::try_from(self.seg).unwrap_or(u16::MAX);
            let iov = [IoSlice::new(&self.batch)];
            let cmsg = [ControlMessage::UdpGsoSegments(&seg)];
            let addr = SockaddrStorage::from(to);
            match sendmsg(self.sock.as_raw_fd(), &iov, &cmsg, MsgFlags::empty(), Some(&addr)) {
                Ok(_) => Ok(()),
                // No UDP GSO here (old kernel, or a route through a device
                // that cannot take it): fall back for good.
                Err(Errno::EIO | Errno::EINVAL | Errno::ENOPROTOOPT | Errno::EOPNOTSUPP) => {
                    tracing::info!("UDP GSO unavailable; sending one datagram per call");
                    self.gso = false;
                    self.send_each(to)
                }
                Err(e) => Err((count, e.into())),
            }
        };
        self.batch.clear();
        r
    }

    fn send_each(&self, to: SocketAddr) -> Result<(), (usize, io::Error)> {
        let mut failed = 0;
        let mut err = None;
        for d in self.batch.chunks(self.seg.max(1)) {
            if let Err(e) = self.sock.send_to(d, to) {
                failed += 1;
                err = Some(e);
            }
        }
        match err {
            Some(e) => Err((failed, e)),
            None => Ok(()),
        }
    }

    /// Sends one datagram at once (not batched).
    pub fn send(&self, d: &[u8], to: SocketAddr) -> io::Result<()> {
        self.sock.send_to(d, to).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workers_share_a_port_but_an_address_in_use_still_fails() {
        let first = Udp::bind_shared_first("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = first.local_addr().unwrap();
        assert_ne!(addr.port(), 0);
        // The other workers bind the same port.
        let second = Udp::bind_shared(addr).unwrap();
        assert_eq!(second.local_addr().unwrap(), addr);
        // Another bridge on that address fails, shared or not.
        assert!(matches!(Udp::bind_shared_first(addr), Err(Error::Bind { .. })));
        assert!(matches!(Udp::bind(addr), Err(Error::Bind { .. })));
        // One sender's datagrams all reach one of the two sockets.
        let mut socks = [first, second];
        let tx = UdpSocket::bind("127.0.0.1:0").unwrap();
        for i in 0..20u8 {
            tx.send_to(&[i], addr).unwrap();
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
        let mut buf = vec![0u8; RECV_BUFFER];
        let counts: Vec<usize> = socks
            .iter_mut()
            .map(|s| {
                let mut n = 0;
                while let Ok(Some((len, _, seg))) = s.recv(&mut buf) {
                    n += len.div_ceil(seg.unwrap_or(len).max(1));
                }
                n
            })
            .collect();
        assert_eq!(counts.iter().sum::<usize>(), 20);
        assert!(counts.contains(&0), "one sender spread over sockets: {counts:?}");
    }
}
