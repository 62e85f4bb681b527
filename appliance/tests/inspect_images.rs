//! Disk inspection on images made by the real tools (`sfdisk`, `mkfs.ext4
//! -d`, `qemu-img convert` to qcow2 and VMDK monolithicSparse/Flat) from the
//! guest trees under `tests/data/inventory/guest-trees/`, and on the real
//! test-server image. Built images are cached under
//! `$ISTHMUS_CACHE` (default `/var/cache/isthmus/`) keyed by a hash of their recipe.

use std::path::{Path, PathBuf};
use std::process::Command;

use proto::facts::{Binding, DeviceRef, GuestFacts};
use sha2::{Digest, Sha256};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn cache_root() -> PathBuf {
    std::env::var_os("ISTHMUS_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/isthmus"))
}

/// Hash of every file under `dir` (path + content), sorted.
fn tree_hash(h: &mut Sha256, dir: &Path) {
    let mut stack = vec![dir.to_path_buf()];
    let mut files = vec![];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read tree") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                stack.push(p);
            } else {
                files.push(p);
            }
        }
    }
    files.sort();
    for f in files {
        h.update(f.strip_prefix(dir).expect("prefix").to_string_lossy().as_bytes());
        h.update(std::fs::read(&f).expect("read file"));
    }
}

/// Runs `script` (bash, `$TREES` = guest trees, `$OUT` = output dir) once per
/// recipe and returns the cached output directory.
fn cached(name: &str, script: &str) -> PathBuf {
    let trees = root().join("tests/data/inventory/guest-trees");
    let mut h = Sha256::new();
    h.update(script.as_bytes());
    tree_hash(&mut h, &trees);
    let hash = hex::encode(&h.finalize()[..8]);
    let out = cache_root().join(format!("inspect-{name}-{hash}"));
    if out.join("done").is_file() {
        return out;
    }
    std::fs::create_dir_all(cache_root()).expect("cache dir");
    let work = tempfile::Builder::new()
        .prefix(&format!(".build-inspect-{name}-"))
        .tempdir_in(cache_root())
        .expect("work dir");
    let st = Command::new("bash")
        .args(["-euo", "pipefail", "-c", script])
        .env("TREES", &trees)
        .env("OUT", work.path())
        .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
        .status()
        .expect("bash");
    assert!(
        st.success(),
        "recipe {name} failed; are sfdisk, mkfs.ext4 and qemu-img installed (tests/setup/deps.sh)?"
    );
    std::fs::write(work.path().join("done"), "").expect("marker");
    let tmp = work.keep();
    if std::fs::rename(&tmp, &out).is_err() {
        // Built concurrently by another run: keep theirs.
        let _ = std::fs::remove_dir_all(&tmp);
    }
    out
}

const MBR_RECIPE: &str = r#"
cd "$OUT"
truncate -s 64M disk.raw
printf 'label: dos\nlabel-id: 0x1234abcd\nstart=2048, size=126976, type=83, bootable\n' | sfdisk -q disk.raw
mkfs.ext4 -q -F -E offset=1048576 -U 11111111-2222-3333-4444-555555555555 -L alpha-root \
  -d "$TREES/debian-ifupdown" disk.raw 62M
qemu-img convert -f raw -O qcow2 disk.raw disk.qcow2
qemu-img convert -f raw -O vmdk -o subformat=monolithicSparse disk.raw sparse.vmdk
qemu-img convert -f raw -O vmdk -o subformat=monolithicFlat disk.raw flat.vmdk
qemu-img convert -f raw -O vmdk -o subformat=streamOptimized disk.raw stream.vmdk
"#;

