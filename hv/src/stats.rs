//! A guest's counters from below it, in one [`GuestStats`]: QMP `query-stats`
//! (QEMU ≥ 7.1; VM-wide and per-vCPU statistics), the host CPU time of each
//! vCPU thread, `query-blockstats`, and the QEMU process's RSS/CPU.
//!
//! QEMU's only `query-stats` provider for the `vm` and `vcpu` targets is
//! KVM (its binary stats file descriptors): under TCG both come back empty
//! and [`GuestStats::vcpu_cpu_ticks`] (`/proc/<pid>/task/<tid>/stat` of the
//! vCPU threads `query-cpus-fast` names) is what says how busy each vCPU is.

use std::collections::BTreeMap;

use proto::api::{AccelKind, DiskCounters, GuestStats};

use crate::{Error, Guest};

/// Statistics of one `query-stats` target, keyed `provider.name`.
pub type StatsMap = BTreeMap<String, u64>;

/// Parses a `query-stats` reply (a list of `StatsResult`: `provider`,
/// optional `qom-path`, `stats: [{name, value}]`) into one map per
/// `qom-path` (in first-seen order; results without one, as for the `vm`
/// target, form one map). A value is a number, a boolean (0/1) or a
/// histogram (the sum of its buckets); negative or unknown values and
/// entries without a name are skipped. Never fails: QEMU's reply is outside
/// input, and a shape this does not know yields fewer counters, not an error.
pub fn parse_query_stats(reply: &serde_json::Value) -> Vec<StatsMap> {
    let mut order: Vec<Option<&str>> = Vec::new();
    let mut maps: Vec<StatsMap> = Vec::new();
    for result in reply.as_array().into_iter().flatten() {
        let provider = result["provider"].as_str().unwrap_or("unknown");
        let path = result["qom-path"].as_str();
        let at = match order.iter().position(|p| *p == path) {
            Some(i) => i,
            None => {
                order.push(path);
                maps.push(StatsMap::new());
                maps.len() - 1
            }
        };
        for stat in result["stats"].as_array().into_iter().flatten() {
            let (Some(name), Some(value)) = (stat["name"].as_str(), value_of(&stat["value"])) else {
                continue;
            };
            maps[at].insert(format!("{provider}.{name}"), value);
        }
    }
    maps
}

/// [`parse_query_stats`] and [`parse_vcpu_threads`] of raw reply bytes
/// (nothing when they are not JSON): what the fuzz target feeds.
pub fn parse_reply_bytes(bytes: &[u8]) -> (Vec<StatsMap>, Vec<u32>) {
    match serde_json::from_slice::<serde_json::Value>(bytes) {
        Ok(v) => (parse_query_stats(&v), parse_vcpu_threads(&v)),
        Err(_) => (Vec::new(), Vec::new()),
    }
}

fn value_of(v: &serde_json::Value) -> Option<u64> {
    match v {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::Bool(b) => Some(u64::from(*b)),
        serde_json::Value::Array(buckets) => buckets.iter().try_fold(0u64, |sum, b| Some(sum.saturating_add(b.as_u64()?))),
        _ => None,
    }
}

/// utime + stime of a `/proc/…/stat` line, and the thread's name.
fn ticks_and_comm(stat: &str) -> Option<(&str, u64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?;
    let rest: Vec<&str> = stat.get(close + 1..)?.split_whitespace().collect();
    // After the name: field 3 (state) is rest[0]; utime is field 14, stime 15.
    let utime: u64 = rest.get(14 - 3)?.parse().ok()?;
    let stime: u64 = rest.get(15 - 3)?.parse().ok()?;
    Some((comm, utime + stime))
}

/// The vCPU thread ids from a `query-cpus-fast` reply, in `cpu-index`
/// order (entries without a thread id are skipped).
pub fn parse_vcpu_threads(reply: &serde_json::Value) -> Vec<u32> {
    let mut cpus: Vec<(u64, u32)> = reply
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| Some((c["cpu-index"].as_u64()?, u32::try_from(c["thread-id"].as_u64()?).ok()?)))
        .collect();
    cpus.sort_unstable();
    cpus.into_iter().map(|(_, tid)| tid).collect()
}

/// Host CPU time (utime + stime, clock ticks) of thread `tid` of process
/// `pid`; `None` when it is gone.
fn thread_ticks(pid: u32, tid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).ok()?;
    ticks_and_comm(&stat).map(|(_, t)| t)
}

impl Guest {
    /// QMP `query-stats` for `target` (`"vm"` or `"vcpu"`), one map per
    /// object (per vCPU for `vcpu`). Empty under TCG (see the module docs).
    pub fn query_stats(&self, target: &str) -> Result<Vec<StatsMap>, Error> {
        let reply = self.execute("query-stats", Some(serde_json::json!({ "target": target })))?;
        Ok(parse_query_stats(&reply))
    }

