//! `make bench-luks`: making a blank LUKS qcow2 (`hv::create_encrypted_image`)
//! with hv's own header on the cached template against `qemu-img create`
//! (`ISTHMUS_LUKS_HEADER=qemu`), [`RUNS`] runs each, alternating; then the
//! unlock at open (`qemu-io` reading a sector with the key, which runs the key slot's
//! PBKDF2 as every storage daemon and guest start does) of one image of each.
//! Wall time and CPU time (this process + its children, `getrusage`). Prints a
//! table, then one JSON object as the last line.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use hv::{create_encrypted_image, DiskKey, ImageSource};

const RUNS: usize = 5;
const SIZE: u64 = 10 << 30;

/// CPU seconds used so far by this process and its waited-for children.
#[allow(unsafe_code)] // getrusage(2): libc only, nix's `resource` feature is off
fn cpu_s() -> f64 {
    let secs = |who| {
        let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
        // SAFETY: `ru` is a valid, writable rusage buffer for the call, and
        // getrusage fully initialises it on success (checked).
        let ok = unsafe { libc::getrusage(who, ru.as_mut_ptr()) } == 0;
        // SAFETY: zero-initialised above, so reading it is defined either way.
        let ru = unsafe { ru.assume_init() };
        let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        if ok {
            tv(ru.ru_utime) + tv(ru.ru_stime)
        } else {
            0.0
        }
    };
    secs(libc::RUSAGE_SELF) + secs(libc::RUSAGE_CHILDREN)
}

/// (wall s, CPU s) of `f`.
fn measure(f: impl FnOnce()) -> (f64, f64) {
    let (t, c) = (Instant::now(), cpu_s());
    f();
    (t.elapsed().as_secs_f64(), cpu_s() - c)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn passphrase(key: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(key)
}

/// `qemu-io` reading the first sector of `img` with the key over stdin
/// (opens and unlocks it; `qemu-img info` opens without I/O and skips the
/// unlock).
fn open(img: &Path, pass: &str) {
    let mut child = Command::new("qemu-io")
        .args([
            "--object",
            "secret,id=k,file=/dev/stdin,format=raw",
            "-c",
            "read 0 512",
            "--image-opts",
        ])
        .arg(format!("driver=qcow2,file.filename={},encrypt.key-secret=k", img.display()))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("run qemu-io (install qemu-utils)");
    child.stdin.take().expect("stdin").write_all(pass.as_bytes()).expect("pipe");
    assert!(child.wait().expect("wait").success(), "qemu-io read of {} failed", img.display());
}

fn main() {
    let dir = tempfile::tempdir().expect("temp dir");
    let raw = [0x5au8; 32];
    let key = || DiskKey::from_bytes(raw.to_vec()).expect("key");
    let pass = passphrase(&raw);
    // The template is made once per host: its cost, if it is made now, is
    // reported apart.
    let (tpl_wall, tpl_cpu) = measure(|| {
        hv::qemu::luks_template::template().expect("template");
    });
    let (mut new, mut old) = (Vec::new(), Vec::new());
    for i in 0..RUNS {
        for (which, out) in [("hv", &mut new), ("qemu", &mut old)] {
            if which == "qemu" {
                std::env::set_var(hv::qemu::luks::HEADER_ENV, "qemu");
            } else {
                std::env::remove_var(hv::qemu::luks::HEADER_ENV);
            }
            let img = dir.path().join(format!("{which}-{i}.qcow2"));
            out.push(measure(|| {
                create_encrypted_image(&img, &ImageSource::Blank { size_bytes: SIZE }, &key()).expect("create");
            }));
        }
    }
    std::env::remove_var(hv::qemu::luks::HEADER_ENV);
    let (mut open_new, mut open_old) = (Vec::new(), Vec::new());
    for _ in 0..RUNS {
        open_new.push(measure(|| open(&dir.path().join("hv-0.qcow2"), &pass)));
        open_old.push(measure(|| open(&dir.path().join("qemu-0.qcow2"), &pass)));
    }
    let col = |v: &[(f64, f64)], cpu: bool| v.iter().map(|p| if cpu { p.1 } else { p.0 }).collect::<Vec<_>>();
    let row = |name: &str, v: &[(f64, f64)]| {
        let f = |x: Vec<f64>| x.iter().map(|s| format!("{:.3}", s)).collect::<Vec<_>>().join(" ");
        println!("{name:<28} wall s: {:<40} cpu s: {}", f(col(v, false)), f(col(v, true)));
    };
    println!("template (made now if missing): wall {tpl_wall:.3} s, cpu {tpl_cpu:.3} s");
    row("create, hv header", &new);
    row("create, qemu-img", &old);
    row("open (unlock), hv header", &open_new);
    row("open (unlock), qemu-img", &open_old);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load1: f64 = load.split_whitespace().next().and_then(|s| s.parse().ok()).unwrap_or(-1.0);
    println!(
        "{}",
        serde_json::json!({
            "runs": RUNS,
            "size_bytes": SIZE,
            "create_hv_wall_s": median(col(&new, false)),
            "create_hv_cpu_s": median(col(&new, true)),
            "create_qemu_wall_s": median(col(&old, false)),
            "create_qemu_cpu_s": median(col(&old, true)),
            "open_hv_wall_s": median(col(&open_new, false)),
            "open_hv_cpu_s": median(col(&open_new, true)),
            "open_qemu_wall_s": median(col(&open_old, false)),
            "open_qemu_cpu_s": median(col(&open_old, true)),
            "template_wall_s": tpl_wall,
            "load1": load1,
        })
    );
}
