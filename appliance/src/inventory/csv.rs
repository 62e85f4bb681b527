//! CSV inventories (CMDB and spreadsheet exports): one row per server.
//!
//! The first row that is not a `#` comment is the header. Column names are
//! case-insensitive; spaces and `-` count as `_`. Comma or semicolon separate
//! fields (semicolon when the header has no comma, as European Excel writes);
//! fields may be quoted with `"` (a doubled `""` is a quote). A UTF-8 BOM and
//! CRLF line ends are accepted. Columns (README "Import schema" has the table):
//!
//! | column | meaning |
//! |---|---|
//! | `name` (required) | server name |
//! | `guest_os` | free text |
//! | `firmware` | `bios` (default) or `efi`/`uefi` |
//! | `cpus` | vCPUs (default 1) |
//! | `memory_mib` (or `memory_gib`) | memory |
//! | `disk<N>_controller` | controller model (`pvscsi`, `lsilogic`, `ahci`, `ide`, …) |
//! | `disk<N>_controller_id` | controller id (default `<scsi|sata|ide|nvme|virtio>0`) |
//! | `disk<N>_slot` | unit (default: next free on that controller) |
//! | `disk<N>_kind` | `disk` (default) or `cdrom` |
//! | `disk<N>_capacity` | bytes, or a number with `K`/`M`/`G`/`T` (binary) suffix |
//! | `disk<N>_file` | backing file |
//! | `nic<N>_model`, `nic<N>_mac`, `nic<N>_network` | NIC; empty MAC = generated |
//!
//! Devices are taken in the order of `N`. A repeated column: the last one wins
//! (and a note says so). Unknown columns are kept with the server and noted.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use super::model::{
    ensure_controller, parse_mac, ControllerModel, Disk, DiskKind, Import, ImportFirmware, ImportedServer, Nic, NicModel, Note,
};

/// Why a CSV inventory was refused.
#[derive(Debug, thiserror::Error)]
pub enum CsvError {
    /// The CSV reader failed (bad quoting).
    #[error("{path}: {message}")]
    Syntax {
        /// File.
        path: PathBuf,
        /// Reader's message.
        message: String,
    },
    /// No `name` column.
    #[error("{path}:{line}: the header has no `name` column; the first non-comment row must name the columns (name,cpus,memory_mib,…)")]
    NoName {
        /// File.
        path: PathBuf,
        /// Line of the header.
        line: u64,
    },
    /// A cell has a bad value.
    #[error("{path}:{line}: column {column} = {value:?}: {what}")]
    Value {
        /// File.
        path: PathBuf,
        /// Line.
        line: u64,
        /// Column.
        column: String,
        /// Cell.
        value: String,
        /// What is expected.
        what: &'static str,
    },
    /// The file has no header.
    #[error("{0}: empty CSV; the first row must be a header with at least `name`")]
    Empty(PathBuf),
}

fn norm(h: &str) -> String {
    h.trim().to_ascii_lowercase().replace([' ', '-'], "_")
}

/// Parses `40G`, `40 GiB`, `512m`, `1073741824`.
fn size(v: &str) -> Option<u64> {
    let t = v.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, u) = t.split_at(split);
    let n: u64 = n.parse().ok()?;
    let m: u64 = match u.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => return None,
    };
    n.checked_mul(m)
}

