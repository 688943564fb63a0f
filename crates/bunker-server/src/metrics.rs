//! Counters for `GET /metrics` in the Prometheus text format.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds of the latency histogram buckets, seconds.
const BUCKETS: [f64; 10] = [0.001, 0.005, 0.02, 0.1, 0.5, 2.0, 10.0, 60.0, 600.0, 3600.0];

#[derive(Default)]
struct RouteStats {
    count: u64,
    sum_seconds: f64,
    buckets: [u64; BUCKETS.len()],
}

#[derive(Default)]
pub struct Metrics {
    pub bytes_ingested: AtomicU64,
    pub bytes_deduplicated: AtomicU64,
    pub bytes_stored: AtomicU64,
    pub chunks_stored: AtomicU64,
    pub active_streams: AtomicI64,
    /// Restore streams (snapshot data, manifests) being sent.
    pub active_restores: AtomicI64,
    pub restore_bytes: AtomicU64,
    pub gc_runs: AtomicU64,
    pub gc_reclaimed_bytes: AtomicU64,
    /// Unix seconds of the last finished GC (0: none yet).
    pub gc_last_unix: AtomicU64,
    /// Milliseconds the last GC took.
    pub gc_last_ms: AtomicU64,
    requests: Mutex<BTreeMap<(&'static str, u16), RouteStats>>,
    errors: Mutex<BTreeMap<&'static str, u64>>,
}

impl Metrics {
    pub fn observe(&self, route: &'static str, status: u16, elapsed: Duration) {
        if let Ok(mut m) = self.requests.lock() {
            let s = m.entry((route, status)).or_default();
            s.count += 1;
            let secs = elapsed.as_secs_f64();
            s.sum_seconds += secs;
            for (i, b) in BUCKETS.iter().enumerate() {
                if secs <= *b {
                    s.buckets[i] += 1;
                }
            }
        }
    }

    pub fn error(&self, code: &'static str) {
        if let Ok(mut m) = self.errors.lock() {
            *m.entry(code).or_default() += 1;
        }
    }