const GPT_RECIPE: &str = r#"
cd "$OUT"
truncate -s 80M disk.raw
printf 'label: gpt\nlabel-id: 9E3C5B0A-1D2E-4F60-8A7B-0C1D2E3F4A5B\nstart=2048, size=16384, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, uuid=3B0D6E2C-9A7F-4B57-A1C9-2F1E3D4C5B60, name=boot\nstart=18432, size=135168, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, uuid=5A6B7C8D-0E1F-4A2B-8C3D-4E5F60718293, name=root\n' | sfdisk -q disk.raw
mkfs.ext2 -q -F -E offset=1048576 -L boot -d "$TREES/ubuntu-boot" disk.raw 8M
mkfs.ext4 -q -F -E offset=9437184 -U 6c1f0c5a-3f0e-4d2b-9d52-1b2c3d4e5f60 -L bravo-root \
  -d "$TREES/ubuntu-netplan" disk.raw 66M
qemu-img convert -f raw -O qcow2 disk.raw disk.qcow2
qemu-img convert -f raw -O vmdk -o subformat=monolithicSparse disk.raw sparse.vmdk
rm disk.raw
"#;

fn inspect(p: &Path) -> GuestFacts {
    appliance::inspect::inspect(p, &|_| {}).unwrap_or_else(|e| panic!("inspect {}: {e}", p.display()))
}

fn codes(f: &GuestFacts) -> Vec<&str> {
    f.risks.iter().map(|r| r.code.as_str()).collect()
}

/// The same facts whatever the container: only `image` and `format` differ.
fn same_guest(a: &GuestFacts, b: &GuestFacts) {
    let strip = |f: &GuestFacts| GuestFacts {
        image: String::new(),
        format: String::new(),
        ..f.clone()
    };
    assert_eq!(strip(a), strip(b), "{} and {} differ", a.image, b.image);
}

#[test]
fn mbr_ifupdown_raw_qcow2_vmdk() {
    let dir = cached("mbr", MBR_RECIPE);
    let raw = inspect(&dir.join("disk.raw"));
    assert_eq!(raw.format, "raw");
    assert_eq!(raw.virtual_size_bytes, 64 << 20);
    assert_eq!(raw.partition_table, "mbr");
    assert_eq!(raw.partitions.len(), 1);
    let p = &raw.partitions[0];
    assert_eq!((p.index, p.start_bytes, p.size_bytes), (1, 1 << 20, 126976 * 512));
    assert_eq!(p.type_id, "0x83");
    assert_eq!(p.partuuid.as_deref(), Some("1234abcd-01"));
    assert_eq!(p.filesystem.as_deref(), Some("ext4"));
    assert_eq!(p.uuid.as_deref(), Some("11111111-2222-3333-4444-555555555555"));
    assert_eq!(p.label.as_deref(), Some("alpha-root"));
    assert_eq!(raw.os.as_deref(), Some("linux"));
    assert_eq!(raw.os_release.as_deref(), Some("Debian GNU/Linux 12 (bookworm)"));
    assert_eq!(raw.hostname.as_deref(), Some("alpha"));
    let fstab: Vec<(&str, DeviceRef)> = raw.fstab.iter().map(|e| (e.spec.as_str(), e.refers_by)).collect();
    assert_eq!(
        fstab,
        vec![
            ("/dev/sda1", DeviceRef::Device),
            ("UUID=0a3407de-014b-458b-b5c1-848e92a327a3", DeviceRef::Uuid),
            ("LABEL=scratch", DeviceRef::Label),
            ("/dev/sdb1", DeviceRef::Device),
            ("proc", DeviceRef::None),
        ]
    );
    // ifupdown eth0 (static, by name, hwaddress) + eth1 (dhcp, by name); udev eth0 by MAC.
    assert_eq!(raw.network.len(), 3, "{:#?}", raw.network);
    let eth0 = &raw.network[0];
    assert_eq!(eth0.source, "ifupdown");
    assert_eq!(eth0.interface.as_deref(), Some("eth0"));
    assert_eq!(eth0.binding, Binding::InterfaceName);
    assert_eq!(eth0.addresses, vec!["192.0.2.10/24"]);
    assert_eq!(eth0.mac.map(|m| m.to_string()).as_deref(), Some("52:54:00:ab:cd:01"));
    assert!(raw.network[1].dhcp);
    assert_eq!(raw.network[2].source, "udev");
    assert_eq!(raw.network[2].binding, Binding::Mac);
    assert_eq!(
        codes(&raw),
        vec![
            "fstab-device-path",
            "fstab-device-path",
            "kernel-cmdline-device",
            "net-bound-to-name",
            "net-bound-to-name",
            "udev-persistent-net"
        ]
    );
    assert!(raw.risks[0].message.contains("fstab names /dev/sda1") && raw.risks[0].message.contains("SCSI/SATA"));
    assert!(raw.risks[5].message.contains("52:54:00:ab:cd:01") && raw.risks[5].message.contains("MAC must be kept"));

    for (file, fmt) in [
        ("disk.qcow2", "qcow2"),
        ("sparse.vmdk", "vmdk-sparse"),
        ("flat.vmdk", "vmdk-flat"),
        ("stream.vmdk", "vmdk-stream"),
    ] {
        let f = inspect(&dir.join(file));
        assert_eq!(f.format, fmt, "{file}");
        same_guest(&raw, &f);
    }
}

