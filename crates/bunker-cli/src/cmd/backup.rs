//! `bunker backup NAME SOURCE`: client-side chunking and dedup; only
//! missing chunks are sent.

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::Context;
use bunker_client::BackupOptions;
use bunker_nbd::client::Url;
use bunker_nbd::remote::Remote;
use serde::Serialize;

use crate::output::{bar, bytes, rate};
use crate::{CmdResult, Failure, Global};

#[derive(clap::Args)]
pub struct Args {
    /// Snapshot name: 1 to 128 of [A-Za-z0-9._-].
    name: String,
    /// File, block device, - for stdin, or an NBD export
    /// (nbd://HOST:PORT/EXPORT, nbd+unix:///EXPORT?socket=PATH); none with
    /// --overlay.
    #[arg(required_unless_present = "overlay")]
    source: Option<PathBuf>,
    /// With --changed or --dirty-bitmap: the snapshot (NAME@ID, or NAME for
    /// its latest) whose image SOURCE differs from only in the mapped
    /// extents.
    #[arg(long, value_name = "NAME@ID", value_parser = super::parse_ref)]
    base: Option<super::SnapRef>,
    /// Read only these extents of SOURCE and take the rest from --base: a
    /// file (or - for stdin) in `rbd diff` plain or JSON output, or
    /// `START LENGTH [data|zero]` lines.
    #[arg(
        long,
        value_name = "MAP",
        requires = "base",
        conflicts_with = "overlay"
    )]
    changed: Option<PathBuf>,
    /// With an nbd:// SOURCE: read only the extents that the export's
    /// `qemu:dirty-bitmap:NAME` marks dirty (qemu-nbd -B NAME), and take
    /// the rest from --base.
    #[arg(
        long,
        value_name = "NAME",
        requires = "base",
        conflicts_with_all = ["changed", "overlay"]
    )]
    dirty_bitmap: Option<String>,
    /// Back up what `bunker export --overlay FILE` of --base shows: the
    /// base snapshot with the overlay's writes, reading only those.
    #[arg(
        long,
        value_name = "FILE",
        requires = "base",
        conflicts_with = "source"
    )]
    overlay: Option<PathBuf>,
    /// With --changed or --dirty-bitmap: the share (percent) of the bytes the map calls
    /// unchanged that is read and checked against --base anyway.
    #[arg(long, value_name = "PERCENT", default_value_t = 1.0, value_parser = percent)]
    verify_unchanged: f64,
}

fn percent(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(p) if (0.0..=100.0).contains(&p) => Ok(p),
        _ => Err(format!("{s:?} is not a percentage from 0 to 100")),
    }
}

#[derive(Serialize)]
struct Report<'a> {
    name: &'a str,
    id: u64,
    size_bytes: u64,
    new_bytes: u64,
    uploaded_bytes: u64,
    chunks: u64,
    new_chunks: u64,
    seconds: f64,
    gb_per_s: f64,
    blake3: &'a str,
    /// Data bytes transferred from an nbd:// source.
    #[serde(skip_serializing_if = "Option::is_none")]
    read_bytes: Option<u64>,
}

