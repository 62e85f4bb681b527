//! The appliance's store: typed tables over redb.
//!
//! redb gives ACID transactions with a documented crash model (a committed
//! write survives a crash; an uncommitted one leaves no trace), which is what
//! a move's "record the step before acting" needs. The rest of the code sees
//! only the typed methods here, never raw keys and values; values are JSON so
//! that a newer appliance can still read records an older one wrote.

use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use redb::{Database, ReadableTable, ReadableTableMetadata, TableDefinition};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::model::{CloudRecord, MoveEvent, MoveRecord, ServerRecord};

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database file could not be opened.
    #[error("cannot open the store {path}: {source}. Is another `isthmus serve` running on this data dir?")]
    Open {
        /// File.
        path: PathBuf,
        /// Cause.
        #[source]
        source: Box<redb::DatabaseError>,
    },
    /// A redb operation failed.
    #[error("store operation failed: {0}")]
    Db(#[source] Box<redb::Error>),
    /// A stored record could not be decoded.
    #[error("record {key:?} in table {table} is unreadable: {source}")]
    Decode {
        /// Table.
        table: &'static str,
        /// Key.
        key: String,
        /// Cause.
        #[source]
        source: serde_json::Error,
    },
    /// A record could not be encoded.
    #[error("cannot encode a record for table {table}: {source}")]
    Encode {
        /// Table.
        table: &'static str,
        /// Cause.
        #[source]
        source: serde_json::Error,
    },
}

fn db<E: Into<redb::Error>>(e: E) -> StoreError {
    StoreError::Db(Box::new(e.into()))
}

/// A typed table: string keys, JSON values of `T`.
pub struct Table<T> {
    def: TableDefinition<'static, &'static str, &'static [u8]>,
    name: &'static str,
    _t: PhantomData<T>,
}

impl<T> Table<T> {
    /// A table named `name` (other modules, e.g. `topology`, declare their own).
    pub const fn new(name: &'static str) -> Self {
        Table {
            def: TableDefinition::new(name),
            name,
            _t: PhantomData,
        }
    }
}

/// Servers by name.
pub const SERVERS: Table<ServerRecord> = Table::new("servers");
/// Clouds by name.
pub const CLOUDS: Table<CloudRecord> = Table::new("clouds");
/// Moves by id.
pub const MOVES: Table<MoveRecord> = Table::new("moves");
/// Move events by `<move id>/<seq, 8 digits>`.
pub const EVENTS: Table<MoveEvent> = Table::new("events");
/// Appliance settings and secrets-at-rest metadata by key.
pub const META: Table<serde_json::Value> = Table::new("meta");

/// The store.
pub struct Store {
    db: Database,
}

impl Store {
    /// Opens (or creates) the store file and makes sure every table exists.
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        let db = Database::create(path).map_err(|source| StoreError::Open {
            path: path.to_path_buf(),
            source: Box::new(source),
        })?;
        let tx = db.begin_write().map_err(db_err)?;
        for def in [SERVERS.def, CLOUDS.def, MOVES.def, EVENTS.def, META.def] {
            tx.open_table(def).map_err(db_err)?;
        }
        tx.commit().map_err(db_err)?;
        Ok(Store { db })
    }

    /// Creates a table declared outside this module if it does not exist yet.
    pub fn ensure<T>(&self, table: &Table<T>) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(db)?;
        tx.open_table(table.def).map_err(db)?;
        tx.commit().map_err(db)?;
        Ok(())
    }

    /// Writes one record (insert or replace) in its own committed transaction.
    pub fn put<T: Serialize>(&self, table: &Table<T>, key: &str, value: &T) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(value).map_err(|source| StoreError::Encode { table: table.name, source })?;
        let tx = self.db.begin_write().map_err(db)?;
        {
            let mut t = tx.open_table(table.def).map_err(db)?;
            t.insert(key, bytes.as_slice()).map_err(db)?;
        }
        tx.commit().map_err(db)?;
        Ok(())
    }

    /// Reads one record.
    pub fn get<T: DeserializeOwned>(&self, table: &Table<T>, key: &str) -> Result<Option<T>, StoreError> {
        let tx = self.db.begin_read().map_err(db)?;
        let t = tx.open_table(table.def).map_err(db)?;
        let Some(v) = t.get(key).map_err(db)? else { return Ok(None) };
        decode(table, key, v.value()).map(Some)
    }

    /// Deletes one record; true if it existed.
    pub fn delete<T>(&self, table: &Table<T>, key: &str) -> Result<bool, StoreError> {
        let tx = self.db.begin_write().map_err(db)?;
        let existed = {
            let mut t = tx.open_table(table.def).map_err(db)?;
            let r = t.remove(key).map_err(db)?;
            r.is_some()
        };
        tx.commit().map_err(db)?;
        Ok(existed)
    }

    /// All records, in key order.
    pub fn list<T: DeserializeOwned>(&self, table: &Table<T>) -> Result<Vec<(String, T)>, StoreError> {
        self.range(table, "")
    }

    /// Records whose key starts with `prefix`, in key order.
    pub fn range<T: DeserializeOwned>(&self, table: &Table<T>, prefix: &str) -> Result<Vec<(String, T)>, StoreError> {
        let tx = self.db.begin_read().map_err(db)?;
        let t = tx.open_table(table.def).map_err(db)?;
        let mut out = Vec::new();
        for item in t.range(prefix..).map_err(db)? {
            let (k, v) = item.map_err(db)?;
            let key = k.value().to_string();
            if !key.starts_with(prefix) {
                break;
            }
            let rec = decode(table, &key, v.value())?;
            out.push((key, rec));
        }
        Ok(out)
    }

    /// Number of records in a table.
    pub fn count<T>(&self, table: &Table<T>) -> Result<u64, StoreError> {
        let tx = self.db.begin_read().map_err(db)?;
        let t = tx.open_table(table.def).map_err(db)?;
        t.len().map_err(db)
    }

    /// Appends an event to a move's timeline (sequence numbers are per move).
    pub fn append_event(&self, move_id: &str, event: &MoveEvent) -> Result<(), StoreError> {
        let bytes = serde_json::to_vec(event).map_err(|source| StoreError::Encode {
            table: EVENTS.name,
            source,
        })?;
        let prefix = format!("{move_id}/");
        let tx = self.db.begin_write().map_err(db)?;
        {
            let mut t = tx.open_table(EVENTS.def).map_err(db)?;
            let mut next = 0u64;
            if let Some(last) = t
                .range(prefix.as_str()..)
                .map_err(db)?
                .filter_map(Result::ok)
                .take_while(|(k, _)| k.value().starts_with(&prefix))
                .last()
            {
                next = last.0.value()[prefix.len()..].parse::<u64>().unwrap_or(0) + 1;
            }
            let key = format!("{prefix}{next:08}");
            t.insert(key.as_str(), bytes.as_slice()).map_err(db)?;
        }
        tx.commit().map_err(db)?;
        Ok(())
    }

    /// A move's timeline in order.
    pub fn events(&self, move_id: &str) -> Result<Vec<MoveEvent>, StoreError> {
        Ok(self.range(&EVENTS, &format!("{move_id}/"))?.into_iter().map(|(_, e)| e).collect())
    }
}