#[test]
fn gpt_netplan_networkmanager_networkd() {
    let dir = cached("gpt", GPT_RECIPE);
    let q = inspect(&dir.join("disk.qcow2"));
    assert_eq!(q.format, "qcow2");
    assert_eq!(q.partition_table, "gpt");
    let parts: Vec<(u32, Option<&str>, Option<&str>)> = q
        .partitions
        .iter()
        .map(|p| (p.index, p.filesystem.as_deref(), p.partuuid.as_deref()))
        .collect();
    assert_eq!(
        parts,
        vec![
            (1, Some("ext2"), Some("3b0d6e2c-9a7f-4b57-a1c9-2f1e3d4c5b60")),
            (2, Some("ext4"), Some("5a6b7c8d-0e1f-4a2b-8c3d-4e5f60718293")),
        ]
    );
    assert_eq!(q.partitions[0].type_id, "0fc63daf-8483-4772-8e79-3d69d8477de4");
    assert_eq!(q.root_partition, Some(2));
    assert_eq!(q.hostname.as_deref(), Some("bravo"));
    assert_eq!(q.os_release.as_deref(), Some("Ubuntu 24.04.1 LTS"));
    // Only UUID/PARTUUID and a swap file: nothing in fstab depends on the bus.
    assert!(q.fstab.iter().all(|e| e.refers_by != DeviceRef::Device));
    let net: Vec<(&str, Option<&str>, Binding)> = q
        .network
        .iter()
        .map(|n| (n.source.as_str(), n.interface.as_deref(), n.binding))
        .collect();
    assert_eq!(
        net,
        vec![
            ("netplan", Some("lan0"), Binding::Mac),
            ("netplan", Some("ens4"), Binding::InterfaceName),
            ("networkmanager", Some("enp7s0"), Binding::InterfaceName),
            ("systemd-networkd", None, Binding::Mac),
            ("systemd-link", Some("mgmt0"), Binding::Mac),
        ]
    );
    assert_eq!(q.network[0].addresses, vec!["198.51.100.20/24"]);
    assert_eq!(q.network[2].addresses, vec!["203.0.113.7/24"]);
    assert!(q.network[3].dhcp);
    assert_eq!(
        codes(&q),
        vec![
            "net-bound-to-mac",
            "net-bound-to-name",
            "net-bound-to-name",
            "net-bound-to-mac",
            "udev-persistent-net"
        ]
    );
    let v = inspect(&dir.join("sparse.vmdk"));
    assert_eq!(v.format, "vmdk-sparse");
    same_guest(&q, &v);
}

