//! Disk inspection without booting: open a raw, qcow2 or VMDK image, read its
//! MBR/GPT, find filesystems, and read from ext2/3/4 the host name, fstab and
//! network configuration, then say what a move must keep ([`GuestFacts`]).
//!
//! - [`image`]: images as byte arrays (raw, qcow2 through imago, [`vmdk`]).
//! - [`partition`]: MBR and GPT. [`fs`]: filesystem signatures, ext reader.
//! - [`fstab`], [`netcfg`] (+ [`yaml`]): the guest's configuration files.
//! - [`risks`]: what inside the guest depends on bus, order, MAC or name.
//! - [`windows`]: the SYSTEM registry hive of an NTFS system volume.

pub mod fs;
pub mod fstab;
pub mod image;
pub mod netcfg;
pub mod partition;
pub mod regf;
pub mod risks;
pub mod vmdk;
pub mod windows;
pub mod yaml;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use proto::facts::{GuestFacts, NetConfig, PartitionFacts};

use image::DiskImage;

/// Why an image could not be inspected.
#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    /// The file could not be opened or read.
    #[error("cannot read {path}: {source}")]
    Open {
        /// Image.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The container format is damaged or not supported.
    #[error("{path}: {message}")]
    Format {
        /// Image.
        path: PathBuf,
        /// What is wrong and what to do.
        message: String,
    },
}

/// Largest guest file read (config files are small).
const MAX_FILE: u64 = 1 << 20;
/// Most directory entries looked at in one config directory.
const MAX_DIR_ENTRIES: usize = 512;

/// An ext2/3/4 filesystem with bounded helpers.
struct Ext(ext4_view::Ext4);

impl Ext {
    fn read(&self, p: &str) -> Option<String> {
        let m = self.0.metadata(p).ok()?;
        if m.is_dir() || m.len() > MAX_FILE {
            return None;
        }
        self.0.read(p).ok().map(|b| String::from_utf8_lossy(&b).into_owned())
    }
    fn exists(&self, p: &str) -> bool {
        self.0.exists(p).unwrap_or(false)
    }
    /// Regular files in `dir` (sorted names), at most [`MAX_DIR_ENTRIES`].
    fn files(&self, dir: &str) -> Vec<String> {
        let Ok(rd) = self.0.read_dir(dir) else {
            return vec![];
        };
        let mut v: Vec<String> = rd
            .take(MAX_DIR_ENTRIES)
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().as_str().ok().map(str::to_string))
            .filter(|n| n != "." && n != "..")
            .map(|n| format!("{}/{n}", dir.trim_end_matches('/')))
            .filter(|p| self.0.metadata(p.as_str()).is_ok_and(|m| !m.is_dir()))
            .collect();
        v.sort();
        v
    }
}

/// Network configuration of a Linux root filesystem, in a fixed order.
fn read_network(fs: &Ext) -> Vec<NetConfig> {
    let mut out = vec![];
    let mut each = |files: Vec<String>, f: fn(&str, &str) -> Vec<NetConfig>| {
        for p in files {
            if let Some(t) = fs.read(&p) {
                out.extend(f(&p, &t));
            }
        }
    };
    let mut ifup = vec!["/etc/network/interfaces".to_string()];
    ifup.extend(fs.files("/etc/network/interfaces.d"));
    each(ifup, netcfg::ifupdown);
    let yamls = |d: &str| fs.files(d).into_iter().filter(|p| p.ends_with(".yaml") || p.ends_with(".yml"));
    let mut np: Vec<String> = yamls("/lib/netplan")
        .chain(yamls("/run/netplan"))
        .chain(yamls("/etc/netplan"))
        .collect();
    np.sort_by(|a, b| a.rsplit('/').next().cmp(&b.rsplit('/').next()));
    each(np, netcfg::netplan);
    each(fs.files("/etc/NetworkManager/system-connections"), netcfg::networkmanager);
    let dirs = [
        "/etc/systemd/network",
        "/run/systemd/network",
        "/usr/lib/systemd/network",
        "/lib/systemd/network",
    ];
    let ext = |e: &str| -> Vec<String> { dirs.iter().flat_map(|d| fs.files(d)).filter(|p| p.ends_with(e)).collect() };
    each(ext(".network"), netcfg::networkd);
    // Only .link files an admin wrote rename by MAC; the shipped 99-default.link is generic.
    each(
        ext(".link").into_iter().filter(|p| p.starts_with("/etc/")).collect(),
        netcfg::networkd_link,
    );
    each(
        fs.files("/etc/udev/rules.d")
            .into_iter()
            .filter(|p| p.ends_with(".rules"))
            .collect(),
        netcfg::udev_net,
    );
    each(vec!["/etc/isthmus/net.conf".into()], netcfg::isthmus_netconf);
    out
}

