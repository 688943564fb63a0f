//! Scheduled pull jobs: every `[[sync]]` table of the config copies the
//! snapshots of its names from another bunker server into this one, every
//! `interval`. The target pulls, so the source holds no credential to the
//! copy.
//!
//! Each job is one task of [`crate::run`]: its first run starts as the
//! server starts serving (a restarted server catches up at once), the
//! next `interval` after the previous one started (at once when a run
//! took longer), and a run goes
//! on a blocking thread, so one job never runs twice at once. The token
//! file is read before every run (a replaced token needs no restart) and
//! never logged or shown. Shutdown aborts the tasks; a run in progress is
//! refused its next chunk or commit by the in-process target (the server
//! no longer accepts ingest) and ends there, having committed nothing
//! partial. Status is kept in memory (`GET /v1/sync`, `/metrics`); a
//! restarted server starts with empty status.

use std::fmt::Write;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use bunker_api::{SyncJob, SyncRun};

use crate::config::SyncJobConfig;
use crate::state::State;

/// What a run reports when it ends.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    pub snapshots_copied: u64,
    pub logical_bytes: u64,
    pub wire_bytes: u64,
    /// How far behind the source this server is after the run; `None`
    /// when the source's listing was never reached.
    pub behind: Option<Behind>,
}

/// The newest source snapshot of the job's names not yet copied here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Behind {
    UpToDate,
    /// Its creation time on the source, unix ms: the lag is its age.
    Since(i64),
}

impl Behind {
    fn lag_seconds(self, now_ms: i64) -> u64 {
        match self {
            Behind::UpToDate => 0,
            Behind::Since(t) => ((now_ms - t).max(0) / 1000) as u64,
        }
    }
}

/// A failed run: why (never the token), and the lag if the source
/// answered its listing before the failure.
#[derive(Debug)]
pub(crate) struct Failure {
    pub reason: String,
    pub behind: Option<Behind>,
    /// What was copied before the failure (committed, complete snapshots).
    pub snapshots_copied: u64,
    pub logical_bytes: u64,
    pub wire_bytes: u64,
}

impl Failure {
    pub(crate) fn new(reason: impl Into<String>) -> Failure {
        Failure {
            reason: reason.into(),
            behind: None,
            snapshots_copied: 0,
            logical_bytes: 0,
            wire_bytes: 0,
        }
    }
}

#[derive(Default)]
struct Status {
    running: bool,
    last_run: Option<SyncRun>,
    last_success_unix_ms: Option<i64>,
    next_run_unix_ms: i64,
    /// As of the last run that reached the source's listing.
    behind: Option<Behind>,
    runs_ok: u64,
    runs_error: u64,
    logical_bytes_total: u64,
    wire_bytes_total: u64,
    snapshots_total: u64,
}

struct Job {
    config: SyncJobConfig,
    status: Mutex<Status>,
}

