//! The lease on a bucket: at most one server writes to a remote repository.
//!
//! Two servers on one bucket, each with its own index and its own idea of
//! which snapshot ids and packs exist, would destroy each other's data (a
//! GC of one deletes packs the other just referenced). So a server holds
//! the object `lease` under the prefix (format in docs/FORMAT.md, "Lease"):
//! who holds it (a random id kept in `<data>/server/lease-holder`, so the
//! same data directory re-takes its own lease at once after a crash), the
//! host and pid for messages, when it was last renewed and for how long
//! that holds. It is taken at start (created when absent; replaced when it
//! is ours, expired, or `--s3-break-lease` says its holder is dead),
//! renewed every quarter of its ttl, and deleted on a clean shutdown.
//!
//! Fencing: every write to the bucket goes through [`Fenced`], which
//! refuses it (`Error::Unavailable`, so 503) once the lease is lost
//! (renewal found another holder) or has not been renewed for a ttl by
//! this host's monotonic clock. Another server takes over only after the
//! lease's `renewed_unix_ms + ttl_ms` by its own wall clock: the scheme
//! assumes the hosts' clocks agree to well within the ttl (60 s by
//! default; docs/OPERATIONS.md). S3 gives no compare-and-swap we can rely
//! on everywhere, so two servers starting in the same instant on an
//! expired lease could both take it; the next renewal (a quarter ttl
//! later) finds the other holder and fences the loser.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bunker_store::backend::{MetaBackend, PackBackend};
use bunker_store::{Error, PackId, Remote};
use serde::{Deserialize, Serialize};

use crate::error::StartError;

/// The lease's key under the prefix.
pub const KEY: &str = "lease";
/// The lease object's format version. 1: the first.
const VERSION: u32 = 1;
/// Default time a lease holds without renewal.
pub const DEFAULT_TTL: Duration = Duration::from_secs(60);

/// The lease object.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
struct Record {
    version: u32,
    /// The random id of the holding data directory.
    holder: String,
    host: String,
    pid: u32,
    /// The holder's wall clock when it last wrote the lease.
    renewed_unix_ms: i64,
    ttl_ms: u64,
}

impl Record {
    fn expires_unix_ms(&self) -> i64 {
        self.renewed_unix_ms
            .saturating_add(i64::try_from(self.ttl_ms).unwrap_or(i64::MAX))
    }

    fn who(&self) -> String {
        format!("host {} pid {}", self.host, self.pid)
    }
}

/// Where the fence stands.
enum Standing {
    /// Writes are allowed until then (renewal start + ttl).
    Until(Instant),
    /// Another holder took the lease: never again in this process.
    Lost(String),
}

/// A held lease. Renewed by a background thread until dropped; dropping
/// it stops the renewal and deletes the lease object if it is still ours.
pub struct Lease {
    meta: Arc<dyn MetaBackend>,
    me: Record,
    ttl: Duration,
    standing: Mutex<Standing>,
    stop: Mutex<Option<mpsc::Sender<()>>>,
    renewer: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl Lease {
    /// Takes the lease of the bucket behind `meta` for the data directory
    /// `data` and starts renewing it. `break_lease` takes it from a holder
    /// whose lease has not expired (the operator knows it is dead).
    pub fn take(
        meta: Arc<dyn MetaBackend>,
        data: &Path,
        ttl: Duration,
        break_lease: bool,
    ) -> Result<Arc<Lease>, StartError> {
        let store = meta.describe();
        let fail = |source| StartError::Bucket {
            store: store.clone(),
            source: Box::new(source),
        };
        let ttl = ttl.max(Duration::from_secs(1));
        let holder = holder_id(data)?;
        let mut me = Record {
            version: VERSION,
            holder,
            host: host_name(),
            pid: std::process::id(),
            renewed_unix_ms: 0,
            ttl_ms: u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX),
        };
        let mut broke = false;
        // A few rounds: each either takes the lease, or learns it changed
        // hands under us (released, or taken over by someone else first).
        for _ in 0..5 {
            let started = Instant::now();
            me.renewed_unix_ms = bunker_store::clock::now_unix_ms();
            if meta.put_new(KEY, &encode(&me)).map_err(fail)? {
                return Ok(Lease::hold(meta, me, ttl, started));
            }
            let Some(bytes) = meta.get(KEY).map_err(fail)? else {
                continue;
            };
            let current = match decode(&bytes) {
                Ok(r) => r,
                Err(reason) if break_lease => {
                    tracing::warn!(%store, "breaking a damaged lease: {reason}");
                    meta.delete(KEY).map_err(fail)?;
                    continue;
                }
                Err(reason) => {
                    return Err(StartError::Lease {
                        store,
                        reason: format!(
                            "the lease object is unreadable ({reason}); if no other server uses this bucket, start with --s3-break-lease"
                        ),
                    })
                }
            };
            if current.holder == me.holder {
                // Ours: a crash of this data directory's server, or a
                // `bunker repair` beside it.
                me.renewed_unix_ms = bunker_store::clock::now_unix_ms();
                meta.put(KEY, &encode(&me)).map_err(fail)?;
                return Ok(Lease::hold(meta, me, ttl, started));
            }
            let now = bunker_store::clock::now_unix_ms();
            if current.expires_unix_ms() < now || (break_lease && !broke) {
                if current.expires_unix_ms() < now {
                    tracing::warn!(%store, "taking over the lease of {}, expired {} s ago", current.who(), (now - current.expires_unix_ms()) / 1000);
                } else {
                    tracing::warn!(%store, "breaking the lease of {} (--s3-break-lease)", current.who());
                    broke = true;
                }
                meta.delete(KEY).map_err(fail)?;
                continue;
            }
            return Err(StartError::Lease {
                store,
                reason: format!(
                    "another bunker server ({}) holds the lease on this bucket until {} ({} s from now); two servers must not write one bucket. Stop that server, or wait for its lease to expire if it is dead, or start with --s3-break-lease if you know it is dead",
                    current.who(),
                    bunker_store::calendar::format_utc(current.expires_unix_ms()),
                    (current.expires_unix_ms() - now + 999) / 1000
                ),
            });
        }
        Err(StartError::Lease {
            store,
            reason: "the lease kept changing hands while this server tried to take it: another server is starting on this bucket".into(),
        })
    }

