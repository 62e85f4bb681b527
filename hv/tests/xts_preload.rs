//! The batched-XTS library hv preloads into QEMU (`preload/xts-batch.c`,
//! `src/xts.rs`) gives the same bytes as nettle's own XTS:
//! - against the real nettle functions on random keys, tweaks and lengths
//!   (`preload/xts-equal.c`, compiled here against nettle's headers), in
//!   nettle's and QEMU's calling shapes, for every code path the CPU has
//!   (fused VAES, fused AES-NI, generic through the cipher function);
//! - end to end with real QEMU: what `qemu-storage-daemon` writes with the
//!   library loaded, `qemu-img` without it decrypts to the same plaintext,
//!   and what `qemu-img` encrypts without it, the daemon with it reads back.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use hv::storage_daemon::{Access, EncryptedDisk};
use hv::xts::XtsImpl;
use hv::DiskKey;

/// Runs `qemu-img` with nettle's own XTS (no `LD_PRELOAD`), the LUKS
/// passphrase (base64 of the key, as hv sends it) over stdin.
fn qemu_img_nettle(args: &[&str], key: &[u8]) {
    use base64::Engine as _;
    let mut child = Command::new("qemu-img")
        .env_remove("LD_PRELOAD")
        .args(args)
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("qemu-img (tests/setup/deps.sh installs qemu-utils)");
    let pass = base64::engine::general_purpose::STANDARD.encode(key);
    child.stdin.take().unwrap().write_all(pass.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "qemu-img {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn random(len: usize) -> Vec<u8> {
    use std::io::Read;
    let mut v = vec![0u8; len];
    std::fs::File::open("/dev/urandom").unwrap().read_exact(&mut v).unwrap();
    v
}

#[test]
fn batched_xts_equals_nettle_on_random_keys_tweaks_and_lengths() {
    let tmp = tempfile::tempdir().unwrap();
    let exe = tmp.path().join("xts-equal");
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("preload/xts-equal.c");
    let cc = Command::new("cc")
        .args(["-O2", "-Wall", "-Werror", "-o"])
        .arg(&exe)
        .arg(&src)
        .args(["-lnettle", "-ldl"])
        .output()
        .expect("cc (tests/setup/deps.sh installs gcc)");
    assert!(
        cc.status.success(),
        "building {}: {} (needs nettle-dev: tests/setup/deps.sh)",
        src.display(),
        String::from_utf8_lossy(&cc.stderr)
    );
    // Every tier: the CPU's best (default), then each lower one forced.
    let best = best_tier_of_cpu();
    for force in [None, Some("aesni"), Some("generic")] {
        let mut cmd = Command::new(&exe);
        cmd.arg(hv::xts::built_library());
        if let Some(t) = force {
            cmd.env("ISTHMUS_XTS_TIER", t);
        }
        let out = cmd.output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "tier {force:?}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // A forced tier never goes above what the CPU has.
        let tier = match (force, best) {
            (None, b) => b,
            (Some("aesni"), "generic") => "generic",
            (Some(t), _) => t,
        };
        // 4 rounds × 3 shapes (nettle, QEMU wrappers, serpent) × 3 key sizes
        // × 22 lengths × 5 checks, plus 4 × 3 × 22 QEMU-shape decrypts with
        // another f on the same context; fast-path messages: 4 × 2 AES
        // shapes × 3 key sizes × 14 whole-block lengths over 32 bytes. With a
        // fast tier, xts-equal itself fails unless verified layouts were
        // reused (calls passing nothing through f).
        let fast = if tier == "generic" { 0 } else { 336 };
        let want = format!("4224 cases identical (batched-preload, tier {tier}, fast {fast}, verified layout reused ");
        assert!(stdout.contains(&want), "tier {force:?}: want {want:?}, got {stdout}");
    }
}

/// The tier libisthmus-xts should pick on this CPU (`preload/xts-fast.c`).
fn best_tier_of_cpu() -> &'static str {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap();
    let flags: Vec<&str> = cpuinfo
        .lines()
        .find(|l| l.starts_with("flags"))
        .map(|l| l.split_whitespace().collect())
        .unwrap_or_default();
    let has = |f: &str| flags.contains(&f);
    let aesni = cfg!(target_arch = "x86_64") && has("aes") && has("pclmulqdq") && has("sse4_1");
    let vaes = has("vaes") && has("vpclmulqdq") && has("avx512f") && has("avx512vl");
    match (aesni, vaes) {
        (false, _) => "generic",
        (true, true) => "vaes",
        (true, false) => "aesni",
    }
}

