//! `PACKET_FANOUT`: several AF_PACKET sockets on one interface share its
//! frames, each frame going to exactly one of them. A bridge with several
//! workers (`crate::worker`) opens each port once per worker and joins the
//! sockets in one group in hash mode: the kernel picks the socket by the
//! frame's flow hash, so the frames of one flow stay in one worker and in
//! order.

// getsockopt(2) on the socket's fd; see the SAFETY comment.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd};

use super::packet::set_option;

/// `PACKET_FANOUT` (linux/if_packet.h; not in the `libc` crate).
const PACKET_FANOUT: libc::c_int = 18;
/// Pick the member by the frame's flow hash.
const PACKET_FANOUT_HASH: u32 = 0;
/// Let the kernel choose an unused group id (Linux 4.15 and later).
const PACKET_FANOUT_FLAG_UNIQUEID: u32 = 0x2000;

/// The `PACKET_FANOUT` option value: group id in the low 16 bits, mode and
/// flags above.
fn option(id: u16, flags: u32) -> libc::c_int {
    ((PACKET_FANOUT_HASH | flags) << 16 | u32::from(id)) as libc::c_int
}

/// Joins the bound socket `fd` to hash fanout group `id` (creating it if no
/// socket is in it yet), or with `None` to a new group whose id the kernel
/// picks. Returns the group id.
pub fn join(fd: BorrowedFd<'_>, id: Option<u16>) -> io::Result<u16> {
    match id {
        Some(id) => set_option(fd, libc::SOL_PACKET, PACKET_FANOUT, &option(id, 0)).map(|()| id),
        None => {
            set_option(fd, libc::SOL_PACKET, PACKET_FANOUT, &option(0, PACKET_FANOUT_FLAG_UNIQUEID))?;
            group_of(fd)
        }
    }
}

/// The fanout group id `fd` is in.
fn group_of(fd: BorrowedFd<'_>) -> io::Result<u16> {
    let mut val: libc::c_int = 0;
    let mut len = size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `val` and `len` are live locals the kernel writes during the
    // call; `len` says how many bytes `val` has.
    let rc = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            PACKET_FANOUT,
            (&mut val as *mut libc::c_int).cast::<libc::c_void>(),
            &mut len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((val as u32 & 0xffff) as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn option_layout_matches_if_packet_h() {
        assert_eq!(option(0x1234, 0), 0x1234);
        assert_eq!(option(0, PACKET_FANOUT_FLAG_UNIQUEID), 0x2000_0000);
    }
}
