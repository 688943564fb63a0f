//! `bunker export NAME[@ID]`: serves snapshots over NBD (bunker-nbd) from
//! verified, cached images (bunker-image), optionally writable through an
//! overlay file.

use std::collections::HashMap;
use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::Context;
use bunker_client::{Client, ErrorKind};
use bunker_image::{Image, ImageError, ImageOptions};
use bunker_nbd::{Export, ExportError, Exports, Overlay, OverlayIdentity};
use bunker_testdata::image::parse_size;

use super::{parse_ref, SnapRef};
use crate::{CmdResult, Failure, Global};

#[derive(clap::Args)]
pub struct Args {
    /// NAME or NAME@ID: the default export (the empty export name). Any
    /// other snapshot the token can read is served too, as NAME@ID, or
    /// NAME for its latest.
    #[arg(value_parser = parse_ref)]
    snapshot: SnapRef,
    /// Address and port to listen on.
    #[arg(long, default_value = "127.0.0.1:10809")]
    listen: SocketAddr,
    /// Memory for verified chunks, per exported snapshot (K, M, G).
    #[arg(long, default_value = "256M", value_parser = parse_size)]
    cache: u64,
    /// Make the default export writable: writes go to this sparse file
    /// (and FILE.map beside it); reads come from it where written. An
    /// existing overlay continues where its last flush left it.
    #[arg(long)]
    overlay: Option<PathBuf>,
    /// Allow a --listen address other than loopback. NBD has no
    /// authentication: whoever can connect reads what this token reads.
    #[arg(long)]
    allow_remote: bool,
}

pub(crate) const LONG_HELP: &str = r##"Prints nbd://ADDR/NAME@ID on stdout once it listens, then serves until
SIGINT or SIGTERM (the overlay is flushed first). Any NBD client attaches:
  nbdinfo --map nbd://127.0.0.1:10809/vol1@2
  qemu-img convert -O raw nbd://127.0.0.1:10809/vol1@2 out.img
  nbdcopy --connections=4 nbd://127.0.0.1:10809/vol1@2 /dev/sdX
Every chunk is BLAKE3-checked before it is served; a damaged chunk fails
the reads that touch it with EIO and the rest keeps working. Zero chunks
are reported as holes (base:allocation), so copies skip them. Without
--overlay the export is read-only. There is no TLS yet: keep it on
loopback or tunnel it (ssh -L)."##;

/// The snapshots served: the default one, and the others as clients ask
/// for them (opened on first use, kept).
struct Snapshots {
    client: Client,
    options: ImageOptions,
    default: Arc<Export>,
    open: Mutex<HashMap<String, Arc<Export>>>,
}

fn export_error(e: bunker_client::Error) -> ExportError {
    match (&e, e.kind()) {
        (_, ErrorKind::NotFound) => ExportError::Unknown(e.to_string()),
        (bunker_client::Error::Unauthorized { .. } | bunker_client::Error::Forbidden { .. }, _) => {
            ExportError::Denied(e.to_string())
        }
        _ => ExportError::Failed(e.to_string()),
    }
}

fn describe(image: &Image) -> String {
    let s = image.snapshot();
    format!(
        "bunker snapshot {}@{}, {} bytes, BLAKE3 {}",
        s.name, s.id, s.size_bytes, s.blake3
    )
}

impl Exports for Snapshots {
    fn open(&self, name: &str) -> Result<Arc<Export>, ExportError> {
        if name.is_empty() {
            return Ok(self.default.clone());
        }
        let r = parse_ref(name).map_err(ExportError::Unknown)?;
        let id = match r.id {
            Some(id) => id,
            None => {
                self.client
                    .snapshot(&r.name, None)
                    .map_err(export_error)?
                    .id
            }
        };
        let key = format!("{}@{id}", r.name);
        if key == self.default.name {
            return Ok(self.default.clone());
        }
        let mut open = self.open.lock().expect("exports lock");
        if let Some(e) = open.get(&key) {
            return Ok(e.clone());
        }
        let image = Image::open(self.client.clone(), &r.name, Some(id), self.options.clone())
            .map_err(|e| match e {
                ImageError::Open(e) => export_error(e),
                e => ExportError::Failed(e.to_string()),
            })?;
        tracing::info!("serving {key} ({} bytes)", image.size());
        let export = Arc::new(Export {
            name: key.clone(),
            description: describe(&image),
            source: Arc::new(image),
            overlay: None,
        });
        open.insert(key, export.clone());
        Ok(export)
    }

    fn list(&self) -> Vec<String> {
        let mut names = vec![self.default.name.clone()];
        names.extend(self.open.lock().expect("exports lock").keys().cloned());
        names
    }
}

pub fn run(g: &Global, args: Args) -> CmdResult {
    crate::init_logging();
    if !args.listen.ip().is_loopback() && !args.allow_remote {
        return Err(Failure::with_code(
            2,
            anyhow::anyhow!(
                "refusing to listen on {}: NBD has no authentication, so anyone who can connect would read what this token can read; add --allow-remote to do it anyway (or keep it on loopback and tunnel it with ssh -L)",
                args.listen
            ),
        ));
    }
    let client = g.client()?;
    let options = ImageOptions {
        cache_bytes: args.cache,
        ..ImageOptions::default()
    };
    let SnapRef { name, id } = args.snapshot;
    let image = match Image::open(client.clone(), &name, id, options.clone()) {
        Ok(i) => i,
        Err(ImageError::Open(e)) => return Err(e.into()),
        Err(e) => return Err(e.into()),
    };
    let snap = image.snapshot().clone();
    let canonical = format!("{}@{}", snap.name, snap.id);
    let overlay = match &args.overlay {
        Some(path) => Some(Arc::new(Overlay::open(
            path,
            OverlayIdentity {
                name: snap.name.clone(),
                id: snap.id,
                blake3: snap.blake3.clone(),
                size: snap.size_bytes,
            },
        )?)),
        None => None,
    };
    let default = Arc::new(Export {
        name: canonical.clone(),
        description: describe(&image),
        source: Arc::new(image),
        overlay: overlay.clone(),
    });
    let listener =
        TcpListener::bind(args.listen).with_context(|| format!("listening on {}", args.listen))?;
    let addr = listener.local_addr()?;
    let exports = Arc::new(Snapshots {
        client,
        options,
        default,
        open: Mutex::new(HashMap::new()),
    });
    std::thread::spawn(move || stop_on_signal(overlay));
    tracing::info!(
        "serving {canonical} ({} bytes{}) over NBD on {addr}",
        snap.size_bytes,
        if args.overlay.is_some() {
            ", writable through the overlay"
        } else {
            ", read-only"
        }
    );
    let mut out = std::io::stdout().lock();
    writeln!(out, "nbd://{addr}/{canonical}")?;
    out.flush()?;
    drop(out);
    bunker_nbd::serve(listener, exports).context("serving NBD")?;
    Ok(())
}

/// Waits for SIGINT or SIGTERM, flushes the overlay and ends the process:
/// connections are cut, nothing answered is lost.
fn stop_on_signal(overlay: Option<Arc<Overlay>>) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!("cannot watch for signals: {e}");
            return;
        }
    };
    runtime.block_on(async { super::serve::shutdown_signal().await });
    let code = match overlay.map(|o| o.flush()) {
        Some(Err(e)) => {
            tracing::error!("flushing the overlay: {e}");
            1
        }
        _ => 0,
    };
    tracing::info!("export stopped");
    std::process::exit(code);
}