/// Inspects one image; `progress` is told each stage.
pub fn inspect(path: &Path, progress: &dyn Fn(&str)) -> Result<GuestFacts, InspectError> {
    progress("opening image");
    let img: Arc<dyn DiskImage> = Arc::from(image::open(path)?);
    Ok(inspect_image(img, &path.display().to_string(), progress))
}

/// Inspects an opened image; `name` is reported as the image. Never fails:
/// what cannot be read becomes a note.
pub fn inspect_image(img: Arc<dyn DiskImage>, name: &str, progress: &dyn Fn(&str)) -> GuestFacts {
    let mut facts = GuestFacts {
        image: name.to_string(),
        format: img.format().to_string(),
        virtual_size_bytes: img.size(),
        ..Default::default()
    };
    progress("reading partition table");
    let table = partition::read(&*img);
    facts.partition_table = table.kind.name().to_string();
    facts.notes.extend(table.warnings.iter().cloned());
    let mut parts: Vec<PartitionFacts> = table
        .partitions
        .iter()
        .map(|p| PartitionFacts {
            index: p.index,
            start_bytes: p.start,
            size_bytes: p.size,
            type_id: p.type_id.clone(),
            partuuid: Some(p.partuuid.clone()),
            ..Default::default()
        })
        .collect();
    if parts.is_empty() {
        parts.push(PartitionFacts {
            index: 0,
            size_bytes: img.size(),
            ..Default::default()
        });
    }
    for p in &mut parts {
        progress(&format!("probing partition {}", p.index));
        let pr = fs::probe(&*img, p.start_bytes, p.size_bytes);
        p.filesystem = pr.fs.map(str::to_string);
        p.uuid = pr.uuid;
        p.label = pr.label;
    }
    if table.kind == partition::TableKind::None && parts[0].filesystem.is_none() {
        parts.clear();
        facts
            .notes
            .push("no partition table and no known filesystem on the whole disk".into());
    }
    let mut kernel_roots = vec![];
    for p in parts
        .iter()
        .filter(|p| p.filesystem.as_deref().is_some_and(|f| f.starts_with("ext")))
    {
        progress(&format!("reading ext filesystem on partition {}", p.index));
        let reader = fs::PartReader::new(img.clone(), p.start_bytes, p.size_bytes);
        let ext = match ext4_view::Ext4::load(Box::new(reader)) {
            Ok(e) => Ext(e),
            Err(e) => {
                facts.notes.push(format!("partition {}: ext filesystem unreadable: {e}", p.index));
                continue;
            }
        };
        for g in ["/boot/grub/grub.cfg", "/grub/grub.cfg", "/boot/grub2/grub.cfg", "/grub2/grub.cfg"] {
            if let Some(t) = ext.read(g) {
                kernel_roots.extend(fstab::grub_roots(&t));
            }
        }
        if facts.root_partition.is_some() || !(ext.exists("/etc/fstab") || ext.exists("/etc/os-release")) {
            continue;
        }
        facts.root_partition = Some(p.index);
        facts.os = Some("linux".into());
        facts.os_release = ext
            .read("/etc/os-release")
            .or_else(|| ext.read("/usr/lib/os-release"))
            .and_then(|t| fstab::os_pretty_name(&t));
        facts.hostname = ext.read("/etc/hostname").and_then(|t| fstab::parse_hostname(&t));
        facts.fstab = ext.read("/etc/fstab").map(|t| fstab::parse_fstab(&t)).unwrap_or_default();
        progress("reading network configuration");
        facts.network = read_network(&ext);
        if let Some(t) = ext.read("/etc/default/grub") {
            kernel_roots.extend(fstab::grub_roots(&t));
        }
    }
    let mut windows_risks = vec![];
    if facts.os.is_none() {
        windows_risks = read_windows(&img, &parts, &mut facts, progress);
    }
    if facts.os.is_none() && !parts.is_empty() {
        facts.notes.push("no Linux root filesystem (ext2/3/4 with /etc) found".into());
    }
    kernel_roots.dedup();
    let linux_net: Vec<NetConfig> = facts.network.iter().filter(|n| n.source != "windows-registry").cloned().collect();
    facts.risks = risks::assess(&facts.fstab, &kernel_roots, &linux_net);
    facts.risks.extend(windows_risks);
    facts.partitions = parts;
    facts
}

