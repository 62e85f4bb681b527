//! `make bench-hv`: the same test-server guest, in the same run, with its
//! data disk as plain qcow2 and as LUKS qcow2 (key over QMP): 4 KiB random
//! read/write IOPS and 1 MiB sequential MiB/s measured inside the guest by
//! fio (O_DIRECT, libaio, queue depth [`IODEPTH`], 5 s time-based per
//! figure, on the raw `/dev/vda`); the guest is the test server plus fio
//! (`hv/bench/fio-image.sh`, cached by recipe hash), boot time to ISTHMUS-READY, QMP
//! snapshot save/load times and QEMU's RSS. Prints a table, then one JSON
//! object as the last line. Root only (network namespace, TAP).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use hv::{create_encrypted_image, DiskKey, Guest, GuestSpec, ImageSource};
use proto::api::AccelKind;
use proto::{DiskBus, DiskSpec, Firmware, HardwareProfile, Machine, NicModel, NicSpec, Smbios};

const SECS: &str = "5";
const DATA_BYTES: u64 = 128 << 20;
const MODES: [&str; 4] = ["seqwrite", "seqread", "randwrite", "randread"];
/// fio queue depth (libaio).
const IODEPTH: u32 = 16;

/// The queue depth: [`IODEPTH`], or `BENCH_HV_IODEPTH` when set (to look
/// at the queue-depth curve; the figures use the default).
fn iodepth() -> u32 {
    std::env::var("BENCH_HV_IODEPTH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(IODEPTH)
}

/// The figures to measure: all of [`MODES`] in order, or the comma-separated
/// subset in `BENCH_HV_MODES` (e.g. `seqwrite,seqread` while profiling).
fn modes() -> anyhow::Result<Vec<String>> {
    let Ok(list) = std::env::var("BENCH_HV_MODES") else {
        return Ok(MODES.iter().map(|m| m.to_string()).collect());
    };
    list.split(',')
        .map(|m| {
            anyhow::ensure!(MODES.contains(&m), "BENCH_HV_MODES: unknown figure {m:?}; use some of {MODES:?}");
            Ok(m.to_string())
        })
        .collect()
}

/// The fio command for one figure: terse v3 output, one line.
fn fio_command(mode: &str) -> String {
    let (rw, bs) = match mode {
        "seqwrite" => ("write", "1M"),
        "seqread" => ("read", "1M"),
        "randwrite" => ("randwrite", "4k"),
        _ => ("randread", "4k"),
    };
    let iodepth = iodepth();
    format!(
        "fio --name={mode} --filename=/dev/vda --direct=1 --ioengine=libaio --iodepth={iodepth} \
         --rw={rw} --bs={bs} --runtime={SECS} --time_based --output-format=terse --terse-version=3"
    )
}

/// (IOPS, MiB/s) from a fio terse v3 line: read bandwidth (KiB/s) and IOPS
/// are fields 7 and 8, write ones 48 and 49 (1-based).
fn parse_fio_terse(line: &str, write: bool) -> Option<(f64, f64)> {
    let f: Vec<&str> = line.trim().split(';').collect();
    if f.first() != Some(&"3") || f.len() < 49 {
        return None;
    }
    let (bw, iops) = if write { (f[47], f[48]) } else { (f[6], f[7]) };
    Some((iops.parse().ok()?, bw.parse::<f64>().ok()? / 1024.0))
}

struct Run {
    boot_s: f64,
    io: Vec<(String, f64, f64)>, // mode, iops, MiB/s
    rss_mib: f64,
    save_ms: f64,
    load_ms: f64,
}

fn image_dir() -> anyhow::Result<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let out = Command::new("bash")
        .arg(root.join("hv/bench/fio-image.sh"))
        .current_dir(&root)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "bench image (test server + fio) build failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).lines().last().unwrap_or("").trim().into())
}

