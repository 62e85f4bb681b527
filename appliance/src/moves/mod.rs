//! Moves: a persisted state machine (STYLE.md §2).
//!
//! [`machine`] holds the pure transitions; [`executor`] records each step in
//! the store before it acts and runs its effect, so a crash at any instant
//! resumes at the recorded step (effects are idempotent); [`effects`] holds
//! the real effects (source host, cloud node, LCG, checks). Disks travel by
//! [`transfer`] (allocated blocks only, hashed, compressed, parallel,
//! resumable, deduplicated at the node) reading them through [`extents`];
//! pre-copy rounds of a running source read only what QEMU's [`dirty`]
//! bitmaps marked since the round before.
//! A [`rehearse`]al copies the disks and boots the copy on an isolated
//! segment of the node while the source keeps running.

pub mod dirty;
pub mod disk_keys;
pub mod effects;
pub mod executor;
pub mod extents;
pub mod machine;
pub mod pull;
pub mod rehearse;
pub mod route;
pub mod stage;
pub mod transfer;
