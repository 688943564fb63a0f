//! `bunker mount NAME[@ID] DIR`: the snapshot as the read-only file
//! `DIR/NAME@ID.img` through FUSE (bunker-mount), until SIGINT or SIGTERM.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use bunker_image::{Image, ImageError, ImageOptions};
use bunker_mount::Mounted;
use bunker_testdata::image::parse_size;

use super::{parse_ref, SnapRef};
use crate::{CmdResult, Global};

#[derive(clap::Args)]
pub struct Args {
    /// NAME or NAME@ID (default: the latest snapshot of NAME).
    #[arg(value_parser = parse_ref)]
    snapshot: SnapRef,
    /// An existing directory to mount on.
    dir: PathBuf,
    /// Memory for verified chunks (K, M, G).
    #[arg(long, default_value = "256M", value_parser = parse_size)]
    cache: u64,
}

pub(crate) const LONG_HELP: &str = r##"Prints the image file's path (DIR/NAME@ID.img) on stdout once mounted,
then serves until SIGINT or SIGTERM, and unmounts. The file is read-only
and as long as the image; loop-mount the filesystem inside to get files:
  bunker mount vol1@3 /mnt/bunker &
  mount -o loop,ro /mnt/bunker/vol1@3.img /mnt/vol1
Every chunk is BLAKE3-checked before it is served and kept in a cache of
--cache bytes; sequential reads fetch ahead. A read touching a damaged
chunk fails with EIO, the rest of the image reads on. Unmount the loop
mount before stopping bunker mount: while the image is in use, a signal
is answered with an error and the mount keeps serving (signal again once
the loop mount is gone).
Needs /dev/fuse, and fusermount3 (Debian: fuse3) unless run as root;
without them it says so and exits 1. Unmounting DIR from outside
(umount DIR, fusermount3 -u DIR) ends it too."##;

pub fn run(g: &Global, args: Args) -> CmdResult {
    crate::init_logging();
    let client = g.client()?;
    let SnapRef { name, id } = args.snapshot;
    let options = ImageOptions {
        cache_bytes: args.cache,
        ..ImageOptions::default()
    };
    let image = match Image::open(client, &name, id, options) {
        Ok(i) => i,
        // The client's own error: its kind gives the exit code.
        Err(ImageError::Open(e)) => return Err(e.into()),
        Err(e) => return Err(e.into()),
    };
    let size = image.size();
    let mounted = bunker_mount::mount(image, &args.dir)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // Watched before the mounted line is printed: a signal sent as soon as
    // it is read unmounts cleanly instead of killing the process.
    let watch = || {
        let _in = runtime.enter();
        Box::pin(super::serve::shutdown_signal())
    };
    let mut shutdown = watch();
    let mut out = std::io::stdout().lock();
    writeln!(out, "{}", mounted.file().display())?;
    out.flush()?;
    drop(out);
    tracing::info!(
        "{} is mounted ({size} bytes, read-only); SIGINT or SIGTERM unmounts",
        mounted.file().display()
    );
    let mut mounted = mounted;
    loop {
        let signalled = runtime.block_on(async {
            tokio::select! {
                _ = &mut shutdown => true,
                _ = unmounted_from_outside(&mounted) => false,
            }
        });
        if signalled {
            // For the next signal, should this unmount find the mount busy.
            shutdown = watch();
        } else {
            tracing::info!("{} was unmounted", args.dir.display());
        }
        match mounted.unmount() {
            Ok(()) => return Ok(()),
            // Still serving: its user would get errors otherwise.
            Err(e @ bunker_mount::MountError::Busy { .. }) => {
                tracing::error!("{e}; signal again to retry")
            }
            Err(e) => return Err(e.into()),
        }
    }
}

/// Ends when the filesystem is no longer mounted (`umount DIR`).
async fn unmounted_from_outside(mounted: &Mounted) {
    while mounted.is_mounted() {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
