//! API tokens: roles, name-prefix scopes, hashed storage, revocation.
//!
//! A token is `bkr_<id>_<secret>`: a public 16-hex-digit id (for listing
//! and revoking) and 256 random bits of secret. The server stores only the
//! BLAKE3 of the secret in `<data>/server/tokens.json` (replaced atomically),
//! and compares hashes in constant time (`blake3::Hash` equality). Secrets
//! this long need no slow password hash.

use std::path::{Path, PathBuf};
use std::sync::RwLock;

use bunker_api::{Role, TokenInfo};
use serde::{Deserialize, Serialize};

use crate::error::ApiError;

/// The authenticated caller of a request.
#[derive(Clone, Debug)]
pub struct Principal {
    pub id: u64,
    pub role: Role,
    pub scope: Option<String>,
}

impl Principal {
    /// Whether the token's scope covers snapshot name `name`.
    pub fn in_scope(&self, name: &str) -> bool {
        self.scope.as_deref().is_none_or(|p| name.starts_with(p))
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
    tokens: RwLock<Vec<StoredToken>>,
}

fn random_bytes<const N: usize>() -> Result<[u8; N], ApiError> {
    let mut b = [0u8; N];
    getrandom::fill(&mut b).map_err(|e| ApiError::internal(format!("no randomness: {e}")))?;
    Ok(b)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl TokenStore {
    /// Opens `<dir>/tokens.json`. When there is no token at all, creates an
    /// admin token and returns its secret too.
    pub fn open(dir: &Path) -> Result<(TokenStore, Option<String>), String> {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("creating the server state directory: {e}"))?;
        let path = dir.join("tokens.json");
        let file: TokenFile = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|e| format!("tokens.json is damaged: {e}"))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => TokenFile::default(),
            Err(e) => return Err(format!("reading tokens.json: {e}")),
        };
        if file.version > 1 {
            return Err(format!(
                "tokens.json has version {}, this build reads version 1",
                file.version
            ));
        }
        let store = TokenStore {
            path,
            tokens: RwLock::new(file.tokens),
        };
        let first = if store.tokens.read().map(|t| t.is_empty()).unwrap_or(false) {
            let (secret, _) = store
                .create(Role::Admin, None, Some("first admin".into()))
                .map_err(|e| e.message)?;
            Some(secret)
        } else {
            None
        };
        Ok((store, first))
    }

    fn save(&self, tokens: &[StoredToken]) -> Result<(), ApiError> {
        let file = TokenFile {
            version: 1,
            tokens: tokens.to_vec(),
        };
        let bytes =
            serde_json::to_vec_pretty(&file).map_err(|e| ApiError::internal(e.to_string()))?;
        bunker_store::write_file_atomically(&self.path, &bytes)
            .map_err(|e| ApiError::internal(format!("saving tokens: {e}")))
    }

    /// The principal of a presented token, if it is valid and not revoked.
    pub fn authenticate(&self, presented: &str) -> Option<Principal> {
        let rest = presented.strip_prefix("bkr_")?;
        let (id, secret) = rest.split_once('_')?;
        let hash = blake3::hash(secret.as_bytes());
        let tokens = self.tokens.read().ok()?;
        let t = tokens.iter().find(|t| t.id == id)?;
        let stored = blake3::Hash::from_hex(&t.blake3).ok()?;
        // Constant-time comparison of the hashes.
        (stored == hash).then(|| Principal {
            id: u64::from_str_radix(&t.id, 16).unwrap_or(0),
            role: t.role,
            scope: t.scope.clone(),
        })
    }

    pub fn create(
        &self,
        role: Role,
        scope: Option<String>,
        name: Option<String>,
    ) -> Result<(String, TokenInfo), ApiError> {
        let id = hex(&random_bytes::<8>()?);
        let secret = hex(&random_bytes::<32>()?);
        let stored = StoredToken {
            id: id.clone(),
            role,
            scope,
            name,
            created_unix_ms: crate::now_unix_ms(),
            blake3: blake3::hash(secret.as_bytes()).to_hex().to_string(),
        };
        let info = info(&stored);
        let mut tokens = self
            .tokens
            .write()
            .map_err(|_| ApiError::internal("token store poisoned"))?;
        let mut next = tokens.clone();
        next.push(stored);
        self.save(&next)?;
        *tokens = next;
        Ok((format!("bkr_{id}_{secret}"), info))
    }

    pub fn list(&self) -> Vec<TokenInfo> {
        self.tokens
            .read()
            .map(|t| t.iter().map(info).collect())
            .unwrap_or_default()
    }

    /// Removes token `id`; `Ok(false)` if there is none. The last unscoped
    /// admin token cannot be revoked: nobody could manage tokens after it.
    pub fn revoke(&self, id: &str) -> Result<bool, ApiError> {
        let mut tokens = self
            .tokens
            .write()
            .map_err(|_| ApiError::internal("token store poisoned"))?;
        let Some(victim) = tokens.iter().find(|t| t.id == id) else {
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
        self.save(&next)?;
        *tokens = next;
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
    use super::*;

    #[test]
    fn tokens_authenticate_until_revoked_and_are_stored_hashed() {
        let dir = tempfile::tempdir().unwrap();
        let (store, admin) = TokenStore::open(dir.path()).unwrap();
        let admin = admin.expect("first start creates an admin token");
        assert_eq!(store.authenticate(&admin).unwrap().role, Role::Admin);
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
        assert!(store.revoke(&info.id).unwrap());
        assert!(store.authenticate(&w).is_none());
        let (again, first) = TokenStore::open(dir.path()).unwrap();
        assert!(first.is_none());
        assert!(again.authenticate(&admin).is_some());
        assert!(again.authenticate(&w).is_none());
    }
}
