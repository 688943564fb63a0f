//! API tokens: roles, name scopes, hashed storage, revocation.
//!
//! A token is `bkr_<id>_<secret>`: a public 16-hex-digit id (for listing
//! and revoking) and 256 random bits of secret. The server stores only the
//! BLAKE3 of the secret in `<data>/server/tokens.json` (replaced atomically),
//! and compares hashes in constant time (`blake3::Hash` equality). Secrets
//! this long need no slow password hash. On a bucket the file is mirrored
//! to the object `server/tokens.json` (`crate::mirror`): a change is made
//! only once the bucket has it.
//!
//! A scope covers a snapshot name when the name is the scope itself or
//! continues it after a separator ([`covers`]): scope `db` covers `db` and
//! `db-1`, never `db2`. A scoped token reaches nothing outside its scope,
//! including other tokens: a scoped admin sees, creates and revokes only
//! tokens whose scope lies inside its own.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};

use bunker_api::{Role, TokenInfo};
use serde::{Deserialize, Serialize};

use crate::error::{ApiError, StartError};

/// The authenticated caller of a request.
#[derive(Clone, Debug)]
pub struct Principal {
    pub id: u64,
    pub role: Role,
    pub scope: Option<String>,
    /// The token's label, if it has one.
    pub name: Option<String>,
}

/// Bytes after which a scope's name may continue: scope `db` covers
/// `db-1`, `db.x`, `db_x` (and `db/x`, though names cannot hold a `/`).
pub const SCOPE_SEPARATORS: &[u8] = b"-/._";

/// Whether `scope` covers snapshot name `name`: the name is the scope, or
/// starts with it and either the scope ends with a separator (`db-`
/// covers `db-1`) or the name continues with one (`db` covers `db-1`,
/// not `db2` nor `dbadmin`).
pub fn covers(scope: &str, name: &str) -> bool {
    let Some(rest) = name.strip_prefix(scope) else {
        return false;
    };
    let ends_in_separator = scope
        .as_bytes()
        .last()
        .is_some_and(|b| SCOPE_SEPARATORS.contains(b));
    rest.is_empty() || ends_in_separator || SCOPE_SEPARATORS.contains(&rest.as_bytes()[0])
}

impl Principal {
    /// Whether the token's scope covers snapshot name `name`.
    pub fn in_scope(&self, name: &str) -> bool {
        self.scope.as_deref().is_none_or(|s| covers(s, name))
    }

