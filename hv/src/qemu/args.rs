//! QEMU command-line arguments as typed values, rendered in one place.
//!
//! Nothing else in the crate writes a QEMU option string: callers build
//! [`Arg`] values and [`render`] turns them into `argv` (without the binary).
//! Option values go through QEMU's option syntax here, so a `,` inside a
//! value is doubled (QEMU docs, "Options with comma-separated suboptions").

use std::path::{Path, PathBuf};

use proto::api::AccelKind;
use proto::profile::DiskMedia;
use proto::{MacAddr, Machine, NicModel, PciSlot};

/// One QEMU option (or option + value).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Arg {
    /// `-name <guest>,process=isthmus-<guest>`.
    Name(String),
    /// `-machine pc|q35`.
    Machine(Machine),
    /// `-accel kvm|tcg`.
    Accel(AccelKind),
    /// `-cpu host` (only meaningful with KVM).
    CpuHost,
    /// `-smp <n>`.
    Smp(u32),
    /// `-m <n>M`.
    MemoryMib(u32),
    /// `-nodefaults`: no implicit NIC, CD-ROM, floppy, serial or VGA, so the
    /// guest sees exactly the profile's devices.
    NoDefaults,
    /// `-drive ...`.
    Drive(Drive),
    /// `-device ...`.
    Device(Device),
    /// `-netdev tap,...`.
    NetdevTap(NetdevTap),
    /// `-smbios type=1,...`.
    SmbiosType1(SmbiosType1),
    /// `-uuid <uuid>`.
    Uuid(String),
    /// `-display none`.
    DisplayNone,
    /// `-nographic` (serial on stdio; used by the accelerator probe).
    NoGraphic,
    /// `-no-reboot`: a guest reboot ends QEMU (probe: a kernel panic ends it).
    NoReboot,
    /// `-serial file:<path>`.
    SerialFile(PathBuf),
    /// `-chardev socket,id=serial0,path=<socket>,server=on,wait=off,logfile=<log>,logappend=off`
    /// `-serial chardev:serial0`: the guest's ttyS0 as a unix stream socket
    /// (a console client connects; output is also kept in the log file,
    /// truncated at each start like `-serial file:` was, so a wait for a
    /// serial line never matches a previous boot's).
    SerialSocket {
        /// Listening unix socket.
        socket: PathBuf,
        /// Log of everything the guest wrote.
        log: PathBuf,
    },
    /// `-vnc unix:<path>`: the VGA console as VNC on a unix socket, never on
    /// a network port.
    VncUnix(PathBuf),
    /// `-preconfig`: QEMU waits for QMP `x-exit-preconfig` before it creates
    /// devices, so encrypted disks can be opened over QMP first.
    Preconfig,
    /// `-qmp unix:<path>,server=on,wait=off`.
    QmpUnix(PathBuf),
    /// `-pidfile <path>`.
    Pidfile(PathBuf),
    /// `-daemonize`.
    Daemonize,
    /// `-sandbox on,obsolete=deny,resourcecontrol=deny`: QEMU's seccomp
    /// filter, also refusing obsolete system calls and CPU affinity /
    /// scheduler changes. `spawn=deny` and `elevateprivileges=deny` are left
    /// out: QEMU installs the filter before `-daemonize` forks and calls
    /// `setsid`, and with either QEMU 10 exits 1 at start (checked).
    Sandbox,
    /// `-run-with user=<uid>:<gid>`: QEMU drops to these ids once it has
    /// opened its TAPs, sockets and command-line disks.
    RunWith {
        /// User id.
        uid: u32,
        /// Group id.
        gid: u32,
    },
    /// `-device pvpanic-pci` + `-action panic=pause`: a guest kernel panic
    /// reaches QMP as `GUEST_PANICKED` and the vCPUs stop (no reboot loop).
    PvpanicPci,
    /// `-device pvpanic` (ISA, I/O port 0x505) + `-action panic=pause`.
    PvpanicIsa,
    /// A guest-agent channel: `-chardev socket` at the given path, a
    /// `virtio-serial-pci` controller and a `virtserialport` named
    /// `org.qemu.guest_agent.0` (what `qemu-ga` in the guest opens).
    GuestAgent(PathBuf),
    /// `-S`: vCPUs stay stopped until QMP `cont` (restore before run).
    StartStopped,
    /// `-incoming defer`: wait for QMP `migrate-incoming` (resume).
    IncomingDefer,
    /// `-machine smm=on -global driver=cfi.pflash01,property=secure,value=on`:
    /// what OVMF's Secure Boot build needs, so the guest OS cannot write the
    /// variable store (and its keys) behind the firmware's back.
    SecureBootSmm,
    /// `-object iothread,id=<id>`: an I/O thread for virtio disk
    /// controllers, so block I/O (and LUKS decryption/encryption) runs
    /// outside QEMU's main loop and the big lock the vCPUs need.
    IoThread(String),
    /// `-kernel <path>`.
    Kernel(PathBuf),
    /// `-initrd <path>`.
    Initrd(PathBuf),
    /// `-append <cmdline>`.
    Append(String),
}

