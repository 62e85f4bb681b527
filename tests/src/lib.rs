//! The Isthmus lab: a data center and a cloud on one machine, made of
//! network namespaces, veth pairs, a Linux bridge and real QEMU guests.
//!
//! `make demo` (binary `isthmus-lab`) and the end-to-end tests in `tests/`
//! share this code, so the demo shows exactly what the tests check.
//!
//! ```text
//!  <p>-cl (client 10.77.0.100)      <p>-dc                                  <p>-cloud
//!   vc ─────────────────────── vcb ┐                                        
//!                                  br0 (10.77.0.2: appliance LAN address)    
//!   source QEMU (e1000) ─ tap-web1 ┤                                        
//!                          lanA ───┘ lanB (appliance LAN port, AF_PACKET)    
//!   appliance ─ inet0 198.51.100.1/30 ═══ "internet" ═══ inet1 198.51.100.2/30 ─ cloud node ─ TAPs ─ moved QEMU
//! ```

pub mod browser;
pub mod guest_shell;
pub mod netns;
pub mod pcap;
pub mod process;
pub mod scenario;
pub mod second_cloud;

use std::path::PathBuf;

/// The workspace root: the nearest directory, from the current one upwards,
/// that holds `image-build/test-server/build.sh` (so a binary built in
/// another checkout still uses this one's recipes), else the checkout it was
/// compiled in.
pub fn workspace_root() -> PathBuf {
    let marker = "image-build/test-server/build.sh";
    if let Ok(mut dir) = std::env::current_dir() {
        loop {
            if dir.join(marker).is_file() {
                return dir;
            }
            if !dir.pop() {
                break;
            }
        }
    }
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// Path of a workspace binary built next to the running executable.
pub fn bin(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let mut dir = exe.parent().map(|p| p.to_path_buf());
    while let Some(d) = dir {
        let cand = d.join(name);
        if cand.is_file() {
            return Ok(cand);
        }
        dir = d.parent().map(|p| p.to_path_buf());
        if dir.as_ref().is_some_and(|d| d.ends_with("target")) {
            break;
        }
    }
    anyhow::bail!(
        "binary {name} not found next to {}; build it first with `cargo build --workspace --bins`",
        exe.display()
    )
}