    /// Whether every name a token scoped to `scope` (unscoped: `None`)
    /// may reach is inside this token's scope. A scope covered as a name
    /// is inside: every name it covers continues it, so continues the
    /// outer scope after a separator too.
    pub fn reaches(&self, scope: Option<&str>) -> bool {
        match (&self.scope, scope) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(own), Some(inner)) => covers(own, inner),
        }
    }

    pub fn id_hex(&self) -> String {
        format!("{:016x}", self.id)
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
struct StoredToken {
    id: String,
    role: Role,
    scope: Option<String>,
    name: Option<String>,
    created_unix_ms: i64,
    /// BLAKE3 of the secret, hex.
    blake3: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct TokenFile {
    version: u32,
    tokens: Vec<StoredToken>,
}

pub struct TokenStore {
    path: PathBuf,
    /// The tokens as saved. Readers (every request) take the read side
    /// for a lookup only; a change is saved first and then swapped in, so
    /// no request ever waits for a save's fsync.
    tokens: RwLock<Arc<Vec<StoredToken>>>,
    /// Held by a change from its read of the tokens to its swap, so that
    /// changes apply one after another and none is lost.
    changing: Mutex<()>,
    /// The bucket every saved change also goes to, on a remote repository.
    mirror: crate::mirror::Target,
    /// Runs at the start of every save (tests: pause or fail it).
    #[cfg(test)]
    before_save: Mutex<Option<SaveHook>>,
}

/// A test's stand-in for the disk: an error fails the save.
#[cfg(test)]
type SaveHook = Box<dyn FnMut() -> std::io::Result<()> + Send>;

fn random_bytes<const N: usize>() -> Result<[u8; N], ApiError> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|e| ApiError::internal(format!("no randomness: {e}")))?;
    Ok(b)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A new token's id (16 hex digits) and secret (64 hex digits).
pub(crate) fn mint() -> Result<(String, String), ApiError> {
    Ok((hex(&random_bytes::<8>()?), hex(&random_bytes::<32>()?)))
}

impl TokenStore {
    /// Opens `<dir>/tokens.json` (none: no tokens). See [`open_or_init`]
    /// for the first start.
    pub fn open(dir: &Path) -> Result<TokenStore, StartError> {
        let path = dir.join("tokens.json");
        let file: TokenFile = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| StartError::Damaged {
                path: path.clone(),
                source,
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => TokenFile::default(),
            Err(e) => return Err(StartError::io("reading", path, e)),
        };
        if file.version > 1 {
            return Err(StartError::UnsupportedVersion {
                path,
                found: file.version,
                supported: 1,
            });
        }
        Ok(TokenStore {
            path,
            tokens: RwLock::new(Arc::new(file.tokens)),
            changing: Mutex::new(()),
            mirror: Default::default(),
            #[cfg(test)]
            before_save: Mutex::new(None),
        })
    }

    fn current(&self) -> Arc<Vec<StoredToken>> {
        self.tokens
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub fn is_empty(&self) -> bool {
        self.current().is_empty()
    }

    /// How many tokens there are.
    pub fn len(&self) -> usize {
        self.current().len()
    }

    /// From now on every change is also put to `meta` as
    /// `server/tokens.json` before it is made; the file as it is now goes
    /// there first if the bucket's copy differs.
    pub fn mirror_to(
        &self,
        meta: std::sync::Arc<dyn bunker_store::MetaBackend>,
    ) -> Result<(), StartError> {
        let _changing = self.lock_changes();
        let dir = self.path.parent().unwrap_or(Path::new("."));
        crate::mirror::reconcile(&*meta, dir, "tokens.json", crate::mirror::Winner::Local)?;
        let _ = self.mirror.set(meta);
        Ok(())
    }

    /// Saves `next` and makes it current. Blocking (an fsync): call it on
    /// the blocking pool, with `changing` held.
    fn publish(&self, next: Vec<StoredToken>) -> Result<(), ApiError> {
        #[cfg(test)]
        if let Some(hook) = self
            .before_save
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
        {
            hook().map_err(|e| ApiError::internal(format!("saving tokens: {e}")))?;
        }
        let file = TokenFile {
            version: 1,
            tokens: next,
        };
        let bytes =
            serde_json::to_vec_pretty(&file).map_err(|e| ApiError::internal(e.to_string()))?;
        let previous = match std::fs::read(&self.path) {
            Ok(b) => Some(b),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(ApiError::internal(format!("reading tokens: {e}"))),
        };
        bunker_store::write_file_atomically(&self.path, &bytes)
            .map_err(|e| ApiError::internal(format!("saving tokens: {e}")))?;
        if let Some(meta) = self.mirror.get() {
            if let Err(e) = meta.put(&crate::mirror::key("tokens.json"), &bytes) {
                // Rolled back: the change was never made. Should the
                // rollback fail too, the next start takes the bucket's
                // copy over the local one anyway.
                let rolled = match &previous {
                    Some(b) => bunker_store::write_file_atomically(&self.path, b),
                    None => std::fs::remove_file(&self.path)
                        .map_err(|e| bunker_store::Error::io(&self.path, e)),
                };
                if let Err(r) = rolled {
                    tracing::error!(
                        "rolling back tokens.json after the object store refused it: {r}"
                    );
                }
                tracing::warn!("a token change was refused: the object store did not take it: {e}");
                return Err(ApiError::new(
                    bunker_api::ErrorCode::StoreUnavailable,
                    format!("the token change was not made: the object store did not take server/tokens.json ({e}); retry when it answers"),
                ));
            }
        }
        *self.tokens.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(file.tokens);
        Ok(())
    }

    fn lock_changes(&self) -> MutexGuard<'_, ()> {
        self.changing.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The principal of a presented token, if it is valid and not revoked.
    pub fn authenticate(&self, presented: &str) -> Option<Principal> {
        let rest = presented.strip_prefix("bkr_")?;
        let (id, secret) = rest.split_once('_')?;
        let hash = blake3::hash(secret.as_bytes());
        let tokens = self.current();
        let t = tokens.iter().find(|t| t.id == id)?;
        let stored = blake3::Hash::from_hex(&t.blake3).ok()?;
        // Constant-time comparison of the hashes.
        (stored == hash).then(|| Principal {
            id: u64::from_str_radix(&t.id, 16).unwrap_or(0),
            role: t.role,
            scope: t.scope.clone(),
            name: t.name.clone(),
        })
    }

    /// Creates a token; returns it (`bkr_<id>_<secret>`) and what is
    /// listed of it. Blocking (saves tokens.json): call it on the blocking
    /// pool.
    pub fn create(
        &self,
        role: Role,
        scope: Option<String>,
        name: Option<String>,
    ) -> Result<(String, TokenInfo), ApiError> {
        let (id, secret) = mint()?;
        let info = self.add(role, scope, name, &id, &secret)?;
        Ok((format!("bkr_{id}_{secret}"), info))
    }

    /// Saves a token minted by [`mint`].
    pub(crate) fn add(
        &self,
        role: Role,
        scope: Option<String>,
        name: Option<String>,
        id: &str,
        secret: &str,
    ) -> Result<TokenInfo, ApiError> {
        let stored = StoredToken {
            id: id.to_string(),
            role,
            scope,
            name,
            created_unix_ms: bunker_store::clock::now_unix_ms(),
            blake3: blake3::hash(secret.as_bytes()).to_hex().to_string(),
        };
        let info = info(&stored);
        let _changing = self.lock_changes();
        let mut next = self.current().as_ref().clone();
        next.push(stored);
        self.publish(next)?;
        Ok(info)
    }

    /// Runs `hook` at the start of every save: a test pauses or fails
    /// saves with it.
    #[cfg(test)]
    pub(crate) fn set_before_save(
        &self,
        hook: impl FnMut() -> std::io::Result<()> + Send + 'static,
    ) {
        *self.before_save.lock().unwrap() = Some(Box::new(hook));
    }

    /// Warns about every token whose scope the bare-prefix matching of
    /// earlier versions let reach names it no longer covers (scope `vol`
    /// reached `vol1`), naming a few of them, so an operator can reissue
    /// the token with the scope it was meant to have.
    pub fn warn_narrowed_scopes(&self, repo: &bunker_store::Repository) {
        let tokens = self.current();
        let bare = |t: &&StoredToken| {
            t.scope.as_deref().is_some_and(|s| {
                s.as_bytes()
                    .last()
                    .is_some_and(|b| !SCOPE_SEPARATORS.contains(b))
            })
        };
        if !tokens.iter().any(|t| bare(&t)) {
            return;
        }
        let mut names: Vec<String> = match repo.list(None) {
            Ok(all) => all.into_iter().map(|s| s.name).collect(),
            Err(e) => {
                tracing::debug!("listing snapshots for the scope check: {e}");
                return;
            }
        };
        names.dedup();
        for t in tokens.iter().filter(bare) {
            let scope = t.scope.as_deref().unwrap_or_default();
            let lost: Vec<&str> = names
                .iter()
                .map(String::as_str)
                .filter(|n| n.starts_with(scope) && !covers(scope, n))
                .collect();
            if !lost.is_empty() {
                tracing::warn!(
                    token = %t.id,
                    "scope {scope:?} no longer covers {} snapshot name(s) such as {:?}: a scope covers the name itself and names continuing it after - . _ or /; create a token with the scope meant",
                    lost.len(),
                    &lost[..lost.len().min(3)]
                );
            }
        }
    }

    /// The tokens `p` may see: those whose scope lies inside its own.
    pub fn list_for(&self, p: &Principal) -> Vec<TokenInfo> {
        self.current()
            .iter()
            .filter(|t| p.reaches(t.scope.as_deref()))
            .map(info)
            .collect()
    }

    /// Whether token `id` exists and `p` may see it.
    pub fn sees(&self, p: &Principal, id: u64) -> bool {
        let id = format!("{id:016x}");
        self.current()
            .iter()
            .any(|t| t.id == id && p.reaches(t.scope.as_deref()))
    }

    /// Removes token `id` if `p` may see it; `Ok(false)` if there is none
    /// it may see. The last unscoped admin token cannot be revoked: nobody
    /// could manage tokens after it. Blocking (saves tokens.json): call it
    /// on the blocking pool.
    pub fn revoke(&self, p: &Principal, id: &str) -> Result<bool, ApiError> {
        let _changing = self.lock_changes();
        let tokens = self.current();
        let Some(victim) = tokens
            .iter()
            .find(|t| t.id == id && p.reaches(t.scope.as_deref()))
        else {
            return Ok(false);
        };
        let full_admin = |t: &StoredToken| t.role == Role::Admin && t.scope.is_none();
        if full_admin(victim) && tokens.iter().filter(|t| full_admin(t)).count() == 1 {
            return Err(ApiError::new(
                bunker_api::ErrorCode::Conflict,
                "this is the last unscoped admin token; create another admin token before revoking it",
            ));
        }
        let next: Vec<StoredToken> = tokens.iter().filter(|t| t.id != id).cloned().collect();
        self.publish(next)?;
        Ok(true)
    }
}

fn info(t: &StoredToken) -> TokenInfo {
    TokenInfo {
        id: t.id.clone(),
        role: t.role,
        scope: t.scope.clone(),
        name: t.name.clone(),
        created_unix_ms: t.created_unix_ms,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Duration;

    use super::*;

    fn principal(role: Role, scope: Option<&str>) -> Principal {
        Principal {
            id: 1,
            role,
            scope: scope.map(str::to_string),
            name: None,
        }
    }

    #[test]
    fn tokens_authenticate_until_revoked_and_are_stored_hashed() {
        let dir = tempfile::tempdir().unwrap();
        let store = TokenStore::open(dir.path()).unwrap();
        assert!(store.is_empty());
        let (admin, _) = store.create(Role::Admin, None, None).unwrap();
        let admin_p = store.authenticate(&admin).unwrap();
        assert_eq!(admin_p.role, Role::Admin);
        let (w, info) = store
            .create(Role::Writer, Some("db-".into()), None)
            .unwrap();
        let p = store.authenticate(&w).unwrap();
        assert!(p.in_scope("db-1") && !p.in_scope("web-1"));
        let file = std::fs::read_to_string(dir.path().join("tokens.json")).unwrap();
        assert!(
            !file.contains(w.rsplit('_').next().unwrap()),
            "secret stored in clear"
        );
        // The same id with one secret digit changed.
        let mut forged = w.clone();
        let last = forged.pop().unwrap();
        forged.push(if last == '0' { '1' } else { '0' });
        assert!(store.authenticate(&forged).is_none());
        assert!(store.authenticate("bkr_nope").is_none());
        assert!(store.revoke(&admin_p, &info.id).unwrap());
        assert!(store.authenticate(&w).is_none());
        let again = TokenStore::open(dir.path()).unwrap();
        assert!(!again.is_empty());
        assert!(again.authenticate(&admin).is_some());
        assert!(again.authenticate(&w).is_none());
    }

    #[test]
    fn a_scope_covers_its_name_and_what_continues_it_after_a_separator() {
        for (scope, name) in [
            ("db", "db"),
            ("db", "db-1"),
            ("db", "db.x"),
            ("db", "db_x"),
            ("db", "db/x"),
            ("db", "db-"),
            ("db-", "db-1"),
            ("db-", "db-"),
            ("db-", "db--1"),
            ("vol.", "vol.1"),
        ] {
            assert!(covers(scope, name), "{scope:?} covers {name:?}");
        }
        for (scope, name) in [
            ("db", "db2"),
            ("db", "dbadmin"),
            ("db", "d"),
            ("db", "xdb"),
            ("db-", "db"),
            ("db-", "db2"),
            ("db-1", "db-10"),
        ] {
            assert!(!covers(scope, name), "{scope:?} does not cover {name:?}");
        }
        let unscoped = principal(Role::Admin, None);
        assert!(unscoped.reaches(None) && unscoped.reaches(Some("db")));
        let db = principal(Role::Admin, Some("db"));
        for inner in ["db", "db-", "db-1", "db.x-"] {
            assert!(db.reaches(Some(inner)), "db reaches {inner:?}");
        }
        for outer in [None, Some("d"), Some("db2"), Some("dbadmin")] {
            assert!(!db.reaches(outer), "db does not reach {outer:?}");
        }
        let db_dash = principal(Role::Admin, Some("db-"));
        assert!(db_dash.reaches(Some("db-1")) && db_dash.reaches(Some("db-")));
        assert!(!db_dash.reaches(Some("db")) && !db_dash.reaches(Some("db2")));
    }

    #[test]
    fn a_scoped_admin_lists_and_revokes_only_tokens_inside_its_scope() {
        let dir = tempfile::tempdir().unwrap();
        let store = TokenStore::open(dir.path()).unwrap();
        let (root, _) = store.create(Role::Admin, None, None).unwrap();
        let root = store.authenticate(&root).unwrap();
        let (db_admin, _) = store.create(Role::Admin, Some("db".into()), None).unwrap();
        let db_admin = store.authenticate(&db_admin).unwrap();
        let mut ids = std::collections::BTreeMap::new();
        for scope in [None, Some("db"), Some("db-"), Some("db2"), Some("dbadmin")] {
            let (_, info) = store
                .create(Role::Writer, scope.map(str::to_string), None)
                .unwrap();
            ids.insert(scope, info.id);
        }
        let listed: Vec<Option<String>> = store
            .list_for(&db_admin)
            .into_iter()
            .map(|t| t.scope)
            .collect();
        assert_eq!(
            listed,
            [Some("db".into()), Some("db".into()), Some("db-".into())],
            "its own token and the writers of db and db-"
        );
        assert_eq!(store.list_for(&root).len(), 7);
        for outside in [None, Some("db2"), Some("dbadmin")] {
            let id = &ids[&outside];
            assert!(!store.revoke(&db_admin, id).unwrap(), "{outside:?}");
            assert!(!store.sees(&db_admin, u64::from_str_radix(id, 16).unwrap()));
        }
        assert!(store.sees(
            &db_admin,
            u64::from_str_radix(&ids[&Some("db-")], 16).unwrap()
        ));
        assert!(store.revoke(&db_admin, &ids[&Some("db-")]).unwrap());
        assert_eq!(store.list_for(&root).len(), 6);
    }

    #[test]
    fn authentication_never_waits_for_a_save() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(TokenStore::open(dir.path()).unwrap());
        let (admin, _) = store.create(Role::Admin, None, None).unwrap();
        let (started_tx, started) = mpsc::channel();
        let (go, go_rx) = mpsc::channel::<()>();
        store.set_before_save(move || {
            let _ = started_tx.send(());
            let _ = go_rx.recv();
            Ok(())
        });
        let creator = store.clone();
        let creating = std::thread::spawn(move || creator.create(Role::Reader, None, None));
        started
            .recv_timeout(Duration::from_secs(10))
            .expect("the save started");
        // The save is paused inside: a lookup must not wait for it.
        let (answer, answered) = mpsc::channel();
        let looker = store.clone();
        std::thread::spawn(move || {
            let _ = answer.send(looker.authenticate(&admin).is_some());
        });
        let looked_up = answered.recv_timeout(Duration::from_secs(10));
        go.send(()).unwrap();
        assert_eq!(looked_up, Ok(true), "authentication waited for a save");
        let (reader, _) = creating.join().unwrap().unwrap();
        assert!(store.authenticate(&reader).is_some());
    }
}
