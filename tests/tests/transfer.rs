//! Block transfers on real parts: the appliance's sender (`appliance::moves::
//! transfer`) against a cloud node (`csc`) serving its API over mutual TLS on
//! 127.0.0.1, enrolled with the appliance's own CA; real qcow2 images made
//! with qemu-img and changed with qemu-io. The node stores every disk as a
//! LUKS qcow2 through `qemu-storage-daemon` with a key the appliance made:
//! the test greps every file of the node's state for known plaintext and
//! checks that a node without the key cannot start the disk. No guest boots
//! here (the move tests boot the transferred disks).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use appliance::cloud::CloudClient;
use appliance::moves::disk_keys::DiskKeys;
use appliance::moves::transfer::{send_disk, Options, Progress};
use appliance::pki::Ca;
use hv::storage_daemon::{Access, EncryptedDisk};

const TOKEN: &str = "transfer-test-token-0123456789";
const MIB: u64 = 1 << 20;

struct Node {
    _dir: tempfile::TempDir,
    state: PathBuf,
    disks: PathBuf,
    url: String,
    client: CloudClient,
    /// The same node without the appliance's disk keys.
    keyless: CloudClient,
}

async fn node_and_client(work: &Path) -> Node {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&token_file, std::fs::Permissions::from_mode(0o600)).unwrap();
    let node = csc::Node::open(csc::NodeConfig {
        state_dir: state.clone(),
        listen: "127.0.0.1:0".parse().unwrap(),
        bridge_listen: "127.0.0.1:0".parse().unwrap(),
        extra_names: vec![],
        token_file: Some(token_file),
        probe_kernel: None,
        probe_initrd: None,
    })
    .await
    .unwrap();
    let pin = node.bootstrap_fingerprint().parse().unwrap();
    let listener = csc::server::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let url = format!("https://{}", listener.local_addr().unwrap());
    tokio::spawn(csc::server::serve(listener, node, std::future::pending()));
    std::fs::create_dir_all(work.join("pki")).unwrap();
    let ca = Ca::load_or_create(&work.join("pki")).unwrap();
    appliance::cloud::enroll(&url, pin, TOKEN, "cloudx", &ca, &[7u8; 32], &[9u8; 32])
        .await
        .unwrap();
    Node {
        disks: state.join("disks"),
        state,
        _dir: dir,
        client: CloudClient::new(&url, &ca).unwrap().with_disk_keys(DiskKeys::new(work)),
        keyless: CloudClient::new(&url, &ca).unwrap(),
        url,
    }
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A 256 MiB disk with 40 MiB of incompressible data in scattered extents
/// and a compressible region, as a compressed qcow2 (like the test images).
fn base_image(dir: &Path) -> PathBuf {
    let raw = dir.join("base.raw");
    let f = std::fs::File::create(&raw).unwrap();
    f.set_len(256 * MIB).unwrap();
    drop(f);
    let mut state = 0x2545F4914F6CDD1Du64;
    let mut noise = vec![0u8; (8 * MIB) as usize];
    for (k, at) in [3u64, 40, 97, 150, 201].into_iter().enumerate() {
        for c in noise.chunks_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            c.copy_from_slice(&state.to_le_bytes());
        }
        let f = std::fs::OpenOptions::new().write(true).open(&raw).unwrap();
        use std::os::unix::fs::FileExt;
        // Offsets not aligned to blocks: extents straddle block edges.
        f.write_all_at(&noise, at * MIB + 12345 * k as u64).unwrap();
        f.write_all_at(&vec![b'a'; 300_000], 230 * MIB).unwrap();
    }
    let q = dir.join("base.qcow2");
    run(Command::new("qemu-img").args(["convert", "-c", "-O", "qcow2"]).arg(&raw).arg(&q));
    std::fs::remove_file(raw).unwrap();
    q
}

/// The guest-visible content of an image (qemu-img convert to raw).
fn plaintext(image: &Path, work: &Path) -> Vec<u8> {
    let raw = work.join("plaintext.raw");
    run(Command::new("qemu-img").args(["convert", "-O", "raw"]).arg(image).arg(&raw));
    let b = std::fs::read(&raw).unwrap();
    std::fs::remove_file(&raw).unwrap();
    b
}

