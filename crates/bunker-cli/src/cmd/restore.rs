//! `bunker restore NAME[@ID] TARGET`: parallel, verified, sparse; a file
//! appears under its name only complete and verified.

use std::path::PathBuf;

use bunker_client::Target;
use serde::Serialize;

use super::parse_ref;
use crate::output::{bar, bytes, rate};
use crate::{CmdResult, Global};

#[derive(clap::Args)]
pub struct Args {
    /// NAME or NAME@ID (default: the latest snapshot of NAME).
    #[arg(value_parser = parse_ref)]
    snapshot: super::SnapRef,
    /// File, block device, or - for stdout.
    target: PathBuf,
    /// Replace an existing regular file (once the new image is complete
    /// and verified), or write over a block device.
    #[arg(long)]
    force: bool,
    /// Write over an existing file or block device in place, fetching only
    /// the chunks whose bytes differ (with --force: a device longer than
    /// the image).
    #[arg(long)]
    delta: bool,
}

#[derive(Serialize)]
pub struct DeltaLine<'a> {
    pub name: &'a str,
    pub id: u64,
    pub bytes: u64,
    pub bytes_read: u64,
    pub bytes_fetched: u64,
    pub bytes_written: u64,
    pub chunks_same: u64,
    pub chunks_differing: u64,
    pub seconds: f64,
    pub blake3: &'a str,
    pub verified: bool,
}

#[derive(Serialize)]
pub struct Report<'a> {
    pub name: &'a str,
    pub id: u64,
    pub bytes: u64,
    pub seconds: f64,
    pub gb_per_s: f64,
    pub chunks_verified: u64,
    pub blake3: &'a str,
    pub verified: bool,
}

pub fn run(g: &Global, args: Args) -> CmdResult {
    let client = g.client()?;
    let super::SnapRef { name, id } = args.snapshot.clone();
    if args.delta {
        return run_delta(g, &client, &name, id, &args);
    }
    let mut stdout;
    let target = if args.target.as_os_str() == "-" {
        stdout = std::io::stdout().lock();
        Target::Stream(&mut stdout)
    } else {
        Target::File {
            path: args.target.clone(),
            force: args.force,
        }
    };
    let pb = bar(None, &format!("restore {name}"));
    let report = client.restore(&name, id, target, &mut |p| {
        pb.set_length(p.total);
        pb.set_position(p.bytes);
    });
    pb.finish_and_clear();
    let r = report?;
    let s = &r.snapshot;
    let line = Report {
        name: &s.name,
        id: s.id,
        bytes: r.bytes,
        seconds: r.seconds,
        gb_per_s: rate(r.bytes, r.seconds),
        chunks_verified: r.chunks_verified,
        blake3: &s.blake3,
        verified: true,
    };
    if g.json {
        eprintln!("{}", serde_json::to_string(&line)?);
    } else {
        eprintln!(
            "restored {}@{}: {} in {:.1} s ({:.2} GB/s), {} chunks verified, {} as holes, BLAKE3 {} ok",
            s.name,
            s.id,
            bytes(r.bytes),
            r.seconds,
            line.gb_per_s,
            r.chunks_verified,
            bytes(r.zero_bytes),
            &s.blake3[..16]
        );
    }
    Ok(())
}

/// `--delta`: in place over an existing file or device.
fn run_delta(
    g: &Global,
    client: &bunker_client::Client,
    name: &str,
    id: Option<u64>,
    args: &Args,
) -> CmdResult {
    if args.target.as_os_str() == "-" {
        return Err(anyhow::anyhow!(
            "--delta writes over an existing file or block device, not stdout"
        )
        .into());
    }
    let pb = bar(None, &format!("delta restore {name}"));
    let report = client.restore_delta(name, id, &args.target, args.force, &mut |p| {
        pb.set_length(p.total);
        pb.set_position(p.bytes);
    });
    pb.finish_and_clear();
    let r = report?;
    let s = &r.snapshot;
    let line = DeltaLine {
        name: &s.name,
        id: s.id,
        bytes: r.bytes,
        bytes_read: r.bytes_read,
        bytes_fetched: r.bytes_fetched,
        bytes_written: r.bytes_written,
        chunks_same: r.chunks_same,
        chunks_differing: r.chunks_differing,
        seconds: r.seconds,
        blake3: &s.blake3,
        verified: true,
    };
    if g.json {
        eprintln!("{}", serde_json::to_string(&line)?);
    } else {
        eprintln!(
            "delta restored {}@{}: {} in {:.1} s; read {}, fetched {} ({} chunks differing, {} same), wrote {}, BLAKE3 {} ok",
            s.name,
            s.id,
            bytes(r.bytes),
            r.seconds,
            bytes(r.bytes_read),
            bytes(r.bytes_fetched),
            r.chunks_differing,
            r.chunks_same,
            bytes(r.bytes_written),
            &s.blake3[..16]
        );
    }
    Ok(())
}

