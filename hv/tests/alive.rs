//! Guest-alive signal from below.
//!
//! - On the real test server (busybox, no guest agent): a heartbeat loop in
//!   the guest prints to the serial console once a second; `AliveWatch`
//!   sees it (source `serial`). A host pause over QMP is not a hang. Then
//!   the heartbeat process is stopped from inside the guest (`kill -STOP`):
//!   alive → hung; `kill -CONT`: recovered. Finally the guest kernel is
//!   frozen (panic with `kernel.panic=0` and no pvpanic device: the vCPUs
//!   keep running in the kernel's panic loop, QEMU sees nothing): hung again,
//!   while QMP still reports the vCPUs running.
//! - The guest-agent source against a real `qemu-ga` (Debian's
//!   qemu-guest-agent, run on the host on a unix socket, which is the
//!   same byte stream QEMU's virtio-serial chardev carries): answers, then
//!   `SIGSTOP` → no answer, `SIGCONT` → answers again.

mod support;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use hv::{AliveChange, AliveConfig, AliveSource, AliveWatch, Guest};
use support::{in_fresh_netns, test_server_dir, PlainGuest};

const HUNG_AFTER: Duration = Duration::from_secs(6);

/// Polls once a second until `want` returns true for a change, or panics
/// after `limit`.
fn poll_until(w: &mut AliveWatch, g: &Guest, limit: Duration, what: &str, want: impl Fn(&AliveChange) -> bool) -> AliveChange {
    let t = Instant::now();
    let mut seen = Vec::new();
    while t.elapsed() < limit {
        let (status, change) = w.poll(g).unwrap();
        if let Some(c) = change {
            if want(&c) {
                eprintln!("{what}: {c:?} after {:.1} s ({status:?})", t.elapsed().as_secs_f64());
                return c;
            }
            seen.push(c);
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    panic!("{what}: not within {limit:?}; changes seen: {seen:?}");
}

/// Polls for `span` and asserts the guest stays alive throughout.
fn stays_alive(w: &mut AliveWatch, g: &Guest, span: Duration, what: &str) {
    let t = Instant::now();
    while t.elapsed() < span {
        let (status, change) = w.poll(g).unwrap();
        assert!(status.alive && change.is_none(), "{what}: {status:?} {change:?}");
        std::thread::sleep(Duration::from_millis(700));
    }
}

#[test]
fn heartbeat_stopped_in_guest_and_frozen_kernel_are_hangs() {
    let server = test_server_dir();
    in_fresh_netns(move || {
        let pg = PlainGuest::launch("hvtest-alive", &server);
        let g = &pg.guest;
        g.wait_for_serial("ISTHMUS-READY", Duration::from_secs(180)).unwrap();
        let mut con = g.serial_console(Duration::from_secs(5)).unwrap();
        con.send(b"\n").unwrap();
        let r = con
            .run(
                "(while :; do echo isthmus-heartbeat; sleep 1; done) & echo $! > /tmp/hb.pid",
                Duration::from_secs(30),
            )
            .unwrap();
        assert_eq!(r.status, 0, "{r:?}");

        let cfg = AliveConfig {
            hung_after: HUNG_AFTER,
            ..Default::default()
        };
        let mut w = AliveWatch::new(g, cfg);
        assert!(!w.uses_agent(), "no guest-agent channel was configured");
        std::thread::sleep(Duration::from_secs(2));
        w.poll(g).unwrap();
        std::thread::sleep(Duration::from_secs(2));
        let (status, _) = w.poll(g).unwrap();
        assert!(status.alive, "{status:?}");
        assert_eq!(status.source, Some(AliveSource::Serial), "{status:?}");
        assert!(status.last_seen.is_some());
        stays_alive(&mut w, g, HUNG_AFTER + Duration::from_secs(2), "heartbeat running");

        // Host pause: not a hang, however long.
        g.pause().unwrap();
        let t = Instant::now();
        while t.elapsed() < HUNG_AFTER + Duration::from_secs(3) {
            let (status, change) = w.poll(g).unwrap();
            assert!(status.paused && status.alive && change.is_none(), "{status:?} {change:?}");
            std::thread::sleep(Duration::from_secs(1));
        }
        g.resume().unwrap();
        stays_alive(&mut w, g, Duration::from_secs(3), "after resume");

        // The heartbeat service stopped from inside the guest.
        let r = con.run("kill -STOP $(cat /tmp/hb.pid)", Duration::from_secs(30)).unwrap();
        assert_eq!(r.status, 0, "{r:?}");
        let hung = poll_until(&mut w, g, HUNG_AFTER + Duration::from_secs(20), "heartbeat stopped", |c| {
            matches!(c, AliveChange::Hung { .. })
        });
        assert!(matches!(hung, AliveChange::Hung { last_seen: Some(_), .. }), "{hung:?}");
        let (status, _) = w.poll(g).unwrap();
        assert!(!status.alive && !status.paused, "{status:?}");
        assert_eq!(g.execute("query-status", None).unwrap()["running"], true);

        let r = con.run("kill -CONT $(cat /tmp/hb.pid)", Duration::from_secs(30)).unwrap();
        assert_eq!(r.status, 0, "{r:?}");
        poll_until(&mut w, g, Duration::from_secs(15), "heartbeat continued", |c| {
            matches!(c, AliveChange::Recovered { .. })
        });
        // Longer than hung_after: the heartbeat itself, not the typed
        // command's echo, keeps it alive.
        stays_alive(&mut w, g, HUNG_AFTER + Duration::from_secs(2), "heartbeat continued");

        // The guest kernel freezes: panic, no pvpanic, no reboot.
        con.send(b"echo 0 > /proc/sys/kernel/panic; echo c > /proc/sysrq-trigger\n")
            .unwrap();
        // (The panic message itself may or may not reach the console: the
        // heartbeat can hold the serial port when the CPU stops.)
        poll_until(&mut w, g, HUNG_AFTER + Duration::from_secs(30), "kernel frozen", |c| {
            matches!(c, AliveChange::Hung { .. })
        });
        // Frozen, not just quiet: the shell does not answer either.
        let log = g.serial_log();
        let before = std::fs::metadata(&log).unwrap().len();
        con.send(b"echo still-here\n").unwrap();
        std::thread::sleep(Duration::from_secs(3));
        assert_eq!(std::fs::metadata(&log).unwrap().len(), before, "the frozen guest echoed input");
        assert_eq!(
            g.execute("query-status", None).unwrap()["running"],
            true,
            "the vCPUs still run: QEMU itself does not know the guest hangs"
        );
        g.kill().unwrap();
    });
}

/// A host `qemu-ga` on a unix socket, killed on drop.
struct HostAgent(Child);

impl Drop for HostAgent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn signal(child: &Child, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), sig).unwrap();
}