impl<'a> Report<'a> {
    fn of(s: &'a bunker_api::Snapshot, uploaded_bytes: u64, seconds: f64) -> Report<'a> {
        Report {
            name: &s.name,
            id: s.id,
            size_bytes: s.size_bytes,
            new_bytes: s.new_bytes,
            uploaded_bytes,
            chunks: s.chunks,
            new_chunks: s.new_chunks,
            seconds,
            gb_per_s: rate(s.size_bytes, seconds),
            blake3: &s.blake3,
            read_bytes: None,
        }
    }
}

pub fn run(g: &Global, args: Args) -> CmdResult {
    if let (Some(base), Some(overlay)) = (&args.base, &args.overlay) {
        return run_overlay(g, &args, base, overlay);
    }
    let Some(source_path) = args.source.clone() else {
        unreachable!("clap requires SOURCE without --overlay");
    };
    if let Some(url) = source_path.to_str().filter(|s| Url::is_nbd(s)) {
        let url = Url::parse(url).map_err(|e| Failure::with_code(2, anyhow::anyhow!(e)))?;
        return run_nbd(g, &args, &url);
    }
    if args.dirty_bitmap.is_some() {
        return Err(Failure::with_code(
            2,
            anyhow::anyhow!(
                "--dirty-bitmap reads the bitmap from an NBD export: SOURCE must be \
                 nbd://HOST:PORT/EXPORT (qemu-nbd -B NAME), not {}",
                source_path.display()
            ),
        ));
    }
    if let (Some(base), Some(map)) = (&args.base, &args.changed) {
        return run_changed(g, &args, &source_path, base, map);
    }
    if args.base.is_some() {
        return Err(Failure::with_code(
            2,
            anyhow::anyhow!("--base needs --changed MAP, --dirty-bitmap NAME or --overlay FILE"),
        ));
    }
    let source_arg = source_path;
    let client = g.client()?;
    let (reader, size, source): (Box<dyn Read>, Option<u64>, String) =
        if source_arg.as_os_str() == "-" {
            (Box::new(std::io::stdin().lock()), None, "stdin".into())
        } else {
            let f = std::fs::File::open(&source_arg).with_context(|| {
                format!(
                    "cannot read the backup source {} (check the path and permissions)",
                    source_arg.display()
                )
            })?;
            let size = source_size(&f);
            (Box::new(f), size, format!("file:{}", source_arg.display()))
        };
    let pb = bar(size, &format!("backup {}", args.name));
    let opts = BackupOptions {
        source,
        size_hint: size,
    };
    let report = client.backup(&args.name, reader, &opts, &mut |p| {
        pb.set_position(p.bytes_read);
        let dedup = if p.bytes_read > 0 {
            100.0 * p.bytes_deduplicated as f64 / p.bytes_read as f64
        } else {
            0.0
        };
        pb.set_prefix(format!("dedup {dedup:.0}%"));
    });
    pb.finish_and_clear();
    let report = report?;
    let s = &report.snapshot;
    if g.json {
        println!(
            "{}",
            serde_json::to_string(&Report::of(
                s,
                report.progress.bytes_uploaded,
                report.seconds
            ))?
        );
    } else {
        println!(
            "{}@{}: {} in {:.1} s ({:.2} GB/s), {} chunks, {} new ({} stored, {} sent)",
            s.name,
            s.id,
            bytes(s.size_bytes),
            report.seconds,
            rate(s.size_bytes, report.seconds),
            s.chunks,
            s.new_chunks,
            bytes(s.new_bytes),
            bytes(report.progress.bytes_uploaded)
        );
    }
    Ok(())
}

#[derive(Serialize)]
struct ChangedJson<'a> {
    #[serde(flatten)]
    backup: Report<'a>,
    base_id: u64,
    changed_bytes: u64,
    read_bytes: u64,
    sampled_bytes: u64,
    reused_chunks: u64,
    read_chunks: u64,
}

/// `--base NAME@ID --changed MAP`: reads only what the map lists.
fn run_changed(
    g: &Global,
    args: &Args,
    source_path: &Path,
    base: &super::SnapRef,
    map_path: &Path,
) -> CmdResult {
    use std::os::unix::fs::FileExt;
    if source_path.as_os_str() == "-" {
        return Err(Failure::with_code(
            2,
            anyhow::anyhow!(
                "--changed reads SOURCE at the mapped offsets: give a file or block device, not -"
            ),
        ));
    }
    let client = g.client()?;
    let f = std::fs::File::open(source_path).with_context(|| {
        format!(
            "cannot read the backup source {} (check the path and permissions)",
            source_path.display()
        )
    })?;
    let size = source_size(&f)
        .with_context(|| format!("cannot tell the size of {}", source_path.display()))?;
    let map = read_map(map_path, size)?;
    let base_snap = client.snapshot(&base.name, base.id)?;
    let mut read = |offset: u64, buf: &mut [u8]| f.read_exact_at(buf, offset);
    let source = format!("file:{}", source_path.display());
    let report = changed_backup(&client, args, (&base_snap, &map, size), source, &mut read)?;
    print_changed(g, report, &base_snap, None)
}