/// Disk image format, as QEMU's `format=` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageFormat {
    /// qcow2 (magic `QFI\xfb`).
    Qcow2,
    /// Anything else: a raw image.
    Raw,
}

impl ImageFormat {
    fn as_str(self) -> &'static str {
        match self {
            ImageFormat::Qcow2 => "qcow2",
            ImageFormat::Raw => "raw",
        }
    }
}

/// Host page-cache use for a disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CacheMode {
    /// `cache=none`: O_DIRECT, no double caching (what production wants).
    None,
    /// `cache=writeback`: for file systems without O_DIRECT (tmpfs).
    Writeback,
}

/// A `-drive`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Drive {
    /// `-drive if=none,id=..,file=..,format=..,cache=..,aio=threads`: a
    /// backend that a `-device` attaches by id.
    Disk {
        /// Node id (`disk0`).
        id: String,
        /// Image file.
        file: PathBuf,
        /// Detected format.
        format: ImageFormat,
        /// Cache mode.
        cache: CacheMode,
        /// `readonly=on` (CD-ROM media).
        readonly: bool,
    },
    /// `-drive if=pflash,unit=..,format=raw,file=..[,readonly=on]`: UEFI
    /// code (read-only) and variable store.
    Pflash {
        /// 0 = code, 1 = variables.
        unit: u8,
        /// Firmware file.
        file: PathBuf,
        /// Read-only (the code image).
        readonly: bool,
    },
}

/// The PCI root bus a device sits on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RootBus {
    /// `pci.0` (i440FX `pc`).
    Pci0,
    /// `pcie.0` (`q35`).
    Pcie0,
}

impl RootBus {
    /// The root bus of a machine type.
    pub fn of(machine: Machine) -> RootBus {
        match machine {
            Machine::Pc => RootBus::Pci0,
            Machine::Q35 => RootBus::Pcie0,
        }
    }
    fn as_str(self) -> &'static str {
        match self {
            RootBus::Pci0 => "pci.0",
            RootBus::Pcie0 => "pcie.0",
        }
    }
}