/// Parses a CSV inventory's text. `path` names it in errors and notes.
pub fn parse(text: &str, path: &Path) -> Result<Import, CsvError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let header_line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .ok_or_else(|| CsvError::Empty(path.to_path_buf()))?;
    let delim = if !header_line.contains(',') && header_line.contains(';') {
        b';'
    } else {
        b','
    };
    let mut rdr = csv::ReaderBuilder::new()
        .has_headers(false)
        .comment(Some(b'#'))
        .flexible(true)
        .trim(csv::Trim::All)
        .delimiter(delim)
        .from_reader(text.as_bytes());
    let syntax = |e: csv::Error| CsvError::Syntax {
        path: path.to_path_buf(),
        message: e.to_string(),
    };
    let mut notes = Vec::new();
    let mut header: Option<(u64, Vec<String>)> = None;
    let mut servers = Vec::new();
    for rec in rdr.records() {
        let rec = rec.map_err(syntax)?;
        let line = rec.position().map_or(0, |p| p.line());
        if rec.iter().all(str::is_empty) {
            continue;
        }
        let Some((_, cols)) = &header else {
            let cols: Vec<String> = rec.iter().map(norm).collect();
            if !cols.iter().any(|c| c == "name") {
                return Err(CsvError::NoName {
                    path: path.to_path_buf(),
                    line,
                });
            }
            let mut seen = BTreeMap::new();
            for c in &cols {
                if seen.insert(c.clone(), ()).is_some() {
                    notes.push(Note {
                        at: format!("{}:{line}", path.display()),
                        message: format!("column {c} appears twice; the last one wins"),
                    });
                }
            }
            header = Some((line, cols));
            continue;
        };
        let mut row: BTreeMap<String, String> = BTreeMap::new();
        for (c, v) in cols.iter().zip(rec.iter()) {
            row.insert(c.clone(), v.to_string());
        }
        servers.push(server(row, path, line, &mut notes)?);
    }
    if header.is_none() {
        return Err(CsvError::Empty(path.to_path_buf()));
    }
    Ok(Import { servers, notes })
}

