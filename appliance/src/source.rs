//! The data-center side of a server: its source host.
//!
//! The walking skeleton has one driver, `local-qemu`: the server is a QEMU
//! guest the appliance itself runs through `hv`, its NICs on TAP devices the
//! admin has plugged into the LAN bridge. (VMware/Hyper-V drivers come with
//! the inventory importers.)

use std::path::PathBuf;
use std::time::Duration;

use proto::api::AccelKind;

use crate::model::{ServerRecord, Source};

/// Errors of the source driver.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// hv failed.
    #[error("source host for {server}: {source}")]
    Hv {
        /// Server.
        server: String,
        /// Cause.
        #[source]
        source: Box<hv::Error>,
    },
}

/// Runs data-center servers as local QEMU guests.
#[derive(Clone, Debug)]
pub struct LocalQemu {
    /// Directory holding one run dir per server.
    pub run_root: PathBuf,
    /// Accelerator for local guests.
    pub accel: AccelKind,
}

impl LocalQemu {
    fn spec(&self, s: &ServerRecord) -> hv::GuestSpec {
        let Source::LocalQemu { disks, taps } = &s.source;
        hv::GuestSpec {
            name: s.name.clone(),
            profile: s.profile.clone(),
            disks: disks.clone(),
            taps: taps.clone(),
            run_dir: self.run_root.join(&s.name),
            accel: self.accel,
        }
    }

    fn hv_err(s: &ServerRecord) -> impl FnOnce(hv::Error) -> SourceError + '_ {
        move |source| SourceError::Hv {
            server: s.name.clone(),
            source: Box::new(source),
        }
    }

    /// The running guest, if any.
    pub fn running(&self, s: &ServerRecord) -> Result<Option<hv::Guest>, SourceError> {
        let g = hv::Guest::attach(&self.run_root.join(&s.name)).map_err(Self::hv_err(s))?;
        Ok(g.filter(|g| g.is_running()))
    }

    /// True while its QEMU runs (no QMP connection: safe for status pages).
    pub fn is_running(&self, s: &ServerRecord) -> bool {
        hv::guest::running_pid(&self.run_root.join(&s.name)).is_some()
    }

    /// Starts the server unless it runs already; returns QEMU's PID.
    pub fn start(&self, s: &ServerRecord) -> Result<u32, SourceError> {
        if let Some(g) = self.running(s)? {
            return Ok(g.pid());
        }
        let g = hv::Guest::launch(&self.spec(s)).map_err(Self::hv_err(s))?;
        Ok(g.pid())
    }

    /// Shuts the server down: ACPI power button, then a hard stop after
    /// `timeout`. Returns a sentence for the timeline.
    pub fn stop(&self, s: &ServerRecord, timeout: Duration) -> Result<String, SourceError> {
        let Some(g) = self.running(s)? else {
            return Ok("source was already stopped".into());
        };
        let t = std::time::Instant::now();
        let clean = g.powerdown(timeout).map_err(Self::hv_err(s))?;
        Ok(if clean {
            format!(
                "source shut down cleanly on ACPI power button in {:.1} s",
                t.elapsed().as_secs_f64()
            )
        } else {
            format!(
                "source ignored the ACPI power button for {} s and was stopped hard",
                timeout.as_secs()
            )
        })
    }
}
