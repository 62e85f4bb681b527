//! `isthmus`: the appliance's command line. Parses arguments and calls the
//! library; `serve` runs the appliance, every other command talks to it
//! through its local API socket.

use std::io::Read;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use appliance::app::{EnrollRequest, MoveDetail, Status};
use appliance::inventory::ServerDescription;
use appliance::local_api::{Client, MoveRequest};
use appliance::model::{MoveRecord, ServerRecord, Step};
use clap::{Parser, Subcommand};

/// Isthmus moves servers from the data center to clouds without changing them:
/// same IP, same MAC, same disk names, traffic and disks encrypted.
#[derive(Parser)]
#[command(
    version,
    after_help = "Typical session:
  isthmus serve --lan lan0 --console-listen 10.0.0.2:8443 --bridge-listen 198.51.100.1:51820 &
  isthmus inventory add web1.toml --start
  isthmus cloud enroll cloud1 --url https://198.51.100.2:9443 --fingerprint sha256:… --token-file token
  isthmus move web1 --to cloud1
  isthmus status"
)]
struct Cli {
    /// Data directory of the appliance (store, keys, API socket).
    #[arg(long, global = true, env = "ISTHMUS_DATA_DIR", default_value = "/var/lib/isthmus")]
    data_dir: PathBuf,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the appliance: web console, LCG bridge, move executor, local API.
    Serve {
        /// LAN interface to extend to clouds (AF_PACKET; no IP needed on it).
        #[arg(long)]
        lan: String,
        /// Address of the HTTPS web console.
        #[arg(long, default_value = "0.0.0.0:8443")]
        console_listen: SocketAddr,
        /// UDP address the encrypted bridge sends from (port +n for the n-th cloud).
        #[arg(long, default_value = "0.0.0.0:51820")]
        bridge_listen: SocketAddr,
        /// Linux kernel used to probe whether KVM can boot guests here.
        #[arg(long)]
        probe_kernel: Option<PathBuf>,
        /// Initrd for the probe kernel.
        #[arg(long)]
        probe_initrd: Option<PathBuf>,
        /// HTTPS address of the peer API between the two appliances of an
        /// HA pair (`isthmus lcg standby`): the primary's standby pulls from
        /// it, a standby is paired through it. Off when not given.
        #[arg(long)]
        peer_listen: Option<SocketAddr>,
        /// Wait to be paired as a standby LCG with this one-time token file
        /// (mode 0600; deleted once paired). Needs --peer-listen.
        #[arg(long)]
        standby_token_file: Option<PathBuf>,
    },
    /// Manage the inventory.
    Inventory {
        #[command(subcommand)]
        cmd: InventoryCmd,
    },
    /// Act on a data-center server.
    Server {
        #[command(subcommand)]
        cmd: ServerCmd,
    },
    /// Manage cloud nodes.
    Cloud {
        #[command(subcommand)]
        cmd: CloudCmd,
    },
    /// Move a server to a cloud, between clouds or back, keeping its IP, MAC, disks and hardware.
    ///
    /// Steps: plan, stop source (ACPI), copy disks (verified), start target,
    /// switch L2, verify reachability, commit; any failure rolls back and the
    /// source runs again.
    Move {
        /// Server name.
        server: String,
        /// Cloud name, or `dc` to bring the server back to the data center
        /// (data center → cloud, cloud → cloud and cloud → data center are one path).
        #[arg(long)]
        to: String,
        /// Print the final move (with its timeline) as JSON.
        #[arg(long)]
        json: bool,
        /// Return at once with the move id instead of following it.
        #[arg(long)]
        no_wait: bool,
        /// Only rehearse the cutover: copy the disks while the server keeps
        /// running, boot the copy in the cloud on an isolated segment (no
        /// bridge, no uplink: its MAC never reaches the LAN), watch it boot,
        /// delete it. Ends `rehearsed`.
        #[arg(long)]
        rehearse: bool,
    },
    /// Send a base image (e.g. the Debian release your servers were built
    /// from) to a cloud ahead of moves: the cloud node indexes its blocks,
    /// and moves of servers built from it send only what differs.
    Stage {
        /// Image file (qcow2, raw, VMDK, …).
        image: PathBuf,
        /// Cloud name.
        #[arg(long)]
        to: String,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Disaster recovery: a stopped replica in a cloud, refreshed every RPO;
    /// failover starts it with the server's MAC, failback brings the changes home.
    Dr {
        #[command(subcommand)]
        cmd: appliance::dr::api::DrCmd,
    },
    /// The LCG: its tunnels to the clouds and the MACs they carry.
    Lcg {
        #[command(subcommand)]
        cmd: appliance::lcg_api::LcgCmd,
    },
    /// Show servers, clouds and moves.
    Status {
        /// JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Read a VM descriptor (.vmx, .ovf, .ova, libvirt .xml, .csv) and print
    /// the servers it describes. Needs no running appliance.
    Import {
        /// Descriptor file.
        file: PathBuf,
        /// JSON array for scripts (schema in the README, "Import schema").
        #[arg(long)]
        json: bool,
        /// Record the servers in the topology store (data dir), with history.
        #[arg(long)]
        record: bool,
    },
    /// The topology store (servers, disks, NICs, segments, clouds) with the
    /// history of what imports and inspections saw; `import --record` and
    /// `inspect --record` feed it. Needs no running appliance.
    Topology {
        /// Export format: json, dot or svg (svg needs Graphviz).
        #[arg(long, default_value = "json")]
        format: String,
        #[command(subcommand)]
        cmd: Option<TopologyCmd>,
    },
    /// Inspect disk images (raw, qcow2, VMDK) without booting: partitions,
    /// filesystems, hostname, fstab, network config, and the risks a move
    /// would hit. Needs no running appliance.
    Inspect {
        /// Image files.
        #[arg(required = true)]
        images: Vec<PathBuf>,
        /// JSON array for scripts (schema in the README, "Inspect schema").
        #[arg(long)]
        json: bool,
        /// Record what was found in the topology store (data dir), as server SERVER.
        #[arg(long, value_name = "SERVER")]
        record: Option<String>,
    },
    /// Live scan of a LAN segment: ARP sweep of the interface's IPv4 subnet,
    /// ICMP echo, TCP connect probe of common ports; joined with the
    /// inventory (unknown hosts, IP and MAC conflicts flagged). Needs root
    /// (raw sockets), no running appliance.
    Scan {
        /// Interface on the segment (with an IPv4 address, a /16 or narrower).
        #[arg(long)]
        iface: String,
        /// JSON object for scripts (schema in the README, "Scan schema").
        #[arg(long)]
        json: bool,
        /// Packets per second (ARP, ICMP and TCP SYNs together).
        #[arg(long, default_value_t = 200)]
        rate: u32,
        /// TCP ports to probe, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "22,80,443,445,3389,5432,3306,8080")]
        ports: Vec<u16>,
        /// Stop after this many seconds and report what was found.
        #[arg(long, default_value_t = 120)]
        max_time: u64,
        /// Record what was seen in the topology store (data dir).
        #[arg(long)]
        record: bool,
    },
    /// Firmware-style A/B update of the appliance image: verify a signed
    /// update image, write it into the inactive root slot, boot it once.
    Update(appliance::update::cli::UpdateArgs),
    /// Administration.
    Admin {
        #[command(subcommand)]
        cmd: AdminCmd,
    },
}

#[derive(Subcommand)]
enum TopologyCmd {
    /// What changed when, for one server or all.
    History {
        /// Server name.
        server: Option<String>,
        /// JSON for scripts.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum InventoryCmd {
    /// Add a server from a TOML or JSON description (see README).
    Add {
        /// Description file.
        file: PathBuf,
        /// Start it on its source host right away.
        #[arg(long)]
        start: bool,
    },
}

#[derive(Subcommand)]
enum ServerCmd {
    /// Start a data-center server on its source host.
    Start {
        /// Server name.
        name: String,
    },
}

#[derive(Subcommand)]
enum CloudCmd {
    /// Enrol a cloud node: pin its bootstrap certificate, issue it a
    /// certificate from the appliance CA, exchange bridge keys.
    Enroll {
        /// Name to give it.
        name: String,
        /// Its control API, https://IP:PORT.
        #[arg(long)]
        url: String,
        /// Its bootstrap fingerprint as it printed it (sha256:…).
        #[arg(long)]
        fingerprint: String,
        /// File holding the one-time enrolment token ("-" for stdin).
        #[arg(long)]
        token_file: PathBuf,
    },
    /// Forget a cloud node: its tunnel closes. Refused while a server runs
    /// there or a move to or from it is under way.
    Remove {
        /// Cloud name.
        name: String,
    },
}

#[derive(Subcommand)]
enum AdminCmd {
    /// Set the console's admin password, read from stdin.
    SetPassword,
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("ISTHMUS_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    // Pure file readers: no daemon, no runtime.
    if let Cmd::Import { file, json, record } = &cli.cmd {
        let imp = appliance::inventory::import_file(file)?;
        if *record {
            let store = appliance::topology::open_store(&cli.data_dir)?;
            let t = appliance::topology::Topology::new(&store)?;
            for s in &imp.servers {
                let o = t.record_import(s, &file.display().to_string())?;
                eprintln!("recorded {}: {} change(s)", s.name, o.changes.len());
            }
        }
        if *json {
            println!("{}", serde_json::to_string_pretty(&imp.servers)?);
            for n in &imp.notes {
                eprintln!("note: {}: {}", n.at, n.message);
            }
        } else {
            print!("{}", imp.to_table());
        }
        return Ok(());
    }
    if let Cmd::Update(args) = &cli.cmd {
        return Ok(appliance::update::cli::run(args)?);
    }
    if let Cmd::Inspect { images, json, record } = &cli.cmd {
        let facts = appliance::inspect::inspect_all(images)?;
        if let Some(server) = record {
            let store = appliance::topology::open_store(&cli.data_dir)?;
            let t = appliance::topology::Topology::new(&store)?;
            for f in &facts {
                let o = t.record_inspect(server, f)?;
                eprintln!("recorded {} for {server}: {} change(s)", f.image, o.changes.len());
            }
        }
        if *json {
            println!("{}", serde_json::to_string_pretty(&facts)?);
        } else {
            facts.iter().for_each(|f| print!("{}", appliance::inspect::to_table(f)));
        }
        return Ok(());
    }
    if let Cmd::Scan {
        iface,
        json,
        rate,
        ports,
        max_time,
        record,
    } = &cli.cmd
    {
        return scan(&cli.data_dir, iface, *json, *rate, ports, *max_time, *record);
    }
    if let Cmd::Topology { format, cmd } = &cli.cmd {
        let store = appliance::topology::open_store(&cli.data_dir)?;
        let t = appliance::topology::Topology::new(&store)?;
        match cmd {
            Some(TopologyCmd::History { server, json: true }) => {
                println!("{}", serde_json::to_string_pretty(&t.history(server.as_deref())?)?)
            }
            Some(TopologyCmd::History { server, json: false }) => {
                print!("{}", appliance::topology::history_table(&t.history(server.as_deref())?))
            }
            None => print!("{}", appliance::topology::render(&t, format)?),
        }
        return Ok(());
    }
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(run(cli))
}

/// `isthmus scan`: runs the scan, records it if asked, prints it.
fn scan(data_dir: &std::path::Path, iface: &str, json: bool, rate: u32, ports: &[u16], max_time: u64, record: bool) -> Result<()> {
    let opts = appliance::scan::Options {
        iface: iface.into(),
        rate,
        ports: ports.to_vec(),
        max_time: Duration::from_secs(max_time),
        ..Default::default()
    };
    let known = appliance::scan::Known::load(data_dir);
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(indicatif::ProgressStyle::with_template(
        "{spinner} {msg:10} {bar:40} {pos}/{len} packets",
    )?);
    let report = appliance::scan::run(&opts, &known, &bar)?;
    bar.finish_and_clear();
    if record {
        let store = appliance::topology::open_store(data_dir)?;
        let t = appliance::topology::Topology::new(&store)?;
        for (server, facts) in report.facts() {
            let o = t.record_scan(&server, iface, facts)?;
            eprintln!("recorded {server}: {} change(s)", o.changes.len());
        }
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.to_table());
    }
    Ok(())
}

async fn run(cli: Cli) -> Result<()> {
    let client = Client::new(&cli.data_dir);
    match cli.cmd {
        Cmd::Serve {
            lan,
            console_listen,
            bridge_listen,
            probe_kernel,
            probe_initrd,
            peer_listen,
            standby_token_file,
        } => {
            let cfg = appliance::daemon::ServeConfig {
                data_dir: cli.data_dir,
                lan,
                console_listen,
                bridge_listen,
                probe_kernel,
                probe_initrd,
                peer_listen,
                standby_token_file,
            };
            appliance::daemon::serve(cfg).await?;
        }
        Cmd::Inventory {
            cmd: InventoryCmd::Add { file, start },
        } => {
            let d = ServerDescription::load(&file)?;
            let rec: ServerRecord = client.call("POST", "/v1/servers", Some(serde_json::to_value(&d)?)).await?;
            println!(
                "added {} ({} NIC(s), {} disk(s))",
                rec.name,
                rec.profile.nics.len(),
                rec.profile.disks.len()
            );
            if start {
                let r: serde_json::Value = client.call("POST", &format!("/v1/servers/{}/start", rec.name), None).await?;
                println!("started {} on its source host (QEMU pid {})", rec.name, r["pid"]);
            }
        }
        Cmd::Server {
            cmd: ServerCmd::Start { name },
        } => {
            let r: serde_json::Value = client.call("POST", &format!("/v1/servers/{name}/start"), None).await?;
            println!("started {name} (QEMU pid {})", r["pid"]);
        }
        Cmd::Cloud {
            cmd:
                CloudCmd::Enroll {
                    name,
                    url,
                    fingerprint,
                    token_file,
                },
        } => {
            let mut token = String::new();
            if token_file.as_os_str() == "-" {
                std::io::stdin().read_to_string(&mut token)?;
            } else {
                token = std::fs::read_to_string(&token_file).with_context(|| format!("reading token file {}", token_file.display()))?;
            }
            let req = EnrollRequest {
                name,
                url,
                fingerprint,
                token: token.trim().to_string(),
            };
            let c: appliance::app::CloudSummary = client.call("POST", "/v1/clouds", Some(serde_json::to_value(&req)?)).await?;
            println!(
                "enrolled {} at {}; bridge to {}; guests run under {}",
                c.name,
                c.url,
                c.bridge_endpoint,
                c.accel.unwrap_or_default()
            );
        }
        Cmd::Lcg { cmd } => appliance::lcg_api::run(&client, cmd).await?,
        Cmd::Dr { cmd } => appliance::dr::api::run(&client, cmd).await?,
        Cmd::Cloud {
            cmd: CloudCmd::Remove { name },
        } => {
            let _: serde_json::Value = client.call("DELETE", &format!("/v1/clouds/{name}"), None).await?;
            println!("removed {name}; its tunnel is closed");
        }
        Cmd::Move {
            server,
            to,
            json,
            no_wait,
            rehearse,
        } => {
            let req = MoveRequest { server, to, rehearse };
            let mv: MoveRecord = client.call("POST", "/v1/moves", Some(serde_json::to_value(&req)?)).await?;
            if no_wait {
                println!("{}", if json { serde_json::to_string(&mv)? } else { mv.id });
                return Ok(());
            }
            let detail = follow(&client, &mv.id, !json).await?;
            if json {
                println!("{}", serde_json::to_string(&detail)?);
            }
            if rehearse {
                return rehearsal_outcome(&detail, json);
            }
            if detail.mv.step != Step::Done {
                bail!(
                    "move {} ended {}: {}",
                    detail.mv.id,
                    detail.mv.step.label(),
                    detail.mv.failure.unwrap_or_default()
                );
            }
        }
        Cmd::Stage { image, to, json } => {
            let s: Status = client.call("GET", "/v1/status", None).await?;
            let Some(cloud) = s.clouds.iter().find(|c| c.name == to) else {
                bail!("no cloud {to}: `isthmus status` lists the enrolled clouds");
            };
            let bar = indicatif::ProgressBar::new(0);
            bar.set_style(indicatif::ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:40} {bytes}/{total_bytes} {bytes_per_sec} ETA {eta}",
            )?);
            if json {
                bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
            }
            let b = bar.clone();
            let progress: appliance::moves::transfer::Progress = std::sync::Arc::new(move |done, total| {
                b.set_length(total);
                b.set_position(done);
            });
            let opts = appliance::moves::transfer::Options::default();
            let sent = appliance::moves::stage::stage(&cli.data_dir, &cloud.url, &image, &opts, progress).await?;
            bar.finish_and_clear();
            if json {
                println!("{}", serde_json::to_string_pretty(&sent)?);
            } else {
                let d = &sent.done;
                println!(
                    "staged {} on {to} as disk {}: {} data blocks, {} sent ({:.1} MiB on the wire), {} already there; digest {}",
                    image.display(),
                    d.id,
                    d.blocks,
                    d.blocks_sent,
                    d.wire_bytes as f64 / 1048576.0,
                    d.blocks_deduped,
                    d.digest
                );
            }
        }
        Cmd::Status { json } => {
            let s: Status = client.call("GET", "/v1/status", None).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                print_status(&s);
            }
        }
        Cmd::Import { .. } => unreachable!("handled before the runtime starts"),
        Cmd::Inspect { .. } => unreachable!("handled before the runtime starts"),
        Cmd::Topology { .. } => unreachable!("handled before the runtime starts"),
        Cmd::Scan { .. } => unreachable!("handled before the runtime starts"),
        Cmd::Update(_) => unreachable!("handled before the runtime starts"),
        Cmd::Admin {
            cmd: AdminCmd::SetPassword,
        } => {
            let mut pw = String::new();
            std::io::stdin().read_line(&mut pw)?;
            let body = serde_json::json!({ "password": pw.trim_end_matches(['\r', '\n']) });
            let _: serde_json::Value = client.call("PUT", "/v1/admin/password", Some(body)).await?;
            println!("admin password changed");
        }
    }
    Ok(())
}