    fn hold(meta: Arc<dyn MetaBackend>, me: Record, ttl: Duration, started: Instant) -> Arc<Lease> {
        tracing::info!(store = %meta.describe(), ttl_secs = ttl.as_secs_f64(), "took the lease on the bucket");
        let (stop, stopped) = mpsc::channel();
        let lease = Arc::new(Lease {
            meta,
            me,
            ttl,
            standing: Mutex::new(Standing::Until(started + ttl)),
            stop: Mutex::new(Some(stop)),
            renewer: Mutex::new(None),
        });
        // The thread holds only a weak reference: dropping the last
        // `Arc<Lease>` is what stops it.
        let weak = Arc::downgrade(&lease);
        let every = ttl / 4;
        let renewer = std::thread::Builder::new()
            .name("bunker-lease".into())
            .spawn(move || loop {
                match stopped.recv_timeout(every) {
                    Err(mpsc::RecvTimeoutError::Timeout) => {}
                    _ => return,
                }
                let Some(lease) = weak.upgrade() else { return };
                lease.renew();
            });
        match renewer {
            Ok(h) => *lock(&lease.renewer) = Some(h),
            // Without renewal the fence closes after one ttl: writes stop,
            // never run unprotected.
            Err(e) => tracing::error!("cannot start the lease renewal thread: {e}"),
        }
        lease
    }

    /// One renewal: confirm the lease is still ours, then rewrite it.
    fn renew(&self) {
        if matches!(*lock(&self.standing), Standing::Lost(_)) {
            return;
        }
        let started = Instant::now();
        let store = self.meta.describe();
        let mut me = self.me.clone();
        let current = match self.meta.get(KEY) {
            Ok(Some(bytes)) => decode(&bytes).ok(),
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(%store, "renewing the lease: {e}; writes stop {} s after the last renewal unless it succeeds", self.ttl.as_secs());
                return;
            }
        };
        match &current {
            Some(c) if c.holder != me.holder => {
                let reason = format!(
                    "another bunker server ({}) took over the lease on {store}: this server no longer writes to the bucket; stop it",
                    c.who()
                );
                tracing::error!("{reason}");
                *lock(&self.standing) = Standing::Lost(reason);
                return;
            }
            _ => {}
        }
        me.renewed_unix_ms = bunker_store::clock::now_unix_ms();
        let written = match current {
            Some(_) => self.meta.put(KEY, &encode(&me)).map(|()| true),
            // Deleted under us (a `bunker repair` of this data directory
            // released it): create it again, unless someone else did.
            None => self.meta.put_new(KEY, &encode(&me)),
        };
        match written {
            Ok(true) => {
                let mut standing = lock(&self.standing);
                if let Standing::Until(_) = *standing {
                    *standing = Standing::Until(started + self.ttl);
                }
            }
            Ok(false) => {
                tracing::warn!(%store, "the lease was created by another server while this one renewed it; checking again at the next renewal")
            }
            Err(e) => tracing::warn!(%store, "renewing the lease: {e}"),
        }
    }

    /// Ok while this server may write to the bucket.
    pub fn check(&self) -> bunker_store::Result<()> {
        let reason = match &*lock(&self.standing) {
            Standing::Until(t) if Instant::now() < *t => return Ok(()),
            Standing::Until(_) => format!(
                "the lease on the bucket has not been renewed for {} s (the object store does not answer): this server writes nothing until it is",
                self.ttl.as_secs()
            ),
            Standing::Lost(reason) => reason.clone(),
        };
        Err(Error::Unavailable {
            store: self.meta.describe(),
            reason,
        })
    }

    /// `remote` with every write checked against this lease.
    pub fn fence(self: &Arc<Lease>, remote: Remote) -> Remote {
        Remote {
            packs: Arc::new(Fenced {
                inner: remote.packs,
                lease: self.clone(),
            }),
            meta: Arc::new(Fenced {
                inner: remote.meta,
                lease: self.clone(),
            }),
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        drop(lock(&self.stop).take());
        if let Some(h) = lock(&self.renewer).take() {
            if h.thread().id() != std::thread::current().id() {
                let _ = h.join();
            }
        }
        if matches!(*lock(&self.standing), Standing::Lost(_)) {
            return;
        }
        // Released only while it is this process's: a `bunker repair` run
        // beside a live server of the same data directory leaves the
        // server's lease alone (the renewal rewrites it anyway).
        match self.meta.get(KEY) {
            Ok(Some(bytes)) => match decode(&bytes) {
                Ok(r) if r.holder == self.me.holder && r.pid == self.me.pid => {
                    match self.meta.delete(KEY) {
                        Ok(()) => tracing::info!("released the lease on the bucket"),
                        Err(e) => tracing::warn!(
                            "releasing the lease on the bucket: {e}; it expires by itself"
                        ),
                    }
                }
                _ => {}
            },
            Ok(None) => {}
            Err(e) => {
                tracing::warn!("releasing the lease on the bucket: {e}; it expires by itself")
            }
        }
    }
}

