//! A small, read-only reader of Windows registry hive files (`regf`), enough
//! to look keys up by path and read `REG_SZ`, `REG_EXPAND_SZ`, `REG_DWORD`
//! and `REG_MULTI_SZ` values. Format: the base block (4096 bytes, signature
//! `regf`, root cell offset at 0x24) is followed by the hive bins, whose
//! cells (`i32` size, negative when allocated) hold key nodes (`nk`), value
//! keys (`vk`), subkey lists (`li`, `lf`, `lh`, `ri`), value lists and big
//! data (`db`). Every offset, size and count comes from hostile bytes and is
//! checked before use; nothing here can panic or loop without bound.
//!
//! Our own reader rather than the `nt-hive` crate: that crate is
//! GPL-2.0-or-later (our firmware image is Apache-2.0), and fuzzing found
//! three panics in it on hostile hives.

use std::fmt;

/// Size of the base block before the first hive bin.
const BASE_BLOCK: usize = 4096;
/// Most subkeys or values looked at under one key.
pub const MAX_ENTRIES: usize = 1024;
/// Largest value data returned (big data included).
const MAX_VALUE: usize = 1 << 20;
/// Size of one big-data segment.
const DB_SEGMENT: usize = 16344;
/// Key name stored as Latin-1 (else UTF-16LE).
const KEY_COMP_NAME: u16 = 0x0020;
/// Value name stored as Latin-1 (else UTF-16LE).
const VALUE_COMP_NAME: u16 = 0x0001;

/// Registry value types read here.
pub const REG_SZ: u32 = 1;
/// `REG_EXPAND_SZ`.
pub const REG_EXPAND_SZ: u32 = 2;
/// `REG_DWORD` (little-endian).
pub const REG_DWORD: u32 = 4;
/// `REG_MULTI_SZ`.
pub const REG_MULTI_SZ: u32 = 7;

/// Why a hive cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegfError {
    /// The file does not start with `regf` or is shorter than its base block.
    #[error("not a registry hive (no regf base block)")]
    NotAHive,
    /// A cell offset points outside the hive bins or its size is impossible.
    #[error("registry hive damaged: {what} at cell offset {offset:#x}")]
    Damaged {
        /// What was being read.
        what: &'static str,
        /// Offset relative to the first hive bin.
        offset: u32,
    },
}

fn damaged(what: &'static str, offset: u32) -> RegfError {
    RegfError::Damaged { what, offset }
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at.checked_add(2)?)?.try_into().ok()?))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at.checked_add(4)?)?.try_into().ok()?))
}

/// A hive held in memory.
pub struct Hive<'a> {
    /// The hive bins (file bytes after the base block).
    bins: &'a [u8],
    root: u32,
}

impl fmt::Debug for Hive<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hive")
            .field("bins", &self.bins.len())
            .field("root", &self.root)
            .finish()
    }
}

impl<'a> Hive<'a> {
    /// Checks the base block; the bins are read lazily.
    pub fn new(bytes: &'a [u8]) -> Result<Self, RegfError> {
        if bytes.len() < BASE_BLOCK || !bytes.starts_with(b"regf") {
            return Err(RegfError::NotAHive);
        }
        let root = u32_at(bytes, 0x24).ok_or(RegfError::NotAHive)?;
        Ok(Hive {
            bins: &bytes[BASE_BLOCK..],
            root,
        })
    }

