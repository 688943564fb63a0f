//! What every request handler shares: the configuration, the repository,
//! tokens, recorded checks, upload sessions, metrics, and the limits that
//! keep the server's memory and threads bounded.
//!
//! Every limit is held by a guard ([`IngestSlot`], a [`QuotaGuard`], a
//! budget permit, [`Counted`] for gauges): work that ends in any way,
//! a request future dropped midway included, gives back what it took.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;

use crate::config::Config;
use crate::error::{ApiError, StartError};
use crate::lease::Lease;
use crate::limits::{Budget, Quota, QuotaGuard};
use crate::metrics::Metrics;
use crate::mirror::{self, Reconciled, Winner};
use crate::sessions::Sessions;
use crate::tokens::{self, TokenStore};
use crate::{admin_token, checks, restore};

/// Everything a request handler may touch.
pub struct State {
    pub config: Config,
    pub repo: bunker_store::Repository,
    pub tokens: TokenStore,
    /// Last verify and drill per snapshot.
    pub checks: checks::Checks,
    pub sessions: Sessions,
    pub metrics: Metrics,
    /// Scheduled pull jobs and their status.
    pub sync_jobs: crate::sync_jobs::Jobs,
    streams: Arc<Semaphore>,
    /// One server-side drill at a time: it reads on every core.
    pub(crate) server_drills: Semaphore,
    /// Ingest slots per token.
    stream_quota: Arc<Quota>,
    pub(crate) restores: restore::Restores,
    /// Buffered chunk uploads and `missing` queries.
    bodies: Budget,
    shutting_down: AtomicBool,
    data_dir: String,
    /// The lease on the bucket, on a remote repository. Last, so it is
    /// released after everything above is dropped.
    _lease: Option<Arc<Lease>>,
}

impl State {
    /// Opens the repository at `config.data` (creating it on first start)
    /// and the token store in `<data>/server/`. On first start writes an
    /// admin token to `<data>/admin.token` (mode 0600) and returns its path
    /// (see [`admin_token`]).
    /// On a bucket, first takes its lease ([`crate::lease`]), and restores
    /// `tokens.json` and `checks.json` from it when the data directory has
    /// none (a server rebuilt from the bucket keeps its tokens: no new
    /// admin token is made when the bucket had tokens).
    pub fn open(config: Config) -> Result<(Arc<State>, Option<PathBuf>), StartError> {
        let (repo, remote) = open_repository(&config)?;
        let (meta, lease) = match remote {
            Some((meta, lease)) => (Some(meta), Some(lease)),
            None => (None, None),
        };
        // The repository lock is ours: no other server writes these now.
        for file in ["tokens.json", "checks.json"] {
            let path = config.data.join("server").join(file);
            bunker_store::remove_stale_temps_of(&path).map_err(|e| StartError::StaleTemps {
                path,
                source: Box::new(e),
            })?;
        }
        let server_dir = config.data.join("server");
        if let Some(meta) = &meta {
            let restored = mirror::reconcile(&**meta, &server_dir, "tokens.json", Winner::Bucket)?;
            mirror::reconcile(&**meta, &server_dir, "checks.json", Winner::Local)?;
            if restored == Reconciled::Restored {
                tracing::info!(
                    "tokens restored from the object store: the tokens issued before keep working"
                );
            }
        }
        let (tokens, admin_file) = admin_token::open_or_init(&config.data)?;
        tokens.warn_narrowed_scopes(&repo);
        let checks = checks::Checks::open(&server_dir)?;
        if let Some(meta) = &meta {
            tokens.mirror_to(meta.clone())?;
            checks.mirror_to(meta.clone());
        }
        let data_dir = std::fs::canonicalize(&config.data)
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| config.data.display().to_string());
        Ok((
            Arc::new(State {
                streams: Arc::new(Semaphore::new(config.max_streams.max(1))),
                server_drills: Semaphore::new(1),
                stream_quota: Quota::new(config.max_streams_per_token),
                restores: restore::Restores {
                    budget: Budget::new(
                        config
                            .restore_memory_bytes
                            .max(u64::from(repo.chunker_params().max_len)),
                    ),
                    quota: Quota::new(config.max_restores_per_token),
                },
                bodies: Budget::new(config.body_memory_bytes),
                sync_jobs: crate::sync_jobs::Jobs::new(&config.sync),
                config,
                repo,
                tokens,
                checks,
                sessions: Sessions::default(),
                metrics: Metrics::default(),
                shutting_down: AtomicBool::new(false),
                data_dir,
                _lease: lease,
            }),
            admin_file,
        ))
    }

    pub(crate) fn store_error(&self, e: bunker_store::Error) -> ApiError {
        ApiError::from_store(e, &self.data_dir)
    }

    /// A failed save of a server state file as a 500 whose message names
    /// no path (the data directory is `<data>`, as in store errors).
    pub(crate) fn save_error(&self, e: crate::error::SaveError) -> ApiError {
        tracing::error!("{e}");
        let m = e.to_string();
        ApiError::internal(if self.data_dir.is_empty() {
            m
        } else {
            m.replace(&self.data_dir, "<data>")
        })
    }

    /// From now on no new ingest work is started ([`State::accepting`]).
    pub(crate) fn begin_shutdown(&self) {
        self.shutting_down.store(true, Ordering::Relaxed);
    }

    /// 503 once shutdown has begun: no new ingest work is started.
    pub(crate) fn accepting(&self) -> Result<(), ApiError> {
        if self.shutting_down.load(Ordering::Relaxed) {
            return Err(ApiError::new(
                bunker_api::ErrorCode::ShuttingDown,
                "the server is shutting down",
            ));
        }
        Ok(())
    }

    /// An ingest slot (a raw upload or an open upload session) for token
    /// `p`, or 503 when all are taken or `p` holds its share.
    pub(crate) fn stream_permit(&self, p: &tokens::Principal) -> Result<IngestSlot, ApiError> {
        self.accepting()?;
        let quota = self.stream_quota.take(p.id).ok_or_else(|| {
            ApiError::new(
                bunker_api::ErrorCode::TooManyStreams,
                format!(
                    "this token already holds {} ingest streams (max_streams_per_token); \
                     retry when one ends",
                    self.stream_quota.per_token()
                ),
            )
        })?;
        let stream = self.streams.clone().try_acquire_owned().map_err(|_| {
            ApiError::new(
                bunker_api::ErrorCode::TooManyStreams,
                format!(
                    "all {} ingest streams are busy; retry later",
                    self.config.max_streams
                ),
            )
        })?;
        Ok(IngestSlot {
            _stream: stream,
            _quota: quota,
        })
    }

    /// A place among `p`'s restores, or 503 when it has
    /// `max_restores_per_token` running.
    pub(crate) fn restore_permit(&self, p: &tokens::Principal) -> Result<QuotaGuard, ApiError> {
        self.restores.quota.take(p.id).ok_or_else(|| {
            ApiError::new(
                bunker_api::ErrorCode::TooManyStreams,
                format!(
                    "this token already has {} restores in progress \
                     (max_restores_per_token); retry when one ends",
                    self.restores.quota.per_token()
                ),
            )
        })
    }

    /// `n` bytes of the request-body budget, waiting a moment for them; 503
    /// if they do not come free.
    pub(crate) async fn body_memory(
        &self,
        n: u64,
    ) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
        self.bodies.take(n, BODY_MEMORY_WAIT).await.ok_or_else(|| {
            ApiError::new(
                bunker_api::ErrorCode::Overloaded,
                format!(
                    "the server's {} bytes for request bodies (body_memory_bytes) are in use; \
                     retry later",
                    self.bodies.bytes()
                ),
            )
        })
    }
}

