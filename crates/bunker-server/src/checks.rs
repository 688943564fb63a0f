//! The last verify and the last restore drill of every snapshot, so that
//! the API, `bunker snapshots` and `/metrics` can say when each backup was
//! last proven readable, and by whom.
//!
//! Each check says whether the server read the data itself (a verify, a
//! server-side drill) or recorded a client's report. The last server-side
//! drill is kept apart from the last drill of either kind, so no report a
//! client makes can replace what the server found.
//!
//! Kept in `<data>/server/checks.json` (format in docs/FORMAT.md), replaced
//! atomically after every change; a damaged or missing file loses only this
//! history, never a backup. On a bucket each save is also put to the
//! object `server/checks.json` (`crate::mirror`); a put that fails is
//! logged and the record stays local until the next save carries it. Entries of deleted snapshots are dropped when
//! the server deletes them; snapshot ids are never reused, so a stale entry
//! could not be shown against another snapshot anyway.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use bunker_api::{Check, Verifier};
use serde::{Deserialize, Serialize};

use crate::error::{SaveError, StartError};

const VERSION: u32 = 1;

/// The checks recorded for one snapshot.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Recorded {
    pub verify: Option<Check>,
    /// The last drill of either kind.
    pub drill: Option<Check>,
    /// The last drill the server ran itself.
    pub server_drill: Option<Check>,
}

/// (name, id) -> its checks.
type Map = BTreeMap<(String, u64), Recorded>;

#[derive(Default, Serialize, Deserialize)]
struct ChecksFile {
    version: u32,
    snapshots: Vec<Entry>,
}

#[derive(Clone, Serialize, Deserialize)]
struct Entry {
    name: String,
    id: u64,
    #[serde(default)]
    verify: Option<Check>,
    #[serde(default)]
    drill: Option<Check>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    server_drill: Option<Check>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Verify,
    /// A drill a client reported.
    Drill,
    /// A drill the server ran: the last drill, and the last server drill.
    ServerDrill,
}

/// The recorded checks, in memory (one small entry per snapshot) and on disk.
pub struct Checks {
    path: PathBuf,
    map: Mutex<Map>,
    mirror: crate::mirror::Target,
}

/// Per name: the newest check of each kind over its snapshots.
pub type Latest = Recorded;