/// Runs a changed-extent backup of `args.name` from `read` with a
/// progress bar.
fn changed_backup(
    client: &bunker_client::Client,
    args: &Args,
    (base_snap, map, size): (&bunker_api::Snapshot, &bunker_changes::ChangeMap, u64),
    source: String,
    read: &mut bunker_client::Source<'_>,
) -> Result<bunker_client::ChangedReport, Failure> {
    let pb = bar(Some(size), &format!("backup {} ({})", args.name, source));
    let opts = BackupOptions {
        source,
        size_hint: Some(size),
    };
    let report = client.backup_changed(
        &args.name,
        read,
        size,
        base_snap,
        map,
        args.verify_unchanged,
        &opts,
        &mut |p| pb.set_position(p.bytes_read),
    );
    pb.finish_and_clear();
    Ok(report?)
}

/// Prints a changed-extent backup's report; `received` (nbd:// sources)
/// is the data that crossed the network, which stands for the bytes read.
fn print_changed(
    g: &Global,
    mut report: bunker_client::ChangedReport,
    base_snap: &bunker_api::Snapshot,
    received: Option<u64>,
) -> CmdResult {
    if let Some(r) = received {
        report.bytes_read = r;
    }
    let s = &report.snapshot;
    if g.json {
        println!(
            "{}",
            serde_json::to_string(&ChangedJson {
                backup: Report::of(s, report.progress.bytes_uploaded, report.seconds),
                base_id: base_snap.id,
                changed_bytes: report.changed_bytes,
                read_bytes: report.bytes_read,
                sampled_bytes: report.bytes_sampled,
                reused_chunks: report.chunks_reused,
                read_chunks: report.chunks_read,
            })?
        );
    } else {
        println!(
            "{}@{}: {} in {:.1} s ({:.2} GB/s) from {}@{} and {} changed: read {}, checked {} unchanged, {} new ({} stored, {} sent)",
            s.name,
            s.id,
            bytes(s.size_bytes),
            report.seconds,
            rate(s.size_bytes, report.seconds),
            base_snap.name,
            base_snap.id,
            bytes(report.changed_bytes),
            bytes(report.bytes_read),
            bytes(report.bytes_sampled),
            s.new_chunks,
            bytes(s.new_bytes),
            bytes(report.progress.bytes_uploaded)
        );
    }
    Ok(())
}

/// `--base NAME@ID --overlay FILE`: the export's writes become a snapshot.
fn run_overlay(g: &Global, args: &Args, base: &super::SnapRef, path: &Path) -> CmdResult {
    use bunker_nbd::{Overlay, OverlayIdentity};
    let client = g.client()?;
    let base_snap = client.snapshot(&base.name, base.id)?;
    let mut map_path = path.as_os_str().to_owned();
    map_path.push(".map");
    if !path.exists() || !Path::new(&map_path).exists() {
        return Err(Failure::with_code(
            2,
            anyhow::anyhow!(
                "{} is not an overlay (no such file or no {} beside it): give the --overlay FILE \
                 that `bunker export` wrote",
                path.display(),
                Path::new(&map_path).display()
            ),
        ));
    }
    let overlay = Overlay::open(
        path,
        OverlayIdentity {
            name: base_snap.name.clone(),
            id: base_snap.id,
            blake3: base_snap.blake3.clone(),
            size: base_snap.size_bytes,
        },
    )?;
    let size = base_snap.size_bytes;
    let extents = overlay
        .written()
        .into_iter()
        .map(|(offset, len)| bunker_changes::Extent {
            offset,
            len,
            kind: bunker_changes::Kind::Data,
        });
    let map = bunker_changes::ChangeMap::from_extents(extents, size)?;
    let image = bunker_image::Image::open(
        client.clone(),
        &base_snap.name,
        Some(base_snap.id),
        bunker_image::ImageOptions::default(),
    )?;
    let mut read = |offset: u64, buf: &mut [u8]| {
        overlay
            .read_at(&image, offset, buf)
            .map_err(|e| std::io::Error::other(e.to_string()))
    };
    let source = format!("overlay:{}", path.display());
    let report = changed_backup(&client, args, (&base_snap, &map, size), source, &mut read)?;
    print_changed(g, report, &base_snap, None)
}

