//! `--sync`: replication throughput. Each day's image is backed up to a
//! source server, then `bunker sync` copies it to a target server on the
//! same loopback; per day: logical GB/s (image bytes copied per second)
//! and wire GB/s (chunk frames, `missing` queries and commit bodies per
//! second, as the sync reports them), beside the day's new stored bytes on
//! the source. A `restic copy` between two local repositories of the same
//! images belongs in the same table (one row per tool and day).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context};

use crate::{du, gbps, mib, timed, Server};

/// One day's copy.
pub struct Day {
    pub tool: &'static str,
    pub day: usize,
    pub logical_bytes: u64,
    pub wire_bytes: u64,
    /// What that day's backup added to the source (after dedup and zstd).
    pub source_new_bytes: u64,
    pub seconds: f64,
}

pub fn run(bunker: &Path, work: &Path, images: &[PathBuf]) -> anyhow::Result<Vec<Day>> {
    let source = Server::start(bunker, &work.join("sync-source"), &[])?;
    let target = Server::start(bunker, &work.join("sync-target"), &[])?;
    let token_file = |s: &Server, name: &str| -> anyhow::Result<PathBuf> {
        let p = work.join(name);
        std::fs::write(&p, &s.token)?;
        Ok(p)
    };
    let (st, tt) = (
        token_file(&source, "source.token")?,
        token_file(&target, "target.token")?,
    );
    let mut days = Vec::new();
    for (day, img) in images.iter().enumerate() {
        let out = Command::new(bunker)
            .args(["--json", "backup", "vol"])
            .arg(img)
            .env("BUNKER_SERVER", &source.url)
            .env("BUNKER_TOKEN", &source.token)
            .stderr(Stdio::null())
            .output()?;
        if !out.status.success() {
            bail!("backup of {} failed", img.display());
        }
        let backup: serde_json::Value = serde_json::from_slice(&out.stdout)?;
        let started = Instant::now();
        let out = Command::new(bunker)
            .args(["sync", "--json", "--from", &source.url, "--from-token-file"])
            .arg(&st)
            .args(["--to", &target.url, "--to-token-file"])
            .arg(&tt)
            .env_remove("BUNKER_SERVER")
            .env_remove("BUNKER_TOKEN")
            .stderr(Stdio::piped())
            .output()?;
        let seconds = started.elapsed().as_secs_f64();
        if !out.status.success() {
            bail!(
                "bunker sync failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let r: serde_json::Value =
            serde_json::from_slice(&out.stdout).context("the sync's JSON report")?;
        days.push(Day {
            tool: "bunker sync",
            day,
            logical_bytes: r["logical_bytes"].as_u64().unwrap_or(0),
            wire_bytes: r["wire_bytes"].as_u64().unwrap_or(0),
            source_new_bytes: backup["new_bytes"].as_u64().unwrap_or(0),
            seconds,
        });
    }
    source.stop();
    target.stop();
    Ok(days)
}

/// The markdown table of [`run`]'s days.
pub fn print(days: &[Day]) {
    println!(
        "| tool | day | logical | sent | new on source | seconds | logical GB/s | wire GB/s |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for d in days {
        println!(
            "| {} | {} | {} | {} | {} | {:.2} | {:.2} | {:.3} |",
            d.tool,
            d.day,
            mib(d.logical_bytes),
            mib(d.wire_bytes),
            mib(d.source_new_bytes),
            d.seconds,
            gbps(d.logical_bytes, d.seconds),
            gbps(d.wire_bytes, d.seconds),
        );
    }
}

/// `restic copy` of each day between two local repositories (see the
/// module doc).
pub fn restic(work: &Path, images: &[PathBuf]) -> anyhow::Result<Vec<Day>> {
    let from = work.join("restic-sync-from");
    let to = work.join("restic-sync-to");
    let r = |repo: &Path| {
        let mut c = Command::new("restic");
        c.arg("-r")
            .arg(repo)
            .env("RESTIC_PASSWORD", "bench")
            .env("RESTIC_FROM_PASSWORD", "bench")
            .arg("--no-cache");
        c
    };
    timed(r(&from).arg("init"))?;
    timed(
        r(&to)
            .args(["init", "--copy-chunker-params", "--from-repo"])
            .arg(&from),
    )?;
    let mut days = Vec::new();
    for (day, img) in images.iter().enumerate() {
        let before = du(&from);
        timed(r(&from).arg("backup").arg(img))?;
        let source_new_bytes = du(&from).saturating_sub(before);
        let before = du(&to);
        let seconds = timed(r(&to).arg("copy").arg("--from-repo").arg(&from))?;
        days.push(Day {
            tool: "restic copy",
            day,
            logical_bytes: std::fs::metadata(img)?.len(),
            wire_bytes: du(&to).saturating_sub(before),
            source_new_bytes,
            seconds,
        });
    }
    Ok(days)
}