/// True when the node's encrypted disk, opened with the appliance's key for
/// `id`, has the same guest content as the image.
fn same_on_node(image: &Path, node_disk: &Path, work: &Path, id: &str) -> bool {
    let key = DiskKeys::new(work).get(id).unwrap().expect("the appliance made a key");
    let key = hv::DiskKey::from_bytes(key.to_bytes().unwrap().to_vec()).unwrap();
    let mut node = EncryptedDisk::open(node_disk, &key, &work.join(format!("sd-{id}")), Access::ReadShared).unwrap();
    let src = plaintext(image, work);
    let mut buf = vec![0u8; MIB as usize];
    src.len() as u64 <= node.size()
        && src.chunks(MIB as usize).enumerate().all(|(i, c)| {
            node.read_at(&mut buf[..c.len()], i as u64 * MIB).unwrap();
            buf[..c.len()] == *c
        })
}

/// Files under `dir` (recursively) that contain `pattern`.
fn files_containing(dir: &Path, pattern: &[u8]) -> Vec<PathBuf> {
    let mut hits = vec![];
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        let ft = e.file_type().unwrap();
        if ft.is_dir() {
            hits.extend(files_containing(&p, pattern));
        } else if ft.is_file() {
            let b = std::fs::read(&p).unwrap();
            if b.windows(pattern.len()).any(|w| w[0] == pattern[0] && w == pattern) {
                hits.push(p);
            }
        }
    }
    hits
}

/// A guest with one IDE disk and no NIC (its start is refused before any boot).
fn one_disk_profile() -> proto::HardwareProfile {
    proto::HardwareProfile {
        firmware: proto::Firmware::Bios,
        machine: proto::Machine::Pc,
        cpus: 1,
        memory_mib: 128,
        disks: vec![proto::DiskSpec::new(proto::DiskBus::Ide, 0, true)],
        nics: vec![],
        smbios: proto::Smbios::default(),
    }
}