fn qemu_img(args: &[&str]) -> anyhow::Result<()> {
    let st = Command::new("qemu-img").args(args).status()?;
    anyhow::ensure!(st.success(), "qemu-img {args:?} failed");
    Ok(())
}

fn run(label: &str, base: &Path, dir: &Path, luks: bool, accel: AccelKind) -> anyhow::Result<Run> {
    let root = dir.join(format!("{label}-root.qcow2"));
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        &base.to_string_lossy(),
        "-F",
        "qcow2",
        &root.to_string_lossy(),
    ])?;
    let data = dir.join(format!("{label}-data.qcow2"));
    let key = if luks {
        let k = DiskKey::generate()?;
        create_encrypted_image(&data, &ImageSource::Blank { size_bytes: DATA_BYTES }, &k)?;
        Some(k)
    } else {
        qemu_img(&["create", "-q", "-f", "qcow2", &data.to_string_lossy(), &DATA_BYTES.to_string()])?;
        None
    };
    let tap = format!("hvb{}{}", std::process::id() % 100_000, u8::from(luks));
    hv::create_tap(&tap)?;
    // Data disk on virtio-blk (vda): a second SATA disk could take the name
    // sda from the root disk (sd binds asynchronously; fstab names sda1).
    let disk = DiskSpec::new;
    let spec = GuestSpec {
        name: format!("bench-{label}"),
        profile: HardwareProfile {
            firmware: Firmware::Bios,
            machine: Machine::Pc,
            cpus: 1,
            memory_mib: 256,
            disks: vec![disk(DiskBus::Sata, 0, true), disk(DiskBus::VirtioBlk, 0, false)],
            nics: vec![NicSpec {
                model: NicModel::E1000,
                mac: "52:54:00:12:34:56".parse()?,
                pci_slot: Some("03.0".parse()?),
            }],
            smbios: Smbios::default(),
        },
        disks: vec![root, data],
        taps: vec![tap.clone()],
        run_dir: dir.join(format!("{label}-run")),
        accel,
    };
    let t0 = Instant::now();
    let g = Guest::launch_with_keys(&spec, &[None, key])?;
    let result = (|| -> anyhow::Result<Run> {
        g.wait_for_serial("ISTHMUS-READY", Duration::from_secs(180))?;
        let boot_s = t0.elapsed().as_secs_f64();
        let mut con = g.serial_console(Duration::from_secs(5))?;
        con.send(b"\n")?;
        let mut io = Vec::new();
        for mode in modes()? {
            let mode = mode.as_str();
            let r = con.run(&fio_command(mode), Duration::from_secs(120))?;
            anyhow::ensure!(r.status == 0, "fio {mode}: {}", r.output);
            let write = mode.ends_with("write");
            let (iops, mibps) = r
                .output
                .lines()
                .find_map(|l| parse_fio_terse(l, write))
                .ok_or_else(|| anyhow::anyhow!("fio {mode}: no terse line in {:?}", r.output))?;
            io.push((mode.to_string(), iops, mibps));
        }
        let rss_mib = g.process_stats()?.rss_kib as f64 / 1024.0;
        let t = Instant::now();
        g.snapshot_save("bench")?;
        let save_ms = t.elapsed().as_secs_f64() * 1e3;
        let t = Instant::now();
        g.snapshot_load("bench")?;
        let load_ms = t.elapsed().as_secs_f64() * 1e3;
        Ok(Run {
            boot_s,
            io,
            rss_mib,
            save_ms,
            load_ms,
        })
    })();
    let _ = g.kill();
    let _ = hv::delete_tap(&tap);
    result
}