#[test]
fn cli_json_and_bad_vmdk() {
    let dir = cached("mbr", MBR_RECIPE);
    let out = Command::new(env!("CARGO_BIN_EXE_isthmus"))
        .args(["inspect", "--json"])
        .arg(dir.join("disk.qcow2"))
        .arg(dir.join("flat.vmdk"))
        .output()
        .expect("run isthmus");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v.as_array().map(Vec::len), Some(2));
    assert_eq!(v[0]["hostname"], "alpha");
    assert_eq!(v[1]["format"], "vmdk-flat");
    assert_eq!(v[0]["fstab"][0]["refers_by"], "device");
    assert_eq!(v[0]["network"][2]["binding"], "mac");
    assert_eq!(v[0]["risks"][0]["code"], "fstab-device-path");

    // A descriptor that names a file outside its directory is refused.
    let t = tempfile::tempdir().expect("tmp");
    let d = t.path().join("evil.vmdk");
    std::fs::write(
        &d,
        "# Disk DescriptorFile\nversion=1\ncreateType=\"monolithicFlat\"\nRW 2048 FLAT \"../../etc/passwd\" 0\n",
    )
    .expect("write");
    let e = appliance::inspect::inspect(&d, &|_| {}).expect_err("traversal refused").to_string();
    assert!(e.contains("plain file name"), "{e}");
    // A flat extent shorter than the descriptor says is refused, not read past.
    std::fs::write(t.path().join("short-flat.vmdk"), vec![0u8; 4096]).expect("write");
    std::fs::write(
        &d,
        "# Disk DescriptorFile\nversion=1\ncreateType=\"monolithicFlat\"\nRW 2048 FLAT \"short-flat.vmdk\" 0\n",
    )
    .expect("write");
    let e = appliance::inspect::inspect(&d, &|_| {}).expect_err("short extent").to_string();
    assert!(e.contains("holds 4096 bytes"), "{e}");
}

#[test]
fn zstd_qcow2_refused_with_the_fix() {
    let t = tempfile::tempdir().expect("tmp");
    let run = |args: &[&str]| {
        let st = Command::new("qemu-img")
            .args(args)
            .current_dir(t.path())
            .status()
            .expect("qemu-img");
        assert!(st.success(), "qemu-img {args:?}");
    };
    let zstd = t.path().join("z.qcow2");
    run(&["create", "-q", "-f", "qcow2", "-o", "compression_type=zstd", "z.qcow2", "1M"]);
    let e = appliance::inspect::inspect(&zstd, &|_| {}).expect_err("zstd refused").to_string();
    assert!(e.contains(&zstd.display().to_string()), "{e}");
    assert!(
        e.contains("zstd") && e.contains("qemu-img convert -O qcow2 -c -o compression_type=zlib"),
        "{e}"
    );
    // The conversion the message names gives an image that is read.
    run(&[
        "convert",
        "-q",
        "-O",
        "qcow2",
        "-c",
        "-o",
        "compression_type=zlib",
        "z.qcow2",
        "zlib.qcow2",
    ]);
    let f = appliance::inspect::inspect(&t.path().join("zlib.qcow2"), &|_| {}).expect("zlib qcow2 is read");
    assert_eq!((f.format.as_str(), f.virtual_size_bytes), ("qcow2", 1 << 20));
}

/// A Windows system disk: an empty hive (`minimal-hive.py`) filled by
/// hivex from `system.reg`, copied into an NTFS volume made by `mkntfs` and
/// written through ntfs-3g, in an MBR partition of type 7.
const WINDOWS_RECIPE: &str = r#"
cd "$OUT"
W="$TREES/../windows"
python3 "$W/minimal-hive.py" SYSTEM
hivexregedit --merge SYSTEM "$W/system.reg"
truncate -s 64M part.img
mkntfs -q -F -Q -L System -p 2048 -H 255 -S 63 part.img 2>/dev/null
mkdir mnt
ntfs-3g part.img mnt
trap 'umount mnt 2>/dev/null || true' EXIT
mkdir -p mnt/Windows/System32/config mnt/Users/Public
cp SYSTEM mnt/Windows/System32/config/SYSTEM
echo 'not a hive' > mnt/Windows/System32/config/SOFTWARE
umount mnt
truncate -s 66M disk.raw
printf 'label: dos\nlabel-id: 0x5ee0cafe\nstart=2048, size=131072, type=7, bootable\n' | sfdisk -q disk.raw
dd if=part.img of=disk.raw bs=1M seek=1 conv=notrunc status=none
rm -r part.img SYSTEM mnt
qemu-img convert -f raw -O qcow2 disk.raw disk.qcow2
"#;