    /// The data of the allocated cell at `offset` (without its size field).
    fn cell(&self, offset: u32, what: &'static str) -> Result<&'a [u8], RegfError> {
        let at = offset as usize;
        let size = u32_at(self.bins, at).ok_or_else(|| damaged(what, offset))? as i32;
        // Allocated cells have a negative size; free cells are not read.
        let len = size.checked_neg().filter(|l| *l >= 8).ok_or_else(|| damaged(what, offset))? as usize;
        let end = at
            .checked_add(len)
            .filter(|e| *e <= self.bins.len())
            .ok_or_else(|| damaged(what, offset))?;
        Ok(&self.bins[at + 4..end])
    }

    /// The root key.
    pub fn root(&self) -> Result<Key<'_, 'a>, RegfError> {
        self.key(self.root)
    }

    fn key(&self, offset: u32) -> Result<Key<'_, 'a>, RegfError> {
        let cell = self.cell(offset, "key node")?;
        if !cell.starts_with(b"nk") || cell.len() < 0x4C {
            return Err(damaged("key node signature", offset));
        }
        Ok(Key { hive: self, cell, offset })
    }

    /// Offsets of the key nodes a subkey list names (one level of `ri`).
    fn subkey_offsets(&self, list: u32, out: &mut Vec<u32>, depth: u8) -> Result<(), RegfError> {
        let cell = self.cell(list, "subkey list")?;
        let count = u16_at(cell, 2).ok_or_else(|| damaged("subkey list", list))? as usize;
        let (step, nested) = match cell.get(..2) {
            Some(b"li") => (4, false),
            Some(b"lf") | Some(b"lh") => (8, false),
            Some(b"ri") if depth == 0 => (4, true),
            _ => return Err(damaged("subkey list signature", list)),
        };
        for i in 0..count {
            if out.len() >= MAX_ENTRIES {
                break;
            }
            let off = u32_at(cell, 4 + i * step).ok_or_else(|| damaged("subkey list entry", list))?;
            if nested {
                self.subkey_offsets(off, out, depth + 1)?;
            } else {
                out.push(off);
            }
        }
        Ok(())
    }
}

fn name_of(raw: &[u8], latin1: bool) -> String {
    if latin1 {
        raw.iter().map(|&b| b as char).collect()
    } else {
        let units: Vec<u16> = raw.chunks_exact(2).map(|c| u16::from_le_bytes([c[0], c[1]])).collect();
        String::from_utf16_lossy(&units)
    }
}

/// A key node.
#[derive(Clone, Copy)]
pub struct Key<'h, 'a> {
    hive: &'h Hive<'a>,
    cell: &'a [u8],
    offset: u32,
}

impl fmt::Debug for Key<'_, '_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Key")
            .field("offset", &self.offset)
            .field("name", &self.name())
            .finish()
    }
}

impl<'h, 'a> Key<'h, 'a> {
    /// The key's own name (one path component).
    pub fn name(&self) -> String {
        let flags = u16_at(self.cell, 2).unwrap_or(0);
        let len = u16_at(self.cell, 0x48).unwrap_or(0) as usize;
        let raw = self.cell.get(0x4C..0x4C + len).unwrap_or_default();
        name_of(raw, flags & KEY_COMP_NAME != 0)
    }

    /// The subkeys (at most [`MAX_ENTRIES`]); damaged entries are skipped.
    pub fn subkeys(&self) -> Vec<Key<'h, 'a>> {
        let count = u32_at(self.cell, 0x14).unwrap_or(0);
        let list = u32_at(self.cell, 0x1C).unwrap_or(u32::MAX);
        if count == 0 || list == u32::MAX {
            return vec![];
        }
        let mut offsets = vec![];
        if self.hive.subkey_offsets(list, &mut offsets, 0).is_err() && offsets.is_empty() {
            return vec![];
        }
        offsets.into_iter().filter_map(|o| self.hive.key(o).ok()).collect()
    }

    /// The subkey named `name` (case-insensitive, as Windows compares).
    pub fn subkey(&self, name: &str) -> Option<Key<'h, 'a>> {
        self.subkeys().into_iter().find(|k| k.name().eq_ignore_ascii_case(name))
    }

    /// The key at a backslash-separated path below this one.
    pub fn subpath(&self, path: &str) -> Option<Key<'h, 'a>> {
        let mut key = *self;
        for part in path.split('\\').filter(|p| !p.is_empty()) {
            key = key.subkey(part)?;
        }
        Some(key)
    }

