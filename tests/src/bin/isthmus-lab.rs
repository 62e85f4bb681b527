//! `make demo`: the walking skeleton end to end, with a readable timeline.
//! The last line is one JSON object with what the demo measured and checked.

use anyhow::Result;
use isthmus_lab::scenario::{self, Lab, Options};

fn main() -> Result<()> {
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
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
