//! Commands typed into a guest's root shell on its serial console (the test
//! server runs one on ttyS0), through the `serial.sock` QEMU listens on in
//! the guest's run directory; answers are read from its `serial.log`.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Types `cmd` and a newline into the console of the guest whose run
/// directory is `run_dir`, then waits until `expect` appears in what the
/// guest printed after it (its serial log beyond the current end).
pub fn run(run_dir: &Path, cmd: &str, expect: &str, timeout: Duration) -> Result<String> {
    let log = run_dir.join("serial.log");
    let start = std::fs::metadata(&log).map(|m| m.len() as usize).unwrap_or(0);
    let sock = run_dir.join("serial.sock");
    let mut s = UnixStream::connect(&sock).with_context(|| format!("connecting to {}", sock.display()))?;
    // A line of its own first: whatever was half-typed before is ended.
    s.write_all(format!("\n{cmd}\n").as_bytes())?;
    let t = Instant::now();
    loop {
        let text = std::fs::read(&log).unwrap_or_default();
        let new = String::from_utf8_lossy(text.get(start..).unwrap_or_default()).into_owned();
        if new.contains(expect) {
            return Ok(new);
        }
        if t.elapsed() > timeout {
            bail!(
                "{expect:?} did not appear on the console of {} within {timeout:?} after {cmd:?}; it printed: {new}",
                run_dir.display()
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
