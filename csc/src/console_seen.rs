//! What a guest's serial console showed: did the kernel reach user space,
//! and its last line. The appliance watches a rehearsal copy (which has no
//! network it could reach) boot through this.

use std::path::Path;

use proto::api::ConsoleSeen;

/// Reads the serial log at `path` (missing: nothing seen yet).
pub fn read(path: &Path) -> ConsoleSeen {
    match std::fs::read(path) {
        Ok(bytes) => of_bytes(&bytes),
        Err(_) => ConsoleSeen::default(),
    }
}

/// What `bytes` of console output show.
pub fn of_bytes(bytes: &[u8]) -> ConsoleSeen {
    let text = String::from_utf8_lossy(bytes);
    let mut seen = ConsoleSeen {
        bytes: bytes.len() as u64,
        ..ConsoleSeen::default()
    };
    seen.user_space = text.split(['\n', '\r']).any(hv::accel::line_reached_user_space);
    seen.last_line = hv::accel::last_console_line(&text).unwrap_or_default();
    seen
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_space_and_last_line() {
        let s = of_bytes(b"\x1b[2JSeaBIOS\r\n[ 1.0] Run /sbin/init as init process\r\n[ 3.1] ISTHMUS-FACTS a=b\r\n\r\n");
        assert!(s.user_space);
        assert_eq!(s.last_line, "[ 3.1] ISTHMUS-FACTS a=b");
        assert!(s.bytes > 0);
        let early = of_bytes(b"Booting from ROM...\n");
        assert!(!early.user_space);
        assert_eq!(read(Path::new("/nonexistent/serial.log")), ConsoleSeen::default());
    }
}