    /// The value named `name` (case-insensitive; `""` is the default value).
    pub fn value(&self, name: &str) -> Option<Value> {
        let count = (u32_at(self.cell, 0x24)? as usize).min(MAX_ENTRIES);
        let list_off = u32_at(self.cell, 0x28)?;
        if count == 0 {
            return None;
        }
        let list = self.hive.cell(list_off, "value list").ok()?;
        (0..count)
            .filter_map(|i| u32_at(list, i * 4))
            .filter_map(|o| self.value_at(o))
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    }

    fn value_at(&self, offset: u32) -> Option<(String, Value)> {
        let cell = self.hive.cell(offset, "value key").ok()?;
        if !cell.starts_with(b"vk") {
            return None;
        }
        let name_len = u16_at(cell, 2)? as usize;
        let flags = u16_at(cell, 0x10)?;
        let name = name_of(cell.get(0x14..0x14 + name_len)?, flags & VALUE_COMP_NAME != 0);
        let size_field = u32_at(cell, 4)?;
        let kind = u32_at(cell, 0x0C)?;
        let data = if size_field & 0x8000_0000 != 0 {
            // Resident: up to 4 bytes in the offset field itself.
            let len = (size_field & 0x7FFF_FFFF) as usize;
            cell.get(8..8 + len.min(4))?.to_vec()
        } else {
            let len = size_field as usize;
            if len > MAX_VALUE {
                return None;
            }
            self.data(u32_at(cell, 8)?, len)?
        };
        Some((name, Value { kind, data }))
    }

    fn data(&self, offset: u32, len: usize) -> Option<Vec<u8>> {
        let cell = self.hive.cell(offset, "value data").ok()?;
        if len > DB_SEGMENT && cell.starts_with(b"db") {
            let segments = u16_at(cell, 2)? as usize;
            let list = self.hive.cell(u32_at(cell, 4)?, "big data list").ok()?;
            let mut out = Vec::with_capacity(len);
            for i in 0..segments {
                if out.len() >= len {
                    break;
                }
                let seg = self.hive.cell(u32_at(list, i * 4)?, "big data segment").ok()?;
                let take = (len - out.len()).min(DB_SEGMENT).min(seg.len());
                out.extend_from_slice(&seg[..take]);
            }
            return (out.len() == len).then_some(out);
        }
        cell.get(..len).map(<[u8]>::to_vec)
    }
}

/// A value's type and data.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Value {
    /// The registry type (`REG_SZ` = 1, …).
    pub kind: u32,
    /// The raw data.
    pub data: Vec<u8>,
}

fn utf16(data: &[u8]) -> String {
    name_of(data, false)
}

impl Value {
    /// A `REG_SZ`/`REG_EXPAND_SZ` as text, without trailing NULs.
    pub fn string(&self) -> Option<String> {
        matches!(self.kind, REG_SZ | REG_EXPAND_SZ).then(|| utf16(&self.data).trim_end_matches('\0').to_string())
    }

    /// A `REG_DWORD` of exactly four bytes.
    pub fn dword(&self) -> Option<u32> {
        if self.kind != REG_DWORD {
            return None;
        }
        Some(u32::from_le_bytes(self.data.as_slice().try_into().ok()?))
    }

    /// A `REG_MULTI_SZ`'s non-empty strings (at most 64).
    pub fn multi(&self) -> Option<Vec<String>> {
        (self.kind == REG_MULTI_SZ).then(|| {
            utf16(&self.data)
                .split('\0')
                .filter(|s| !s.is_empty())
                .take(64)
                .map(str::to_string)
                .collect()
        })
    }
}

#[cfg(test)]
pub(crate) mod build {
    //! A tiny hive writer for tests: cells appended in one bin.

