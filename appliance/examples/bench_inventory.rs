//! `make bench-inventory` (issue 6): 10 000 descriptor imports and the
//! inspection of a 20 GiB sparse image, beside libguestfs's `virt-inspector`
//! on the same image in the same run.
//!
//! - Imports: the corpus under `tests/data/inventory/` (descriptors written
//!   by real tools: VMX, OVF, OVA, libvirt XML, CSV; the hostile `bad-*`
//!   files left out) copied round-robin into 10 000 files, each server
//!   renamed `<name>-NNNNN` so no two files are alike. Timed in this process
//!   through `appliance::inventory::import_file`, the same call as
//!   `isthmus import`; every file must import with its template's servers.
//! - Inspection: the real test-server disk (Debian 12, `make image`) grown
//!   to 20 GiB with a second, 19+ GiB ext4 data partition (raw, sparse),
//!   inspected by `isthmus inspect --json` (release build) and by
//!   `virt-inspector --no-applications --no-icon` (direct backend, TCG as
//!   here KVM cannot boot Linux). One untimed warm-up run of each (the
//!   first virt-inspector run builds its supermin appliance; its time is
//!   reported as `virt_inspector_cold_s`), then the timed run. Both must find
//!   the host name. Time and peak RSS of each command come from GNU time
//!   (`%M`, QEMU included for virt-inspector).
//!
//! Prints a table and, last, one JSON line.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, ensure, Context, Result};
use nix::sys::resource::{getrusage, UsageWho};

const IMPORTS: usize = 10_000;
const DISK_GIB: u64 = 20;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Peak resident set of this process in MiB.
fn self_peak_rss_mib() -> Result<f64> {
    // ru_maxrss is in KiB on Linux.
    Ok(getrusage(UsageWho::RUSAGE_SELF)?.max_rss() as f64 / 1024.0)
}

/// A corpus file: (file name, bytes, server names).
type Template = (String, Vec<u8>, Vec<String>);

/// The corpus templates.
fn templates() -> Result<Vec<Template>> {
    let dir = root().join("tests/data/inventory");
    let mut out = vec![];
    let mut names: Vec<PathBuf> = std::fs::read_dir(&dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    names.sort();
    for p in names {
        let file = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        if file.ends_with(".expected.json") || file.starts_with("bad-") {
            continue;
        }
        let exp = dir.join(format!("{file}.expected.json"));
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(&exp).with_context(|| exp.display().to_string())?)?;
        let servers: Vec<String> = v
            .as_array()
            .map(|a| a.iter().filter_map(|s| s["name"].as_str().map(str::to_string)).collect())
            .unwrap_or_default();
        ensure!(!servers.is_empty(), "{}: no servers expected", exp.display());
        out.push((file, std::fs::read(&p)?, servers));
    }
    ensure!(!out.is_empty(), "no descriptors under {}", dir.display());
    Ok(out)
}

struct ImportRun {
    seconds: f64,
    files: usize,
    servers: usize,
    formats: usize,
}

/// Writes 10 000 descriptors into `dir` and imports them all, timed.
fn bench_imports(dir: &Path) -> Result<ImportRun> {
    let tpl = templates()?;
    let mut files = Vec::with_capacity(IMPORTS);
    for i in 0..IMPORTS {
        let (name, bytes, servers) = &tpl[i % tpl.len()];
        let ext = Path::new(name)
            .extension()
            .map(|e| e.to_string_lossy().into_owned())
            .unwrap_or_default();
        let path = dir.join(format!("d{i:05}.{ext}"));
        let mut want: Vec<String> = servers.clone();
        let body = match String::from_utf8(bytes.clone()) {
            // OVA tars carry a manifest over their members: kept byte for byte.
            Err(_) => bytes.clone(),
            Ok(mut text) if ext != "ova" => {
                for s in servers {
                    text = text.replace(s.as_str(), &format!("{s}-{i:05}"));
                }
                want = servers.iter().map(|s| format!("{s}-{i:05}")).collect();
                text.into_bytes()
            }
            Ok(_) => bytes.clone(),
        };
        std::fs::write(&path, body)?;
        files.push((path, want));
    }
    let start = Instant::now();
    let mut imported = Vec::with_capacity(IMPORTS);
    for (p, _) in &files {
        imported.push(appliance::inventory::import_file(p).with_context(|| p.display().to_string())?);
    }
    let seconds = start.elapsed().as_secs_f64();
    let mut servers = 0;
    for ((p, want), imp) in files.iter().zip(&imported) {
        let got: Vec<&str> = imp.servers.iter().map(|s| s.name.as_str()).collect();
        ensure!(got == *want, "{}: imported {got:?}, expected {want:?}", p.display());
        servers += got.len();
    }
    Ok(ImportRun {
        seconds,
        files: files.len(),
        servers,
        formats: tpl.len(),
    })
}