#[test]
fn agent_ping_follows_a_real_qemu_ga() {
    let tmp = tempfile::tempdir().unwrap();
    let sock = tmp.path().join("qga.sock");
    let child = Command::new("qemu-ga")
        .args(["-m", "unix-listen", "-p"])
        .arg(&sock)
        .arg("-f")
        .arg(tmp.path().join("qga.pid"))
        .arg("-t")
        .arg(tmp.path())
        .stdin(Stdio::null())
        .spawn()
        .expect("qemu-ga not found: install qemu-guest-agent (tests/setup/deps.sh)");
    let agent = HostAgent(child);
    let t = Instant::now();
    while !sock.exists() && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let timeout = Duration::from_secs(2);
    hv::agent::ping(&sock, timeout).unwrap();
    hv::agent::ping(&sock, timeout).unwrap();

    signal(&agent.0, nix::sys::signal::Signal::SIGSTOP);
    let e = hv::agent::ping(&sock, timeout).unwrap_err();
    assert!(matches!(e, hv::agent::AgentError::NoAnswer { .. }), "{e}");

    // Running again, it also answers the request that timed out; only the
    // fresh id counts.
    signal(&agent.0, nix::sys::signal::Signal::SIGCONT);
    hv::agent::ping(&sock, timeout).unwrap();
}