#[test]
fn luks_written_with_the_preload_reads_back_without_it_and_back() {
    let tmp = tempfile::tempdir().unwrap();
    let key_bytes = random(32);
    let key = DiskKey::from_bytes(key_bytes.clone()).unwrap();
    const SIZE: usize = 4 << 20;
    let secret = "secret,id=k,file=/dev/stdin,format=raw";

    // 1. Written by qemu-storage-daemon with the batched XTS (whole MiB,
    //    4 KiB at a sector offset, and an unaligned 513-byte piece that
    //    makes QEMU read-modify-write its sectors).
    let img = tmp.path().join("with.qcow2");
    let mut plain = vec![0u8; SIZE];
    let mut disk = EncryptedDisk::create(&img, SIZE as u64, &key, &tmp.path().join("qsd1")).unwrap();
    assert_eq!(
        disk.xts(),
        Some(XtsImpl::BatchedPreload),
        "the daemon did not load {}",
        hv::xts::built_library().display()
    );
    for (off, len) in [
        (0usize, 1 << 20),
        ((1 << 20) + 512, 4096),
        ((3 << 20) + 7, 513),
        ((2 << 20), 65536 + 48),
    ] {
        let data = random(len);
        disk.write_at(&data, off as u64).unwrap();
        plain[off..off + len].copy_from_slice(&data);
    }
    disk.close().unwrap();
    let raw = tmp.path().join("with.raw");
    let opts = format!("driver=qcow2,file.filename={},encrypt.key-secret=k", img.display());
    qemu_img_nettle(
        &[
            "convert",
            "--object",
            secret,
            "--image-opts",
            &opts,
            "-O",
            "raw",
            raw.to_str().unwrap(),
        ],
        &key_bytes,
    );
    assert!(
        std::fs::read(&raw).unwrap() == plain,
        "nettle's XTS decrypts the batched XTS's disk differently"
    );
    assert!(
        !std::fs::read(&img).unwrap().windows(64).any(|w| w == &plain[..64]),
        "plaintext in the encrypted image"
    );

    // 2. Encrypted by qemu-img with nettle's XTS, read by the daemon with the
    //    batched one.
    let src = tmp.path().join("src.raw");
    let data = random(SIZE);
    std::fs::write(&src, &data).unwrap();
    let img2 = tmp.path().join("without.qcow2");
    qemu_img_nettle(
        &[
            "convert",
            "--object",
            secret,
            "-f",
            "raw",
            "-O",
            "qcow2",
            "-o",
            "encrypt.format=luks,encrypt.key-secret=k,encrypt.iter-time=10",
            src.to_str().unwrap(),
            img2.to_str().unwrap(),
        ],
        &key_bytes,
    );
    let mut disk = EncryptedDisk::open(&img2, &key, &tmp.path().join("qsd2"), Access::ReadWrite).unwrap();
    assert_eq!(disk.xts(), Some(XtsImpl::BatchedPreload));
    let mut back = vec![0u8; SIZE];
    for off in (0..SIZE).step_by(1 << 20) {
        disk.read_at(&mut back[off..off + (1 << 20)], off as u64).unwrap();
    }
    disk.close().unwrap();
    assert!(back == data, "the batched XTS decrypts nettle's disk differently");
}
