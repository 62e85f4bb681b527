//! `make demo`: the walking skeleton end to end, with a readable timeline.
//! The last line is one JSON object with what the demo measured and checked.

use anyhow::Result;
use isthmus_lab::scenario::{self, Lab, Options};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--help" || a == "-h") {
        println!("isthmus-lab: runs the walking-skeleton demo in network namespaces.\n");
        println!("  --hold   keep the lab running after the demo and forward the web console to");
        println!("           https://127.0.0.1:8443/ on this host until you press Enter");
        return Ok(());
    }
    let hold = args.iter().any(|a| a == "--hold");
    scenario::preflight()?;
    eprintln!("isthmus demo: building or reusing the test server image, making the lab networks…");
    let mut lab = Lab::up(Options {
        tag: "d",
        ..Default::default()
    })?;
    let result = scenario::run_skeleton(&mut lab);
    println!();
    println!("{:>8}  {:>7}  {:<28} what was checked", "t (s)", "took", "step");
    for e in &lab.timeline {
        println!("{:>8.2}  {:>7.2}  {:<28} {}", e.t_s, e.took_s, e.step, e.checked);
    }
    let report = match result {
        Ok(r) => r,
        Err(e) => {
            eprintln!("\nappliance log (tail):\n{}", isthmus_lab::process::tail(&lab.appliance_log()));
            eprintln!("\ncloud node log (tail):\n{}", isthmus_lab::process::tail(&lab.node_log()));
            return Err(e);
        }
    };
    println!();
    println!("move timeline (from the appliance's store):");
    for e in report.moved["events"].as_array().cloned().unwrap_or_default() {
        println!(
            "{:>8.2}s  {}",
            e["t_s"].as_f64().unwrap_or(0.0),
            e["message"].as_str().unwrap_or("")
        );
    }
    println!();
    println!("client's answer before the move:\n  {}", report.before.trim().replace('\n', "\n  "));
    println!("client's answer after the move:\n  {}", report.after.trim().replace('\n', "\n  "));
    println!();
    println!(
        "web console: https://{}:8443/ (user admin; in namespace {}; password set by the demo)",
        scenario::APPLIANCE_INET,
        lab.dc
    );
    if hold {
        hold_console(&lab, &report.password)?;
    }
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}

/// Forwards the console to 127.0.0.1:8443 on the host until Enter.
fn hold_console(lab: &Lab, password: &str) -> Result<()> {
    let inner = format!("ip netns exec {} socat STDIO TCP:{}:8443", lab.dc, scenario::APPLIANCE_INET);
    let mut fwd = std::process::Command::new("socat")
        .args(["TCP-LISTEN:8443,bind=127.0.0.1,reuseaddr,fork", &format!("SYSTEM:{inner}")])
        .spawn()?;
    println!("console forwarded: https://127.0.0.1:8443/  user admin, password {password}");
    println!(
        "(certificate issued by the appliance CA: {}/appliance/pki/ca.pem)",
        lab.work.display()
    );
    println!("press Enter to tear the lab down");
    let mut line = String::new();
    let _ = std::io::stdin().read_line(&mut line);
    let _ = fwd.kill();
    let _ = fwd.wait();
    Ok(())
}
