//! `make bench-dr`: what a disaster-recovery round of the lab's running
//! source costs with QEMU dirty bitmaps and without them, in the same run.
//!
//! The lab's source server (web1, a qcow2 disk under QEMU) is protected to
//! the lab's cloud node; then, `ROUNDS` times, with the appliance running
//! with dirty bitmaps (default) and then with `ISTHMUS_DIRTY_BITMAPS=off`
//! (every round reads and hashes the whole allocated disk, as before), a
//! file is written in the running guest and `isthmus dr sync` takes a
//! recovery point. Each round's wall time (`took_s`) and the bytes it read
//! from the source disk (`scanned_bytes`) come from the round's record.
//! The two modes alternate, so load on the machine hits both alike.
//!
//! Prints a table, then one JSON line. Root only; never part of `make test`.

use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use isthmus_lab::guest_shell;
use isthmus_lab::scenario::Lab;

/// Rounds per mode.
const ROUNDS: usize = 3;
const MIB: f64 = 1048576.0;

fn dr(lab: &Lab, args: &[&str]) -> Result<serde_json::Value> {
    let out = Command::new(isthmus_lab::bin("isthmus")?)
        .arg("--data-dir")
        .arg(lab.work.join("appliance"))
        .arg("dr")
        .args(args)
        .arg("--json")
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("isthmus dr {args:?} failed: {stdout}{}", String::from_utf8_lossy(&out.stderr));
    }
    serde_json::from_str(stdout.lines().last().unwrap_or("null")).context("dr JSON")
}

fn write_file(lab: &Lab, n: usize) -> Result<()> {
    guest_shell::run(
        &lab.work.join("appliance/sources/web1"),
        &format!("seq 1 {} > /bench-dr-{n}.txt && sync && echo WRO''TE-{n}", 2000 + n),
        &format!("WROTE-{n}"),
        Duration::from_secs(90),
    )
    .map(drop)
}

#[derive(Default)]
struct Mode {
    took_s: Vec<f64>,
    scanned: Vec<u64>,
    sent_blocks: Vec<u64>,
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s.get(s.len() / 2).copied().unwrap_or(0.0)
}

fn main() -> Result<()> {
    let mut lab = Lab::with_source("bdr").context("lab with the source running")?;
    let first = dr(&lab, &["protect", "web1", "--to", "cloud1", "--rpo", "1h"])?;
    let allocated = first["rounds"][0]["allocated_bytes"].as_u64().unwrap_or(0);
    let (mut on, mut off) = (Mode::default(), Mode::default());
    let mut n = 0;
    for _ in 0..ROUNDS {
        for bitmaps in [true, false] {
            n += 1;
            lab.appliance.as_mut().context("appliance")?.stop();
            let env: &[(&str, &str)] = if bitmaps {
                &[]
            } else {
                &[(appliance::moves::dirty::SWITCH_ENV, "off")]
            };
            lab.spawn_appliance_env(&format!("appliance-bench-dr-{n}.log"), env)?;
            write_file(&lab, n)?;
            let r = dr(&lab, &["sync", "web1"])?;
            let want = if bitmaps { "dirty-bitmap" } else { "full" };
            if r["scans"][0] != want {
                bail!("round {n} should have been {want}: {r}");
            }
            let m = if bitmaps { &mut on } else { &mut off };
            m.took_s.push(r["took_s"].as_f64().unwrap_or(0.0));
            m.scanned.push(r["scanned_bytes"].as_u64().unwrap_or(0));
            m.sent_blocks.push(r["blocks_sent"].as_u64().unwrap_or(0));
            eprintln!(
                "round {n} ({want}): {:.1} s, read {:.1} MiB, {} blocks sent",
                r["took_s"].as_f64().unwrap_or(0.0),
                r["scanned_bytes"].as_u64().unwrap_or(0) as f64 / MIB,
                r["blocks_sent"]
            );
        }
    }
    println!("{:<14} {:>10} {:>14} {:>12}", "mode", "round s", "read MiB", "blocks sent");
    for (name, m) in [("dirty-bitmap", &on), ("full scan", &off)] {
        for i in 0..m.took_s.len() {
            println!(
                "{name:<14} {:>10.1} {:>14.1} {:>12}",
                m.took_s[i],
                m.scanned[i] as f64 / MIB,
                m.sent_blocks[i]
            );
        }
    }
    let json = serde_json::json!({
        "allocated_bytes": allocated,
        "bitmap_round_s": on.took_s,
        "bitmap_scanned_bytes": on.scanned,
        "full_round_s": off.took_s,
        "full_scanned_bytes": off.scanned,
        "bitmap_round_median_s": median(&on.took_s),
        "full_round_median_s": median(&off.took_s),
    });
    println!("{json}");
    Ok(())
}
