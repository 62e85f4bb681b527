//! The accelerator probe on this machine's real /dev/kvm, booting the
//! test-server kernel. Under a KVM that cannot boot Linux (BASELINES.md: PVM)
//! this takes the full probe timeout (15 s) and must answer TCG with a reason.

mod support;

use std::time::Instant;

use hv::{probe_accel_with, ProbeOptions};
use proto::api::AccelKind;

#[test]
fn probe_decides_with_a_reason_and_caches_it() {
    let server = support::test_server_dir();
    let tmp = tempfile::tempdir().unwrap();
    let mut opts = ProbeOptions::new(&server.join("vmlinuz"), Some(&server.join("initrd.img")));
    opts.cache_file = Some(tmp.path().join("accel-probe.json"));

    let t0 = Instant::now();
    let first = probe_accel_with(&opts);
    let took = t0.elapsed();
    eprintln!("probe: {:?} in {:.1} s: {}", first.accel, took.as_secs_f64(), first.reason);
    assert!(!first.reason.is_empty());
    match first.accel {
        AccelKind::Kvm => assert!(first.reason.contains("reached user space"), "{}", first.reason),
        AccelKind::Tcg => assert!(
            first.reason.contains("KVM probe") || first.reason.contains("/dev/kvm"),
            "{}",
            first.reason
        ),
    }
    assert!(took.as_secs() <= 25, "the probe must stop at its timeout, took {took:?}");

    // A second process would read the cache instead of booting again.
    let t1 = Instant::now();
    let second = probe_accel_with(&opts);
    eprintln!(
        "cached: {:?} in {:.2} s: {}",
        second.accel,
        t1.elapsed().as_secs_f64(),
        second.reason
    );
    assert_eq!(second.accel, first.accel);
    if std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok() {
        assert!(second.reason.contains("cached in"), "{}", second.reason);
        assert!(t1.elapsed().as_secs() < 5);
    }
}