/// A `-device`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Device {
    /// `ahci,id=..`: an AHCI SATA controller (ports `<id>.0` ..).
    Ahci {
        /// Controller id.
        id: String,
    },
    /// A SCSI host adapter `<model>,id=..` (bus `<id>.0`).
    ScsiHba {
        /// Which adapter.
        model: ScsiModel,
        /// Controller id.
        id: String,
        /// I/O thread (virtio-scsi only).
        iothread: Option<String>,
    },
    /// `nvme,id=..,serial=..`: an NVMe controller whose namespaces are
    /// [`Device::NvmeNs`].
    Nvme {
        /// Controller id.
        id: String,
        /// Controller serial number (QEMU requires one).
        serial: String,
    },
    /// `nvme-ns,drive=..,bus=..,nsid=..`: one namespace (`/dev/nvme0n<nsid>`).
    NvmeNs {
        /// Drive id.
        drive: String,
        /// Controller id.
        bus: String,
        /// Namespace id, from 1.
        nsid: u32,
        /// Boot order.
        bootindex: Option<u32>,
    },
    /// `ide-hd|ide-cd,drive=..,bus=..[,unit=..]`: a drive on an IDE bus or AHCI port.
    IdeHd {
        /// Drive id.
        drive: String,
        /// Bus (`ide.0`, `ahci0.3`).
        bus: String,
        /// Unit on the bus (IDE master 0 / slave 1); AHCI ports take none.
        unit: Option<u8>,
        /// Boot order.
        bootindex: Option<u32>,
        /// Hard disk (`ide-hd`) or CD-ROM (`ide-cd`).
        media: DiskMedia,
        /// `wwn=`: the World Wide Name the drive reports in its IDENTIFY
        /// data (the source's, from the profile).
        wwn: Option<u64>,
        /// `serial=`: the serial number in its IDENTIFY data (at most 20
        /// bytes; the profile checked it).
        serial: Option<String>,
    },
    /// `scsi-hd|scsi-cd,drive=..,bus=..,scsi-id=..,lun=0`.
    ScsiHd {
        /// Drive id.
        drive: String,
        /// SCSI bus (`scsi0.0`).
        bus: String,
        /// Target id.
        scsi_id: u8,
        /// Boot order.
        bootindex: Option<u32>,
        /// Hard disk (`scsi-hd`) or CD-ROM (`scsi-cd`).
        media: DiskMedia,
        /// `wwn=`: the disk's World Wide Name (device identification VPD
        /// page), and its SAS address on a SAS HBA: QEMU's `mptsas1068`
        /// reports each target's SAS address from it (default 0), and Linux'
        /// `mptsas` skips attached devices whose SAS address is 0.
        wwn: Option<u64>,
        /// `serial=`: the unit serial number (VPD page 0x80), up to 36
        /// bytes. QEMU also uses it as the device identification (VPD page
        /// 0x83, what Linux' `scsi-0QEMU_QEMU_HARDDISK_<id>` name is made
        /// of) when it has at most 20 and refuses a longer one unless
        /// `device_id` is given: a longer one is given as `device_id` too.
        serial: Option<String>,
    },
    /// `virtio-blk-pci,drive=..`.
    VirtioBlk {
        /// Drive id.
        drive: String,
        /// Boot order.
        bootindex: Option<u32>,
        /// I/O thread.
        iothread: Option<String>,
        /// `serial=`: what the guest reads as the disk's id
        /// (`/sys/block/vda/serial`, `/dev/disk/by-id/virtio-<serial>`).
        serial: Option<String>,
    },
    /// A NIC: `<model>,netdev=..,mac=..,bus=..[,addr=0xSS.F][,multifunction=on]`.
    Nic(Nic),
    /// `VGA` (std VGA), placed after the devices with fixed PCI addresses.
    StdVga {
        /// Root bus.
        bus: RootBus,
    },
}

/// SCSI host adapters QEMU emulates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScsiModel {
    /// LSI Logic 53c895a (VMware `lsilogic`).
    Lsi53c895a,
    /// LSI SAS 1068 (VMware `lsisas1068`).
    Mptsas1068,
    /// LSI MegaRAID SAS 2108.
    MegasasGen2,
    /// VMware paravirtual SCSI.
    Pvscsi,
    /// virtio-scsi.
    VirtioScsi,
}

impl ScsiModel {
    /// QEMU's device name.
    pub fn driver(self) -> &'static str {
        match self {
            ScsiModel::Lsi53c895a => "lsi53c895a",
            ScsiModel::Mptsas1068 => "mptsas1068",
            ScsiModel::MegasasGen2 => "megasas-gen2",
            ScsiModel::Pvscsi => "pvscsi",
            ScsiModel::VirtioScsi => "virtio-scsi-pci",
        }
    }
}

/// A NIC device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Nic {
    /// Emulated model.
    pub model: NicModel,
    /// Netdev id it is wired to.
    pub netdev: String,
    /// Guest-visible MAC.
    pub mac: MacAddr,
    /// Root bus.
    pub bus: RootBus,
    /// Fixed PCI address, when the profile has one.
    pub addr: Option<PciSlot>,
    /// Function 0 of a slot whose other functions are used too.
    pub multifunction: bool,
}

/// QEMU's device name for a NIC model.
pub fn nic_driver(model: NicModel) -> &'static str {
    match model {
        NicModel::E1000 => "e1000",
        NicModel::E1000e => "e1000e",
        NicModel::Rtl8139 => "rtl8139",
        NicModel::Vmxnet3 => "vmxnet3",
        NicModel::Pcnet => "pcnet",
        NicModel::VirtioNet => "virtio-net-pci",
    }
}

/// `-netdev tap,id=..,ifname=..,script=no,downscript=no`: an existing TAP.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetdevTap {
    /// Netdev id (`n0`).
    pub id: String,
    /// TAP device name.
    pub ifname: String,
}