    /// Host CPU time (clock ticks) of each vCPU thread, in vCPU order (thread
    /// ids from QMP `query-cpus-fast`); works under KVM and TCG.
    pub fn vcpu_cpu_ticks(&self) -> Result<Vec<u64>, Error> {
        let threads = parse_vcpu_threads(&self.execute("query-cpus-fast", None)?);
        Ok(threads.into_iter().filter_map(|tid| thread_ticks(self.pid(), tid)).collect())
    }

    /// All counters of this guest, for the node's
    /// `GET /v1/guests/{name}/stats`; `accel` is what it was started with.
    pub fn stats(&self, accel: AccelKind) -> Result<GuestStats, Error> {
        let vm = self.query_stats("vm")?.into_iter().next().unwrap_or_default();
        let vcpus = self.query_stats("vcpu")?;
        let disks = self
            .block_stats()?
            .into_iter()
            .map(|b| DiskCounters {
                device: b.device,
                rd_bytes: b.rd_bytes,
                wr_bytes: b.wr_bytes,
                rd_operations: b.rd_operations,
                wr_operations: b.wr_operations,
                flush_operations: b.flush_operations,
            })
            .collect();
        let process = self.process_stats()?;
        Ok(GuestStats {
            name: self.name().to_string(),
            accel,
            vm,
            vcpus,
            vcpu_cpu_ticks: self.vcpu_cpu_ticks()?,
            disks,
            rss_kib: process.rss_kib,
            cpu_ticks: process.cpu_ticks,
            xts: self.xts(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vcpu_results_group_by_qom_path_and_vm_is_one_map() {
        let reply = serde_json::json!([
            {"provider": "kvm", "qom-path": "/machine/unattached/device[0]",
             "stats": [{"name": "exits", "value": 1659}, {"name": "guest_mode", "value": false},
                       {"name": "halt_poll_fail_hist", "value": [1, 2, 3]}]},
            {"provider": "kvm", "qom-path": "/machine/unattached/device[1]",
             "stats": [{"name": "exits", "value": 7}, {"name": "blocking", "value": true}]},
        ]);
        let v = parse_query_stats(&reply);
        assert_eq!(v.len(), 2);
        assert_eq!(v[0]["kvm.exits"], 1659);
        assert_eq!(v[0]["kvm.guest_mode"], 0);
        assert_eq!(v[0]["kvm.halt_poll_fail_hist"], 6);
        assert_eq!(v[1]["kvm.blocking"], 1);
        let vm = parse_query_stats(&serde_json::json!([
            {"provider": "kvm", "stats": [{"name": "mmu_cache_miss", "value": 12}]},
            {"provider": "cryptodev", "stats": [{"name": "x", "value": 1}]},
        ]));
        assert_eq!(vm.len(), 1);
        assert_eq!(vm[0].len(), 2);
    }

    #[test]
    fn odd_replies_give_fewer_counters_not_errors() {
        assert!(parse_query_stats(&serde_json::json!([])).is_empty(), "TCG: no providers");
        assert!(parse_query_stats(&serde_json::json!({"x": 1})).is_empty());
        let v = parse_query_stats(&serde_json::json!([
            {"stats": [{"name": "neg", "value": -1}, {"value": 3}, {"name": "s", "value": "str"},
                       {"name": "hist", "value": [1, -2]}, {"name": "ok", "value": 2}]}
        ]));
        assert_eq!(v[0].len(), 1);
        assert_eq!(v[0]["unknown.ok"], 2);
    }

    #[test]
    fn vcpu_threads_and_stat_lines() {
        let reply = serde_json::json!([
            {"cpu-index": 1, "thread-id": 4243, "qom-path": "/machine/unattached/device[1]"},
            {"cpu-index": 0, "thread-id": 4242},
            {"cpu-index": 2},
            {"thread-id": 9}
        ]);
        assert_eq!(parse_vcpu_threads(&reply), vec![4242, 4243]);
        assert!(parse_vcpu_threads(&serde_json::json!({"return": 1})).is_empty());
        let line = "4242 (CPU 1/TCG) S 1 2 3 0 -1 4194368 0 0 0 0 150 25 0 0 20 0 5 0 100 0 0";
        assert_eq!(ticks_and_comm(line), Some(("CPU 1/TCG", 175)));
        assert_eq!(ticks_and_comm("broken"), None);
        assert_eq!(thread_ticks(u32::MAX, 1), None);
        let me = std::process::id();
        assert!(thread_ticks(me, me).is_some(), "this process's main thread");
    }
}