fn db_err<E: Into<redb::Error>>(e: E) -> StoreError {
    db(e)
}

fn decode<T: DeserializeOwned>(table: &Table<T>, key: &str, bytes: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(bytes).map_err(|source| StoreError::Decode {
        table: table.name,
        key: key.to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Location, Source, Step};

    fn server(name: &str) -> ServerRecord {
        ServerRecord {
            name: name.into(),
            ip: Some("10.0.0.1".parse().unwrap()),
            check_ports: vec![80],
            profile: serde_json::from_str(
                r#"{"cpus":1,"memory_mib":128,"disks":[{"bus":"ide"}],"nics":[{"model":"e1000","mac":"52:54:00:00:00:01"}]}"#,
            )
            .unwrap(),
            source: Source::LocalQemu {
                disks: vec!["/d.qcow2".into()],
                taps: vec!["t0".into()],
            },
            location: Location::Dc,
        }
    }

    #[test]
    fn put_get_list_delete_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("store.redb");
        {
            let s = Store::open(&path).unwrap();
            s.put(&SERVERS, "b", &server("b")).unwrap();
            s.put(&SERVERS, "a", &server("a")).unwrap();
            assert_eq!(s.count(&SERVERS).unwrap(), 2);
        }
        let s = Store::open(&path).unwrap();
        assert_eq!(s.get(&SERVERS, "a").unwrap().unwrap(), server("a"));
        let names: Vec<String> = s.list(&SERVERS).unwrap().into_iter().map(|(k, _)| k).collect();
        assert_eq!(names, vec!["a", "b"]);
        assert!(s.delete(&SERVERS, "a").unwrap());
        assert!(!s.delete(&SERVERS, "a").unwrap());
        assert!(s.get(&SERVERS, "a").unwrap().is_none());
    }

    #[test]
    fn events_are_ordered_per_move() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("s.redb")).unwrap();
        for (m, n) in [("m-1", 12), ("m-2", 3)] {
            for i in 0..n {
                let e = MoveEvent {
                    at: "t".into(),
                    t_s: i as f64,
                    step: Step::Plan,
                    message: format!("{m} {i}"),
                };
                s.append_event(m, &e).unwrap();
            }
        }
        let ev = s.events("m-1").unwrap();
        assert_eq!(ev.len(), 12);
        assert_eq!(ev[11].message, "m-1 11");
        assert_eq!(s.events("m-2").unwrap().len(), 3);
        assert!(s.events("m-").unwrap().is_empty() || s.events("m-3").unwrap().is_empty());
    }

    #[test]
    fn corrupt_record_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("s.redb")).unwrap();
        s.put(&META, "x", &serde_json::json!(1)).unwrap();
        // Same key read through a table of another type: a decode error, not a panic.
        let wrong: Table<ServerRecord> = Table::new("meta");
        let e = s.get(&wrong, "x").unwrap_err();
        assert!(e.to_string().contains("unreadable"), "{e}");
    }

    #[test]
    fn second_open_of_same_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.redb");
        let _a = Store::open(&p).unwrap();
        let e = Store::open(&p).err().expect("second open must fail");
        assert!(e.to_string().contains("another `isthmus serve`"), "{e}");
    }
}