/// An NBD export as SOURCE: a full read (zeros the export reports are not
/// transferred), or with --base the extents of --changed MAP or of
/// --dirty-bitmap NAME.
fn run_nbd(g: &Global, args: &Args, url: &Url) -> CmdResult {
    use bunker_nbd::client::ClientError;
    let mut remote = Remote::open(url, args.dirty_bitmap.as_deref()).map_err(|e| match e {
        ClientError::NoContext { .. } | ClientError::Refused { .. } => Failure::with_code(
            2,
            anyhow::Error::new(e).context(format!("backup source {url}")),
        ),
        other => anyhow::Error::new(other)
            .context(format!("backup source {url}"))
            .into(),
    })?;
    let client = g.client()?;
    let size = remote.size();
    let source = url.to_string();
    let Some(base) = &args.base else {
        return run_nbd_full(g, args, &client, remote, source);
    };
    let map = match (&args.changed, remote.changed()) {
        (Some(map_path), _) => read_map(map_path, size)?,
        (None, Some(dirty)) => bunker_changes::ChangeMap::from_extents(
            dirty.into_iter().map(|c| bunker_changes::Extent {
                offset: c.offset,
                len: c.len,
                kind: if c.zero {
                    bunker_changes::Kind::Zero
                } else {
                    bunker_changes::Kind::Data
                },
            }),
            size,
        )
        .map_err(|e| anyhow::anyhow!("the dirty bitmap of {url}: {e}"))?,
        (None, None) => {
            return Err(Failure::with_code(
                2,
                anyhow::anyhow!("--base needs --changed MAP or --dirty-bitmap NAME"),
            ))
        }
    };
    let base_snap = client.snapshot(&base.name, base.id)?;
    let mut read =
        |offset: u64, buf: &mut [u8]| remote.read_at(offset, buf).map_err(std::io::Error::other);
    let report = changed_backup(&client, args, (&base_snap, &map, size), source, &mut read)?;
    let received = remote.bytes_received();
    print_changed(g, report, &base_snap, Some(received))
}

/// A full read of an NBD export.
fn run_nbd_full(
    g: &Global,
    args: &Args,
    client: &bunker_client::Client,
    remote: Remote,
    source: String,
) -> CmdResult {
    let size = remote.size();
    let reader = remote.into_reader();
    let received = reader.bytes_received();
    let pb = bar(Some(size), &format!("backup {} ({source})", args.name));
    let opts = BackupOptions {
        source,
        size_hint: Some(size),
    };
    let report = client.backup(&args.name, reader, &opts, &mut |p| {
        pb.set_position(p.bytes_read)
    });
    pb.finish_and_clear();
    let report = report?;
    let read = received.load(std::sync::atomic::Ordering::Relaxed);
    let s = &report.snapshot;
    if g.json {
        let mut json = Report::of(s, report.progress.bytes_uploaded, report.seconds);
        json.read_bytes = Some(read);
        println!("{}", serde_json::to_string(&json)?);
    } else {
        println!(
            "{}@{}: {} in {:.1} s ({:.2} GB/s), read {} from the source, {} chunks, {} new ({} stored, {} sent)",
            s.name,
            s.id,
            bytes(s.size_bytes),
            report.seconds,
            rate(s.size_bytes, report.seconds),
            bytes(read),
            s.chunks,
            s.new_chunks,
            bytes(s.new_bytes),
            bytes(report.progress.bytes_uploaded)
        );
    }
    Ok(())
}

