//! The TCP connect probe: a few workers take (IP, port) jobs at the shared
//! packet rate; a port is open when `connect` completes in time.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use netbridge::ratelimit::TokenBucket;

/// Concurrent connects at most.
const WORKERS: usize = 32;

/// Probes `jobs`; returns the open ports per IP (sorted) and whether every
/// job ran before `deadline`.
pub(super) fn tcp(
    jobs: &[(Ipv4Addr, u16)],
    bucket: TokenBucket,
    timeout: Duration,
    deadline: Instant,
    progress: &indicatif::ProgressBar,
) -> (BTreeMap<Ipv4Addr, Vec<u16>>, bool) {
    let next = Mutex::new((0usize, bucket));
    let open = Mutex::new(BTreeMap::<Ipv4Addr, Vec<u16>>::new());
    let skipped = Mutex::new(false);
    std::thread::scope(|s| {
        for _ in 0..WORKERS.min(jobs.len()) {
            s.spawn(|| loop {
                // Take the next job once the bucket has a token for its SYN.
                let job = loop {
                    let now = Instant::now();
                    let mut g = next.lock().unwrap_or_else(|e| e.into_inner());
                    if g.0 >= jobs.len() {
                        return;
                    }
                    if now >= deadline {
                        *skipped.lock().unwrap_or_else(|e| e.into_inner()) = true;
                        return;
                    }
                    if g.1.take(now) {
                        g.0 += 1;
                        break jobs[g.0 - 1];
                    }
                    drop(g);
                    std::thread::sleep(Duration::from_millis(1));
                };
                let left = deadline.saturating_duration_since(Instant::now());
                let t = timeout.min(left).max(Duration::from_millis(1));
                if TcpStream::connect_timeout(&SocketAddr::from(job), t).is_ok() {
                    open.lock().unwrap_or_else(|e| e.into_inner()).entry(job.0).or_default().push(job.1);
                }
                progress.inc(1);
            });
        }
    });
    let mut open = open.into_inner().unwrap_or_else(|e| e.into_inner());
    open.values_mut().for_each(|v| v.sort_unstable());
    let skipped = skipped.into_inner().unwrap_or_else(|e| e.into_inner());
    (open, !skipped)
}
