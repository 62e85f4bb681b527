//! hv's own LUKS header on a cached template (`hv::qemu::luks_template`),
//! checked with QEMU's tools: an image opens in `qemu-io`/`qemu-img` with its
//! key and only with it, data written reads back and is not in the file in
//! the clear, `qemu-img check` is clean, every image has its own master key,
//! UUID and salts, nothing of the template's key material survives, hv's
//! reader unlocks a header QEMU wrote, and no key is on any command line.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use hv::qemu::luks_header::{self, Header, KEY_MATERIAL_LEN, SECTOR};
use hv::qemu::luks_template::{crypt_header_extension, template};
use hv::{create_encrypted_image, DiskKey, ImageSource};

const KEY_HEX: &str = "9c1d2e3f405162738495a6b7c8d9eafb0c1d2e3f405162738495a6b7c8d9eaf0";
const WRONG_HEX: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

fn key(hex_str: &str) -> DiskKey {
    DiskKey::from_bytes(hex::decode(hex_str).unwrap()).unwrap()
}

/// The LUKS passphrase hv gives QEMU: base64 of the key bytes.
fn passphrase(hex_str: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(hex::decode(hex_str).unwrap())
}

fn opts(img: &Path) -> String {
    format!("driver=qcow2,file.filename={},encrypt.key-secret=k", img.display())
}

