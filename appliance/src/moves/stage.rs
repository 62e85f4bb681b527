//! `isthmus stage <image> --to <cloud>`: sends a base image to a cloud node
//! ahead of moves, as disk `base-<name>`. No guest uses it; the node indexes
//! its blocks, so later moves of servers built from that image send only
//! what differs.

use std::path::Path;

use crate::cloud::{CloudClient, CloudError};
use crate::moves::disk_keys::DiskKeys;
use crate::moves::transfer::{self, Options, Progress, Sent, TransferError};
use crate::pki::{Ca, PkiError};

/// Errors staging an image.
#[derive(Debug, thiserror::Error)]
pub enum StageError {
    /// The appliance's CA could not be loaded.
    #[error(
        "cannot load the appliance CA under {dir}: {source}. Run this as the user that runs `isthmus serve`, with the same --data-dir"
    )]
    Ca {
        /// Directory.
        dir: String,
        /// Cause.
        #[source]
        source: PkiError,
    },
    /// The client could not be built.
    #[error(transparent)]
    Cloud(#[from] CloudError),
    /// The transfer failed.
    #[error(transparent)]
    Transfer(#[from] TransferError),
}

/// The node disk id of a staged image: `base-` and its file stem in `[a-z0-9-]`.
pub fn disk_id(image: &Path) -> String {
    let stem = image.file_stem().map(|s| s.to_string_lossy().to_lowercase()).unwrap_or_default();
    let mut clean: String = stem
        .chars()
        .map(|c| if c.is_ascii_lowercase() || c.is_ascii_digit() { c } else { '-' })
        .collect();
    clean.truncate(59);
    let clean = clean.trim_matches('-');
    format!("base-{}", if clean.is_empty() { "image" } else { clean })
}

/// Stages `image` on the node at `url`, with the CA under `data_dir/pki`.
pub async fn stage(data_dir: &Path, url: &str, image: &Path, opts: &Options, progress: Progress) -> Result<Sent, StageError> {
    let pki = data_dir.join("pki");
    let ca = Ca::load_or_create(&pki).map_err(|source| StageError::Ca {
        dir: pki.display().to_string(),
        source,
    })?;
    let client = CloudClient::new(url, &ca)?.with_disk_keys(DiskKeys::new(data_dir));
    let work = data_dir.join("transfer");
    Ok(transfer::send_disk(&client, &disk_id(image), image, &work, opts, progress).await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_usable_disk_ids() {
        assert_eq!(disk_id(Path::new("/x/Debian_12.qcow2")), "base-debian-12");
        assert_eq!(disk_id(Path::new("/x/..qcow2")), "base-image");
        assert!(disk_id(Path::new(&"a".repeat(200))).len() <= 64);
    }
}
