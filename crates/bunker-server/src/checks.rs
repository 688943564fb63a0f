//! The last verify and the last restore drill of every snapshot, so that
//! the API, `bunker snapshots` and `/metrics` can say when each backup was
//! last proven readable.
//!
//! Kept in `<data>/server/checks.json` (format in docs/FORMAT.md), replaced
//! atomically after every change; a damaged or missing file loses only this
//! history, never a backup. Entries of deleted snapshots are dropped when
//! the server deletes them; snapshot ids are never reused, so a stale entry
//! could not be shown against another snapshot anyway.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use bunker_api::Check;
use serde::{Deserialize, Serialize};

const VERSION: u32 = 1;

/// (name, id) -> (last verify, last drill).
type Map = BTreeMap<(String, u64), (Option<Check>, Option<Check>)>;

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
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Verify,
    Drill,
}

/// The recorded checks, in memory (one small entry per snapshot) and on disk.
pub struct Checks {
    path: PathBuf,
    map: Mutex<Map>,
}

/// Per name: the newest check of each kind over its snapshots.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Latest {
    pub verify: Option<Check>,
    pub drill: Option<Check>,
}

impl Checks {
    /// Opens `<dir>/checks.json`. A file this build cannot read is set
    /// aside (renamed `.damaged`) and the history starts again: it holds
    /// no backup data, and refusing to start over it would be worse.
    pub fn open(dir: &Path) -> Result<Checks, String> {
        let path = dir.join("checks.json");
        let file: ChecksFile = match std::fs::read(&path) {
            Ok(bytes) => match serde_json::from_slice::<ChecksFile>(&bytes) {
                Ok(f) if f.version <= VERSION => f,
                Ok(f) => {
                    return Err(format!(
                        "checks.json has version {}, this build reads version {VERSION}",
                        f.version
                    ))
                }
                Err(e) => {
                    let aside = dir.join("checks.json.damaged");
                    tracing::error!(
                        "checks.json is damaged ({e}); moved to {} and starting a new history",
                        aside.display()
                    );
                    std::fs::rename(&path, &aside)
                        .map_err(|e| format!("setting aside a damaged checks.json: {e}"))?;
                    ChecksFile::default()
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => ChecksFile::default(),
            Err(e) => return Err(format!("reading checks.json: {e}")),
        };
        let map = file
            .snapshots
            .into_iter()
            .map(|e| ((e.name, e.id), (e.verify, e.drill)))
            .collect();
        Ok(Checks {
            path,
            map: Mutex::new(map),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Map> {
        self.map.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The last verify and drill of `name@id`.
    pub fn get(&self, name: &str, id: u64) -> (Option<Check>, Option<Check>) {
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
    ) -> Result<(), String> {
        let mut map = self.lock();
        for (key, check) in results {
            let slot = map.entry(key).or_default();
            match kind {
                Kind::Verify => slot.0 = Some(check),
                Kind::Drill => slot.1 = Some(check),
            }
        }
        self.save(&map)
    }

    /// Drops the entries of deleted snapshots.
    pub fn forget(&self, gone: &[(String, u64)]) -> Result<(), String> {
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
        for ((name, _), (verify, drill)) in map.iter() {
            let l = out.entry(name.clone()).or_default();
            newer(&mut l.verify, verify);
            newer(&mut l.drill, drill);
        }
        out
    }

    fn save(&self, map: &Map) -> Result<(), String> {
        let file = ChecksFile {
            version: VERSION,
            snapshots: map
                .iter()
                .map(|((name, id), (verify, drill))| Entry {
                    name: name.clone(),
                    id: *id,
                    verify: verify.clone(),
                    drill: drill.clone(),
                })
                .collect(),
        };
        let bytes = serde_json::to_vec(&file).map_err(|e| e.to_string())?;
        bunker_store::write_file_atomically(&self.path, &bytes)
            .map_err(|e| format!("saving checks.json: {e}"))
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
        c.record(Kind::Drill, [(("b".into(), 3), check(30, true))])
            .unwrap();
        let c = Checks::open(dir.path()).unwrap();
        assert_eq!(c.get("a", 1), (Some(check(10, true)), None));
        assert_eq!(c.get("b", 3), (None, Some(check(30, true))));
        let latest = c.latest_per_name();
        assert_eq!(latest["a"].verify, Some(check(20, false)));
        assert_eq!(latest["b"].drill, Some(check(30, true)));
        c.forget(&[("a".into(), 2)]).unwrap();
        let c = Checks::open(dir.path()).unwrap();
        assert_eq!(c.get("a", 2), (None, None));
        assert_eq!(c.latest_per_name()["a"].verify, Some(check(10, true)));
    }

    #[test]
    fn a_damaged_file_is_set_aside_not_fatal() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("checks.json"), b"{not json").unwrap();
        let c = Checks::open(dir.path()).unwrap();
        assert_eq!(c.get("a", 1), (None, None));
        assert!(dir.path().join("checks.json.damaged").exists());
        std::fs::write(
            dir.path().join("checks.json"),
            br#"{"version":9,"snapshots":[]}"#,
        )
        .unwrap();
        let err = Checks::open(dir.path()).err().unwrap();
        assert!(err.contains("version 9"), "{err}");
    }
}
