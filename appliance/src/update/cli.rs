//! `isthmus update`: the command line of the A/B updater (the binary only
//! forwards its arguments here).

use std::path::PathBuf;

use super::{apply, boot_check, confirm, Applied, Slot, System, UpdateError};

/// Arguments of `isthmus update`.
#[derive(Debug, clap::Args)]
#[command(after_help = "On the appliance image: `isthmus update /path/appliance-update.img`, then reboot.
An update medium (a disk or ISO holding isthmus-update.img) is applied at boot by itself.
The next boot tries the new slot once; it becomes the default only when the appliance
service is up, otherwise the boot after falls back to the old slot.")]
pub struct UpdateArgs {
    /// The signed update image (appliance-update.img of `make images`).
    #[arg(required_unless_present_any = ["boot_check", "confirm"])]
    pub image: Option<PathBuf>,
    /// At boot: report (console + log) a rolled-back or interrupted update.
    #[arg(long, conflicts_with_all = ["image", "confirm"])]
    pub boot_check: bool,
    /// Once the appliance service is up: make the trial slot the default.
    #[arg(long, conflicts_with = "image")]
    pub confirm: bool,
    /// One JSON object on stdout for scripts.
    #[arg(long)]
    pub json: bool,
    /// Mount point of the data partition (holds isthmus-update/state.json).
    #[arg(long, default_value = "/data")]
    pub data_mount: PathBuf,
    /// Test/rescue override: the boot loader environment block.
    #[arg(long, hide = true)]
    pub env_file: Option<PathBuf>,
    /// Test/rescue override: the devices of slots a and b ("A,B").
    #[arg(long, hide = true, value_delimiter = ',')]
    pub slot_devices: Option<Vec<PathBuf>>,
    /// Test/rescue override: the running slot.
    #[arg(long, hide = true)]
    pub current: Option<String>,
    /// Test/rescue override: file with the hex public key.
    #[arg(long, hide = true)]
    pub key_file: Option<PathBuf>,
    /// Test/rescue override: the running version.
    #[arg(long, hide = true)]
    pub running_version: Option<String>,
    /// Test/rescue override: booted as a trial.
    #[arg(long, hide = true)]
    pub trial: bool,
    /// Test/rescue override: the boot loader fell back from this slot.
    #[arg(long, hide = true)]
    pub fell_back_from: Option<String>,
}

fn system(a: &UpdateArgs) -> Result<System, UpdateError> {
    let overridden = a.env_file.is_some() || a.slot_devices.is_some() || a.current.is_some();
    let mut sys = if overridden {
        let [da, db] = <[PathBuf; 2]>::try_from(a.slot_devices.clone().unwrap_or_default())
            .map_err(|_| UpdateError::Layout("--slot-devices wants two paths".into()))?;
        System {
            env_path: a.env_file.clone().unwrap_or_else(|| super::paths::ENV.into()),
            state_path: a.data_mount.join(super::paths::STATE),
            slot_devices: [da, db],
            current: Slot::A,
            trial: false,
            fell_back_from: None,
            version: String::new(),
            public_key: Vec::new(),
        }
    } else {
        System::detect(&a.data_mount)?
    };
    if let Some(c) = &a.current {
        sys.current = Slot::parse(c).ok_or_else(|| UpdateError::Layout(format!("--current {c:?}: want a or b")))?;
    }
    if let Some(v) = &a.running_version {
        sys.version = v.clone();
    }
    if let Some(k) = &a.key_file {
        let text = std::fs::read_to_string(k).map_err(|source| UpdateError::Io {
            what: format!("read {}", k.display()),
            source,
        })?;
        sys.public_key =
            hex::decode(text.trim()).map_err(|_| UpdateError::Layout(format!("{} is not a hex Ed25519 public key", k.display())))?;
    }
    sys.trial |= a.trial;
    if let Some(s) = &a.fell_back_from {
        sys.fell_back_from = Slot::parse(s);
    }
    Ok(sys)
}

/// Runs the command; prints lines for the operator (stdout, `update:` or
/// `UPDATE …:` prefixed) or one JSON object with `--json`.
pub fn run(a: &UpdateArgs) -> Result<(), UpdateError> {
    let sys = system(a)?;
    let lines: Vec<String> = if a.boot_check {
        boot_check(&sys)?
    } else if a.confirm {
        confirm(&sys)?.into_iter().collect()
    } else {
        let image = a.image.as_deref().unwrap_or(std::path::Path::new("-"));
        if !a.json {
            println!(
                "update: verifying {} (slot {} runs version {})",
                image.display(),
                sys.current,
                sys.version
            );
        }
        let bar = indicatif::ProgressBar::new(0);
        if a.json || !std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
        } else if let Ok(style) = indicatif::ProgressStyle::with_template("{msg:>10} [{bar:40}] {bytes}/{total_bytes}") {
            bar.set_style(style);
        }
        let mut announced = String::new();
        let res = apply(&sys, image, &mut |step, done, total| {
            bar.set_length(total);
            bar.set_position(done);
            bar.set_message(step.to_string());
            if step != announced && !a.json {
                bar.println(format!(
                    "update: {step} ({} MiB) into slot {}",
                    total / 1048576,
                    sys.current.other()
                ));
                if step == "write" {
                    // The smoke test waits for this line to cut the power mid-write.
                    println!("update: writing slot {}", sys.current.other());
                }
                announced = step.to_string();
            }
        });
        bar.finish_and_clear();
        match res? {
            Applied::AlreadyRunning { version } => {
                vec![format!("update: version {version} is already running; nothing to do")]
            }
            Applied::Staged { slot, version } => vec![format!(
                "update: version {version} written to slot {slot} and verified; reboot to try it (slot {} stays the fallback)",
                sys.current
            )],
        }
    };
    if a.json {
        println!("{}", serde_json::json!({ "slot": sys.current, "messages": lines }));
    } else {
        for l in lines {
            println!("{l}");
        }
    }
    Ok(())
}