    /// A key to write: name, values (name, type, data), subkeys.
    pub struct K {
        pub name: &'static str,
        pub values: Vec<(&'static str, u32, Vec<u8>)>,
        pub subkeys: Vec<K>,
    }

    fn cell(bins: &mut Vec<u8>, data: &[u8]) -> u32 {
        let off = bins.len() as u32;
        let len = (data.len() + 4).div_ceil(8) * 8;
        bins.extend_from_slice(&(-(len as i32)).to_le_bytes());
        bins.extend_from_slice(data);
        bins.resize(off as usize + len, 0);
        off
    }

    fn key(bins: &mut Vec<u8>, k: &K) -> u32 {
        let subs: Vec<u32> = k.subkeys.iter().map(|s| key(bins, s)).collect();
        let mut vals = vec![];
        for (name, kind, data) in &k.values {
            let doff = if data.len() <= 4 { 0 } else { cell(bins, data) };
            let mut vk = b"vk".to_vec();
            vk.extend_from_slice(&(name.len() as u16).to_le_bytes());
            let size = if data.len() <= 4 {
                data.len() as u32 | 0x8000_0000
            } else {
                data.len() as u32
            };
            vk.extend_from_slice(&size.to_le_bytes());
            if data.len() <= 4 {
                let mut inline = data.clone();
                inline.resize(4, 0);
                vk.extend_from_slice(&inline);
            } else {
                vk.extend_from_slice(&doff.to_le_bytes());
            }
            vk.extend_from_slice(&kind.to_le_bytes());
            vk.extend_from_slice(&1u16.to_le_bytes());
            vk.extend_from_slice(&0u16.to_le_bytes());
            vk.extend_from_slice(name.as_bytes());
            vals.push(cell(bins, &vk));
        }
        let vlist: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        let vlist = if vals.is_empty() { u32::MAX } else { cell(bins, &vlist) };
        let slist = if subs.is_empty() {
            u32::MAX
        } else {
            let mut lf = b"lf".to_vec();
            lf.extend_from_slice(&(subs.len() as u16).to_le_bytes());
            for s in &subs {
                lf.extend_from_slice(&s.to_le_bytes());
                lf.extend_from_slice(&0u32.to_le_bytes());
            }
            cell(bins, &lf)
        };
        let mut nk = vec![0u8; 0x4C];
        nk[..2].copy_from_slice(b"nk");
        nk[2..4].copy_from_slice(&0x20u16.to_le_bytes());
        nk[0x14..0x18].copy_from_slice(&(subs.len() as u32).to_le_bytes());
        nk[0x1C..0x20].copy_from_slice(&slist.to_le_bytes());
        nk[0x24..0x28].copy_from_slice(&(vals.len() as u32).to_le_bytes());
        nk[0x28..0x2C].copy_from_slice(&vlist.to_le_bytes());
        nk[0x48..0x4A].copy_from_slice(&(k.name.len() as u16).to_le_bytes());
        nk.extend_from_slice(k.name.as_bytes());
        cell(bins, &nk)
    }

    /// A whole hive file with `root` as its root key.
    pub fn hive(root: &K) -> Vec<u8> {
        let mut bins = b"hbin".to_vec();
        bins.resize(32, 0);
        let root_off = key(&mut bins, root);
        let mut out = vec![0u8; super::BASE_BLOCK];
        out[..4].copy_from_slice(b"regf");
        out[0x24..0x28].copy_from_slice(&root_off.to_le_bytes());
        out.extend_from_slice(&bins);
        out
    }

    /// UTF-16LE with a trailing NUL.
    pub fn sz(s: &str) -> Vec<u8> {
        s.encode_utf16().chain([0]).flat_map(u16::to_le_bytes).collect()
    }