/// Reads the SYSTEM hive from the first NTFS partition that holds one and
/// fills host name and network; returns the Windows risks.
fn read_windows(
    img: &Arc<dyn DiskImage>,
    parts: &[PartitionFacts],
    facts: &mut GuestFacts,
    progress: &dyn Fn(&str),
) -> Vec<proto::facts::Risk> {
    let mut seen_ntfs = None;
    for p in parts.iter().filter(|p| p.filesystem.as_deref() == Some("ntfs")) {
        seen_ntfs.get_or_insert(p.index);
        progress(&format!("reading the Windows registry on partition {}", p.index));
        let mut r = windows::RangeReader::new(img.clone(), p.start_bytes, p.size_bytes);
        // The reader turns I/O errors into zeros; a panic in the NTFS crate
        // on what is left still must not take the inspector down.
        let read = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| windows::read_system_hive(&mut r, p.size_bytes)))
            .unwrap_or_else(|_| Err("the NTFS reader failed on this volume".into()));
        if r.failed() {
            facts.notes.push(format!(
                "partition {}: parts of the NTFS volume lie past its end or cannot be read",
                p.index
            ));
        }
        let hive = match read {
            Ok(Some(h)) => h,
            Ok(None) => continue,
            Err(e) => {
                facts.notes.push(format!("partition {}: {e}", p.index));
                continue;
            }
        };
        facts.os = Some("windows".into());
        facts.root_partition = Some(p.index);
        let parsed = std::panic::catch_unwind(|| windows::parse_system(&hive))
            .unwrap_or_else(|_| Err("the registry reader failed on this hive".into()));
        match parsed {
            Ok(w) => {
                facts.hostname = w.hostname.clone();
                facts.network = w.network.clone();
                return windows::risks(&w);
            }
            Err(e) => facts.notes.push(format!(
                "partition {}: \\Windows\\System32\\config\\SYSTEM unreadable ({e}); check host name and NIC bindings by hand",
                p.index
            )),
        }
        return vec![];
    }
    if let Some(i) = seen_ntfs {
        facts.os = Some("windows".into());
        facts.root_partition = Some(i);
        facts.notes.push(format!(
            "partition {i}: NTFS without \\Windows\\System32\\config\\SYSTEM; check host name and NIC bindings by hand"
        ));
    }
    vec![]
}

/// Inspects several images in turn with a progress bar on stderr (hidden
/// when stderr is not a terminal).
pub fn inspect_all(images: &[PathBuf]) -> Result<Vec<GuestFacts>, InspectError> {
    let bar = indicatif::ProgressBar::new(images.len() as u64);
    if let Ok(style) = indicatif::ProgressStyle::with_template("{spinner} [{elapsed_precise}] {pos}/{len} {wide_msg}") {
        bar.set_style(style);
    }
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    let mut out = vec![];
    for p in images {
        let name = p.display().to_string();
        let f = inspect(p, &|stage| bar.set_message(format!("{name}: {stage}")));
        bar.inc(1);
        out.push(f.inspect_err(|_| bar.finish_and_clear())?);
    }
    bar.finish_and_clear();
    Ok(out)
}

/// Human-readable summary of one inspection.
pub fn to_table(f: &GuestFacts) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let gib = f.virtual_size_bytes as f64 / (1u64 << 30) as f64;
    let _ = writeln!(s, "{}: {} {:.2} GiB, partition table {}", f.image, f.format, gib, f.partition_table);
    let _ = writeln!(s, "  {:<4} {:>12} {:>12} {:<8} {:<38} LABEL", "PART", "START", "SIZE", "FS", "UUID");
    for p in &f.partitions {
        let _ = writeln!(
            s,
            "  {:<4} {:>12} {:>12} {:<8} {:<38} {}",
            p.index,
            p.start_bytes,
            p.size_bytes,
            p.filesystem.as_deref().unwrap_or("-"),
            p.uuid.as_deref().unwrap_or("-"),
            p.label.as_deref().unwrap_or("")
        );
    }
    let _ = writeln!(
        s,
        "  os: {}  release: {}  hostname: {}",
        f.os.as_deref().unwrap_or("unknown"),
        f.os_release.as_deref().unwrap_or("-"),
        f.hostname.as_deref().unwrap_or("-")
    );
    for e in &f.fstab {
        let _ = writeln!(
            s,
            "  fstab: {:<40} {:<16} {:<8} by {:?}",
            e.spec, e.mount_point, e.fs_type, e.refers_by
        );
    }
    for n in &f.network {
        let _ = writeln!(
            s,
            "  net:   {:<16} {:<10} mac {:<17} bound {:?} {} {} ({})",
            n.source,
            n.interface.as_deref().unwrap_or("-"),
            n.mac.map(|m| m.to_string()).unwrap_or_else(|| "-".into()),
            n.binding,
            n.addresses.join(","),
            if n.dhcp { "dhcp" } else { "" },
            n.file
        );
    }
    for r in &f.risks {
        let _ = writeln!(s, "  RISK  {}: {}", r.code, r.message);
    }
    for n in &f.notes {
        let _ = writeln!(s, "  note: {n}");
    }
    s
}
