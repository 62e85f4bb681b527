//! A standalone netbridge: one tunnel, its ports, nothing else. Used by the
//! benchmark (`make bench-netbridge`) and handy for trying the bridge by hand.
//! Keys are read from files (base64, as written by `genkey`/`genpsk`); they
//! never appear on the command line.
//!
//! ```text
//! isthmus-bridge genkey PRIVATE_FILE PUBLIC_FILE
//! isthmus-bridge genpsk PSK_FILE
//! isthmus-bridge run --listen ADDR (--peer ADDR | --responder)
//!     --key-file F --peer-public-file F --psk-file F
//!     [--lan IF]... [--guest IF]... [--carry MAC]... [--stats-file F] [--ha-member]
//!     [--workers N]
//! ```
//!
//! `--workers N` runs N worker threads (`SO_REUSEPORT`/`PACKET_FANOUT`, see
//! `netbridge::worker`); default `NETBRIDGE_WORKERS`, else one per CPU the
//! process may run on, but one on machines with two CPUs or fewer.
//!
//! `run` stays in the foreground until killed; with `--stats-file` it
//! rewrites that file every second with the bridge's counters in Prometheus
//! text format. `--ha-member` makes it one LCG of an HA pair: it forwards
//! only while the cloud node grants it the lease (the cloud side of HA runs
//! several tunnels in one process and is not offered here).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use netbridge::keys::{self, StaticKeypair};
use netbridge::{Bridge, BridgeConfig, Ha, PortSpec, Role};
use proto::MacAddr;

fn usage() -> ! {
    eprintln!(
        "usage:\n  isthmus-bridge genkey PRIVATE_FILE PUBLIC_FILE\n  isthmus-bridge genpsk PSK_FILE\n  \
         isthmus-bridge run --listen ADDR (--peer ADDR | --responder) --key-file F --peer-public-file F \
         --psk-file F [--lan IF]... [--guest IF]... [--carry MAC]... [--stats-file F] [--ha-member] [--workers N]"
    );
    std::process::exit(2)
}

/// Writes a secret file readable by its owner only.
fn write_secret(path: &Path, text: &str) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    writeln!(f, "{text}").with_context(|| format!("cannot write {}", path.display()))
}

fn read_key(path: &Path) -> Result<[u8; 32]> {
    let s = std::fs::read_to_string(path).with_context(|| format!("cannot read key file {}", path.display()))?;
    keys::decode(&s).with_context(|| format!("bad key in {}", path.display()))
}

fn random32() -> Result<[u8; 32]> {
    let mut k = [0u8; 32];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut k).map_err(|_| anyhow::anyhow!("no system random source"))?;
    Ok(k)
}

fn run(args: &[String]) -> Result<()> {
    let mut listen = None;
    let mut role = None;
    let (mut key_file, mut peer_file, mut psk_file, mut stats_file) = (None, None, None, None);
    let mut ports = Vec::new();
    let mut carry = Vec::new();
    let mut ha = Ha::Off;
    let mut workers = netbridge::worker::from_env();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || it.next().cloned().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--listen" => listen = Some(value()?.parse().context("--listen: not an address:port")?),
            "--peer" => {
                role = Some(Role::Initiator {
                    peer: value()?.parse().context("--peer: not an address:port")?,
                })
            }
            "--responder" => role = Some(Role::Responder),
            "--ha-member" => ha = Ha::Member,
            "--workers" => {
                let v = value()?;
                workers = netbridge::worker::parse(&v).with_context(|| format!("--workers: {v} is not a positive number"))?
            }
            "--key-file" => key_file = Some(PathBuf::from(value()?)),
            "--peer-public-file" => peer_file = Some(PathBuf::from(value()?)),
            "--psk-file" => psk_file = Some(PathBuf::from(value()?)),
            "--stats-file" => stats_file = Some(PathBuf::from(value()?)),
            "--lan" => ports.push(PortSpec::Lan { ifname: value()? }),
            "--guest" => ports.push(PortSpec::Guest { ifname: value()? }),
            "--carry" => carry.push(value()?.parse::<MacAddr>().map_err(|e| anyhow::anyhow!("--carry: {e}"))?),
            other => bail!("unknown option {other}"),
        }
    }
    let (Some(listen), Some(role), Some(key_file), Some(peer_file), Some(psk_file)) = (listen, role, key_file, peer_file, psk_file) else {
        usage()
    };
    let handle = Bridge::spawn_workers(
        BridgeConfig {
            local: StaticKeypair::from_private(read_key(&key_file)?),
            peer_public: read_key(&peer_file)?,
            psk: read_key(&psk_file)?,
            listen,
            role,
            ports,
        },
        ha,
        workers,
    )?;
    for m in carry {
        handle.carry_mac(m);
    }
    loop {
        std::thread::sleep(Duration::from_secs(1));
        let stats = handle.stats();
        if let Some(path) = &stats_file {
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, stats.prometheus("peer"))
                .and_then(|()| std::fs::rename(&tmp, path))
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
    }
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("genkey") if args.len() == 3 => {
            let kp = StaticKeypair::generate();
            write_secret(Path::new(&args[1]), &keys::encode(&kp.private))?;
            std::fs::write(&args[2], keys::encode(&kp.public) + "\n").with_context(|| format!("cannot write {}", args[2]))
        }
        Some("genpsk") if args.len() == 2 => write_secret(Path::new(&args[1]), &keys::encode(&random32()?)),
        Some("run") => run(&args[1..]),
        _ => usage(),
    }
}
