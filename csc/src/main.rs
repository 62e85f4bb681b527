//! `isthmus-node`: the cloud node binary. Parses the command line and runs
//! the library's node; everything else lives in the `csc` library.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use csc::pki::SubjectName;
use csc::{Node, NodeConfig};

/// Isthmus cloud node: runs moved servers on this cloud instance for one appliance.
#[derive(Parser, Debug)]
#[command(name = "isthmus-node", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Serve the control API (HTTPS) and the data-plane bridge (UDP).
    ///
    /// On first start the node creates its keys and a self-signed bootstrap
    /// certificate in the state directory and prints the certificate's
    /// fingerprint ("bootstrap fingerprint: sha256:<hex>"). Give that
    /// fingerprint and the token to the appliance, which pins the fingerprint
    /// and enrols the node. From then on the node accepts only clients with a
    /// certificate from the appliance's CA, and needs no token.
    #[command(after_help = "\
Examples:
  # first start: enrolment token in a root-only file (never on the command line)
  (umask 077; head -c 32 /dev/urandom | base64 > /run/isthmus/token)
  isthmus-node serve --state-dir /var/lib/isthmus-node \\
      --listen 0.0.0.0:8443 --san 203.0.113.7 --bridge-listen 0.0.0.0:51820 \\
      --token-file /run/isthmus/token

  # later starts (already enrolled), with the KVM probe
  isthmus-node serve --state-dir /var/lib/isthmus-node \\
      --listen 0.0.0.0:8443 --san 203.0.113.7 --bridge-listen 0.0.0.0:51820 \\
      --probe-kernel /usr/share/isthmus/probe/vmlinuz --probe-initrd /usr/share/isthmus/probe/initrd

Logging: RUST_LOG=info (default), e.g. RUST_LOG=csc=debug.")]
    Serve(ServeArgs),
    /// Show the node's enrolment state, bootstrap fingerprint and Noise public key.
    #[command(after_help = "Example:\n  isthmus-node status --state-dir /var/lib/isthmus-node")]
    Status {
        /// The node's state directory.
        #[arg(long, value_name = "DIR")]
        state_dir: PathBuf,
    },
}

#[derive(clap::Args, Debug)]
struct ServeArgs {
    /// Directory for keys, certificates, disks and guests (created 0700).
    #[arg(long, value_name = "DIR")]
    state_dir: PathBuf,
    /// Address of the HTTPS control API. Its IP goes into the node's
    /// certificates unless it is 0.0.0.0 / ::, in which case give --san.
    #[arg(long, value_name = "IP:PORT")]
    listen: SocketAddr,
    /// UDP address of the encrypted data-plane bridge (the appliance connects to it).
    #[arg(long, value_name = "IP:PORT")]
    bridge_listen: SocketAddr,
    /// Extra IP or DNS name the appliance reaches the node by (repeatable);
    /// goes into the bootstrap certificate and the CSR.
    #[arg(long = "san", value_name = "IP|DNS")]
    sans: Vec<String>,
    /// File holding the one-time enrolment token; needed only until the node
    /// is enrolled, deleted after a successful enrolment.
    #[arg(long, value_name = "FILE")]
    token_file: Option<PathBuf>,
    /// Linux kernel for the boot probe that decides between KVM and TCG.
    /// Without it guests run under TCG.
    #[arg(long, value_name = "PATH")]
    probe_kernel: Option<PathBuf>,
    /// Initrd for the boot probe.
    #[arg(long, value_name = "PATH", requires = "probe_kernel")]
    probe_initrd: Option<PathBuf>,
    /// Cloud-side interface to join to the extended segment besides the
    /// guests' TAPs (repeatable), e.g. a NIC on a subnet of cloud hosts
    /// that must share the LAN; the LCG carries their MACs with
    /// `isthmus lcg carry`.
    #[arg(long = "bridge-port", value_name = "IFACE")]
    bridge_ports: Vec<String>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.cmd {
        Cmd::Serve(args) => serve(args),
        Cmd::Status { state_dir } => status(state_dir),
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let extra_names = args
        .sans
        .iter()
        .map(|s| s.parse::<SubjectName>())
        .collect::<Result<Vec<_>, _>>()
        .context("bad --san")?;
    let config = NodeConfig {
        state_dir: args.state_dir,
        listen: args.listen,
        bridge_listen: args.bridge_listen,
        extra_names,
        token_file: args.token_file,
        probe_kernel: args.probe_kernel,
        probe_initrd: args.probe_initrd,
    };
    let rt = tokio::runtime::Runtime::new().context("cannot start the async runtime")?;
    let bridge_ports = args.bridge_ports;
    rt.block_on(async move {
        let listen = config.listen;
        let node = Node::open(config).await.context("cannot start the node")?;
        node.bridge()
            .set_segment_ports(bridge_ports)
            .context("cannot join --bridge-port interfaces to the bridge")?;
        if !node.is_enrolled() {
            println!("bootstrap fingerprint: sha256:{}", node.bootstrap_fingerprint());
        }
        let listener = csc::server::bind(listen).await?;
        csc::server::serve(listener, node, shutdown_signal()).await?;
        tracing::info!("shutting down; guests keep running and are re-attached at the next start");
        Ok(())
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; stop with Ctrl-C");
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

fn status(state_dir: PathBuf) -> anyhow::Result<()> {
    let st = csc::state_dir::StateDir::inspect(&state_dir);
    let read = |p: PathBuf| -> anyhow::Result<Option<String>> {
        Ok(st.read_optional(&p)?.map(|b| String::from_utf8_lossy(&b).trim().to_string()))
    };
    let fp = read(st.bootstrap_fingerprint())?
        .with_context(|| format!("{} holds no node state (start `isthmus-node serve` first)", state_dir.display()))?;
    println!("bootstrap fingerprint: sha256:{fp}");
    if let Some(p) = read(st.noise_public())? {
        println!("noise public key: {p}");
    }
    match csc::enroll::EnrolledRecord::load(&st)? {
        Some(r) => println!("enrolled: yes, as {:?} (at unix time {})", r.name, r.enrolled_at),
        None => println!("enrolled: no"),
    }
    Ok(())
}