/// The bucket's object backend (fenced by the lease) and the lease.
type Held = (Arc<dyn bunker_store::MetaBackend>, Arc<Lease>);

/// How a new repository is created: the defaults and the configured pack
/// and chunk sizes (an existing repository keeps what its config says).
fn create_options(
    config: &Config,
    key: Option<Arc<bunker_crypt::Key>>,
) -> Result<bunker_store::CreateOptions, StartError> {
    let mut opts = bunker_store::CreateOptions {
        pack_target_len: config.pack_bytes,
        key,
        ..Default::default()
    };
    if let Some(size) = config.chunk_size {
        opts.chunker = bunker_store::chunker_for_size(size).map_err(|e| StartError::ChunkSize {
            reason: e.to_string(),
        })?;
    }
    Ok(opts)
}

/// Refuses a configured chunk size other than the repository's: it would
/// apply only to a new repository, and an operator who set it expects it.
fn check_chunk_size(config: &Config, repo: &bunker_store::Repository) -> Result<(), StartError> {
    let have = repo.chunker_params().avg_len;
    match config.chunk_size {
        Some(want) if want != u64::from(have) => Err(StartError::ChunkSize {
            reason: format!(
                "the repository in {} was created with {} KiB average chunks ({have} bytes), \
                 and chunk_size {want} applies only when a repository is created; \
                 leave it out or set it to {have}",
                config.data.display(),
                have >> 10
            ),
        }),
        _ => Ok(()),
    }
}

/// The repository in the data directory, or on the configured bucket
/// (created there, rebuilt from it into an empty data directory, or
/// reconciled with it: docs/FORMAT.md, "Remote repositories"), once its
/// lease is ours.
fn open_repository(
    config: &Config,
) -> Result<(bunker_store::Repository, Option<Held>), StartError> {
    let local = |source| StartError::Repository {
        path: config.data.clone(),
        source: Box::new(source),
    };
    let key = load_key(config)?;
    let create = create_options(config, key.clone())?;
    let Some(s3) = config.storage.s3_config()? else {
        let repo = bunker_store::Repository::open_or_create(&config.data, create).map_err(local)?;
        check_chunk_size(config, &repo)?;
        log_key(&repo);
        return Ok((repo, None));
    };
    tracing::info!("storage: {}", s3.describe());
    let (remote, lease) = hold_remote(config, &s3)?;
    let meta = remote.meta.clone();
    let repo = bunker_store::Repository::open_remote_with(
        &config.data,
        bunker_store::OpenOptions {
            key,
            ..Default::default()
        },
        create,
        remote,
    )
    .map_err(|source| StartError::Bucket {
        store: s3.describe(),
        source: Box::new(source),
    })?;
    check_chunk_size(config, &repo)?;
    log_key(&repo);
    Ok((repo, Some((meta, lease))))
}

