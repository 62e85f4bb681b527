//! Lifecycle over QMP on the real test server: pause/resume, snapshot
//! save/list/revert/delete (revert restores both a file on disk and the
//! running shell), reset (the guest boots again), and monitoring from below
//! (block counters, TAP counters, QEMU's RSS), plus the VGA console as VNC on
//! a unix socket.

mod support;

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use proto::api::GuestState;
use support::{in_fresh_netns, test_server_dir, PlainGuest};

#[test]
fn pause_snapshot_revert_reset_and_counters() {
    let server = test_server_dir();
    in_fresh_netns(move || {
        let pg = PlainGuest::launch("hvtest-life", &server);
        let g = &pg.guest;

        // VNC on a unix socket: the RFB greeting (RFC 6143 §7.1.1).
        let mut vnc = UnixStream::connect(g.vnc_socket()).unwrap();
        vnc.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut hello = [0u8; 12];
        vnc.read_exact(&mut hello).unwrap();
        assert_eq!(&hello, b"RFB 003.008\n");
        drop(vnc);

        g.wait_for_serial("ISTHMUS-READY", Duration::from_secs(180)).unwrap();
        let mut con = g.serial_console(Duration::from_secs(5)).unwrap();
        con.send(b"\n").unwrap();

        // Pause / resume.
        g.pause().unwrap();
        assert_eq!(g.status().unwrap(), GuestState::Paused);
        g.resume().unwrap();
        assert_eq!(g.status().unwrap(), GuestState::Running);

        // Snapshot, change the disk and the shell, revert.
        let r = con
            .run(
                "echo before > /root/state; X=shell-before; sync; cat /root/state",
                Duration::from_secs(30),
            )
            .unwrap();
        assert_eq!(r.output, "before");
        let t = Instant::now();
        g.snapshot_save("s1").unwrap();
        let save = t.elapsed();
        let snaps = g.snapshots().unwrap();
        assert!(snaps.iter().any(|s| s.name == "s1" && s.vm_state_size > 0), "{snaps:?}");
        assert!(g.snapshot_save("bad tag").is_err(), "tags are checked");
        let r = con
            .run(
                "echo after > /root/state; X=shell-after; sync; cat /root/state",
                Duration::from_secs(30),
            )
            .unwrap();
        assert_eq!(r.output, "after");
        let t = Instant::now();
        g.snapshot_load("s1").unwrap();
        let load = t.elapsed();
        assert_eq!(g.status().unwrap(), GuestState::Running);
        let r = con.run("cat /root/state; echo $X", Duration::from_secs(30)).unwrap();
        assert_eq!(r.output, "before\nshell-before", "revert restores disk and memory");
        // A failed revert leaves the guest paused (QEMU does not resume a
        // machine whose state it may have half loaded); here nothing was
        // loaded, so resuming is safe.
        let e = g.snapshot_load("nope").unwrap_err();
        assert!(e.to_string().contains("nope"), "{e}");
        assert_eq!(g.status().unwrap(), GuestState::Paused);
        g.resume().unwrap();
        g.snapshot_delete("s1").unwrap();
        assert!(g.snapshots().unwrap().is_empty());

        // Monitoring from below.
        let blocks = g.block_stats().unwrap();
        let d0 = blocks.iter().find(|b| b.device == "disk0").unwrap_or_else(|| panic!("{blocks:?}"));
        assert!(d0.rd_bytes > 0 && d0.wr_bytes > 0, "{d0:?}");
        // The guest ARPs for an absent neighbour: frames from the guest.
        let before = hv::tap_stats(&pg.tap.0).unwrap();
        con.run("arping -c 3 -w 2 -I eth0 10.77.0.99 >/dev/null 2>&1; true", Duration::from_secs(30))
            .unwrap();
        let taps = hv::tap_stats(&pg.tap.0).unwrap();
        assert!(
            taps.rx_packets >= before.rx_packets + 3,
            "ARPs from the guest counted: {before:?} -> {taps:?}"
        );
        let ps = g.process_stats().unwrap();
        assert!(ps.rss_kib > 10_000 && ps.threads > 1 && ps.cpu_ticks > 0, "{ps:?}");

        // Reset: the guest boots again (seen on the console stream).
        g.reset().unwrap();
        con.read_until("ISTHMUS-READY", Duration::from_secs(180)).unwrap();
        eprintln!(
            "snapshot save {:.0} ms, load {:.0} ms; QEMU RSS {} MiB; {d0:?}; {taps:?}",
            save.as_secs_f64() * 1e3,
            load.as_secs_f64() * 1e3,
            ps.rss_kib / 1024
        );
        drop(con);
        assert!(g.powerdown(Duration::from_secs(30)).unwrap());
    });
}