#[test]
fn windows_registry_on_ntfs() {
    let win = root().join("tests/data/inventory/windows");
    let mut h = Sha256::new();
    tree_hash(&mut h, &win);
    let inputs = hex::encode(&h.finalize()[..8]);
    let dir = cached("windows", &format!("# inputs {inputs}\n{WINDOWS_RECIPE}"));
    let f = inspect(&dir.join("disk.raw"));
    assert_eq!(f.partition_table, "mbr");
    assert_eq!(f.partitions[0].filesystem.as_deref(), Some("ntfs"));
    assert_eq!((f.os.as_deref(), f.root_partition), (Some("windows"), Some(1)));
    assert_eq!(f.hostname.as_deref(), Some("files01"));
    assert!(f.notes.is_empty(), "{:?}", f.notes);
    for n in &f.network {
        assert_eq!(n.source, "windows-registry");
    }
    let net: Vec<String> = f
        .network
        .iter()
        .map(|n| {
            format!(
                "{} {:?} dhcp={} {:?} {:?}",
                n.interface.as_deref().unwrap_or(""),
                n.binding,
                n.dhcp,
                n.addresses,
                n.mac.map(|m| m.to_string())
            )
        })
        .collect();
    assert_eq!(
        net,
        vec![
            "{0D9E8F7A-6B5C-4D3E-2F1A-0B9C8D7E6F5A} InterfaceName dhcp=true [] None",
            "{8A1F6C2E-4B3D-4E5F-9A0B-1C2D3E4F5A6B} Mac dhcp=false [\"192.0.2.50/24\", \"192.0.2.51/24\"] Some(\"00:50:56:ab:0c:01\")",
        ]
    );
    assert_eq!(codes(&f), vec!["net-bound-to-mac", "windows-boot-driver"]);
    assert!(f.risks[0].message.contains("vmxnet3 Ethernet Adapter"), "{}", f.risks[0].message);
    let boot = &f.risks[1].message;
    assert!(
        boot.contains("ide (atapi, Start=0), pvscsi (pvscsi, Start=0); the boot disk")
            && boot.contains("ahci (storahci, Start=3)")
            && boot.contains("nvme (stornvme, Start=3)")
            && !boot.contains("virtio"),
        "{boot}"
    );
    same_guest(&f, &inspect(&dir.join("disk.qcow2")));

    // A static address without a MAC override is bound to the adapter instance.
    let mut w = appliance::inspect::windows::WindowsSystem::default();
    w.network.push(proto::facts::NetConfig {
        source: "windows-registry".into(),
        file: String::new(),
        interface: Some("{G}".into()),
        mac: None,
        binding: Binding::InterfaceName,
        addresses: vec!["10.0.0.5/8".into()],
        dhcp: false,
    });
    let r = appliance::inspect::windows::risks(&w);
    assert_eq!(r[0].code, "net-bound-to-name");
    assert!(r[0].message.contains("10.0.0.5/8") && r[0].message.contains("adapter instance {G}"));
}

/// The cached test-server image: what `image-build/test-server/build.sh` prints last.
fn test_server_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("ISTHMUS_TEST_SERVER_DIR") {
        return PathBuf::from(d);
    }
    let script = root().join("image-build/test-server/build.sh");
    let out = Command::new("bash")
        .arg(&script)
        .current_dir(root())
        .output()
        .expect("run build.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout.lines().last().unwrap_or("").trim().to_string();
    assert!(
        out.status.success() && Path::new(&last).join("disk.qcow2").is_file(),
        "no test-server image: `bash {}` failed; run `make image` (tests/setup/deps.sh installs what it needs) or set ISTHMUS_TEST_SERVER_DIR",
        script.display()
    );
    PathBuf::from(last)
}