impl Checks {
    /// Opens `<dir>/checks.json`. A file this build cannot read is set
    /// aside (renamed `.damaged`) and the history starts again: it holds
    /// no backup data, and refusing to start over it would be worse.
    pub fn open(dir: &Path) -> Result<Checks, StartError> {
        let path = dir.join("checks.json");
        let file: ChecksFile = match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<ChecksFile>(&bytes) {
                Ok(f) if f.version <= VERSION => f,
                Ok(f) => {
                    return Err(StartError::UnsupportedVersion {
                        path,
                        found: f.version,
                        supported: VERSION,
                    })
                }
                Err(e) => {
                    let aside = dir.join("checks.json.damaged");
                    tracing::error!(
                        "checks.json is damaged ({e}); moved to {} and starting a new history",
                        aside.display()
                    );
                    std::fs::rename(&path, &aside)
                        .map_err(|e| StartError::io("setting aside the damaged", &path, e))?;
                    ChecksFile::default()
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => ChecksFile::default(),
            Err(e) => return Err(StartError::io("reading", path, e)),
        };
        // Verifies were always the server's own, also before checks said so.
        let by_server = |c: Option<Check>| {
            c.map(|c| Check {
                verified_by: Verifier::Server,
                ..c
            })
        };
        let map = file
            .snapshots
            .into_iter()
            .map(|e| {
                let recorded = Recorded {
                    verify: by_server(e.verify),
                    drill: e.drill,
                    server_drill: by_server(e.server_drill),
                };
                ((e.name, e.id), recorded)
            })
            .collect();
        Ok(Checks {
            path,
            map: Mutex::new(map),
            mirror: Default::default(),
        })
    }

    /// From now on every save also goes to `meta` as `server/checks.json`.
    /// The start reconciled the two copies before [`Checks::open`] read the
    /// file ([`crate::mirror::reconcile`]), and opening writes nothing, so
    /// they are equal now.
    pub fn mirror_to(&self, meta: std::sync::Arc<dyn bunker_store::MetaBackend>) {
        let _ = self.mirror.set(meta);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Map> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The checks of `name@id`.
    pub fn get(&self, name: &str, id: u64) -> Recorded {
        self.lock()
            .get(&(name.to_string(), id))
            .cloned()
            .unwrap_or_default()
    }

    /// Records checks of one kind for several snapshots and saves once.
    pub fn record(
        &self,
        kind: Kind,
        results: impl IntoIterator<Item = ((String, u64), Check)>,
    ) -> Result<(), SaveError> {
        let mut map = self.lock();
        for (key, check) in results {
            let slot = map.entry(key).or_default();
            match kind {
                Kind::Verify => slot.verify = Some(check),
                Kind::Drill => slot.drill = Some(check),
                Kind::ServerDrill => {
                    slot.drill = Some(check.clone());
                    slot.server_drill = Some(check);
                }
            }
        }
        self.save(&map)
    }

    /// Drops the entries of deleted snapshots.
    pub fn forget(&self, gone: &[(String, u64)]) -> Result<(), SaveError> {
        let mut map = self.lock();
        let before = map.len();
        for key in gone {
            map.remove(key);
        }
        if map.len() == before {
            return Ok(());
        }
        self.save(&map)
    }

    /// The newest check of each kind per name (for `/metrics`).
    pub fn latest_per_name(&self) -> BTreeMap<String, Latest> {
        let map = self.lock();
        let mut out: BTreeMap<String, Latest> = BTreeMap::new();
        let newer = |slot: &mut Option<Check>, c: &Option<Check>| {
            if let Some(c) = c {
                if slot.as_ref().is_none_or(|s| s.at_unix_ms <= c.at_unix_ms) {
                    *slot = Some(c.clone());
                }
            }
        };
        for ((name, _), r) in map.iter() {
            let l = out.entry(name.clone()).or_default();
            newer(&mut l.verify, &r.verify);
            newer(&mut l.drill, &r.drill);
            newer(&mut l.server_drill, &r.server_drill);
        }
        out
    }

    fn save(&self, map: &Map) -> Result<(), SaveError> {
        let file = ChecksFile {
            version: VERSION,
            snapshots: map
                .iter()
                .map(|((name, id), r)| Entry {
                    name: name.clone(),
                    id: *id,
                    verify: r.verify.clone(),
                    drill: r.drill.clone(),
                    server_drill: r.server_drill.clone(),
                })
                .collect(),
        };
        let bytes = serde_json::to_vec(&file).map_err(|source| SaveError::Encode {
            file: "checks.json",
            source,
        })?;
        bunker_store::write_file_atomically(&self.path, &bytes).map_err(|e| SaveError::Write {
            file: "checks.json",
            source: Box::new(e),
        })?;
        if let Some(meta) = self.mirror.get() {
            if let Err(e) = meta.put(&crate::mirror::key("checks.json"), &bytes) {
                tracing::warn!("checks.json is saved locally, not yet in the object store: {e}");
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(at: i64, ok: bool) -> Check {
        Check {
            at_unix_ms: at,
            ok,
            detail: format!("at {at}"),
            verified_by: Verifier::Server,
            token: Some("00000000000000aa".into()),
            token_name: None,
        }
    }

    fn reported(at: i64, ok: bool) -> Check {
        Check {
            verified_by: Verifier::Client,
            ..check(at, ok)
        }
    }

    fn recorded(verify: Option<Check>, drill: Option<Check>) -> Recorded {
        Recorded {
            verify,
            drill,
            server_drill: None,
        }
    }

    #[test]
    fn records_survive_a_reopen_and_forget_drops_them() {
        let dir = tempfile::tempdir().unwrap();
        let c = Checks::open(dir.path()).unwrap();
        c.record(
            Kind::Verify,
            [
                (("a".into(), 1), check(10, true)),
                (("a".into(), 2), check(20, false)),
            ],
        )
        .unwrap();
        c.record(Kind::Drill, [(("b".into(), 3), reported(30, true))])
            .unwrap();
        let c = Checks::open(dir.path()).unwrap();
        assert_eq!(c.get("a", 1), recorded(Some(check(10, true)), None));
        assert_eq!(c.get("b", 3), recorded(None, Some(reported(30, true))));
        let latest = c.latest_per_name();
        assert_eq!(latest["a"].verify, Some(check(20, false)));
        assert_eq!(latest["b"].drill, Some(reported(30, true)));
        c.forget(&[("a".into(), 2)]).unwrap();
        let c = Checks::open(dir.path()).unwrap();
        assert_eq!(c.get("a", 2), Recorded::default());
        assert_eq!(c.latest_per_name()["a"].verify, Some(check(10, true)));
    }

    #[test]
    fn a_damaged_file_is_set_aside_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("checks.json"), b"{not json").unwrap();
        let c = Checks::open(dir.path()).unwrap();
        assert_eq!(c.get("a", 1), Recorded::default());
        assert!(dir.path().join("checks.json.damaged").exists());
        std::fs::write(
            dir.path().join("checks.json"),
            br#"{"version":9,"snapshots":[]}"#,
        )
        .unwrap();
        let err = Checks::open(dir.path()).err().unwrap();
        assert!(
            matches!(err, StartError::UnsupportedVersion { found: 9, .. }),
            "{err}"
        );
        assert!(err.to_string().contains("version 9"), "{err}");
    }

    #[test]
    fn a_client_report_never_replaces_the_servers_drill() {
        let dir = tempfile::tempdir().unwrap();
        let c = Checks::open(dir.path()).unwrap();
        let key = || ("db".to_string(), 1);
        c.record(Kind::ServerDrill, [(key(), check(10, false))])
            .unwrap();
        c.record(Kind::Drill, [(key(), reported(20, true))])
            .unwrap();
        let c = Checks::open(dir.path()).unwrap();
        let r = c.get("db", 1);
        assert_eq!(r.drill, Some(reported(20, true)));
        assert_eq!(r.server_drill, Some(check(10, false)));
        assert_eq!(
            c.latest_per_name()["db"].server_drill,
            Some(check(10, false))
        );
    }

    #[test]
    fn records_from_before_provenance_read_as_client_drills_and_server_verifies() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("checks.json"),
            br#"{"version":1,"snapshots":[{"name":"vol1","id":9,
                "verify":{"at_unix_ms":1,"ok":true,"detail":"full verify: clean"},
                "drill":{"at_unix_ms":2,"ok":true,"detail":"restored"}}]}"#,
        )
        .unwrap();
        let r = Checks::open(dir.path()).unwrap().get("vol1", 9);
        let verify = r.verify.unwrap();
        assert_eq!(verify.verified_by, Verifier::Server);
        assert_eq!(verify.token, None);
        assert_eq!(r.drill.unwrap().verified_by, Verifier::Client);
        assert_eq!(r.server_drill, None);
    }
}