fn server(mut row: BTreeMap<String, String>, path: &Path, line: u64, notes: &mut Vec<Note>) -> Result<ImportedServer, CsvError> {
    let bad = |column: &str, value: &str, what: &'static str| CsvError::Value {
        path: path.to_path_buf(),
        line,
        column: column.to_string(),
        value: value.to_string(),
        what,
    };
    let mut take = |k: &str| row.remove(k).filter(|v| !v.is_empty());
    let name = take("name").ok_or_else(|| bad("name", "", "every row needs a name"))?;
    let mut s = ImportedServer::named(name);
    s.guest_os = take("guest_os");
    if let Some(f) = take("firmware") {
        s.firmware = match f.to_ascii_lowercase().as_str() {
            "bios" | "legacy" => ImportFirmware::Bios,
            "efi" | "uefi" => ImportFirmware::Efi,
            _ => return Err(bad("firmware", &f, "use bios or efi")),
        };
    }
    if let Some(c) = take("cpus") {
        s.cpus = c.parse().map_err(|_| bad("cpus", &c, "a whole number of vCPUs"))?;
    }
    if let Some(m) = take("memory_mib").or_else(|| take("memory_mb")) {
        s.memory_mib = Some(m.parse().map_err(|_| bad("memory_mib", &m, "a whole number of MiB"))?);
    } else if let Some(m) = take("memory_gib").or_else(|| take("memory_gb")) {
        let g: u64 = m.parse().map_err(|_| bad("memory_gib", &m, "a whole number of GiB"))?;
        s.memory_mib = g.checked_mul(1024);
    }
    // Numbered device columns.
    let mut disk_n: Vec<u32> = Vec::new();
    let mut nic_n: Vec<u32> = Vec::new();
    for k in row.keys() {
        for (prefix, list) in [("disk", &mut disk_n), ("nic", &mut nic_n)] {
            if let Some((n, _)) = k.strip_prefix(prefix).and_then(|r| r.split_once('_')) {
                if let Ok(n) = n.parse::<u32>() {
                    if !list.contains(&n) {
                        list.push(n);
                    }
                }
            }
        }
    }
    disk_n.sort_unstable();
    nic_n.sort_unstable();
    for n in disk_n {
        let mut take = |f: &str| row.remove(&format!("disk{n}_{f}")).filter(|v| !v.is_empty());
        let model = take("controller").map(|m| ControllerModel::from_vocab(&m));
        let file = take("file");
        let cap = take("capacity");
        let kind = take("kind");
        let id = take("controller_id");
        let slot = take("slot");
        let Some(model) = model else {
            if file.is_some() || cap.is_some() {
                return Err(bad(
                    &format!("disk{n}_controller"),
                    "",
                    "a disk needs its controller model (pvscsi, lsilogic, ahci, ide, …)",
                ));
            }
            continue;
        };
        let id = id.unwrap_or_else(|| format!("{}0", model.id_prefix()));
        ensure_controller(&mut s, &id, model);
        let slot = match slot {
            Some(v) => v.parse().map_err(|_| bad(&format!("disk{n}_slot"), &v, "a whole number"))?,
            None => (0..)
                .find(|u| !s.disks.iter().any(|d| d.controller == id && d.slot == *u))
                .unwrap_or(0),
        };
        let kind = match kind.as_deref().map(str::to_ascii_lowercase).as_deref() {
            None | Some("disk") | Some("hdd") => DiskKind::Disk,
            Some("cdrom") | Some("cd") | Some("dvd") => DiskKind::Cdrom,
            Some(_) => return Err(bad(&format!("disk{n}_kind"), kind.as_deref().unwrap_or(""), "use disk or cdrom")),
        };
        let capacity_bytes = match cap {
            Some(c) => Some(size(&c).ok_or_else(|| bad(&format!("disk{n}_capacity"), &c, "bytes, or a number with K, M, G or T"))?),
            None => None,
        };
        s.disks.push(Disk {
            controller: id,
            slot,
            kind,
            capacity_bytes,
            file,
            wwn: None,
            serial: None,
        });
    }
    for (i, n) in nic_n.into_iter().enumerate() {
        let mut take = |f: &str| row.remove(&format!("nic{n}_{f}")).filter(|v| !v.is_empty());
        let Some(model) = take("model") else { continue };
        let mac = match take("mac") {
            Some(m) => Some(parse_mac(&m).ok_or_else(|| bad(&format!("nic{n}_mac"), &m, "a MAC like 00:50:56:01:02:03, or empty"))?),
            None => None,
        };
        s.nics.push(Nic {
            slot: i as u32,
            model: NicModel::parse(&model),
            mac,
            network: take("network"),
        });
    }
    s.sort_devices();
    let unknown: Vec<String> = row.iter().filter(|(_, v)| !v.is_empty()).map(|(k, _)| k.clone()).collect();
    if !unknown.is_empty() {
        notes.push(Note {
            at: format!("{}:{line}", path.display()),
            message: format!("columns not in the schema, kept: {}", unknown.join(", ")),
        });
    }
    s.extras.unknown.extend(row.into_iter().filter(|(_, v)| !v.is_empty()));
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn semicolons_bom_quotes() {
        let t = "\u{feff}# export\r\nName;CPUs;Memory MiB;disk1_controller;disk1_capacity;nic1_model;nic1_mac;owner\r\n\"web;1\";2;2048;pvscsi;40G;VMXNET3;00:50:56:AA:BB:CC;ops\r\n";
        let imp = parse(t, Path::new("c.csv")).unwrap();
        let s = &imp.servers[0];
        assert_eq!(s.name, "web;1");
        assert_eq!(s.disks[0].capacity_bytes, Some(40 << 30));
        assert_eq!(s.nics[0].mac.unwrap().to_string(), "00:50:56:aa:bb:cc");
        assert_eq!(s.extras.unknown.get("owner").map(String::as_str), Some("ops"));
    }

    #[test]
    fn errors_name_line_and_column() {
        let e = parse("name,cpus\nx,two\n", Path::new("c.csv")).unwrap_err();
        assert!(e.to_string().starts_with("c.csv:2: column cpus"), "{e}");
        assert!(matches!(parse("host,cpus\n", Path::new("c.csv")), Err(CsvError::NoName { .. })));
    }

    proptest::proptest! {
        #[test]
        fn never_panics(s in "\\PC{0,300}") {
            let _ = parse(&s, Path::new("x.csv"));
            let _ = parse(&format!("name,disk1_controller,disk1_slot,nic1_mac\n{s}"), Path::new("x.csv"));
        }
    }
}
