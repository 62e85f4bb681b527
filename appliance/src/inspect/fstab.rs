//! `/etc/fstab`, `/etc/hostname` and the kernel command line in GRUB's
//! configuration: what names a disk, and how.

use proto::facts::{DeviceRef, FstabEntry};

/// Classifies how an fstab first field names its device.
pub fn refers_by(spec: &str, fs_type: &str) -> DeviceRef {
    let s = spec.trim_matches('"');
    for (p, r) in [
        ("UUID=", DeviceRef::Uuid),
        ("LABEL=", DeviceRef::Label),
        ("PARTUUID=", DeviceRef::Partuuid),
        ("PARTLABEL=", DeviceRef::Partlabel),
    ] {
        if s.starts_with(p) {
            return r;
        }
    }
    if let Some(dev) = s.strip_prefix("/dev/") {
        if device_bus(dev).is_some() {
            return DeviceRef::Device;
        }
        return DeviceRef::Stable;
    }
    let _ = fs_type;
    DeviceRef::None
}

/// The kind of bus a kernel device name implies (`sda1` → SCSI/SATA).
pub fn device_bus(dev: &str) -> Option<&'static str> {
    let dev = dev.trim_start_matches("/dev/");
    let starts = |p: &str| dev.starts_with(p) && dev[p.len()..].chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
    if starts("sd") {
        Some("SCSI/SATA/SAS (sd*)")
    } else if starts("hd") {
        Some("IDE (hd*)")
    } else if starts("vd") {
        Some("virtio-blk (vd*)")
    } else if starts("xvd") {
        Some("Xen (xvd*)")
    } else if starts("nvme") {
        Some("NVMe (nvme*)")
    } else if starts("cciss/") || starts("ida/") {
        Some("HP Smart Array (cciss)")
    } else if starts("sr") {
        Some("SCSI/SATA CD-ROM (sr*)")
    } else if starts("mmcblk") {
        Some("MMC (mmcblk*)")
    } else {
        None
    }
}

/// Parses fstab text; malformed lines (fewer than 2 fields) are skipped.
pub fn parse_fstab(text: &str) -> Vec<FstabEntry> {
    text.lines()
        .filter_map(|l| {
            let l = l.trim();
            if l.is_empty() || l.starts_with('#') {
                return None;
            }
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 2 {
                return None;
            }
            let fs_type = f.get(2).copied().unwrap_or("auto");
            Some(FstabEntry {
                spec: f[0].to_string(),
                mount_point: f[1].replace("\\040", " "),
                fs_type: fs_type.to_string(),
                options: f.get(3).copied().unwrap_or("defaults").to_string(),
                refers_by: refers_by(f[0], fs_type),
            })
        })
        .collect()
}

/// First meaningful line of `/etc/hostname`.
pub fn parse_hostname(text: &str) -> Option<String> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .find(|l| !l.is_empty())
        .map(str::to_string)
}

/// `root=` values on `linux` lines of a GRUB configuration.
pub fn grub_roots(text: &str) -> Vec<String> {
    let mut out: Vec<String> = vec![];
    for l in text.lines() {
        let t = l.trim_start();
        if !(t.starts_with("linux") || t.starts_with("kernel") || t.starts_with("GRUB_CMDLINE_LINUX")) {
            continue;
        }
        for w in t.split(|c: char| c.is_whitespace() || c == '"') {
            if let Some(r) = w.strip_prefix("root=") {
                if !out.iter().any(|o| o == r) {
                    out.push(r.to_string());
                }
            }
        }
    }
    out
}

/// `PRETTY_NAME` of an os-release file.
pub fn os_pretty_name(text: &str) -> Option<String> {
    text.lines()
        .find_map(|l| l.trim().strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches(['"', '\'']).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fstab_kinds() {
        let e = parse_fstab(
            "# c\n/dev/sda1 / ext4 defaults 0 1\nUUID=\"abc\" /boot ext4 defaults 0 2\nLABEL=data /srv xfs defaults\n\
             PARTUUID=1234-01 /x ext4 defaults\n/dev/mapper/vg-lv /y ext4 defaults\n/dev/disk/by-id/ata-X /z ext4 defaults\n\
             proc /proc proc defaults 0 0\n/dev/vdb none swap sw 0 0\n/dev/nvme0n1p2 /n ext4 d\n/dev/sr0 /media/cdrom iso9660 noauto\n",
        );
        let k: Vec<DeviceRef> = e.iter().map(|x| x.refers_by).collect();
        use DeviceRef::*;
        assert_eq!(k, vec![Device, Uuid, Label, Partuuid, Stable, Stable, None, Device, Device, Device]);
        assert_eq!(device_bus("/dev/md0"), Option::None);
        assert_eq!(refers_by("/dev/md0", "ext4"), Stable);
    }

    #[test]
    fn grub_and_hostname() {
        assert_eq!(
            grub_roots("menuentry x {\n  linux /vmlinuz root=/dev/sda1 ro quiet\n}\n  linux /v root=UUID=ab ro\n"),
            vec!["/dev/sda1", "UUID=ab"]
        );
        assert_eq!(parse_hostname("\n# x\nweb1\n").as_deref(), Some("web1"));
    }
}