    /// The metrics in Prometheus text format; `checks` are the newest
    /// verify and drill per snapshot name.
    pub fn render(
        &self,
        sessions: usize,
        checks: &std::collections::BTreeMap<String, crate::checks::Latest>,
    ) -> String {
        let mut out = String::new();
        let counter = |out: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        };
        counter(
            &mut out,
            "bunker_ingest_bytes_total",
            "Bytes of images received.",
            self.bytes_ingested.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "bunker_dedup_bytes_total",
            "Bytes received that were already stored.",
            self.bytes_deduplicated.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "bunker_stored_bytes_total",
            "Bytes added to packs (after compression).",
            self.bytes_stored.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "bunker_stored_chunks_total",
            "Chunks added to packs.",
            self.chunks_stored.load(Ordering::Relaxed),
        );
        let _ = writeln!(
            out,
            "# HELP bunker_ingest_cpu_seconds_total Thread CPU time of raw ingests by stage (bunker_store::cpu).\n# TYPE bunker_ingest_cpu_seconds_total counter"
        );
        for (stage, secs) in bunker_store::cpu::ingest_cpu() {
            let _ = writeln!(
                out,
                "bunker_ingest_cpu_seconds_total{{stage=\"{}\"}} {secs:.6}",
                stage.name()
            );
        }
        counter(
            &mut out,
            "bunker_restore_bytes_total",
            "Bytes of snapshots sent.",
            self.restore_bytes.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "bunker_gc_runs_total",
            "Garbage collections finished.",
            self.gc_runs.load(Ordering::Relaxed),
        );
        counter(
            &mut out,
            "bunker_gc_reclaimed_bytes_total",
            "Pack bytes freed by GC, net of rewritten bytes.",
            self.gc_reclaimed_bytes.load(Ordering::Relaxed),
        );
        let _ = writeln!(
            out,
            "# HELP bunker_gc_last_finished_seconds Unix time the last GC finished (0: none).\n# TYPE bunker_gc_last_finished_seconds gauge\nbunker_gc_last_finished_seconds {}\n# HELP bunker_gc_last_duration_seconds How long the last GC took.\n# TYPE bunker_gc_last_duration_seconds gauge\nbunker_gc_last_duration_seconds {}",
            self.gc_last_unix.load(Ordering::Relaxed),
            self.gc_last_ms.load(Ordering::Relaxed) as f64 / 1000.0
        );
        let _ = writeln!(
            out,
            "# HELP bunker_active_streams Ingest streams in progress.\n# TYPE bunker_active_streams gauge\nbunker_active_streams {}",
            self.active_streams.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP bunker_active_restores Restore streams (snapshot data, manifests) being sent.\n# TYPE bunker_active_restores gauge\nbunker_active_restores {}",
            self.active_restores.load(Ordering::Relaxed)
        );
        for (kind, help) in [
            (
                "verify",
                "the newest verify that covered a snapshot of the name",
            ),
            (
                "drill",
                "the newest restore drill of a snapshot of the name, reported by a client or run by the server",
            ),
            (
                "server_drill",
                "the newest restore drill the server ran itself on a snapshot of the name",
            ),
        ] {
            let _ = writeln!(
                out,
                "# HELP bunker_last_{kind}_timestamp_seconds Unix time of {help}.\n# TYPE bunker_last_{kind}_timestamp_seconds gauge"
            );
            let pick = |l: &crate::checks::Latest| match kind {
                "verify" => l.verify.clone(),
                "drill" => l.drill.clone(),
                _ => l.server_drill.clone(),
            };
            for (name, l) in checks {
                if let Some(c) = pick(l) {
                    let _ = writeln!(
                        out,
                        "bunker_last_{kind}_timestamp_seconds{{name=\"{name}\"}} {}",
                        c.at_unix_ms as f64 / 1000.0
                    );
                }
            }
            let _ = writeln!(
                out,
                "# HELP bunker_last_{kind}_ok Whether {help} passed (1) or found damage (0).\n# TYPE bunker_last_{kind}_ok gauge"
            );
            for (name, l) in checks {
                if let Some(c) = pick(l) {
                    let _ = writeln!(
                        out,
                        "bunker_last_{kind}_ok{{name=\"{name}\"}} {}",
                        u8::from(c.ok)
                    );
                }
            }
        }
        let _ = writeln!(out, "# HELP bunker_sessions Open chunk-protocol sessions.\n# TYPE bunker_sessions gauge\nbunker_sessions {sessions}");
        let _ = writeln!(out, "# HELP bunker_requests_total Requests by route and status.\n# TYPE bunker_requests_total counter");
        if let Ok(m) = self.requests.lock() {
            for ((route, status), s) in m.iter() {
                let _ = writeln!(
                    out,
                    "bunker_requests_total{{route=\"{route}\",status=\"{status}\"}} {}",
                    s.count
                );
            }
            let _ = writeln!(out, "# HELP bunker_request_seconds Request latency by route.\n# TYPE bunker_request_seconds histogram");
            let mut by_route: BTreeMap<&str, RouteStats> = BTreeMap::new();
            for ((route, _), s) in m.iter() {
                let r = by_route.entry(route).or_default();
                r.count += s.count;
                r.sum_seconds += s.sum_seconds;
                for (i, b) in s.buckets.iter().enumerate() {
                    r.buckets[i] += b;
                }
            }
            for (route, s) in by_route {
                for (i, b) in BUCKETS.iter().enumerate() {
                    let _ = writeln!(
                        out,
                        "bunker_request_seconds_bucket{{route=\"{route}\",le=\"{b}\"}} {}",
                        s.buckets[i]
                    );
                }
                let _ = writeln!(
                    out,
                    "bunker_request_seconds_bucket{{route=\"{route}\",le=\"+Inf\"}} {}",
                    s.count
                );
                let _ = writeln!(
                    out,
                    "bunker_request_seconds_sum{{route=\"{route}\"}} {}",
                    s.sum_seconds
                );
                let _ = writeln!(
                    out,
                    "bunker_request_seconds_count{{route=\"{route}\"}} {}",
                    s.count
                );
            }
        }
        let _ = writeln!(out, "# HELP bunker_errors_total Error responses by code.\n# TYPE bunker_errors_total counter");
        if let Ok(m) = self.errors.lock() {
            for (code, n) in m.iter() {
                let _ = writeln!(out, "bunker_errors_total{{code=\"{code}\"}} {n}");
            }
        }
        out
    }
}