/// Builds (once, cached by recipe hash) the 20 GiB sparse raw image.
fn bench_image() -> Result<(PathBuf, serde_json::Value)> {
    let out = Command::new("bash")
        .arg(root().join("image-build/test-server/build.sh"))
        .current_dir(root())
        .output()?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let ts = PathBuf::from(stdout.lines().last().unwrap_or("").trim());
    ensure!(
        out.status.success() && ts.join("disk.qcow2").is_file(),
        "no test-server image; run `make image` first"
    );
    let manifest: serde_json::Value = serde_json::from_slice(&std::fs::read(ts.join("manifest.json"))?)?;
    let recipe = format!(
        r#"cd "$OUT"
qemu-img convert -f qcow2 -O raw {src} disk.raw
truncate -s {DISK_GIB}G disk.raw
echo 'type=83' | sfdisk -q --append disk.raw
read -r start size < <(sfdisk -d disk.raw | awk -F'[=,]' '/disk.raw2/ {{print $2, $4}}')
mkdir -p data/srv/www data/var/backups
cp -r /usr/share/doc data/srv/www/doc
mkfs.ext4 -q -F -E offset=$((start*512)) -L data -d data disk.raw $((size/2))k
rm -rf data
"#,
        src = ts.join("disk.qcow2").display()
    );
    let hash = {
        use sha2::Digest;
        hex::encode(&sha2::Sha256::digest(recipe.as_bytes())[..8])
    };
    let cache = std::env::var_os("ISTHMUS_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/isthmus"));
    let dir = cache.join(format!("bench-inventory-{hash}"));
    if !dir.join("done").is_file() {
        eprintln!("bench-inventory: building the {DISK_GIB} GiB image in {}", dir.display());
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let st = Command::new("bash")
            .args(["-euo", "pipefail", "-c", &recipe])
            .env("OUT", &dir)
            .status()?;
        ensure!(st.success(), "building the bench image failed (sfdisk, mkfs.ext4, qemu-img needed)");
        std::fs::write(dir.join("done"), "")?;
    }
    Ok((dir.join("disk.raw"), manifest))
}