/// SMBIOS type 1 (system information) fields; only set ones are rendered.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SmbiosType1 {
    /// Manufacturer.
    pub manufacturer: Option<String>,
    /// Product name.
    pub product: Option<String>,
    /// Serial number.
    pub serial: Option<String>,
    /// UUID.
    pub uuid: Option<String>,
}

/// Doubles `,` so QEMU's option parser reads it as a literal comma.
pub fn escape(value: &str) -> String {
    value.replace(',', ",,")
}

fn path_value(p: &Path) -> String {
    escape(&p.to_string_lossy())
}

/// Builds `key=value,...` with escaped values.
struct Opts(Vec<String>);

impl Opts {
    fn new(head: &str) -> Opts {
        Opts(vec![head.to_string()])
    }
    fn kv(mut self, key: &str, value: impl AsRef<str>) -> Opts {
        self.0.push(format!("{key}={}", escape(value.as_ref())));
        self
    }
    fn kv_opt(self, key: &str, value: Option<impl AsRef<str>>) -> Opts {
        match value {
            Some(v) => self.kv(key, v),
            None => self,
        }
    }
    fn done(self) -> String {
        self.0.join(",")
    }
}

fn bootindex(o: Opts, idx: Option<u32>) -> Opts {
    o.kv_opt("bootindex", idx.map(|i| i.to_string()))
}

/// The longest `scsi-hd` serial QEMU takes as the disk's default device
/// identification; a longer one needs an explicit `device_id` ("The serial
/// number can't be longer than 20 characters when it is also used as the
/// default for device_id", QEMU 10.0), which hv sets to the same serial.
const SCSI_SERIAL_DEVID_BYTES: usize = 20;

/// QEMU's `wwn=` value (hex, as `info qtree` shows it).
fn wwn_opt(wwn: Option<u64>) -> Option<String> {
    wwn.map(|w| format!("0x{w:016x}"))
}

impl Device {
    fn render(&self) -> String {
        match self {
            Device::Ahci { id } => Opts::new("ahci").kv("id", id).done(),
            Device::ScsiHba { model, id, iothread } => Opts::new(model.driver())
                .kv("id", id)
                .kv_opt("iothread", iothread.as_deref())
                .done(),
            Device::Nvme { id, serial } => Opts::new("nvme").kv("id", id).kv("serial", serial).done(),
            Device::NvmeNs {
                drive,
                bus,
                nsid,
                bootindex: b,
            } => {
                let o = Opts::new("nvme-ns").kv("drive", drive).kv("bus", bus).kv("nsid", nsid.to_string());
                bootindex(o, *b).done()
            }
            Device::IdeHd {
                drive,
                bus,
                unit,
                bootindex: b,
                media,
                wwn,
                serial,
            } => {
                let head = match media {
                    DiskMedia::Disk => "ide-hd",
                    DiskMedia::Cdrom => "ide-cd",
                };
                let o = Opts::new(head)
                    .kv("drive", drive)
                    .kv("bus", bus)
                    .kv_opt("unit", unit.map(|u| u.to_string()))
                    .kv_opt("wwn", wwn_opt(*wwn))
                    .kv_opt("serial", serial.as_deref());
                bootindex(o, *b).done()
            }
            Device::ScsiHd {
                drive,
                bus,
                scsi_id,
                bootindex: b,
                media,
                wwn,
                serial,
            } => {
                let head = match media {
                    DiskMedia::Disk => "scsi-hd",
                    DiskMedia::Cdrom => "scsi-cd",
                };
                let o = Opts::new(head)
                    .kv("drive", drive)
                    .kv("bus", bus)
                    .kv("scsi-id", scsi_id.to_string())
                    .kv("lun", "0")
                    .kv_opt("wwn", wwn_opt(*wwn))
                    .kv_opt("serial", serial.as_deref())
                    .kv_opt("device_id", serial.as_deref().filter(|s| s.len() > SCSI_SERIAL_DEVID_BYTES));
                bootindex(o, *b).done()
            }
            Device::VirtioBlk {
                drive,
                bootindex: b,
                iothread,
                serial,
            } => bootindex(
                Opts::new("virtio-blk-pci")
                    .kv("drive", drive)
                    .kv_opt("iothread", iothread.as_deref())
                    .kv_opt("serial", serial.as_deref()),
                *b,
            )
            .done(),
            Device::Nic(n) => {
                let o = Opts::new(nic_driver(n.model))
                    .kv("netdev", &n.netdev)
                    .kv("mac", n.mac.to_string())
                    .kv("bus", n.bus.as_str())
                    // QEMU docs: addr=<slot>[.<function>], hex.
                    .kv_opt("addr", n.addr.map(|a| format!("0x{:02x}.{:x}", a.slot, a.function)));
                let o = if n.multifunction { o.kv("multifunction", "on") } else { o };
                o.done()
            }
            Device::StdVga { bus } => Opts::new("VGA").kv("bus", bus.as_str()).done(),
        }
    }
}