#[test]
fn real_test_server_image() {
    let ts = test_server_dir();
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(ts.join("manifest.json")).expect("manifest")).expect("manifest json");
    // The test server's qcow2 is zstd-compressed, which imago does not read:
    // the inspector says so and how to convert.
    let e = appliance::inspect::inspect(&ts.join("disk.qcow2"), &|_| {})
        .expect_err("zstd qcow2")
        .to_string();
    assert!(e.contains("zstd") && e.contains("compression_type=zlib"), "{e}");
    let hash = manifest["hash"].as_str().expect("hash");
    let dir = cached(
        &format!("test-server-{hash}"),
        &format!("qemu-img convert -O qcow2 {} \"$OUT/disk.qcow2\"", ts.join("disk.qcow2").display()),
    );
    let f = inspect(&dir.join("disk.qcow2"));
    assert_eq!(f.virtual_size_bytes, manifest["virtual_size_bytes"].as_u64().expect("size"));
    assert_eq!(f.partition_table, "mbr");
    assert_eq!(f.partitions[0].uuid.as_deref(), manifest["root_uuid"].as_str());
    assert_eq!(f.hostname.as_deref(), manifest["hostname"].as_str());
    assert_eq!(f.fstab[0].spec, manifest["fstab_root"].as_str().expect("fstab_root"));
    assert_eq!(f.fstab[0].mount_point, "/");
    assert_eq!(f.fstab[0].refers_by, DeviceRef::Device);
    assert_eq!(f.network.len(), 1);
    assert_eq!(f.network[0].mac.map(|m| m.to_string()).as_deref(), manifest["mac"].as_str());
    assert_eq!(f.network[0].addresses, vec![manifest["ip_cidr"].as_str().expect("ip").to_string()]);
    assert_eq!(codes(&f), vec!["fstab-device-path", "net-bound-to-mac"]);
}

#[test]
fn topology_records_import_and_inspect_with_history() {
    let dir = cached("mbr", MBR_RECIPE);
    let data = tempfile::tempdir().expect("data dir");
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_isthmus"))
            .env("ISTHMUS_DATA_DIR", data.path())
            .args(args)
            .output()
            .expect("run isthmus");
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let vmx = root().join("tests/data/inventory/vmx-esxi7-pvscsi.vmx");
    run(&["import", "--record", vmx.to_str().expect("path")]);
    let topo: serde_json::Value = serde_json::from_str(&run(&["topology"])).expect("json");
    let server = topo["servers"][0]["name"].as_str().expect("server name").to_string();
    assert!(!topo["servers"][0]["nics"].as_array().expect("nics").is_empty());
    run(&["inspect", "--record", &server, dir.join("disk.qcow2").to_str().expect("path")]);
    let h: serde_json::Value = serde_json::from_str(&run(&["topology", "history", &server, "--json"])).expect("json");
    assert_eq!(h.as_array().map(Vec::len), Some(2));
    assert_eq!(h[0]["source"], "import");
    assert_eq!(h[1]["source"], "inspect");
    assert!(h[1]["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .any(|c| c["field"] == "hostname" && c["new"] == "alpha"));
    let dot = run(&["topology", "--format", "dot"]);
    assert!(
        dot.starts_with("graph topology {") && dot.contains(&format!("\"server:{server}\" -- \"segment:")),
        "{dot}"
    );
    if Command::new("dot").arg("-V").output().is_ok_and(|o| o.status.success()) {
        let svg = run(&["topology", "--format", "svg"]);
        assert!(svg.contains("<svg") && svg.contains(&server), "{svg}");
    }
}
