//! What the disk inspector learns about a guest from its disk image, without
//! booting it: partitions, filesystems, hostname, fstab, network
//! configuration, and the risks a move would hit because something inside the
//! guest names a device or a MAC address.

use serde::{Deserialize, Serialize};

use crate::MacAddr;

/// Everything read from one disk image.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestFacts {
    /// The image file as given.
    pub image: String,
    /// Container format: `raw`, `qcow2`, `vmdk-sparse` or `vmdk-flat`.
    pub format: String,
    /// Size of the virtual disk in bytes.
    pub virtual_size_bytes: u64,
    /// `mbr`, `gpt`, or `none` (a filesystem on the whole disk, or nothing known).
    pub partition_table: String,
    /// Partitions in table order (one pseudo-partition `0` for a whole-disk filesystem).
    pub partitions: Vec<PartitionFacts>,
    /// `linux`, `windows`, or null when no system was recognised.
    pub os: Option<String>,
    /// `PRETTY_NAME` of `/etc/os-release`, when present.
    pub os_release: Option<String>,
    /// Index of the partition the system was read from.
    pub root_partition: Option<u32>,
    /// Host name (`/etc/hostname`).
    pub hostname: Option<String>,
    /// `/etc/fstab` entries in file order.
    pub fstab: Vec<FstabEntry>,
    /// Network configuration found, one entry per interface stanza/file section.
    pub network: Vec<NetConfig>,
    /// What a move would break unless the target keeps something the same.
    pub risks: Vec<Risk>,
    /// Things the inspector could not read or chose to skip, for the admin.
    pub notes: Vec<String>,
}

/// One partition (or the whole disk when it holds a filesystem directly).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionFacts {
    /// 1-based number as Linux would name it (`sda1` is 1); 0 for the whole disk.
    pub index: u32,
    /// First byte on the virtual disk.
    pub start_bytes: u64,
    /// Length in bytes.
    pub size_bytes: u64,
    /// MBR type as `0x83`, or GPT type GUID (lower-case).
    pub type_id: String,
    /// GPT partition GUID (`PARTUUID`), or `<disk signature>-<nn>` for MBR as Linux forms it.
    pub partuuid: Option<String>,
    /// Filesystem found: `ext2`, `ext3`, `ext4`, `ntfs`, `vfat`, `xfs`, `swap`, `lvm2`, or null.
    pub filesystem: Option<String>,
    /// Filesystem UUID, when the filesystem has one.
    pub uuid: Option<String>,
    /// Filesystem label, when set.
    pub label: Option<String>,
}

/// How an fstab entry names its device.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceRef {
    /// A kernel device path such as `/dev/sda1` or `/dev/vdb`: depends on bus and order.
    Device,
    /// `UUID=`: survives any bus change.
    Uuid,
    /// `LABEL=`.
    Label,
    /// `PARTUUID=`.
    Partuuid,
    /// `PARTLABEL=`.
    Partlabel,
    /// `/dev/disk/by-*`, `/dev/mapper/*` and other stable links.
    Stable,
    /// Not a block device (`proc`, `tmpfs`, network shares…).
    None,
}

/// One line of `/etc/fstab`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FstabEntry {
    /// First field as written.
    pub spec: String,
    /// Mount point.
    pub mount_point: String,
    /// Filesystem type.
    pub fs_type: String,
    /// Mount options.
    pub options: String,
    /// How `spec` names the device.
    pub refers_by: DeviceRef,
}

/// What a network configuration is bound to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Binding {
    /// Matched by MAC address: the target NIC must keep the MAC.
    Mac,
    /// Matched by kernel interface name (`eth0`, `ens3`): depends on NIC model, slot and order.
    InterfaceName,
    /// Matched by driver or path, or applies to any interface.
    Other,
}

/// One piece of network configuration in the guest.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetConfig {
    /// `ifupdown`, `netplan`, `networkmanager`, `systemd-networkd`, `systemd-link`,
    /// `udev`, `isthmus-netconf` or `windows-registry`.
    pub source: String,
    /// File (or registry path) it came from.
    pub file: String,
    /// Interface name it configures or matches, if any.
    pub interface: Option<String>,
    /// MAC address it matches or sets, if any.
    pub mac: Option<MacAddr>,
    /// What it is bound to.
    pub binding: Binding,
    /// Static addresses (CIDR form when the prefix is known).
    pub addresses: Vec<String>,
    /// Uses DHCP.
    pub dhcp: bool,
}

/// Something a move would break.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Risk {
    /// Stable code for scripts: `fstab-device-path`, `net-bound-to-mac`,
    /// `net-bound-to-name`, `udev-persistent-net`, `kernel-cmdline-device`.
    pub code: String,
    /// What to keep, in words.
    pub message: String,
}
