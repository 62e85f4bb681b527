//! Disaster recovery (issue 7 §6), small and real, in the manner of AWS
//! Elastic Disaster Recovery or Zerto: a data-center server keeps running
//! while a stopped, encrypted replica of its disks is kept on a cloud node
//! and refreshed by incremental rounds (only changed blocks cross, by the
//! moves' verified transfer) at least every RPO. `failover` starts the
//! replica from the last recovery point with the server's own hardware and
//! MAC and has the LCG carry the MAC; `failback` pulls back only the blocks
//! that changed, starts the data-center copy and releases the MAC.
//!
//! [`record`] holds what is kept per server; [`rpo`] the objective;
//! [`machine`] the pure failover/failback transitions; [`executor`] runs
//! them, each step recorded before it acts (resumable after a crash);
//! [`ops`] does the real work; [`api`] is the CLI and the local API.

pub mod api;
pub mod executor;
pub mod machine;
pub mod ops;
pub mod record;
pub mod rpo;