/// Runs `args` under GNU time; returns (seconds, stdout, peak RSS in MiB of
/// the command and the children it waited for, QEMU included). GNU time
/// forks from its own small process: a child forked from this one would
/// report this process's RSS (the kernel keeps the pre-exec high-water mark).
fn timed(args: &[&std::ffi::OsStr], envs: &[(&str, &str)]) -> Result<(f64, String, f64)> {
    let rss_file = tempfile::NamedTempFile::new()?;
    let mut cmd = Command::new("/usr/bin/time");
    cmd.args(["-f", "%M", "-o"])
        .arg(rss_file.path())
        .args(args)
        .envs(envs.iter().copied());
    let start = Instant::now();
    let out = cmd.output().with_context(|| format!("run {cmd:?} (GNU time installed?)"))?;
    let s = start.elapsed().as_secs_f64();
    if !out.status.success() {
        bail!("{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let kib: f64 = std::fs::read_to_string(rss_file.path())?
        .trim()
        .parse()
        .context("GNU time's %M output")?;
    Ok((s, String::from_utf8_lossy(&out.stdout).into_owned(), kib / 1024.0))
}

/// `virt-inspector` on a raw image, direct backend, TCG.
fn virt_inspector(image: &Path) -> Result<(f64, String, f64)> {
    let args: Vec<&std::ffi::OsStr> = ["virt-inspector", "--no-applications", "--no-icon", "--format=raw", "-a"]
        .iter()
        .map(std::ffi::OsStr::new)
        .chain([image.as_os_str()])
        .collect();
    timed(
        &args,
        &[("LIBGUESTFS_BACKEND", "direct"), ("LIBGUESTFS_BACKEND_SETTINGS", "force_tcg")],
    )
}

fn main() -> Result<()> {
    let isthmus = root().join("target/release/isthmus");
    ensure!(
        isthmus.is_file(),
        "build it first: cargo build --release -p appliance --bin isthmus"
    );

    let tmp = tempfile::tempdir()?;
    eprintln!("bench-inventory: writing and importing {IMPORTS} descriptors");
    let imp = bench_imports(tmp.path())?;
    // This process holds all 10 000 results; `isthmus import` holds one.
    let import_rss = self_peak_rss_mib()?;

    let (image, manifest) = bench_image()?;
    let hostname = manifest["hostname"].as_str().unwrap_or("web1").to_string();
    let apparent = std::fs::metadata(&image)?.len();
    let allocated = {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(&image)?.blocks() * 512
    };

    eprintln!("bench-inventory: isthmus inspect (warm-up, then timed)");
    let inspect_args: Vec<&std::ffi::OsStr> = vec![isthmus.as_os_str(), "inspect".as_ref(), "--json".as_ref(), image.as_os_str()];
    timed(&inspect_args, &[])?;
    let (inspect_s, out, inspect_rss) = timed(&inspect_args, &[])?;
    let facts: serde_json::Value = serde_json::from_str(&out).context("isthmus inspect --json")?;
    ensure!(
        facts[0]["hostname"] == hostname.as_str(),
        "isthmus inspect found host name {} (expected {hostname})",
        facts[0]["hostname"]
    );
    let parts = facts[0]["partitions"].as_array().map(Vec::len).unwrap_or(0);

    eprintln!("bench-inventory: virt-inspector (cold: builds its appliance; then timed)");
    let (cold_s, _, _) = virt_inspector(&image)?;
    let (virt_s, xml, virt_rss) = virt_inspector(&image)?;
    ensure!(
        xml.contains(&format!("<hostname>{hostname}</hostname>")),
        "virt-inspector did not report host name {hostname}:\n{xml}"
    );

    let peak = import_rss.max(inspect_rss);
    let speedup = virt_s / inspect_s;
    println!(
        "inventory benchmark ({} CPUs, QEMU TCG for libguestfs)",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
    );
    println!(
        "  image: {} GiB raw, {} MiB allocated, {parts} partitions, host name {hostname}",
        apparent >> 30,
        allocated >> 20
    );
    println!("  {:<44} {:>10} {:>12}", "step", "seconds", "peak RSS MiB");
    println!(
        "  {:<44} {:>10.3} {:>12.1}",
        format!("import {} files ({} formats, {} servers)", imp.files, imp.formats, imp.servers),
        imp.seconds,
        import_rss
    );
    println!(
        "  {:<44} {:>10.3} {:>12.1}",
        "isthmus inspect --json (20 GiB)", inspect_s, inspect_rss
    );
    println!(
        "  {:<44} {:>10.3} {:>12.1}",
        "virt-inspector (appliance cached; with QEMU)", virt_s, virt_rss
    );
    println!("  {:<44} {:>10.3}", "virt-inspector (first run, builds appliance)", cold_s);
    println!(
        "  inspect speed-up {speedup:.1}x (target >= 10x: {}); 10k imports {:.3} s (target < 2 s: {})",
        if speedup >= 10.0 { "met" } else { "MISSED" },
        imp.seconds,
        if imp.seconds < 2.0 { "met" } else { "MISSED" }
    );
    let json = serde_json::json!({
        "inspect_s": round3(inspect_s),
        "virt_inspector_s": round3(virt_s),
        "virt_inspector_cold_s": round3(cold_s),
        "inspect_speedup": round3(speedup),
        "import_10k_s": round3(imp.seconds),
        "import_files": imp.files,
        "import_servers": imp.servers,
        "peak_rss_mib": round3(peak),
        "import_peak_rss_mib": round3(import_rss),
        "inspect_peak_rss_mib": round3(inspect_rss),
        "virt_inspector_peak_rss_mib": round3(virt_rss),
        "image_virtual_gib": apparent >> 30,
        "target_inspect_10x": speedup >= 10.0,
        "target_import_under_2s": imp.seconds < 2.0,
    });
    println!("{json}");
    Ok(())
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}