/// A backend whose writes pass [`Lease::check`] first; reads pass through.
struct Fenced<T: ?Sized> {
    inner: Arc<T>,
    lease: Arc<Lease>,
}

impl MetaBackend for Fenced<dyn MetaBackend> {
    fn put(&self, key: &str, bytes: &[u8]) -> bunker_store::Result<()> {
        self.lease.check()?;
        self.inner.put(key, bytes)
    }
    fn put_new(&self, key: &str, bytes: &[u8]) -> bunker_store::Result<bool> {
        self.lease.check()?;
        self.inner.put_new(key, bytes)
    }
    fn put_file(&self, key: &str, path: &Path) -> bunker_store::Result<()> {
        self.lease.check()?;
        self.inner.put_file(key, path)
    }
    fn get(&self, key: &str) -> bunker_store::Result<Option<Vec<u8>>> {
        self.inner.get(key)
    }
    fn get_file(&self, key: &str, path: &Path) -> bunker_store::Result<bool> {
        self.inner.get_file(key, path)
    }
    fn list(&self, prefix: &str) -> bunker_store::Result<Vec<String>> {
        self.inner.list(prefix)
    }
    fn delete(&self, key: &str) -> bunker_store::Result<()> {
        self.lease.check()?;
        self.inner.delete(key)
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
}

// Every method is forwarded, the defaulted ones too: a default here would
// hide the inner backend's own.
impl PackBackend for Fenced<dyn PackBackend> {
    fn staging_path(&self, pack: PackId) -> PathBuf {
        self.inner.staging_path(pack)
    }
    fn store_sealed(&self, pack: PackId, staged: &Path) -> bunker_store::Result<()> {
        self.lease.check()?;
        self.inner.store_sealed(pack, staged)
    }
    fn read(&self, pack: PackId, offset: u64, len: usize) -> bunker_store::Result<Vec<u8>> {
        self.inner.read(pack, offset, len)
    }
    fn read_record(
        &self,
        pack: PackId,
        offset: u64,
        head: &mut [u8],
        stored_len: usize,
    ) -> bunker_store::Result<Vec<u8>> {
        self.inner.read_record(pack, offset, head, stored_len)
    }
    fn pack_len(&self, pack: PackId) -> bunker_store::Result<u64> {
        self.inner.pack_len(pack)
    }
    fn list(&self) -> bunker_store::Result<Vec<PackId>> {
        self.inner.list()
    }
    fn list_sized(&self) -> bunker_store::Result<Vec<(PackId, u64)>> {
        self.inner.list_sized()
    }
    fn list_staged(&self) -> bunker_store::Result<Vec<PackId>> {
        self.inner.list_staged()
    }
    fn done_with(&self, pack: PackId, offset: u64, len: usize) {
        self.inner.done_with(pack, offset, len)
    }
    fn will_need(&self, records: &[(PackId, u64, usize)]) {
        self.inner.will_need(records)
    }
    fn reads_ahead(&self) -> bool {
        self.inner.reads_ahead()
    }
    fn delete(&self, pack: PackId) -> bunker_store::Result<()> {
        self.lease.check()?;
        self.inner.delete(pack)
    }
    fn describe(&self, pack: PackId) -> String {
        self.inner.describe(pack)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn encode(r: &Record) -> Vec<u8> {
    // A struct of strings and integers always serialises.
    serde_json::to_vec_pretty(r).unwrap_or_default()
}

fn decode(bytes: &[u8]) -> Result<Record, String> {
    let r: Record = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
    if r.version != VERSION {
        return Err(format!(
            "lease format version {} (this build reads {VERSION})",
            r.version
        ));
    }
    Ok(r)
}

/// This data directory's holder id, made on first use.
fn holder_id(data: &Path) -> Result<String, StartError> {
    let dir = data.join("server");
    let path = dir.join("lease-holder");
    match std::fs::read_to_string(&path) {
        Ok(s) if is_holder_id(s.trim()) => return Ok(s.trim().to_string()),
        Ok(_) => tracing::warn!("{} is damaged; making a new holder id", path.display()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(StartError::io("reading", path, e)),
    }
    std::fs::create_dir_all(&dir)
        .map_err(|e| StartError::io("creating the server state directory", &dir, e))?;
    let mut id = [0u8; 16];
    getrandom::fill(&mut id).map_err(|e| StartError::Lease {
        store: String::new(),
        reason: format!("no randomness for a holder id: {e}"),
    })?;
    let id: String = id.iter().map(|b| format!("{b:02x}")).collect();
    bunker_store::write_file_atomically(&path, format!("{id}\n").as_bytes()).map_err(|e| {
        StartError::Repository {
            path: path.clone(),
            source: Box::new(e),
        }
    })?;
    Ok(id)
}

fn is_holder_id(s: &str) -> bool {
    s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown-host".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use bunker_store::backend::MemMeta;

    fn take(
        meta: &Arc<MemMeta>,
        data: &Path,
        ttl: Duration,
        break_lease: bool,
    ) -> Result<Arc<Lease>, StartError> {
        Lease::take(meta.clone(), data, ttl, break_lease)
    }

    #[test]
    fn a_second_holder_is_refused_until_the_lease_is_released_or_broken() {
        let meta = Arc::new(MemMeta::new());
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let held = take(&meta, a.path(), DEFAULT_TTL, false).unwrap();
        held.check().unwrap();
        let e = take(&meta, b.path(), DEFAULT_TTL, false).err().unwrap();
        let m = e.to_string();
        assert!(matches!(e, StartError::Lease { .. }), "{m}");
        assert!(
            m.contains("memory") && m.contains(&format!("pid {}", std::process::id())),
            "{m}"
        );
        assert!(m.contains("holds the lease on this bucket until 20"), "{m}");
        // The same data directory takes its own lease back at once.
        let again = take(&meta, a.path(), DEFAULT_TTL, false).unwrap();
        drop(held);
        // Dropping the old handle left the lease: same holder and pid, so
        // it was released, and `again` renews it into existence.
        again.renew();
        again.check().unwrap();
        drop(again);
        assert!(meta.get(KEY).unwrap().is_none(), "released on drop");
        let b_lease = take(&meta, b.path(), DEFAULT_TTL, false).unwrap();
        // Breaking: a takes it from b, and b's renewal finds that out.
        let a_lease = take(&meta, a.path(), DEFAULT_TTL, true).unwrap();
        b_lease.renew();
        let e = b_lease.check().unwrap_err();
        assert!(matches!(e, Error::Unavailable { .. }), "{e}");
        assert!(e.to_string().contains("took over the lease"), "{e}");
        a_lease.check().unwrap();
        drop(b_lease);
        assert!(
            meta.get(KEY).unwrap().is_some(),
            "the loser leaves the lease alone"
        );
    }

    #[test]
    fn fenced_writes_fail_once_the_lease_is_lost_and_reads_go_on() {
        let meta: Arc<MemMeta> = Arc::new(MemMeta::new());
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let lease = take(&meta, a.path(), DEFAULT_TTL, false).unwrap();
        let remote = lease.fence(Remote {
            packs: Arc::new(bunker_store::backend::MemPacks::new(
                a.path().join("staging"),
            )),
            meta: meta.clone(),
        });
        remote.meta.put("x", b"1").unwrap();
        let _other = take(&meta, b.path(), DEFAULT_TTL, true).unwrap();
        lease.renew();
        let e = remote.meta.put("x", b"2").unwrap_err();
        assert!(matches!(e, Error::Unavailable { .. }), "{e}");
        assert!(remote.packs.delete(PackId(1)).is_err());
        assert_eq!(remote.meta.get("x").unwrap().as_deref(), Some(&b"1"[..]));
    }
}
