//! The Isthmus appliance: LMA (inventory, store, moves, console) and LCG
//! (the L2 gateway) in one library; `main.rs` only parses the command line.

pub mod app;
pub mod auth;
pub mod cloud;
pub mod cloud_removal;
pub mod console;
pub mod daemon;
pub mod dr;
pub mod inspect;
pub mod inventory;
pub mod lcg;
pub mod lcg_api;
pub mod lcg_standby;
pub mod local_api;
pub mod model;
pub mod moves;
pub mod pki;
pub mod scan;
pub mod source;
pub mod store;
pub mod topology;
pub mod update;
