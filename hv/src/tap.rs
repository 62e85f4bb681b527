//! Persistent TAP devices for guest NICs.
//!
//! QEMU opens a TAP by name (`-netdev tap,ifname=`) and netbridge attaches an
//! AF_PACKET socket to the same device, so the device must exist on its own,
//! independent of any open fd: it is created persistent (`TUNSETPERSIST`) and
//! set up. Everything happens in the calling thread's network namespace.
//!
//! This module owns the TUN/TAP and interface-flag ioctls (STYLE §4).
#![allow(unsafe_code)]

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// The TUN/TAP clone device.
pub const TUN_DEVICE: &str = "/dev/net/tun";

/// Longest interface name the kernel takes (IFNAMSIZ - 1).
pub const MAX_NAME_LEN: usize = 15;

/// Creating or deleting a TAP failed.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// A name the kernel would refuse or that could clash with options.
    #[error("TAP name {0:?} is not usable: use 1 to 15 characters of A-Z a-z 0-9 _ -")]
    Name(String),
    /// `/dev/net/tun` could not be opened.
    #[error("cannot open {TUN_DEVICE}: {0}; load the tun module (modprobe tun) and run as root or with CAP_NET_ADMIN")]
    OpenTun(#[source] io::Error),
    /// `TUNSETIFF` failed.
    #[error("cannot attach to TAP {name}: {source}; a device of that name that is not a TAP, or a TAP already held open by another process (QEMU still running?), refuses this")]
    SetIff {
        /// TAP name.
        name: String,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
    /// `TUNSETPERSIST` failed.
    #[error("cannot make TAP {name} {what}: {source}")]
    Persist {
        /// TAP name.
        name: String,
        /// "persistent" / "non-persistent".
        what: &'static str,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
    /// Bringing the link up failed.
    #[error("cannot set TAP {name} up: {source}")]
    Up {
        /// TAP name.
        name: String,
        /// What the kernel said.
        #[source]
        source: io::Error,
    },
}

/// True for 1..=15 characters of `[A-Za-z0-9_-]`.
pub fn name_is_valid(name: &str) -> bool {
    (1..=MAX_NAME_LEN).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
}

/// An `ifreq` carrying `name` (validated: fits with its NUL).
fn ifreq(name: &str) -> libc::ifreq {
    // SAFETY: ifreq is a plain C struct (a name array and a union of integers
    // and arrays) for which all-zero bytes are a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
        *dst = src as libc::c_char;
    }
    ifr
}

fn open_tun() -> Result<File, TapError> {
    // O_CLOEXEC comes with std; the fd is closed when `File` drops.
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(TUN_DEVICE)
        .map_err(TapError::OpenTun)
}

/// Attaches `tun` to the TAP `name`, creating it if it does not exist.
fn set_iff(tun: &File, name: &str) -> Result<(), TapError> {
    let mut ifr = ifreq(name);
    ifr.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
    // SAFETY: TUNSETIFF reads and writes one `struct ifreq`; `ifr` is a valid,
    // exclusively borrowed ifreq that lives across the call, and `tun` is an
    // open /dev/net/tun fd.
    let rc = unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, &mut ifr as *mut libc::ifreq) };
    if rc < 0 {
        return Err(TapError::SetIff {
            name: name.to_string(),
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

fn set_persist(tun: &File, name: &str, persist: bool) -> Result<(), TapError> {
    // SAFETY: TUNSETPERSIST takes its argument by value (an integer flag), no
    // memory is passed; `tun` is an open /dev/net/tun fd attached to a TAP.
    let rc = unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETPERSIST, libc::c_ulong::from(persist)) };
    if rc < 0 {
        return Err(TapError::Persist {
            name: name.to_string(),
            what: if persist { "persistent" } else { "non-persistent" },
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// An AF_INET datagram socket, the conventional handle for SIOC[GS]IFFLAGS.
fn control_socket() -> io::Result<OwnedFd> {
    // SAFETY: socket(2) with constant arguments; no pointers involved.
    let fd: RawFd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just returned by socket(2), is open and owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn set_up(name: &str) -> io::Result<()> {
    let sock = control_socket()?;
    let mut ifr = ifreq(name);
    // SAFETY: SIOCGIFFLAGS reads the name and writes `ifru_flags` of the
    // valid, exclusively borrowed `ifr`; `sock` is an open socket.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut ifr as *mut libc::ifreq) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel filled `ifru_flags` above; reading a c_short union
    // member of an initialised ifreq is sound.
    let flags = unsafe { ifr.ifr_ifru.ifru_flags };
    ifr.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
    // SAFETY: SIOCSIFFLAGS reads the name and flags of the valid `ifr`.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &mut ifr as *mut libc::ifreq) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Creates a persistent TAP device `name` (or reuses an existing one) in the
/// calling thread's network namespace and sets it up. Idempotent.
pub fn create_tap(name: &str) -> Result<(), crate::Error> {
    if !name_is_valid(name) {
        return Err(TapError::Name(name.to_string()).into());
    }
    let tun = open_tun()?;
    set_iff(&tun, name)?;
    set_persist(&tun, name, true)?;
    drop(tun);
    set_up(name).map_err(|source| TapError::Up {
        name: name.to_string(),
        source,
    })?;
    Ok(())
}

/// Deletes the persistent TAP `name`; a TAP that does not exist is fine.
/// Fails while another process (QEMU) holds it open.
pub fn delete_tap(name: &str) -> Result<(), crate::Error> {
    if !name_is_valid(name) {
        return Err(TapError::Name(name.to_string()).into());
    }
    // TUNSETIFF would create a missing device; look first.
    if nix::net::if_::if_nametoindex(name).is_err() {
        return Ok(());
    }
    let tun = open_tun()?;
    set_iff(&tun, name)?;
    // Non-persistent: the device goes away when this, its last fd, closes.
    set_persist(&tun, name, false)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        for ok in ["tap0", "t", "isthmus-web01_0", "a-b_c"] {
            assert!(name_is_valid(ok), "{ok}");
        }
        for bad in ["", "tap0123456789abc", "a b", "a/b", "a,b", "a:b", "é"] {
            assert!(!name_is_valid(bad), "{bad}");
        }
        assert!(matches!(create_tap("a/b"), Err(crate::Error::Tap(TapError::Name(_)))));
        assert!(matches!(delete_tap(""), Err(crate::Error::Tap(TapError::Name(_)))));
    }
}