    /// `REG_MULTI_SZ` data.
    pub fn multi(items: &[&str]) -> Vec<u8> {
        let mut out: Vec<u8> = items.iter().flat_map(|s| sz(s)).collect();
        out.extend_from_slice(&[0, 0]);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::build::{hive, multi, sz, K};
    use super::*;

    fn sample() -> Vec<u8> {
        hive(&K {
            name: "ROOT",
            values: vec![],
            subkeys: vec![K {
                name: "Services",
                values: vec![
                    ("Start", REG_DWORD, 0u32.to_le_bytes().to_vec()),
                    ("Hostname", REG_SZ, sz("web01")),
                    ("IPAddress", REG_MULTI_SZ, multi(&["10.0.0.5", "10.0.0.6"])),
                    ("Odd", REG_DWORD, vec![1, 2]),
                ],
                subkeys: vec![K {
                    name: "Tcpip",
                    values: vec![],
                    subkeys: vec![],
                }],
            }],
        })
    }

    #[test]
    fn reads_keys_and_values_case_insensitively() {
        let bytes = sample();
        let h = Hive::new(&bytes).unwrap();
        let root = h.root().unwrap();
        assert_eq!(root.name(), "ROOT");
        let s = root.subpath("services").unwrap();
        assert_eq!(s.value("start").unwrap().dword(), Some(0));
        assert_eq!(s.value("HOSTNAME").unwrap().string().as_deref(), Some("web01"));
        assert_eq!(s.value("IPAddress").unwrap().multi().unwrap(), vec!["10.0.0.5", "10.0.0.6"]);
        assert_eq!(s.value("Odd").unwrap().dword(), None, "a two-byte DWORD is not a DWORD");
        assert!(root.subpath("Services\\Tcpip").is_some());
        assert!(root.subpath("Services\\Nope").is_none());
        assert!(s.value("missing").is_none());
    }

    #[test]
    fn hostile_bytes_are_refused_never_a_panic() {
        assert_eq!(Hive::new(b"regf").unwrap_err(), RegfError::NotAHive);
        assert_eq!(Hive::new(&[0u8; 8192]).unwrap_err(), RegfError::NotAHive);
        let good = sample();
        // Flip every byte of the bins in turn and walk everything: no panic.
        for i in BASE_BLOCK..good.len() {
            for v in [0x00, 0xFF, 0x80] {
                let mut b = good.clone();
                b[i] = v;
                if let Ok(h) = Hive::new(&b) {
                    if let Ok(r) = h.root() {
                        for k in r.subkeys() {
                            let _ = k.name();
                            let _ = k.value("Hostname").and_then(|v| v.string());
                            let _ = k.value("IPAddress").and_then(|v| v.multi());
                            let _ = k.subpath("Tcpip\\x");
                        }
                    }
                }
            }
        }
        // A cell of size 0 (nt-hive underflowed here) is damage, not a panic.
        let mut b = good.clone();
        let root = u32_at(&b, 0x24).unwrap() as usize;
        b[BASE_BLOCK + root..BASE_BLOCK + root + 4].copy_from_slice(&0u32.to_le_bytes());
        assert!(matches!(Hive::new(&b).unwrap().root(), Err(RegfError::Damaged { .. })));
    }

    #[test]
    fn an_ri_inside_an_ri_is_not_followed() {
        let mut bins = vec![0u8; 32];
        let ri_inner = bins.len() as u32;
        let mut ri = b"ri".to_vec();
        ri.extend_from_slice(&1u16.to_le_bytes());
        ri.extend_from_slice(&ri_inner.to_le_bytes()); // points at itself
        bins.extend_from_slice(&(-16i32).to_le_bytes());
        bins.extend_from_slice(&ri);
        bins.resize(bins.len() + 4, 0);
        let mut file = vec![0u8; BASE_BLOCK];
        file[..4].copy_from_slice(b"regf");
        file.extend_from_slice(&bins);
        let h = Hive::new(&file).unwrap();
        let mut out = vec![];
        assert!(h.subkey_offsets(ri_inner, &mut out, 0).is_err());
        assert!(out.is_empty());
    }
}