impl Drive {
    fn render(&self) -> String {
        match self {
            Drive::Disk {
                id,
                file,
                format,
                cache,
                readonly,
            } => {
                let o = Opts::new("if=none")
                    .kv("id", id)
                    .kv("file", file.to_string_lossy())
                    .kv("format", format.as_str())
                    .kv(
                        "cache",
                        match cache {
                            CacheMode::None => "none",
                            CacheMode::Writeback => "writeback",
                        },
                    )
                    .kv("aio", "threads");
                if *readonly { o.kv("readonly", "on") } else { o }.done()
            }
            Drive::Pflash { unit, file, readonly } => {
                let o = Opts::new("if=pflash")
                    .kv("unit", unit.to_string())
                    .kv("format", "raw")
                    .kv("file", file.to_string_lossy());
                if *readonly { o.kv("readonly", "on") } else { o }.done()
            }
        }
    }
}

impl SmbiosType1 {
    /// True when no field is set (then no `-smbios` is rendered).
    pub fn is_empty(&self) -> bool {
        self.manufacturer.is_none() && self.product.is_none() && self.serial.is_none() && self.uuid.is_none()
    }
    fn render(&self) -> String {
        Opts::new("type=1")
            .kv_opt("manufacturer", self.manufacturer.as_deref())
            .kv_opt("product", self.product.as_deref())
            .kv_opt("serial", self.serial.as_deref())
            .kv_opt("uuid", self.uuid.as_deref())
            .done()
    }
}

