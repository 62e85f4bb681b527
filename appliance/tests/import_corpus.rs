//! Conformance: every descriptor under `tests/data/inventory/` imports to
//! exactly the facts in its `<file>.expected.json` (written by reading the
//! descriptor by hand), or, for hostile files, fails with the expected message.

use std::path::{Path, PathBuf};

fn corpus() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/inventory")
}

#[test]
fn every_file_gives_every_fact() {
    let dir = corpus();
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("corpus directory")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.is_file() && !p.to_string_lossy().ends_with(".expected.json"))
        .collect();
    files.sort();
    assert!(files.len() >= 15, "corpus has only {} files", files.len());
    let mut failures = Vec::new();
    for f in &files {
        let name = f.file_name().expect("name").to_string_lossy().into_owned();
        let exp_path = dir.join(format!("{name}.expected.json"));
        let expected: serde_json::Value = match std::fs::read_to_string(&exp_path) {
            Ok(t) => serde_json::from_str(&t).unwrap_or_else(|e| panic!("{}: {e}", exp_path.display())),
            Err(_) => {
                failures.push(format!("{name}: no {name}.expected.json"));
                continue;
            }
        };
        match (appliance::inventory::import_file(f), expected.get("error")) {
            (Ok(imp), None) => {
                let got = serde_json::to_value(&imp.servers).expect("json");
                if got != expected {
                    let (g, e) = (
                        got.as_array().cloned().unwrap_or_default(),
                        expected.as_array().cloned().unwrap_or_default(),
                    );
                    if g.len() != e.len() {
                        failures.push(format!("{name}: {} servers, expected {}", g.len(), e.len()));
                    }
                    for (i, (g, e)) in g.iter().zip(e.iter()).enumerate() {
                        for (k, ev) in e.as_object().into_iter().flatten() {
                            if g.get(k) != Some(ev) {
                                failures.push(format!(
                                    "{name}: server {i} {k}: got {}, expected {ev}",
                                    g.get(k).cloned().unwrap_or_default()
                                ));
                            }
                        }
                    }
                }
            }
            (Err(e), Some(want)) => {
                let want = want.as_str().unwrap_or_default();
                if !e.to_string().contains(want) {
                    failures.push(format!("{name}: error {e:?} does not say {want:?}"));
                }
            }
            (Ok(_), Some(want)) => failures.push(format!("{name}: imported, but should fail with {want}")),
            (Err(e), None) => failures.push(format!("{name}: {e}")),
        }
    }
    println!("corpus: {} files, {} failures", files.len(), failures.len());
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_importable_server_converts_or_says_why() {
    for e in std::fs::read_dir(corpus()).expect("corpus") {
        let p = e.expect("entry").path();
        if p.to_string_lossy().ends_with(".json") {
            continue;
        }
        let Ok(imp) = appliance::inventory::import_file(&p) else { continue };
        for s in &imp.servers {
            let c = s.to_profile();
            match &c.profile {
                Some(profile) => {
                    // A profile with MACs must be one QEMU can run, or say why not.
                    if let Err(err) = profile.validate() {
                        assert!(!err.to_string().is_empty(), "{}: {}", p.display(), s.name);
                    }
                }
                None => assert!(!c.lost.is_empty(), "{}: {} has no profile and no reason", p.display(), s.name),
            }
        }
    }
}
