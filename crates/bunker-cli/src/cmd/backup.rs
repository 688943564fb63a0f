//! `bunker backup NAME SOURCE`: client-side chunking and dedup; only
//! missing chunks are sent.

use std::io::Read;
use std::path::PathBuf;

use anyhow::Context;
use bunker_client::BackupOptions;
use serde::Serialize;

use crate::output::{bar, bytes, rate};
use crate::{CmdResult, Global};

#[derive(clap::Args)]
pub struct Args {
    /// Snapshot name: 1 to 128 of [A-Za-z0-9._-].
    name: String,
    /// File, block device, or - for stdin.
    source: PathBuf,
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
}

pub fn run(g: &Global, args: Args) -> CmdResult {
    let client = g.client()?;
    let (reader, size, source): (Box<dyn Read>, Option<u64>, String) =
        if args.source.as_os_str() == "-" {
            (Box::new(std::io::stdin().lock()), None, "stdin".into())
        } else {
            let f = std::fs::File::open(&args.source).with_context(|| {
                format!(
                    "cannot read the backup source {} (check the path and permissions)",
                    args.source.display()
                )
            })?;
            let size = source_size(&f);
            (Box::new(f), size, format!("file:{}", args.source.display()))
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
            serde_json::to_string(&Report {
                name: &s.name,
                id: s.id,
                size_bytes: s.size_bytes,
                new_bytes: s.new_bytes,
                uploaded_bytes: report.progress.bytes_uploaded,
                chunks: s.chunks,
                new_chunks: s.new_chunks,
                seconds: report.seconds,
                gb_per_s: rate(s.size_bytes, report.seconds),
                blake3: &s.blake3,
            })?
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

The source label kept in the snapshot is file:<path> or stdin.

Prints on stdout:

    vol1@1: 256.00 MiB in 0.8 s (0.36 GB/s), 641 chunks, 472 new (79.79 MiB stored, 79.32 MiB sent)

stored is what the repository grew by (after dedup and compression); sent is
what crossed the network. With --json:
{"name","id","size_bytes","new_bytes","uploaded_bytes","chunks","new_chunks","seconds","gb_per_s","blake3"}."##;
