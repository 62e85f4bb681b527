//! `isthmus update` end to end on files standing in for the slots and the
//! boot partition: a signed image is verified, written to the inactive slot
//! and staged for one trial boot; a tampered or unsigned image writes
//! nothing; a rolled-back trial and an interrupted write are reported and
//! recorded; a version that failed is not applied again. (GRUB's side of the
//! protocol runs for real in image-build/appliance/smoke.sh.)

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use appliance::update::grubenv::{self, GrubEnv};
use appliance::update::image::{signed_message, Header, MAGIC};
use ring::signature::{Ed25519KeyPair, KeyPair};

struct Rig {
    dir: tempfile::TempDir,
    key: Ed25519KeyPair,
}

impl Rig {
    fn new() -> Rig {
        let dir = tempfile::tempdir().unwrap();
        let pk8 = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
        let key = Ed25519KeyPair::from_pkcs8(pk8.as_ref()).unwrap();
        std::fs::write(dir.path().join("key.pub"), hex::encode(key.public_key().as_ref())).unwrap();
        std::fs::write(dir.path().join("a"), vec![b'A'; 1 << 20]).unwrap();
        std::fs::write(dir.path().join("b"), vec![0u8; 1 << 20]).unwrap();
        let mut env = GrubEnv::default();
        env.set("slot", "a");
        std::fs::write(dir.path().join("grubenv"), env.to_block().unwrap()).unwrap();
        std::fs::create_dir(dir.path().join("data")).unwrap();
        Rig { dir, key }
    }
    fn p(&self, n: &str) -> PathBuf {
        self.dir.path().join(n)
    }
    fn image(&self, name: &str, version: &str, payload: &[u8]) -> PathBuf {
        let mut h = Header {
            version: version.into(),
            root_size: payload.len() as u64,
            root_sha256: hex::encode(ring::digest::digest(&ring::digest::SHA256, payload)),
            signature: String::new(),
        };
        h.signature = hex::encode(self.key.sign(&signed_message(&h)).as_ref());
        let mut img = MAGIC.to_vec();
        img.extend(serde_json::to_vec(&h).unwrap());
        img.push(b'\n');
        img.extend(payload);
        std::fs::write(self.p(name), img).unwrap();
        self.p(name)
    }
    fn run(&self, current: &str, version: &str, extra: &[&str]) -> Output {
        let out = Command::new(env!("CARGO_BIN_EXE_isthmus"))
            .arg("update")
            .args(extra)
            .arg("--data-mount")
            .arg(self.p("data"))
            .arg("--env-file")
            .arg(self.p("grubenv"))
            .arg("--slot-devices")
            .arg(format!("{},{}", self.p("a").display(), self.p("b").display()))
            .args(["--current", current, "--running-version", version, "--key-file"])
            .arg(self.p("key.pub"))
            .output()
            .unwrap();
        eprintln!(
            "update {extra:?}: {}\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        out
    }
    fn env(&self) -> GrubEnv {
        grubenv::read(&self.p("grubenv")).unwrap()
    }
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn payload(seed: u8) -> Vec<u8> {
    (0..300_000u32).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

fn starts_with(path: &Path, data: &[u8]) -> bool {
    std::fs::read(path).unwrap().starts_with(data)
}

#[test]
fn good_update_is_staged_then_confirmed() {
    let r = Rig::new();
    let p2 = payload(2);
    let img = r.image("v2.img", "v2", &p2);
    let o = r.run("a", "v1", &[img.to_str().unwrap()]);
    assert!(o.status.success());
    assert!(text(&o).contains("version v2 written to slot b and verified"));
    assert!(starts_with(&r.p("b"), &p2), "slot b holds the new root");
    assert!(starts_with(&r.p("a"), &[b'A'; 1024]), "slot a untouched");
    let e = r.env();
    assert_eq!(
        (e.get("slot"), e.get("trial"), e.get("trial_state")),
        (Some("a"), Some("b"), Some("new"))
    );

    // GRUB booted b as a trial; the service came up and confirms.
    let o = r.run("b", "v2", &["--confirm", "--trial"]);
    assert!(o.status.success());
    assert!(text(&o).contains("UPDATE CONFIRMED: slot b (version v2)"));
    let e = r.env();
    assert_eq!((e.get("slot"), e.get("trial")), (Some("b"), None));
    // A normal boot has nothing to confirm.
    let o = r.run("b", "v2", &["--confirm"]);
    assert!(o.status.success() && o.stdout.is_empty());
    // The same image again: already running.
    let o = r.run("b", "v2", &[img.to_str().unwrap()]);
    assert!(text(&o).contains("already running"));
}

#[test]
fn tampered_or_foreign_images_write_nothing() {
    let r = Rig::new();
    let img = r.image("v2.img", "v2", &payload(2));
    let mut bytes = std::fs::read(&img).unwrap();
    let n = bytes.len();
    bytes[n - 10] ^= 0xff;
    std::fs::write(r.p("bad.img"), &bytes).unwrap();
    let o = r.run("a", "v1", &[r.p("bad.img").to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(text(&o).contains("the file is damaged"), "{}", text(&o));

    std::fs::write(r.p("short.img"), &bytes[..n - 1000]).unwrap();
    let o = r.run("a", "v1", &[r.p("short.img").to_str().unwrap()]);
    assert!(!o.status.success() && text(&o).contains("truncated"));

    let other = Rig::new();
    let foreign = other.image("f.img", "v2", &payload(2));
    let o = r.run("a", "v1", &[foreign.to_str().unwrap()]);
    assert!(!o.status.success() && text(&o).contains("signature does not verify"));

    std::fs::write(r.p("junk.img"), b"hello").unwrap();
    let o = r.run("a", "v1", &[r.p("junk.img").to_str().unwrap()]);
    assert!(!o.status.success() && text(&o).contains("not an Isthmus update image"));

    assert!(std::fs::read(r.p("b")).unwrap().iter().all(|&b| b == 0), "slot b untouched");
    assert_eq!(r.env().get("trial"), None);
}

#[test]
fn rollback_and_interruption_are_reported_and_remembered() {
    let r = Rig::new();
    let img = r.image("v3.img", "v3", &payload(3));
    assert!(r.run("a", "v1", &[img.to_str().unwrap()]).status.success());
    // GRUB: the trial of b never confirmed, so it fell back to a and set failed=b.
    let mut e = r.env();
    e.set("trial", "");
    e.set("trial_state", "");
    e.set("failed", "b");
    grubenv::write(&r.p("grubenv"), &e).unwrap();
    let o = r.run("a", "v1", &["--boot-check", "--fell-back-from", "b"]);
    assert!(o.status.success());
    assert!(
        text(&o).contains("UPDATE FAILED: slot b (version v3) did not come up; rolled back to slot a (version v1)"),
        "{}",
        text(&o)
    );
    assert_eq!(r.env().get("failed"), None, "reported once");
    let o = r.run("a", "v1", &[img.to_str().unwrap()]);
    assert!(!o.status.success() && text(&o).contains("already failed to come up"));

    // A power cut while writing: the state says "writing", the env was never touched.
    let state = r.p("data/isthmus-update/state.json");
    let mut s: serde_json::Value = serde_json::from_slice(&std::fs::read(&state).unwrap()).unwrap();
    s["slots"]["b"]["status"] = "writing".into();
    s["slots"]["b"]["version"] = "v4".into();
    std::fs::write(&state, serde_json::to_vec(&s).unwrap()).unwrap();
    let o = r.run("a", "v1", &["--boot-check"]);
    assert!(text(&o).contains("UPDATE INTERRUPTED: writing version v4 into slot b did not finish"));
    let o = r.run("a", "v1", &["--boot-check"]);
    assert!(o.stdout.is_empty(), "reported once");
}