impl Job {
    fn lock(&self) -> MutexGuard<'_, Status> {
        self.status.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The configured jobs and their status.
pub struct Jobs {
    jobs: Vec<Job>,
}

fn now_ms() -> i64 {
    bunker_store::clock::now_unix_ms()
}

impl Jobs {
    pub(crate) fn new(configs: &[SyncJobConfig]) -> Jobs {
        let first = now_ms();
        Jobs {
            jobs: configs
                .iter()
                .map(|c| Job {
                    config: c.clone(),
                    status: Mutex::new(Status {
                        next_run_unix_ms: first,
                        ..Status::default()
                    }),
                })
                .collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }

    /// Every job's status, with what this server holds of its names.
    pub(crate) fn status(&self, held: &Held) -> Vec<SyncJob> {
        self.jobs
            .iter()
            .map(|j| {
                let s = j.lock();
                let (target_snapshots, newest_check_unix_ms) = held.of(&j.config.names);
                SyncJob {
                    name: j.config.name.clone(),
                    from: j.config.from.clone(),
                    names: j.config.names.clone(),
                    interval_seconds: j.config.interval.as_secs(),
                    running: s.running,
                    last_run: s.last_run.clone(),
                    last_success_unix_ms: s.last_success_unix_ms,
                    next_run_unix_ms: s.next_run_unix_ms,
                    lag_seconds: s.behind.map(|b| b.lag_seconds(now_ms())),
                    target_snapshots,
                    newest_check_unix_ms,
                }
            })
            .collect()
    }

    /// The jobs' metrics in Prometheus text format (documented in
    /// docs/OPERATIONS.md, "Metrics").
    pub(crate) fn render_metrics(&self, out: &mut String) {
        if self.jobs.is_empty() {
            return;
        }
        let rows: Vec<(String, Status)> = self
            .jobs
            .iter()
            .map(|j| {
                let s = j.lock();
                (
                    j.config.name.clone(),
                    Status {
                        running: s.running,
                        last_run: s.last_run.clone(),
                        last_success_unix_ms: s.last_success_unix_ms,
                        next_run_unix_ms: s.next_run_unix_ms,
                        behind: s.behind,
                        runs_ok: s.runs_ok,
                        runs_error: s.runs_error,
                        logical_bytes_total: s.logical_bytes_total,
                        wire_bytes_total: s.wire_bytes_total,
                        snapshots_total: s.snapshots_total,
                    },
                )
            })
            .collect();
        let mut family =
            |name: &str, kind: &str, help: &str, lines: &mut dyn FnMut(&mut String)| {
                let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
                lines(out);
            };
        family(
            "bunker_sync_last_success_timestamp_seconds",
            "gauge",
            "Unix time the last successful run of the pull job ended (absent: none since start).",
            &mut |out| {
                for (job, s) in &rows {
                    if let Some(t) = s.last_success_unix_ms {
                        let _ = writeln!(
                            out,
                            "bunker_sync_last_success_timestamp_seconds{{job=\"{job}\"}} {}",
                            t as f64 / 1000.0
                        );
                    }
                }
            },
        );
        family(
            "bunker_sync_last_run_ok",
            "gauge",
            "Whether the last run of the pull job succeeded (1) or failed (0).",
            &mut |out| {
                for (job, s) in &rows {
                    if let Some(r) = &s.last_run {
                        let _ = writeln!(
                            out,
                            "bunker_sync_last_run_ok{{job=\"{job}\"}} {}",
                            u8::from(r.ok)
                        );
                    }
                }
            },
        );
        family(
            "bunker_sync_lag_seconds",
            "gauge",
            "Age of the newest source snapshot the pull job has not copied yet (0: up to date), as of its last run that reached the source.",
            &mut |out| {
                let now = now_ms();
                for (job, s) in &rows {
                    if let Some(l) = s.behind.map(|b| b.lag_seconds(now)) {
                        let _ = writeln!(out, "bunker_sync_lag_seconds{{job=\"{job}\"}} {l}");
                    }
                }
            },
        );
        family(
            "bunker_sync_running",
            "gauge",
            "Whether a run of the pull job is in progress.",
            &mut |out| {
                for (job, s) in &rows {
                    let _ = writeln!(
                        out,
                        "bunker_sync_running{{job=\"{job}\"}} {}",
                        u8::from(s.running)
                    );
                }
            },
        );
        family(
            "bunker_sync_runs_total",
            "counter",
            "Runs of the pull job that ended, by result.",
            &mut |out| {
                for (job, s) in &rows {
                    let _ = writeln!(
                        out,
                        "bunker_sync_runs_total{{job=\"{job}\",result=\"ok\"}} {}\nbunker_sync_runs_total{{job=\"{job}\",result=\"error\"}} {}",
                        s.runs_ok, s.runs_error
                    );
                }
            },
        );
        family(
            "bunker_sync_bytes_total",
            "counter",
            "Bytes the pull job copied: logical (image bytes of the snapshots committed) and wire (chunk bytes fetched from the source).",
            &mut |out| {
                for (job, s) in &rows {
                    let _ = writeln!(
                        out,
                        "bunker_sync_bytes_total{{job=\"{job}\",kind=\"logical\"}} {}\nbunker_sync_bytes_total{{job=\"{job}\",kind=\"wire\"}} {}",
                        s.logical_bytes_total, s.wire_bytes_total
                    );
                }
            },
        );
        family(
            "bunker_sync_snapshots_total",
            "counter",
            "Snapshots the pull job committed here.",
            &mut |out| {
                for (job, s) in &rows {
                    let _ = writeln!(
                        out,
                        "bunker_sync_snapshots_total{{job=\"{job}\"}} {}",
                        s.snapshots_total
                    );
                }
            },
        );
    }

    fn begin(&self, i: usize) {
        self.jobs[i].lock().running = true;
    }

    /// Records how run `i` went and when the next one starts.
    fn end(&self, i: usize, started_ms: i64, result: Result<Outcome, Failure>, next_ms: i64) {
        let ended = now_ms();
        let mut s = self.jobs[i].lock();
        s.running = false;
        s.next_run_unix_ms = next_ms;
        let run = match result {
            Ok(o) => {
                s.runs_ok += 1;
                s.last_success_unix_ms = Some(ended);
                if o.behind.is_some() {
                    s.behind = o.behind;
                }
                SyncRun {
                    started_unix_ms: started_ms,
                    ended_unix_ms: ended,
                    ok: true,
                    error: None,
                    snapshots_copied: o.snapshots_copied,
                    logical_bytes: o.logical_bytes,
                    wire_bytes: o.wire_bytes,
                }
            }
            Err(f) => {
                s.runs_error += 1;
                if f.behind.is_some() {
                    s.behind = f.behind;
                }
                SyncRun {
                    started_unix_ms: started_ms,
                    ended_unix_ms: ended,
                    ok: false,
                    error: Some(f.reason),
                    snapshots_copied: f.snapshots_copied,
                    logical_bytes: f.logical_bytes,
                    wire_bytes: f.wire_bytes,
                }
            }
        };
        s.logical_bytes_total += run.logical_bytes;
        s.wire_bytes_total += run.wire_bytes;
        s.snapshots_total += run.snapshots_copied;
        s.last_run = Some(run);
    }
}

/// What this server holds, for the jobs' `target_snapshots` and
/// `newest_check_unix_ms`: one listing for all jobs.
pub(crate) struct Held {
    names: Vec<String>,
    checks: std::collections::BTreeMap<String, crate::checks::Latest>,
}

impl Held {
    pub(crate) fn read(state: &State) -> Held {
        let names = match state.repo.list(None) {
            Ok(list) => list.into_iter().map(|s| s.name).collect(),
            Err(e) => {
                tracing::warn!("sync status: listing snapshots: {e}");
                Vec::new()
            }
        };
        Held {
            names,
            checks: state.checks.latest_per_name(),
        }
    }