impl Arg {
    fn render_into(&self, out: &mut Vec<String>) {
        let mut push = |opt: &str, val: Option<String>| {
            out.push(opt.to_string());
            out.extend(val);
        };
        match self {
            Arg::Name(n) => push("-name", Some(format!("{},process=isthmus-{}", escape(n), escape(n)))),
            Arg::Machine(m) => push(
                "-machine",
                Some(
                    match m {
                        Machine::Pc => "pc",
                        Machine::Q35 => "q35",
                    }
                    .into(),
                ),
            ),
            Arg::Accel(a) => push("-accel", Some(a.to_string())),
            Arg::CpuHost => push("-cpu", Some("host".into())),
            Arg::Smp(n) => push("-smp", Some(n.to_string())),
            Arg::MemoryMib(m) => push("-m", Some(format!("{m}M"))),
            Arg::NoDefaults => push("-nodefaults", None),
            Arg::Drive(d) => push("-drive", Some(d.render())),
            Arg::Device(d) => push("-device", Some(d.render())),
            Arg::NetdevTap(n) => push(
                "-netdev",
                Some(
                    Opts::new("tap")
                        .kv("id", &n.id)
                        .kv("ifname", &n.ifname)
                        .kv("script", "no")
                        .kv("downscript", "no")
                        .done(),
                ),
            ),
            Arg::SmbiosType1(s) => push("-smbios", Some(s.render())),
            Arg::Uuid(u) => push("-uuid", Some(u.clone())),
            Arg::DisplayNone => push("-display", Some("none".into())),
            Arg::NoGraphic => push("-nographic", None),
            Arg::NoReboot => push("-no-reboot", None),
            // The `file:` chardev shorthand takes the rest of the string as the
            // path verbatim (chardev/char.c, qemu_chr_parse_compat): no escaping.
            Arg::SerialFile(p) => push("-serial", Some(format!("file:{}", p.to_string_lossy()))),
            Arg::SerialSocket { socket, log } => {
                push(
                    "-chardev",
                    Some(
                        Opts::new("socket")
                            .kv("id", "serial0")
                            .kv("path", socket.to_string_lossy())
                            .kv("server", "on")
                            .kv("wait", "off")
                            .kv("logfile", log.to_string_lossy())
                            .kv("logappend", "off")
                            .done(),
                    ),
                );
                push("-serial", Some("chardev:serial0".into()));
            }
            Arg::VncUnix(p) => push("-vnc", Some(format!("unix:{}", path_value(p)))),
            Arg::Preconfig => push("-preconfig", None),
            // `unix:` parses suboptions after the path, so the path is escaped.
            Arg::QmpUnix(p) => push("-qmp", Some(format!("unix:{},server=on,wait=off", path_value(p)))),
            Arg::Pidfile(p) => push("-pidfile", Some(p.to_string_lossy().into_owned())),
            Arg::Daemonize => push("-daemonize", None),
            Arg::Sandbox => push("-sandbox", Some("on,obsolete=deny,resourcecontrol=deny".into())),
            Arg::RunWith { uid, gid } => push("-run-with", Some(format!("user={uid}:{gid}"))),
            Arg::PvpanicPci | Arg::PvpanicIsa => {
                push(
                    "-device",
                    Some(
                        if matches!(self, Arg::PvpanicPci) {
                            "pvpanic-pci"
                        } else {
                            "pvpanic"
                        }
                        .into(),
                    ),
                );
                push("-action", Some("panic=pause".into()));
            }
            Arg::GuestAgent(p) => {
                push(
                    "-chardev",
                    Some(
                        Opts::new("socket")
                            .kv("id", "qga0")
                            .kv("path", p.to_string_lossy())
                            .kv("server", "on")
                            .kv("wait", "off")
                            .done(),
                    ),
                );
                push("-device", Some("virtio-serial-pci,id=qgaserial0".into()));
                push(
                    "-device",
                    Some("virtserialport,bus=qgaserial0.0,chardev=qga0,name=org.qemu.guest_agent.0".into()),
                );
            }
            Arg::StartStopped => push("-S", None),
            Arg::IncomingDefer => push("-incoming", Some("defer".into())),
            Arg::SecureBootSmm => {
                push("-machine", Some("smm=on".into()));
                push("-global", Some("driver=cfi.pflash01,property=secure,value=on".into()));
            }
            Arg::IoThread(id) => push("-object", Some(Opts::new("iothread").kv("id", id).done())),
            Arg::Kernel(p) => push("-kernel", Some(p.to_string_lossy().into_owned())),
            Arg::Initrd(p) => push("-initrd", Some(p.to_string_lossy().into_owned())),
            Arg::Append(s) => push("-append", Some(s.clone())),
        }
    }
}

/// Renders typed arguments into QEMU's `argv` (without the binary).
pub fn render(args: &[Arg]) -> Vec<String> {
    let mut out = Vec::with_capacity(args.len() * 2);
    for a in args {
        a.render_into(&mut out);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commas_are_doubled_in_values() {
        let s = SmbiosType1 {
            manufacturer: Some("ACME, Inc.".into()),
            serial: Some("A,B".into()),
            ..Default::default()
        };
        assert_eq!(
            render(&[Arg::SmbiosType1(s)]),
            ["-smbios", "type=1,manufacturer=ACME,, Inc.,serial=A,,B"]
        );
        let d = Drive::Disk {
            id: "disk0".into(),
            file: "/srv/a,b.qcow2".into(),
            format: ImageFormat::Qcow2,
            cache: CacheMode::None,
            readonly: false,
        };
        assert_eq!(
            render(&[Arg::Drive(d)]),
            [
                "-drive",
                "if=none,id=disk0,file=/srv/a,,b.qcow2,format=qcow2,cache=none,aio=threads"
            ]
        );
        assert_eq!(
            render(&[Arg::QmpUnix("/run/x,y/qmp.sock".into())]),
            ["-qmp", "unix:/run/x,,y/qmp.sock,server=on,wait=off"]
        );
    }

    #[test]
    fn nic_renders_slot_in_hex() {
        let n = Nic {
            model: NicModel::VirtioNet,
            netdev: "n0".into(),
            mac: "52:54:00:00:00:01".parse().unwrap(),
            bus: RootBus::Pcie0,
            addr: Some(PciSlot { slot: 0x1e, function: 3 }),
            multifunction: false,
        };
        assert_eq!(
            render(&[Arg::Device(Device::Nic(n))]),
            ["-device", "virtio-net-pci,netdev=n0,mac=52:54:00:00:00:01,bus=pcie.0,addr=0x1e.3"]
        );
    }
}