/// Parses the changed-extent map at `map_path` (- for stdin) for an image
/// of `size` bytes; a bad map is a usage error (exit 2).
fn read_map(map_path: &Path, size: u64) -> Result<bunker_changes::ChangeMap, Failure> {
    if map_path.as_os_str() == "-" {
        bunker_changes::map::parse(std::io::stdin().lock(), size)
    } else {
        let file = std::fs::File::open(map_path).with_context(|| {
            format!("cannot read the changed-extent map {}", map_path.display())
        })?;
        bunker_changes::map::parse(std::io::BufReader::new(file), size)
    }
    .map_err(|e| Failure::with_code(2, anyhow::anyhow!("{}: {e}", map_path.display())))
}

/// Size of a regular file or block device, for progress and ETA.
fn source_size(f: &std::fs::File) -> Option<u64> {
    use std::io::{Seek, SeekFrom};
    let meta = f.metadata().ok()?;
    if meta.is_file() {
        return Some(meta.len());
    }
    // A block device reports its size by seeking to its end.
    let mut f = f.try_clone().ok()?;
    let end = f.seek(SeekFrom::End(0)).ok()?;
    f.seek(SeekFrom::Start(0)).ok()?;
    Some(end)
}

/// The rest of `bunker backup --help`, after the options; also in docs/CLI.md.
pub(crate) const LONG_HELP: &str = r##"Backs up a file, a block device, or stdin (-) as a new snapshot of NAME,
with the chunk protocol: the client reads /v1/info, cuts chunks with the
server's parameters on all cores, asks per 16 MiB block which chunk ids the
server lacks, uploads those in parallel (zstd at the repository's level when
it saves at least 1/32: the server keeps the frame, so compression costs the
client's CPU, not the server's), and commits the manifest with the
whole-image BLAKE3. The manifest is spooled to a temporary file (TMPDIR), 40
bytes per chunk.

On any error the session is deleted and nothing is committed. Chunks already
uploaded stay in the repository, so a rerun sends only the rest.

The source label kept in the snapshot is file:<path>, stdin, or the NBD URL.

SOURCE may be an NBD export: nbd://HOST[:PORT]/EXPORT (port 10809 by
default) or nbd+unix:///EXPORT?socket=PATH. Ranges its base:allocation map
reports as zeros are not transferred; --json adds read_bytes, the data that
crossed the network.

Prints on stdout:

    vol1@1: 256.00 MiB in 0.8 s (0.36 GB/s), 641 chunks, 472 new (79.79 MiB stored, 79.32 MiB sent)

stored is what the repository grew by (after dedup and compression); sent is
what crossed the network. With --json:
{"name","id","size_bytes","new_bytes","uploaded_bytes","chunks","new_chunks","seconds","gb_per_s","blake3"}.

Changed-extent backups (--base NAME@ID --changed MAP): MAP lists the extents
of SOURCE that may differ from the base snapshot's image (rbd diff output,
plain or --format json, or START LENGTH [data|zero] lines; - reads it from
stdin). Only those extents, and the unchanged bytes around them up to the
next chunk boundary the base shares, are read and chunked; every other chunk
is the base's. The manifest is exactly what a full read would give, and the
whole-image BLAKE3 is the true hash of every byte: the base's block hashes
stand in for unchanged 1 MiB blocks, changed blocks are read and hashed.
--verify-unchanged PERCENT (default 1) reads that share of the unchanged
chunks anyway and fails the backup (exit 4, nothing committed) if any differs
from the base: a wrong map is never silent. A malformed map (bad line, out of
order, overlapping, beyond SOURCE's end) is a usage error naming the line
(exit 2). SOURCE may be larger or smaller than the base. With --json the
report adds base_id, changed_bytes, read_bytes, sampled_bytes, reused_chunks
and read_chunks.

With an NBD SOURCE, --dirty-bitmap NAME takes the changed extents from the
export's qemu:dirty-bitmap:NAME context instead of a map (qemu-nbd -B NAME
of a qcow2 image whose bitmap NAME was added when it held the base's
bytes); dirty ranges that read as zeros are not transferred. A bitmap the
export does not offer is refused naming it (exit 2), nothing sent."##;