/// Runs a QEMU tool with a `secret` object `k` read from its stdin pipe.
fn with_secret(tool: &str, args: &[&str], secret: &str) -> Output {
    // qemu-img takes options after its subcommand, qemu-io before anything.
    let split = usize::from(tool == "qemu-img");
    let mut child = Command::new(tool)
        .env_remove("LD_PRELOAD")
        .args(&args[..split])
        .args(["--object", "secret,id=k,file=/dev/stdin,format=raw"])
        .args(&args[split..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(secret.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

/// The LUKS region (qcow2 `crypt_header` extension) of an image file.
fn luks_region(img: &Path) -> Vec<u8> {
    let bytes = std::fs::read(img).unwrap();
    let (off, len) = crypt_header_extension(&bytes).expect("qcow2 crypt_header extension");
    bytes[off as usize..(off + len) as usize].to_vec()
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[test]
fn blank_image_opens_with_its_key_only_and_checks_clean() {
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("blank.qcow2");
    create_encrypted_image(&img, &ImageSource::Blank { size_bytes: 64 << 20 }, &key(KEY_HEX)).unwrap();
    let pw = passphrase(KEY_HEX);

    let info = with_secret("qemu-img", &["info", "--output=json", "--image-opts", &opts(&img)], &pw);
    assert!(info.status.success(), "{}", text(&info));
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(info["virtual-size"], 64 << 20);
    assert_eq!(info["encrypted"], true);
    let luks = &info["format-specific"]["data"]["encrypt"];
    assert_eq!(luks["format"], "luks", "{luks}");
    assert_eq!(luks["cipher-alg"], "aes-256");
    assert_eq!(luks["cipher-mode"], "xts");
    assert_eq!(luks["ivgen-alg"], "plain64");
    assert_eq!(luks["hash-alg"], "sha256");
    assert_eq!(luks["slots"][0]["active"], true);
    assert_eq!(luks["slots"][0]["iters"], luks_header::ITERATIONS);
    assert!((1..8).all(|i| luks["slots"][i]["active"] == false), "{luks}");

    // Write a pattern at the start, in the middle and at the end; read back.
    let io = with_secret(
        "qemu-io",
        &[
            "--image-opts",
            &opts(&img),
            "-c",
            "write -P 0xa5 0 1M",
            "-c",
            "write -P 0x3c 32M 64k",
            "-c",
            "write -P 0x7e 67043328 65536",
        ],
        &pw,
    );
    assert!(io.status.success() && !text(&io).contains("failed"), "{}", text(&io));
    let io = with_secret(
        "qemu-io",
        &[
            "--image-opts",
            &opts(&img),
            "-c",
            "read -P 0xa5 0 1M",
            "-c",
            "read -P 0x3c 32M 64k",
            "-c",
            "read -P 0x7e 67043328 65536",
            "-c",
            "read -P 0 1M 1M",
        ],
        &pw,
    );
    assert!(io.status.success() && !text(&io).contains("failed"), "{}", text(&io));
    let check = with_secret("qemu-img", &["check", "--image-opts", &opts(&img)], &pw);
    assert!(check.status.success() && text(&check).contains("No errors"), "{}", text(&check));

    // The file holds no run of the plaintext patterns.
    let file = std::fs::read(&img).unwrap();
    for b in [0xa5u8, 0x3c, 0x7e] {
        assert!(!contains(&file, &[b; 64]), "plaintext 0x{b:02x} in the image file");
    }

    // A wrong key is refused.
    let wrong = with_secret("qemu-io", &["--image-opts", &opts(&img), "-c", "read 0 4k"], &passphrase(WRONG_HEX));
    assert!(!wrong.status.success(), "{}", text(&wrong));
    assert!(text(&wrong).to_lowercase().contains("password"), "{}", text(&wrong));

    // The destination is never overwritten.
    let e = create_encrypted_image(&img, &ImageSource::Blank { size_bytes: 1 << 20 }, &key(KEY_HEX)).unwrap_err();
    assert!(e.to_string().contains("already exists"), "{e}");
}

#[test]
fn copy_keeps_the_data_and_the_file_holds_no_plaintext() {
    let tmp = tempfile::tempdir().unwrap();
    // A raw source with text at 0 and 5 MiB and a hole between, 8 MiB + 1000
    // bytes long (not a multiple of 512).
    let src = tmp.path().join("src.raw");
    let line = b"ISTHMUS-LUKS-HEADER-PLAINTEXT-51c2 ";
    let pattern: Vec<u8> = line.iter().copied().cycle().take(256 << 10).collect();
    {
        let f = std::fs::File::create(&src).unwrap();
        use std::os::unix::fs::FileExt;
        f.write_all_at(&pattern, 0).unwrap();
        f.write_all_at(&pattern, 5 << 20).unwrap();
        f.set_len((8 << 20) + 1000).unwrap();
    }
    let img = tmp.path().join("copy.qcow2");
    create_encrypted_image(&img, &ImageSource::Copy(src.clone()), &key(KEY_HEX)).unwrap();
    let file = std::fs::read(&img).unwrap();
    assert!(!contains(&file, line), "plaintext in the encrypted copy");
    // Only allocated extents were written: far less than the virtual size.
    assert!(file.len() < 6 << 20, "copy is {} bytes", file.len());

    let out = tmp.path().join("out.raw");
    let conv = with_secret(
        "qemu-img",
        &["convert", "--image-opts", &opts(&img), "-O", "raw", out.to_str().unwrap()],
        &passphrase(KEY_HEX),
    );
    assert!(conv.status.success(), "{}", text(&conv));
    let (a, b) = (std::fs::read(&src).unwrap(), std::fs::read(&out).unwrap());
    assert_eq!(b.len(), (8 << 20) + 1024, "virtual size rounded up to a sector");
    assert!(
        a[..] == b[..a.len()] && b[a.len()..].iter().all(|&x| x == 0),
        "decrypted copy differs from the source"
    );

    // A qcow2 source too (its virtual size from the qcow2 header).
    let q = tmp.path().join("src.qcow2");
    let st = Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2", src.to_str().unwrap(), q.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(st.success());
    let img2 = tmp.path().join("copy2.qcow2");
    create_encrypted_image(&img2, &ImageSource::Copy(q), &key(KEY_HEX)).unwrap();
    let cmp = with_secret(
        "qemu-img",
        &[
            "compare",
            "--image-opts",
            &format!("driver=raw,file.filename={}", src.display()),
            &opts(&img2),
        ],
        &passphrase(KEY_HEX),
    );
    // `compare` of a raw file and a larger image: equal where both exist,
    // the rest must be zero (exit 0 = identical).
    assert!(cmp.status.success(), "{}", text(&cmp));
    // An encrypted source is refused.
    let e = create_encrypted_image(&tmp.path().join("x.qcow2"), &ImageSource::Copy(img2), &key(KEY_HEX)).unwrap_err();
    assert!(e.to_string().contains("already encrypted"), "{e}");
}

#[test]
fn every_image_gets_its_own_master_key_uuid_and_salts_and_nothing_of_the_template() {
    let tmp = tempfile::tempdir().unwrap();
    let (a, b) = (tmp.path().join("a.qcow2"), tmp.path().join("b.qcow2"));
    for p in [&a, &b] {
        create_encrypted_image(p, &ImageSource::Blank { size_bytes: 1 << 20 }, &key(KEY_HEX)).unwrap();
    }
    let pw = passphrase(KEY_HEX);
    let (ra, rb) = (luks_region(&a), luks_region(&b));
    let (ha, hb) = (Header::parse(&ra, ra.len()).unwrap(), Header::parse(&rb, rb.len()).unwrap());
    assert_ne!(ha.uuid, hb.uuid);
    assert_ne!(ha.mk_digest_salt, hb.mk_digest_salt);
    assert_ne!(ha.slots[0].salt, hb.slots[0].salt);
    let (ka, kb) = (
        luks_header::unlock(&ra, pw.as_bytes()).unwrap(),
        luks_header::unlock(&rb, pw.as_bytes()).unwrap(),
    );
    assert_ne!(ka, kb, "two images share a master key");
    assert!(luks_header::unlock(&ra, passphrase(WRONG_HEX).as_bytes()).is_err());

    // The template's LUKS region is entirely replaced: the disk's region is
    // its header and slot 0's material, zeros elsewhere, and shares no
    // 64-byte window of key material with the template's.
    let rt = luks_region(&template().unwrap());
    assert_eq!(rt.len(), ra.len());
    let s0 = ha.slots[0].key_offset as usize * SECTOR;
    for (i, &byte) in ra.iter().enumerate() {
        if !(i < luks_header::HEADER_LEN || (s0..s0 + KEY_MATERIAL_LEN).contains(&i)) {
            assert_eq!(byte, 0, "byte {i} of the LUKS region not wiped");
        }
    }
    let ht = Header::parse(&rt, rt.len()).unwrap();
    assert_ne!(ht.uuid, ha.uuid);
    let t0 = ht.slots[0].key_offset as usize * SECTOR;
    let tmat = &rt[t0..t0 + KEY_MATERIAL_LEN];
    let amat = &ra[s0..s0 + KEY_MATERIAL_LEN];
    assert!(tmat.chunks(64).zip(amat.chunks(64)).all(|(x, y)| x != y));
}

#[test]
fn hv_reads_a_header_qemu_wrote() {
    // QEMU's own LUKS writer (and its PBKDF2 benchmark, ≈ 2.3 CPU-s): hv's
    // reader must recover a master key that passes QEMU's digest, so hv's
    // PBKDF2, AES-XTS key-material and AF code match QEMU's.
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("qemu.qcow2");
    let pw = passphrase(KEY_HEX);
    let out = with_secret(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-o",
            "encrypt.format=luks,encrypt.key-secret=k,encrypt.iter-time=10",
            img.to_str().unwrap(),
            "1M",
        ],
        &pw,
    );
    assert!(out.status.success(), "{}", text(&out));
    let region = luks_region(&img);
    let master = luks_header::unlock(&region, pw.as_bytes()).unwrap();
    assert_eq!(master.len(), luks_header::KEY_BYTES);
    assert!(luks_header::unlock(&region, passphrase(WRONG_HEX).as_bytes()).is_err());
}

/// Environment variable that turns [`argv_probe_child`] on (in the child
/// process [`no_key_on_any_command_line`] starts).
const PROBE_ENV: &str = "HV_LUKS_ARGV_PROBE_DIR";

#[test]
fn no_key_on_any_command_line() {
    // Re-run this test binary's probe with a `qemu-img` shim first in PATH
    // that logs its argv (and environment) and runs the real one.
    let tmp = tempfile::tempdir().unwrap();
    let real = which("qemu-img");
    let shim = tmp.path().join("qemu-img");
    let log = tmp.path().join("argv.log");
    std::fs::write(
        &shim,
        format!(
            "#!/bin/sh\nprintf '%s\\n' \"$*\" >> '{log}'\nenv >> '{log}'\nexec '{real}' \"$@\"\n",
            log = log.display(),
            real = real.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&shim, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!("{}:{}", tmp.path().display(), std::env::var("PATH").unwrap_or_default());
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "argv_probe_child", "--ignored", "--nocapture", "--test-threads=1"])
        .env("PATH", path)
        .env(PROBE_ENV, tmp.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("resize") && logged.contains("convert"), "{logged}");
    for secret in [KEY_HEX.to_string(), passphrase(KEY_HEX)] {
        assert!(!logged.contains(&secret), "key on a qemu-img command line or environment: {logged}");
    }
}

/// Not a test of its own: does the creations for [`no_key_on_any_command_line`].
#[test]
#[ignore = "run by no_key_on_any_command_line, in a child process"]
fn argv_probe_child() {
    let Some(dir) = std::env::var_os(PROBE_ENV).map(PathBuf::from) else {
        return;
    };
    create_encrypted_image(&dir.join("b.qcow2"), &ImageSource::Blank { size_bytes: 1 << 20 }, &key(KEY_HEX)).unwrap();
    let src = dir.join("s.raw");
    std::fs::write(&src, vec![7u8; 4096]).unwrap();
    create_encrypted_image(&dir.join("c.qcow2"), &ImageSource::Copy(src), &key(KEY_HEX)).unwrap();
}

fn which(bin: &str) -> PathBuf {
    std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .map(|d| Path::new(d).join(bin))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("{bin} not in PATH; install qemu-utils (tests/setup/deps.sh)"))
}
