//! Disks encrypted below the guest: the test server boots from a LUKS qcow2
//! whose key reaches QEMU only over QMP; what the guest writes is not in the
//! provider-side file in the clear; a wrong or missing key refuses to start;
//! the key is nowhere a provider could read it (command line, environment,
//! `ps`, run directory, serial log). QEMU runs hv's batched XTS preload
//! (`hv::xts`), and the control decryption uses nettle's own XTS.

mod support;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use hv::disk_key::KeyMatchError;
use hv::guest::GuestError;
use hv::{create_encrypted_image, DiskKey, Guest, GuestSpec, ImageSource};
use proto::api::AccelKind;
use proto::{DiskBus, DiskSpec, Firmware, HardwareProfile, Machine, NicModel, NicSpec, Smbios};
use support::{in_fresh_netns, test_server_dir, unique_tap, QemuReaper, TapGuard};

const KEY_HEX: &str = "4b3f9e0a7c21d8e56f0b1a2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f61";
const WRONG_HEX: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

fn key(hex_str: &str) -> DiskKey {
    DiskKey::from_bytes(hex::decode(hex_str).unwrap()).unwrap()
}

fn spec(name: &str, disks: Vec<std::path::PathBuf>, tap: &str, run_dir: &Path) -> GuestSpec {
    // The data disk is on virtio-blk (vda): two disks that both become sdX
    // can swap names between boots (sd binds asynchronously), and this
    // image's fstab names /dev/sda1.
    let disk = DiskSpec::new;
    GuestSpec {
        name: name.into(),
        profile: HardwareProfile {
            firmware: Firmware::Bios,
            machine: Machine::Pc,
            cpus: 1,
            memory_mib: 256,
            disks: vec![disk(DiskBus::Sata, 0, true), disk(DiskBus::VirtioBlk, 0, false)],
            nics: vec![NicSpec {
                model: NicModel::E1000,
                mac: "52:54:00:12:34:56".parse().unwrap(),
                pci_slot: Some("03.0".parse().unwrap()),
            }],
            smbios: Smbios::default(),
        },
        disks,
        taps: vec![tap.into()],
        run_dir: run_dir.into(),
        accel: AccelKind::Tcg,
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Decrypts an image with `qemu-img` (passphrase = base64 of the key, over
/// stdin, as hv does) to raw.
fn decrypt(img: &Path, out: &Path, key_hex: &str) {
    let opts = format!("driver=qcow2,file.filename={},encrypt.key-secret=k", img.display());
    // No LD_PRELOAD: nettle's own XTS, so a disk the guest wrote through
    // the batched preload (hv::xts) must decrypt to the same plaintext.
    let mut child = Command::new("qemu-img")
        .env_remove("LD_PRELOAD")
        .args([
            "convert",
            "--object",
            "secret,id=k,file=/dev/stdin,format=raw",
            "--image-opts",
            &opts,
            "-O",
            "raw",
        ])
        .arg(out)
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b64(&hex::decode(key_hex).unwrap()).as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success(), "decrypting {} failed", img.display());
}

#[test]
fn boots_from_luks_disk_and_the_provider_never_sees_plaintext_or_key() {
    let server = test_server_dir();
    in_fresh_netns(move || {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().join("root-luks.qcow2");
        let data = tmp.path().join("data-luks.qcow2");
        create_encrypted_image(&root, &ImageSource::Copy(server.join("disk.qcow2")), &key(KEY_HEX)).unwrap();
        create_encrypted_image(&data, &ImageSource::Blank { size_bytes: 16 << 20 }, &key(KEY_HEX)).unwrap();
        let e = create_encrypted_image(&data, &ImageSource::Blank { size_bytes: 1 << 20 }, &key(KEY_HEX)).unwrap_err();
        assert!(e.to_string().contains("already exists"), "{e}");
        let tap = TapGuard::create(&unique_tap());
        let run_dir = tmp.path().join("run");
        let _reaper = QemuReaper(run_dir.clone());
        let s = spec("hvtest-luks", vec![root.clone(), data.clone()], &tap.0, &run_dir);

        // Missing key: refused before QEMU starts.
        let e = Guest::launch(&s).unwrap_err();
        assert!(matches!(e, hv::Error::DiskKey(KeyMatchError::Missing { disk: 0, .. })), "{e}");
        // Wrong key: QEMU refuses to open the disk, is stopped, and says so.
        let e = Guest::launch_with_keys(&s, &[Some(key(WRONG_HEX)), Some(key(KEY_HEX))]).unwrap_err();
        assert!(matches!(e, hv::Error::Guest(GuestError::Unlock { disk: 0, .. })), "{e}");
        let msg = e.to_string();
        assert!(msg.contains("root-luks.qcow2") && msg.to_lowercase().contains("password"), "{msg}");
        assert!(hv::guest::running_pid(&run_dir).is_none(), "QEMU must not survive a wrong key");

        let g = Guest::launch_with_keys(&s, &[Some(key(KEY_HEX)), Some(key(KEY_HEX))]).unwrap();
        // hv preloads its batched XTS (this build's libisthmus-xts.so).
        assert_eq!(g.xts(), Some(hv::xts::XtsImpl::BatchedPreload));
        // The passphrase objects are gone once the disks are open.
        let objs = g.execute("qom-list", Some(serde_json::json!({"path": "/objects"}))).unwrap();
        assert!(!objs.to_string().contains("key-disk"), "secret objects left in QEMU: {objs}");
        g.wait_for_serial("ISTHMUS-READY", Duration::from_secs(180)).unwrap();
        let facts = g.wait_for_serial("ISTHMUS-FACTS", Duration::ZERO).unwrap();
        assert!(facts.contains("root_disk=sda"), "{facts}");

        // Write a known pattern from inside the guest: to a file on the root
        // file system and straight onto the second disk (vda). The pattern is built
        // in the guest so the typed command never holds it literally.
        let mut con = g.serial_console(Duration::from_secs(5)).unwrap();
        let pattern = b"ISTHMUS-PLAIN-TEXT-7d3f";
        let r = con
            .run(
                "P=$(printf 'ISTHMUS-%s-%s-7d3f' PLAIN TEXT); mount -o remount,rw / ; \
                 i=0; while [ $i -lt 2000 ]; do echo \"$P $i\"; i=$((i+1)); done > /root/pattern.txt; \
                 dd if=/root/pattern.txt of=/dev/vda bs=64k conv=fsync 2>/dev/null; sync; \
                 grep -c \"$P\" /root/pattern.txt; dd if=/dev/vda bs=64k count=1 2>/dev/null | grep -c \"$P 1\"",
                Duration::from_secs(120),
            )
            .unwrap();
        assert_eq!(r.status, 0, "{r:?}");
        assert!(r.output.lines().any(|l| l.trim() == "2000"), "pattern not written: {r:?}");
        drop(con);

        // The key is nowhere the provider (or another tenant) could read it.
        let key_bytes = hex::decode(KEY_HEX).unwrap();
        // Raw, hex, the LUKS passphrase (base64) and its QMP wire form.
        let passphrase = b64(&key_bytes);
        let wire = b64(passphrase.as_bytes());
        let forms: [&[u8]; 4] = [&key_bytes, KEY_HEX.as_bytes(), passphrase.as_bytes(), wire.as_bytes()];
        let pid = g.pid();
        let mut places = vec![
            (
                format!("/proc/{pid}/cmdline"),
                std::fs::read(format!("/proc/{pid}/cmdline")).unwrap(),
            ),
            (
                format!("/proc/{pid}/environ"),
                std::fs::read(format!("/proc/{pid}/environ")).unwrap(),
            ),
            (
                "ps -eo args".to_string(),
                Command::new("ps").args(["-eo", "args"]).output().unwrap().stdout,
            ),
        ];
        for f in std::fs::read_dir(&run_dir).unwrap() {
            let f = f.unwrap();
            if f.file_type().unwrap().is_file() {
                places.push((f.path().display().to_string(), std::fs::read(f.path()).unwrap()));
            }
        }
        assert!(places.len() >= 5, "{:?}", places.iter().map(|p| &p.0).collect::<Vec<_>>());
        for (what, bytes) in &places {
            for form in forms {
                assert!(!contains(bytes, form), "the disk key is in {what}");
            }
        }

        assert!(g.powerdown(Duration::from_secs(30)).unwrap(), "guest did not power off");
        for img in [&root, &data] {
            let bytes = std::fs::read(img).unwrap();
            assert!(
                !contains(&bytes, pattern),
                "plaintext pattern found in provider-side file {}",
                img.display()
            );
        }
        // Control: decrypted with the key, the same files do hold the pattern,
        // so the check above looked where the data went.
        for (img, name) in [(&root, "root.raw"), (&data, "data.raw")] {
            let out = tmp.path().join(name);
            decrypt(img, &out, KEY_HEX);
            assert!(
                contains(&std::fs::read(&out).unwrap(), pattern),
                "pattern missing in decrypted {name}"
            );
            std::fs::remove_file(&out).unwrap();
        }
    });
}
