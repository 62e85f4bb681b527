//! The Isthmus cloud node (CSC + CSL host): the process on a cloud instance
//! that the appliance enrols, uploads disks to and asks to run moved servers.
//!
//! - [`state_dir`]: every file the node keeps, and how it writes them.
//! - [`pki`]: TLS key, bootstrap certificate and fingerprint, CSR, rustls
//!   configurations, and [`pki::PinnedServerCert`] for the appliance's side.
//! - [`enroll`]: the one-time token and the two enrolment steps.
//! - [`node`]: the node itself; switches bootstrap TLS to mutual TLS at enrolment.
//! - [`api`]: the control API of [`proto::api`] as axum routers.
//! - [`server`]: the TLS accept loop.
//! - [`disks`]: the stored disks (encrypted; only block transfers write them).
//! - [`blocks`]: block transfers (resumable, deduplicated) and the block index.
//! - [`export_api`]: reading a disk back (moves out of this cloud).
//! - [`guests`]: guests under QEMU (`hv`), their TAPs, persistence across restarts.
//! - [`bridge`]: the data-plane tunnel to the appliance (`netbridge`).
//! - [`bridge_members`]: further LCG members (a standby appliance), one tunnel each.

pub mod api;
pub mod blocks;
pub mod bridge;
pub mod bridge_members;
pub mod console_seen;
pub mod disks;
pub mod enroll;
pub mod export_api;
pub mod guests;
pub mod node;
pub mod pki;
pub mod server;
pub mod state_dir;
pub mod transfer_api;

pub use node::{Node, NodeConfig};
