//! Builds `preload/xts-batch.c` into `$OUT_DIR/libisthmus-xts.so`, the
//! batched-XTS library hv preloads into the QEMU processes it starts (see
//! `src/xts.rs`), with its fused AES-NI/VAES path `preload/xts-fast.c`. Only
//! a C compiler and libc headers are needed (no nettle-dev): the same `cc`
//! that links Rust binaries (x86 intrinsics come with gcc).

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let src = "preload/xts-batch.c";
    let fast = "preload/xts-fast.c";
    let map = "preload/xts-batch.map";
    for f in [src, fast, "preload/xts-fast.h", map] {
        println!("cargo:rerun-if-changed={f}");
    }
    println!("cargo:rerun-if-env-changed=CC");
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR")).join("libisthmus-xts.so");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let status = Command::new(&cc)
        .args(["-O2", "-Wall", "-Wextra", "-Werror", "-fPIC", "-shared", "-fvisibility=hidden"])
        .arg(format!("-Wl,--version-script={map}"))
        .args(["-Wl,-z,relro,-z,now", "-o"])
        .arg(&out)
        .args([src, fast])
        .arg("-ldl")
        .status();
    match status {
        Ok(s) if s.success() => {}
        Ok(s) => panic!("{cc} failed ({s}) building {src}; it needs only libc headers (libc6-dev)"),
        Err(e) => panic!("cannot run the C compiler `{cc}` to build {src}: {e}; install gcc (tests/setup/deps.sh does)"),
    }
    println!("cargo:rustc-env=ISTHMUS_XTS_BUILT={}", out.display());
    // Also beside the workspace's binaries (OUT_DIR is
    // target/<profile>/build/hv-<hash>/out): hv looks next to its executable
    // first, and image recipes copy target/release/libisthmus-xts.so.
    if let Some(profile_dir) = out.ancestors().nth(4) {
        let beside = profile_dir.join("libisthmus-xts.so");
        let tmp = profile_dir.join(format!(".libisthmus-xts.so.{}", std::process::id()));
        // Copy then rename: a running QEMU may have the old file mapped.
        if std::fs::copy(&out, &tmp).and_then(|_| std::fs::rename(&tmp, &beside)).is_err() {
            let _ = std::fs::remove_file(&tmp);
            println!("cargo:warning=could not copy {} to {}", out.display(), beside.display());
        }
    }
}
