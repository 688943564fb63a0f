//! `--sync`: replication throughput, bunker against restic, in one run.
//!
//! bunker: a source and a target server on loopback; each day's image is
//! backed up to the source (`bunker backup`), then copied with `bunker
//! sync` (a separate process, as an operator runs it), timed. The bytes on
//! the wire are those the source sent, counted by a proxy in front of it
//! (chunk frames as stored, manifests, listings), beside the sync
//! report's own count of chunk bytes sent.
//!
//! restic: the same images backed up into one local repository, each day
//! then copied with `restic copy` into a second local repository made
//! with the first's chunker parameters (so it deduplicates the same way),
//! timed. Its bytes on the wire are what the second repository grew by
//! (restic copies pack contents; a local copy has no other wire).
//!
//! Logical GB/s is the day's image size over the copy's seconds; wire
//! GB/s the bytes sent over them.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context};

use super::proxy::Proxy;
use super::{du, gbps, timed, which, Server};

/// One copy of one day.
struct Copy {
    seconds: f64,
    /// Bytes that crossed from source to target (see the module doc).
    wire_bytes: u64,
    /// For bunker: the sync report's chunk bytes (frames as stored).
    reported_bytes: Option<u64>,
}

pub(super) fn run(
    bunker: &Path,
    work: &Path,
    images: &[PathBuf],
    sizes: &[u64],
) -> anyhow::Result<()> {
    let ours = bunker_days(bunker, work, images)?;
    let restic = if which("restic") {
        Some(restic_days(work, images)?)
    } else {
        eprintln!("restic not installed: tools/bench --sync installs it (apt-get install restic)");
        None
    };
    println!("| copy of day | image | bunker sync | bunker wire | restic copy | restic wire | bunker / restic |");
    println!("|---|---|---|---|---|---|---|");
    for (day, b) in ours.iter().enumerate() {
        let size = sizes[day];
        let r = restic.as_ref().map(|r| &r[day]);
        let cell = |c: &Copy| format!("{:.2} GB/s ({:.2} s)", gbps(size, c.seconds), c.seconds);
        let wire = |c: &Copy| {
            format!(
                "{} MiB{}, {:.2} GB/s",
                c.wire_bytes >> 20,
                c.reported_bytes
                    .map_or(String::new(), |r| format!(" (chunks {} MiB)", r >> 20)),
                gbps(c.wire_bytes, c.seconds)
            )
        };
        println!(
            "| {day} | {} MiB | {} | {} | {} | {} | {} |",
            size >> 20,
            cell(b),
            wire(b),
            r.map_or("-".into(), cell),
            r.map_or("-".into(), wire),
            r.map_or("-".into(), |r| format!(
                "{:.2}x faster",
                r.seconds / b.seconds
            )),
        );
    }
    println!(
        "\nlogical GB/s: the day's image size over the copy's wall time. bunker wire: \
         bytes the source sent (counting proxy); restic wire: what the second \
         repository grew by."
    );
    Ok(())
}

/// Each day backed up to a source server, then `bunker sync` to a target.
fn bunker_days(bunker: &Path, work: &Path, images: &[PathBuf]) -> anyhow::Result<Vec<Copy>> {
    let source = Server::start(bunker, &work.join("sync-source"), &[])?;
    let target = Server::start(bunker, &work.join("sync-target"), &[])?;
    let proxy = Proxy::start(&source.url)?;
    let from_token = work.join("sync-source.token");
    std::fs::write(&from_token, &source.token)?;
    let to_token = work.join("sync-target.token");
    std::fs::write(&to_token, &target.token)?;
    let mut out = Vec::new();
    for img in images {
        let backup = Command::new(bunker)
            .args(["backup", "vol"])
            .arg(img)
            .env("BUNKER_SERVER", &source.url)
            .env("BUNKER_TOKEN", &source.token)
            .stdout(Stdio::null())
            .status()?;
        if !backup.success() {
            bail!("bunker backup of {} failed", img.display());
        }
        let before = proxy.counts();
        let t = Instant::now();
        let o = Command::new(bunker)
            .args(["--json", "sync", "--from", &proxy.url, "--from-token-file"])
            .arg(&from_token)
            .args(["--to", &target.url, "--to-token-file"])
            .arg(&to_token)
            .output()?;
        let seconds = t.elapsed().as_secs_f64();
        if !o.status.success() {
            bail!("bunker sync: {}", String::from_utf8_lossy(&o.stderr));
        }
        let report: serde_json::Value = serde_json::from_slice(&o.stdout).with_context(|| {
            format!("bunker sync --json: {}", String::from_utf8_lossy(&o.stdout))
        })?;
        out.push(Copy {
            seconds,
            wire_bytes: proxy.counts().since(&before).down_bytes,
            reported_bytes: report["wire_bytes"].as_u64(),
        });
    }
    source.stop();
    target.stop();
    Ok(out)
}

/// Each day backed up into one local restic repository, then `restic
/// copy` into a second.
fn restic_days(work: &Path, images: &[PathBuf]) -> anyhow::Result<Vec<Copy>> {
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
            .arg("init")
            .arg("--copy-chunker-params")
            .arg("--from-repo")
            .arg(&from),
    )?;
    let mut out = Vec::new();
    for img in images {
        timed(r(&from).arg("backup").arg(img))?;
        let grown = du(&to);
        let seconds = timed(r(&to).arg("copy").arg("--from-repo").arg(&from))?;
        out.push(Copy {
            seconds,
            wire_bytes: du(&to).saturating_sub(grown),
            reported_bytes: None,
        });
    }
    Ok(out)
}