/// Says what a finished rehearsal saw; an error when it failed.
fn rehearsal_outcome(detail: &MoveDetail, json: bool) -> Result<()> {
    let mv = &detail.mv;
    if let (false, Some(r)) = (json, &mv.rehearsal) {
        println!(
            "rehearsal {}: copy of {} in {} {} ({} console bytes, last line {:?}); rehearsal guest {}",
            mv.id,
            mv.server,
            r.cloud,
            match r.boot_ms {
                Some(ms) => format!("booted in {:.1} s", ms as f64 / 1000.0),
                None => "did not boot".into(),
            },
            r.console_bytes,
            r.console_last_line,
            if r.guest_deleted { "deleted" } else { "NOT deleted" }
        );
    }
    match (&mv.failure, mv.step) {
        (None, Step::Rehearsed) => Ok(()),
        (failure, step) => bail!(
            "rehearsal {} ended {}: {}; the source kept running",
            mv.id,
            step.label(),
            failure.clone().unwrap_or_default()
        ),
    }
}

/// Follows a move to its end with a progress bar and its timeline.
async fn follow(client: &Client, id: &str, show: bool) -> Result<MoveDetail> {
    let bar = indicatif::ProgressBar::new(100);
    if show {
        bar.set_style(indicatif::ProgressStyle::with_template(
            "{spinner} [{elapsed_precise}] {bar:40} {pos:>3}% {msg}",
        )?);
    } else {
        bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
    }
    let mut shown = 0;
    let mut copy_start: Option<(std::time::Instant, u64, u64)> = None;
    loop {
        let d: MoveDetail = client.call("GET", &format!("/v1/moves/{id}"), None).await?;
        for e in &d.events[shown..] {
            bar.println(format!("{:>7.1}s  {:<24} {}", e.t_s, e.step.label(), e.message));
        }
        shown = d.events.len();
        bar.set_position(d.progress_pct as u64);
        let msg = match d.copy {
            Some((done, total)) if d.mv.step == Step::CopyDisks => {
                // Rate and ETA of the disk being copied (the sample restarts with each disk).
                let (t0, d0, t0_total) = *copy_start.get_or_insert((std::time::Instant::now(), done, total));
                if t0_total != total || done < d0 {
                    copy_start = Some((std::time::Instant::now(), done, total));
                }
                let secs = t0.elapsed().as_secs_f64();
                let rate = if secs > 0.5 { done.saturating_sub(d0) as f64 / secs } else { 0.0 };
                let eta = if rate > 0.0 {
                    format!("{:.0} s", (total - done.min(total)) as f64 / rate)
                } else {
                    "?".into()
                };
                format!(
                    "copying {:.1}/{:.1} MiB, {:.1} MiB/s, ETA {eta}",
                    done as f64 / 1048576.0,
                    total as f64 / 1048576.0,
                    rate / 1048576.0
                )
            }
            _ => d.mv.step.label().to_string(),
        };
        bar.set_message(msg);
        if d.mv.step.is_terminal() {
            bar.finish_and_clear();
            return Ok(d);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

fn print_status(s: &Status) {
    println!("{:<16} {:<16} {:<18} {:<8} {:<10} RUNS IN", "SERVER", "IP", "MAC", "NIC", "DISK");
    for v in &s.servers {
        let nic = v.profile.nics.first();
        println!(
            "{:<16} {:<16} {:<18} {:<8} {:<10} {}",
            v.name,
            v.ip.map(|i| i.to_string()).unwrap_or_default(),
            nic.map(|n| n.mac.to_string()).unwrap_or_default(),
            nic.map(|n| format!("{:?}", n.model).to_lowercase()).unwrap_or_default(),
            v.profile
                .disks
                .first()
                .map(|d| format!("{:?}", d.bus).to_lowercase())
                .unwrap_or_default(),
            v.location
        );
    }
    println!();
    println!("{:<16} {:<32} {:<6} BRIDGE", "CLOUD", "API", "ACCEL");
    for c in &s.clouds {
        println!(
            "{:<16} {:<32} {:<6} {} ({})",
            c.name,
            c.url,
            c.accel.clone().unwrap_or_default(),
            c.bridge_endpoint,
            if c.bridge_established { "up" } else { "no handshake yet" }
        );
    }
    println!();
    println!("{:<6} {:<16} {:<12} {:<24} {:>4}%", "MOVE", "SERVER", "TO", "STEP", "");
    for m in &s.moves {
        println!(
            "{:<6} {:<16} {:<12} {:<24} {:>4}%",
            m.mv.id,
            m.mv.server,
            m.mv.to,
            m.mv.step.label(),
            m.progress_pct
        );
    }
}