fn counter() -> (Progress, Arc<AtomicU64>) {
    let last = Arc::new(AtomicU64::new(0));
    let l = last.clone();
    (
        Arc::new(move |done, total| {
            assert!(done <= total, "progress {done} > {total}");
            l.store(done, Ordering::Relaxed);
        }),
        last,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_link_resumes_and_a_same_base_server_dedups() {
    let work = tempfile::tempdir().unwrap();
    let node = node_and_client(work.path()).await;
    let base = base_image(work.path());

    // Stage the base image (`isthmus stage`, CA under <data dir>/pki); the
    // link breaks after 3 blocks per stream, in the middle of a chunked
    // transfer (protocol 3: the manifest goes in chunks of up to 32 blocks
    // while the disk is still hashed).
    let (progress, last) = counter();
    let opts = Options {
        break_after_frames: Some(3),
        ..Options::default()
    };
    let s = appliance::moves::stage::stage(work.path(), &node.url, &base, &opts, progress)
        .await
        .unwrap();
    assert_eq!(s.done.id, "base-base");
    assert_eq!(s.attempts, 2, "{s:?}");
    // Up to 3 blocks × 4 streams arrived before the cut; none travelled twice.
    assert!((1..=12).contains(&s.done.blocks_resumed), "{s:?}");
    assert_eq!(s.done.blocks_sent, s.done.blocks, "{s:?}");
    assert_eq!(last.load(Ordering::Relaxed), s.data_bytes);
    // Only allocated blocks travelled: 5 × 8 MiB of noise (straddling) + 1 block of text.
    assert!(s.done.blocks <= 5 * 9 + 1, "{s:?}");
    assert!(s.allocated < 64 * MIB, "{s:?}");
    assert!(same_on_node(&base, &node.disks.join("base-base.img"), work.path(), "base-base"));
    assert!(!node.disks.join(".transfers/base-base.data").exists());
    // The node made the encrypted image while the sender hashed (prepare),
    // and the resumed attempt kept it; nothing prepared is left over.
    let stats = node.client.transfer_stats().await.unwrap();
    assert_eq!(stats.images_prepared, 1, "{stats:?}");
    // Chunks of 8 and then 32 blocks, and the first chunks again after the cut.
    assert!(stats.manifest_chunks >= 3, "{stats:?}");
    let left: Vec<_> = std::fs::read_dir(node.disks.join(".transfers"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "left in .transfers: {left:?}");

    // A second server from the same base: 3 MiB changed (qemu-io writes into the qcow2).
    let web2 = work.path().join("web2.qcow2");
    std::fs::copy(&base, &web2).unwrap();
    let change = work.path().join("change.bin");
    std::fs::write(&change, noise(3 * MIB)).unwrap();
    let cmd = format!("write -s {} 41M 3M", change.display());
    run(Command::new("qemu-io").args(["-f", "qcow2", "-c", &cmd]).arg(&web2));
    let before = node.client.transfer_stats().await.unwrap();
    let (progress, _) = counter();
    let s2 = send_disk(&node.client, "web2", &web2, work.path(), &Options::default(), progress)
        .await
        .unwrap();
    let after = node.client.transfer_stats().await.unwrap();
    let received = after.wire_bytes_received - before.wire_bytes_received;
    let ratio = received as f64 / s2.allocated as f64;
    println!(
        "dedup: web2 has {} allocated bytes, node received {received} ({:.1}%), {} of {} blocks deduped",
        s2.allocated,
        ratio * 100.0,
        s2.done.blocks_deduped,
        s2.done.blocks
    );
    assert!(ratio < 0.20, "sent {:.1}% of the allocated bytes: {s2:?}", ratio * 100.0);
    assert_eq!(after.images_prepared, 2, "{after:?}");
    assert!(s2.done.blocks_deduped > 30, "{s2:?}");
    // The 3 changed MiB (incompressible) did cross the link.
    assert!(received > 3 * MIB, "{received}");
    assert!(same_on_node(&web2, &node.disks.join("web2.img"), work.path(), "web2"));
    assert_ne!(s.done.digest, s2.done.digest);

    // Sending the same disk again sends nothing and still verifies, also
    // with the whole manifest at once (protocol 2).
    let before = node.client.transfer_stats().await.unwrap();
    let (progress, _) = counter();
    let v2 = Options {
        chunked: false,
        ..Options::default()
    };
    let s3 = send_disk(&node.client, "web2-again", &web2, work.path(), &v2, progress)
        .await
        .unwrap();
    let after = node.client.transfer_stats().await.unwrap();
    assert_eq!(after.wire_bytes_received, before.wire_bytes_received, "{s3:?}");
    assert_eq!(after.manifest_chunks, before.manifest_chunks, "protocol 2 sends no chunks");
    assert_eq!(s3.done.digest, s2.done.digest);

    // At rest: no file of the node holds a block's plaintext (nor a key).
    let plain = plaintext(&base, work.path());
    let noise = &plain[(3 * MIB + 4096) as usize..][..64];
    for (what, pattern) in [("noise", noise), ("text", &[b'a'; 64][..])] {
        let hits = files_containing(&node.state, pattern);
        assert!(hits.is_empty(), "plaintext {what} found on the node in {hits:?}");
    }
    let key = DiskKeys::new(work.path()).get("web2").unwrap().unwrap().to_bytes().unwrap();
    assert!(files_containing(&node.state, &key).is_empty(), "a disk key on the node's disk");

    // Without the key (a node restarted, or one that never had it) the
    // disk cannot be started; with another key it cannot be opened either.
    let start = proto::api::StartGuest {
        name: "nokey".into(),
        profile: one_disk_profile(),
        disk_ids: vec!["web2".into()],
        isolated: false,
    };
    node.keyless.forget_disk_key("web2").await.unwrap();
    match node.keyless.start_guest(&start).await.unwrap_err() {
        appliance::cloud::CloudError::Refused { status: 428, body, .. } => {
            assert!(body.error.contains("web2") && body.error.contains("key"), "{body:?}");
            assert!(body.hint.unwrap_or_default().contains("PUT /v1/disks/web2/key"));
        }
        e => panic!("a keyless start must be 428 Precondition Required, got: {e}"),
    }
    let wrong = proto::transfer::WireKey::from_bytes(&[0x42; 32]);
    node.keyless.grant_disk_key("web2", &wrong).await.unwrap();
    let e = node.keyless.start_guest(&start).await.unwrap_err().to_string();
    assert!(e.to_lowercase().contains("password") || e.contains("unlock"), "{e}");
    assert!(
        node.keyless.guest("nokey").await.unwrap().is_none(),
        "a failed start leaves no guest"
    );
    // Nor did the refused starts (QEMU ran once, with the wrong key) write plaintext anywhere.
    for pattern in [noise, &[b'a'; 64][..]] {
        let hits = files_containing(&node.state, pattern);
        assert!(hits.is_empty(), "plaintext found on the node after the failed starts in {hits:?}");
    }
}

/// A node before transfer protocol 3 (the node's switch
/// `ISTHMUS_NODE_TRANSFER_PROTOCOL=2` makes it answer manifest chunks with
/// 404, as such a node does) gets the whole manifest, and a cut link still
/// resumes. The check runs in a child process of this test binary
/// ([`old_node_child`]), so that the switch reaches no other test's node.
#[test]
fn an_old_node_gets_the_whole_manifest() {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "old_node_child", "--ignored", "--nocapture", "--test-threads=1"])
        .env(csc::transfer_api::PROTOCOL_ENV, "2")
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && text.contains("1 passed"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by an_old_node_gets_the_whole_manifest, in a child process"]
async fn old_node_child() {
    assert_eq!(
        std::env::var(csc::transfer_api::PROTOCOL_ENV).as_deref(),
        Ok("2"),
        "run through an_old_node_gets_the_whole_manifest"
    );
    let work = tempfile::tempdir().unwrap();
    let node = node_and_client(work.path()).await;
    let image = small_image(work.path());
    let (progress, last) = counter();
    let opts = Options {
        break_after_frames: Some(1),
        ..Options::default()
    };
    assert!(opts.chunked, "the sender tries protocol 3 first");
    let s = send_disk(&node.client, "old1", &image, work.path(), &opts, progress).await.unwrap();
    assert_eq!(s.attempts, 2, "{s:?}");
    assert!(s.done.blocks_resumed >= 1, "{s:?}");
    assert_eq!(s.done.blocks_sent, s.done.blocks, "{s:?}");
    assert_eq!(last.load(Ordering::Relaxed), s.data_bytes);
    let stats = node.client.transfer_stats().await.unwrap();
    assert_eq!((stats.manifest_chunks, stats.images_prepared), (0, 1), "{stats:?}");
    assert!(same_on_node(&image, &node.disks.join("old1.img"), work.path(), "old1"));
}

/// `len` incompressible bytes (xorshift64).
fn noise(len: u64) -> Vec<u8> {
    let mut x = 0x9E3779B97F4A7C15u64;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// A 48 MiB qcow2 with 4 MiB of noise in two places, one straddling a block edge.
fn small_image(dir: &Path) -> PathBuf {
    use std::os::unix::fs::FileExt;
    let raw = dir.join("small.raw");
    let f = std::fs::File::create(&raw).unwrap();
    f.set_len(48 * MIB).unwrap();
    let noise = noise(2 * MIB);
    f.write_all_at(&noise, MIB + 4321).unwrap();
    f.write_all_at(&noise, 30 * MIB).unwrap();
    let q = dir.join("small.qcow2");
    run(Command::new("qemu-img").args(["convert", "-O", "qcow2"]).arg(&raw).arg(&q));
    q
}

/// The other directions' first half: a disk read back out of a node
/// (`GET /v1/disks/{id}/manifest`, `POST /v1/disks/{id}/read`) into a local
/// raw file, verified by whole-disk digest; a second pull into the same file
/// fetches only what differs (tests/round_trip.rs relays pulled disks on to
/// another node and boots them).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disk_pulled_back_matches_and_a_repeat_pull_fetches_only_changes() {
    use appliance::moves::pull::pull_disk;
    let work = tempfile::tempdir().unwrap();
    let node = node_and_client(work.path()).await;
    let base = small_image(work.path());
    let (progress, _) = counter();
    let sent = send_disk(&node.client, "web3", &base, work.path(), &Options::default(), progress)
        .await
        .unwrap();

    let dest = work.path().join("back/web3.raw");
    let (progress, last) = counter();
    let p = pull_disk(&node.client, "web3", &dest, 4, progress).await.unwrap();
    assert_eq!(p.digest, sent.done.digest, "{p:?}");
    assert_eq!((p.fetched, p.kept), (sent.done.blocks, 0), "{p:?}");
    assert_eq!(last.load(Ordering::Relaxed), sent.data_bytes);
    assert!(
        plaintext(&base, work.path()) == std::fs::read(&dest).unwrap(),
        "pulled content differs"
    );
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    assert_eq!(std::fs::metadata(&dest).unwrap().permissions().mode() & 0o777, 0o600);
    // Sparse: only the data blocks take space.
    assert!(std::fs::metadata(&dest).unwrap().blocks() * 512 < 16 * MIB);

    // Damage two blocks locally (one data block, one that must be zeros):
    // the next pull fetches one block and clears the other.
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&dest).unwrap();
        f.write_all_at(b"guest wrote here", MIB + 100).unwrap();
        f.write_all_at(b"junk", 20 * MIB + 7).unwrap();
    }
    let (progress, _) = counter();
    let p2 = pull_disk(&node.client, "web3", &dest, 4, progress).await.unwrap();
    assert_eq!((p2.fetched, p2.kept), (1, sent.done.blocks - 1), "{p2:?}");
    assert_eq!(p2.digest, sent.done.digest);

    // A missing disk says so, at once (a refusal is not retried).
    let (progress, _) = counter();
    let t = std::time::Instant::now();
    let e = pull_disk(&node.client, "nope", &work.path().join("nope.raw"), 2, progress)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("no disk nope"), "{e}");
    assert!(t.elapsed().as_secs() < 5, "{e}");
}