/// The rest of `bunker restore --help`, after the options; also in docs/CLI.md.
pub(crate) const LONG_HELP: &str = r##"Restores NAME@ID, or the latest snapshot of NAME (also NAME@latest), to a
regular file, a block device, or stdout (-). Four threads fetch runs of up
to 16 consecutive chunks (4 MiB) as byte ranges of the image, up to 80
chunks ahead of the writer. The server verifies each chunk's BLAKE3 against
its id before sending it and cuts the response at the first damaged one; the
client then fetches that run again chunk by chunk, so the error names the
damaged chunk and its byte range. At the end the BLAKE3 of the whole image
must equal the snapshot's, which covers every byte that crossed the wire.

- Regular file: refused if it exists, unless --force. The image is written
  to TARGET.bunker-partial beside it (sized first, zero chunks left as
  holes), fsynced, and renamed over TARGET only after the whole-image hash
  matched; then the directory is fsynced. TARGET is therefore either
  untouched or the complete, verified image; with --force the disk needs
  room for both until the rename. The new file replaces the old one (a new
  inode: the old file's permissions and other hard links are not carried
  over). Without --force, a TARGET that appears during the restore is not
  replaced.
- Symbolic link: refused, unless it leads to a block device (as the names
  under /dev/disk/by-id do). A restore never writes through a link to a
  file, so a dangling link never creates or truncates what it names.
- Block device: written in place, zeros included, only with --force; refused
  if it is smaller than the image or in use (mounted: it is opened with
  O_EXCL). It cannot be renamed into place, so a failed restore leaves it
  partly written.
- -: written in order to stdout, zeros included (the hash is checked after
  the bytes went out).
- Anything else (a directory, /dev/null, a FIFO) is refused. Use - or bunker
  drill.

A failed restore (damaged chunk, lost connection, stalled server, full disk,
hash mismatch) exits non-zero, removes its .bunker-partial file and leaves
TARGET as it was: the old file with --force, nothing otherwise. A restore
that is killed leaves its .bunker-partial file (full size, possibly with
holes where it had not written yet); the next restore to the same TARGET
replaces it. Two restores to the same TARGET at once: the second is refused
(the partial file is locked).

Nothing the server sends sizes memory unchecked: a manifest entry longer
than the repository's largest chunk (max_bytes of /v1/info) or a chunk
answer longer than the chunk is refused (exit 4), and a server that sends
nothing for --timeout seconds fails the restore (exit 1).

The report goes to stderr, since stdout may carry the image:

    restored vol1@2: 257.28 MiB in 0.5 s (0.55 GB/s), 579 chunks verified, 65.00 MiB as holes, BLAKE3 ea565576e30c453d ok

With --json (also on stderr):
{"name","id","bytes","seconds","gb_per_s","chunks_verified","blake3","verified"}.

--delta writes over an existing file or block device in place: TARGET is
read once, in order, each chunk's bytes hashed (all cores) and compared with
the manifest, and only differing chunks are fetched (four at once, each
verified); only their 4 KiB blocks that differ are written. Zero runs are
checked in 1 MiB pieces and their blocks cleared (holes in a file) only
where not zero. Rolling a volume back a day writes the blocks that changed
that day. A file shorter than the image is extended
first; one longer is cut to the image after the whole-image BLAKE3 (of the
final bytes) matched. A device shorter than the image is refused, a longer
one needs --force. A failed delta restore (exit 4 for damage or a hash
mismatch) leaves the snapshot's bytes before the failing chunk and the old
bytes from it on; run it again to finish. Report:
{"name","id","bytes","bytes_read","bytes_fetched","bytes_written",
"chunks_same","chunks_differing","seconds","blake3","verified"}."##;