fn main() -> anyhow::Result<()> {
    let image = image_dir()?;
    let base = image.join("disk.qcow2");
    let dir = tempfile::tempdir()?;
    let probe = hv::probe_accel(&image.join("vmlinuz"), Some(&image.join("initrd.img")));
    eprintln!("accelerator: {} ({})", probe.accel, probe.reason);
    let accel_kind = probe.accel;
    let accel = probe.accel.to_string();
    // Both runs in a private network namespace (the TAP lives and dies there).
    let base2 = base.clone();
    let path = dir.path().to_path_buf();
    let (plain, luks) = std::thread::spawn(move || -> anyhow::Result<(Run, Run)> {
        nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET)?;
        Ok((
            run("plain", &base2, &path, false, accel_kind)?,
            run("luks", &base2, &path, true, accel_kind)?,
        ))
    })
    .join()
    .map_err(|_| anyhow::anyhow!("bench thread panicked"))??;

    let fig = |r: &Run, mode: &str, iops: bool| {
        r.io.iter()
            .find(|(m, _, _)| m == mode)
            .map(|(_, i, m)| if iops { *i } else { *m })
            .unwrap_or(0.0)
    };
    let qd = iodepth();
    println!("hv bench: same guest, same run; data disk 128 MiB on virtio-blk; fio in the guest (O_DIRECT, libaio, QD{qd}, {SECS} s each); accel {accel}");
    println!("{:<28} {:>12} {:>12} {:>8}", "figure", "plain qcow2", "LUKS qcow2", "ratio");
    let rows = [
        ("4k randread IOPS", "randread", true),
        ("4k randwrite IOPS", "randwrite", true),
        ("1M seqread MiB/s", "seqread", false),
        ("1M seqwrite MiB/s", "seqwrite", false),
    ];
    for (name, mode, iops) in rows {
        let (p, l) = (fig(&plain, mode, iops), fig(&luks, mode, iops));
        println!("{name:<28} {p:>12.1} {l:>12.1} {:>8.2}", if p > 0.0 { l / p } else { 0.0 });
    }
    println!("{:<28} {:>12.2} {:>12.2}", "boot to ISTHMUS-READY s", plain.boot_s, luks.boot_s);
    println!("{:<28} {:>12.0} {:>12.0}", "snapshot-save ms", plain.save_ms, luks.save_ms);
    println!("{:<28} {:>12.0} {:>12.0}", "snapshot-load ms", plain.load_ms, luks.load_ms);
    println!("{:<28} {:>12.0} {:>12.0}", "QEMU RSS MiB", plain.rss_mib, luks.rss_mib);
    let json = serde_json::json!({
        "accel": accel,
        "io_tool": format!("fio in the guest (O_DIRECT, libaio, iodepth {qd}, {SECS} s)"),
        "randread_iops_plain": fig(&plain, "randread", true).round(),
        "randread_iops_luks": fig(&luks, "randread", true).round(),
        "randwrite_iops_plain": fig(&plain, "randwrite", true).round(),
        "randwrite_iops_luks": fig(&luks, "randwrite", true).round(),
        "seq_read_mibps_plain": fig(&plain, "seqread", false),
        "seq_read_mibps_luks": fig(&luks, "seqread", false),
        "seq_write_mibps_plain": fig(&plain, "seqwrite", false),
        "seq_write_mibps_luks": fig(&luks, "seqwrite", false),
        "boot_s": (plain.boot_s * 100.0).round() / 100.0,
        "boot_s_luks": (luks.boot_s * 100.0).round() / 100.0,
        "snapshot_save_ms": plain.save_ms.round(),
        "snapshot_load_ms": plain.load_ms.round(),
        "qemu_rss_mib": plain.rss_mib.round(),
        "qemu_rss_mib_luks": luks.rss_mib.round(),
    });
    println!("{json}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fio_terse_fields() {
        let mut f = vec!["0"; 130];
        f[0] = "3";
        f[6] = "2048";
        f[7] = "512";
        f[47] = "4096";
        f[48] = "1024";
        let line = f.join(";");
        assert_eq!(parse_fio_terse(&line, false), Some((512.0, 2.0)));
        assert_eq!(parse_fio_terse(&line, true), Some((1024.0, 4.0)));
        assert_eq!(parse_fio_terse("fio-3.33", true), None);
    }
}