    /// Snapshots of `names` (prefixes; empty: all) and the newest verify
    /// or drill of any of them.
    fn of(&self, names: &[String]) -> (u64, Option<i64>) {
        let filter = bunker_sync::Filter::new(names.to_vec());
        let count = self.names.iter().filter(|n| filter.matches(n)).count() as u64;
        let newest = self
            .checks
            .iter()
            .filter(|(n, _)| filter.matches(n))
            .flat_map(|(_, l)| [&l.verify, &l.drill, &l.server_drill])
            .filter_map(|c| c.as_ref().map(|c| c.at_unix_ms))
            .max();
        (count, newest)
    }
}

/// Runs job `i` until the task is aborted (at shutdown).
pub(crate) async fn schedule(state: Arc<State>, i: usize) {
    let every = state.sync_jobs.jobs[i].config.interval;
    loop {
        let started = Instant::now();
        let started_ms = now_ms();
        state.sync_jobs.begin(i);
        let st = state.clone();
        let result = tokio::task::spawn_blocking(move || {
            let job = &st.sync_jobs.jobs[i].config;
            crate::sync_target::run(&st, job)
        })
        .await
        .unwrap_or_else(|e| Err(Failure::new(format!("the run failed: {e}"))));
        let name = &state.sync_jobs.jobs[i].config.name;
        match &result {
            Ok(o) => tracing::info!(
                job = %name,
                snapshots = o.snapshots_copied,
                logical_bytes = o.logical_bytes,
                wire_bytes = o.wire_bytes,
                "sync run finished"
            ),
            Err(f) => tracing::warn!(job = %name, "sync run failed: {}", f.reason),
        }
        let wait = every.saturating_sub(started.elapsed());
        state
            .sync_jobs
            .end(i, started_ms, result, now_ms() + wait.as_millis() as i64);
        tokio::time::sleep(wait).await;
    }
}

/// Starts every job's task; [`crate::run`] aborts them at shutdown.
pub(crate) fn start(state: &Arc<State>) -> Vec<tokio::task::JoinHandle<()>> {
    (0..state.sync_jobs.jobs.len())
        .map(|i| tokio::spawn(schedule(state.clone(), i)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(name: &str, names: &[&str]) -> SyncJobConfig {
        SyncJobConfig {
            name: name.into(),
            from: "http://127.0.0.1:1".into(),
            token_file: "t".into(),
            names: names.iter().map(|n| n.to_string()).collect(),
            interval: std::time::Duration::from_secs(60),
            ca_file: None,
        }
    }

    #[test]
    fn runs_count_by_result_and_a_failed_run_keeps_the_known_lag() {
        let jobs = Jobs::new(&[job("a", &["db-"]), job("b", &[])]);
        let held = Held {
            names: vec!["db-1".into(), "db-1".into(), "mail".into()],
            checks: Default::default(),
        };
        let before = jobs.status(&held);
        assert_eq!(before[0].last_run, None);
        assert_eq!(before[0].lag_seconds, None);
        assert_eq!(
            (before[0].target_snapshots, before[1].target_snapshots),
            (2, 3)
        );

        let now = now_ms();
        jobs.begin(0);
        assert!(jobs.status(&held)[0].running);
        let copied = Outcome {
            snapshots_copied: 2,
            logical_bytes: 100,
            wire_bytes: 40,
            behind: Some(Behind::Since(now - 30_000)),
        };
        jobs.end(0, now, Ok(copied), now + 60_000);
        let s = &jobs.status(&held)[0];
        assert!(!s.running);
        let run = s.last_run.as_ref().unwrap();
        assert!(run.ok && run.error.is_none());
        assert_eq!(
            (run.snapshots_copied, run.logical_bytes, run.wire_bytes),
            (2, 100, 40)
        );
        assert!((30..40).contains(&s.lag_seconds.unwrap()), "{s:?}");
        assert_eq!(s.next_run_unix_ms, now + 60_000);
        let success = s.last_success_unix_ms.unwrap();

        // The source unreachable: the run fails, the lag known stays (and
        // ages), the last success stays.
        jobs.end(0, now, Err(Failure::new("cannot reach the source")), now);
        let s = &jobs.status(&held)[0];
        let run = s.last_run.as_ref().unwrap();
        assert!(!run.ok);
        assert_eq!(run.error.as_deref(), Some("cannot reach the source"));
        assert!(s.lag_seconds.unwrap() >= 30, "{s:?}");
        assert_eq!(s.last_success_unix_ms, Some(success));

        let mut text = String::new();
        jobs.render_metrics(&mut text);
        for line in [
            "bunker_sync_runs_total{job=\"a\",result=\"ok\"} 1",
            "bunker_sync_runs_total{job=\"a\",result=\"error\"} 1",
            "bunker_sync_bytes_total{job=\"a\",kind=\"logical\"} 100",
            "bunker_sync_bytes_total{job=\"a\",kind=\"wire\"} 40",
            "bunker_sync_snapshots_total{job=\"a\"} 2",
            "bunker_sync_last_run_ok{job=\"a\"} 0",
            "bunker_sync_running{job=\"b\"} 0",
        ] {
            assert!(text.contains(line), "{line} not in\n{text}");
        }
        assert!(text.contains("bunker_sync_last_success_timestamp_seconds{job=\"a\"} "));
        assert!(!text.contains("bunker_sync_last_success_timestamp_seconds{job=\"b\"}"));
        assert!(!text.contains("bunker_sync_lag_seconds{job=\"b\"}"));

        // Caught up: lag 0.
        jobs.end(
            0,
            now,
            Ok(Outcome {
                behind: Some(Behind::UpToDate),
                ..Outcome::default()
            }),
            now,
        );
        assert_eq!(jobs.status(&held)[0].lag_seconds, Some(0));
        let mut none = String::new();
        Jobs::new(&[]).render_metrics(&mut none);
        assert!(none.is_empty());
    }
}
