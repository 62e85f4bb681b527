//! Types both sides of Isthmus share: the hardware profile of a server, the
//! control-API messages between the appliance (LMA/LCG) and the cloud node
//! (CSC/CSL), and identities. Everything here is plain data, validated when it
//! is parsed, so that the rest of the code passes typed values around.

pub mod api;
pub mod disk_serial;
pub mod export;
pub mod facts;
pub mod identity;
pub mod lcg_members;
pub mod mac;
pub mod profile;
pub mod transfer;
pub mod transfer_chunk;
pub mod wwn;

pub use disk_serial::DiskSerial;
pub use mac::MacAddr;
pub use profile::{DiskBus, DiskSpec, Firmware, HardwareProfile, Machine, NicModel, NicSpec, PciSlot, Smbios};
pub use wwn::Wwn;