/// The key of `[encryption] key_file` (`--key-file`), if one is set: a
/// plain key file, or a wrapped one opened with the passphrase of
/// `[encryption] passphrase_file` (`--key-passphrase-file`), else of
/// `BUNKER_KEY_PASSPHRASE`. Called before anything in the data directory
/// is touched, so a missing or wrong passphrase changes nothing.
pub fn load_key(config: &Config) -> Result<Option<Arc<bunker_crypt::Key>>, StartError> {
    let Some(path) = &config.encryption.key_file else {
        return Ok(None);
    };
    let given = config.encryption.passphrase_file.as_deref();
    // Only a wrapped file needs the passphrase: an unreadable passphrase
    // file or an empty variable must not stop a server with a plain key.
    let (kind, _) =
        bunker_crypt::wrap::inspect_file(path).map_err(|source| StartError::KeyFile { source })?;
    let passphrase = match kind {
        bunker_crypt::KeyFileKind::Wrapped => bunker_crypt::Passphrase::from_file_or_env(given)
            .map_err(|source| StartError::KeyFile { source })?,
        bunker_crypt::KeyFileKind::Plain => None,
    };
    let (key, kind) =
        bunker_crypt::load_key_file(path, passphrase.as_ref()).map_err(|source| match source {
            bunker_crypt::Error::NeedsPassphrase { .. } => StartError::KeyPassphrase { source },
            source => StartError::KeyFile { source },
        })?;
    if let (bunker_crypt::KeyFileKind::Plain, Some(f)) = (kind, given) {
        tracing::warn!(
            "{} is a plain key file: the passphrase in {} is not used",
            path.display(),
            f.display()
        );
    }
    Ok(Some(Arc::new(key)))
}

fn log_key(repo: &bunker_store::Repository) {
    match repo.key_id() {
        Some(id) => tracing::info!(key_id = %id, "the repository is encrypted"),
        None => tracing::info!("the repository is not encrypted"),
    }
}

/// Connects to the bucket of `config` (see [`connect_remote`]) and takes
/// its lease for the data directory: the backends returned refuse writes
/// once the lease is lost. The lease is renewed until the returned
/// `Arc<Lease>` is dropped, and released then.
pub fn hold_remote(
    config: &Config,
    s3: &bunker_s3::S3Config,
) -> Result<(bunker_store::Remote, Arc<Lease>), StartError> {
    let remote = connect_remote(s3, &config.data)?;
    let lease = Lease::take(
        remote.meta.clone(),
        &config.data,
        config.storage.lease_ttl(),
        config.storage.break_lease,
    )?;
    Ok((lease.fence(remote), lease))
}

/// Connects to the bucket (failing fast, naming endpoint and bucket, when
/// it does not answer, refuses the credentials or does not exist) and
/// opens its pack and object backends for the data directory `data`.
pub fn connect_remote(
    s3: &bunker_s3::S3Config,
    data: &std::path::Path,
) -> Result<bunker_store::Remote, StartError> {
    let remote = |source| StartError::Bucket {
        store: s3.describe(),
        source: Box::new(source),
    };
    std::fs::create_dir_all(data).map_err(|e| StartError::io("creating", data, e))?;
    let bucket = bunker_s3::Bucket::connect(s3).map_err(remote)?;
    let packs = bunker_s3::S3Packs::open(&bucket, data).map_err(remote)?;
    let meta = bunker_s3::S3Meta::open(&bucket, data).map_err(remote)?;
    Ok(bunker_store::Remote {
        packs: Arc::new(packs),
        meta: Arc::new(meta),
    })
}

/// How long a chunk upload or `missing` query waits for body memory
/// before it gets 503.
pub const BODY_MEMORY_WAIT: Duration = Duration::from_secs(2);

/// An ingest slot: one of `max_streams`, and one of its token's
/// `max_streams_per_token`. Both are given back when it is dropped.
pub struct IngestSlot {
    pub(crate) _stream: tokio::sync::OwnedSemaphorePermit,
    pub(crate) _quota: QuotaGuard,
}

/// One unit of a metrics gauge while it lives: held by the work itself,
/// so the gauge falls back however the work ends (a request future dropped
/// midway included).
pub(crate) struct Counted {
    state: Arc<State>,
    gauge: fn(&Metrics) -> &std::sync::atomic::AtomicI64,
}

impl Counted {
    pub(crate) fn new(
        state: &Arc<State>,
        gauge: fn(&Metrics) -> &std::sync::atomic::AtomicI64,
    ) -> Counted {
        gauge(&state.metrics).fetch_add(1, Ordering::Relaxed);
        Counted {
            state: state.clone(),
            gauge,
        }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        (self.gauge)(&self.state.metrics).fetch_sub(1, Ordering::Relaxed);
    }
}
