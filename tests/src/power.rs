//! A model of what a power cut leaves on disk, fed by every file and
//! directory sync of the store (`bunker_store::observe`).

/// The space reserve's file name (bunker_store::reserve).
const RESERVE: &str = "reserve";

/// What a power cut would leave: per directory, its entries as of its last
/// sync; per file (inode), its contents as of its last sync. Entries
/// created since a directory's last sync survive or not (a coin), and a
/// file's bytes written since its last sync survive in part (a random
/// prefix of the unsynced tail: a torn write).
#[derive(Default)]
pub struct PowerModel {
    dirs: std::collections::HashMap<std::path::PathBuf, Vec<(std::ffi::OsString, u64, bool)>>,
    files: std::collections::HashMap<u64, Vec<u8>>,
}

fn listing(dir: &std::path::Path) -> Vec<(std::ffi::OsString, u64, bool)> {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if let Ok(m) = std::fs::symlink_metadata(e.path()) {
            out.push((e.file_name(), m.ino(), m.is_dir()));
        }
    }
    out
}

impl PowerModel {
    /// Everything on disk now counts as synced (the state before tracing).
    pub fn snapshot_all(&mut self, dir: &std::path::Path) {
        let l = listing(dir);
        for (name, ino, is_dir) in &l {
            let p = dir.join(name);
            if *is_dir {
                self.snapshot_all(&p);
            } else if name == RESERVE {
                // Zeros, never rewritten in place: linked, not copied.
            } else if let Ok(b) = std::fs::read(&p) {
                self.files.insert(*ino, b);
            }
        }
        self.dirs.insert(dir.to_path_buf(), l);
    }

    pub fn step(&mut self, step: bunker_store::observe::Step<'_>) {
        use std::os::unix::fs::MetadataExt;
        match step {
            bunker_store::observe::Step::SyncData(p) => {
                if let (Ok(m), Ok(b)) = (std::fs::metadata(p), std::fs::read(p)) {
                    self.files.insert(m.ino(), b);
                }
            }
            bunker_store::observe::Step::SyncDir(d) => {
                self.dirs.insert(d.to_path_buf(), listing(d));
            }
        }
    }

    /// Writes to `out` what a cut now could leave: each directory entry
    /// created since its directory's last sync survives with probability
    /// `unsynced`, each file's unsynced tail as a random prefix.
    pub fn cut(
        &self,
        real: &std::path::Path,
        out: &std::path::Path,
        rng: &mut impl rand::Rng,
        unsynced: f64,
    ) {
        std::fs::create_dir_all(out).expect("image directory");
        let current = listing(real);
        let mut entries = self.dirs.get(real).cloned().unwrap_or_default();
        for c in &current {
            if !entries.iter().any(|e| e.0 == c.0) && rng.random_bool(unsynced) {
                entries.push(c.clone());
            }
        }
        for (name, ino, is_dir) in entries {
            let (from, to) = (real.join(&name), out.join(&name));
            if is_dir {
                self.cut(&from, &to, rng, unsynced);
                // Empty pack fan-out directories pile up over hundreds of
                // runs; an empty directory holds nothing a crash could lose.
                let _ = std::fs::remove_dir(&to);
                continue;
            }
            if name == RESERVE && std::fs::hard_link(&from, &to).is_ok() {
                continue;
            }
            let mut bytes = self.files.get(&ino).cloned().unwrap_or_default();
            if current.iter().any(|c| c.0 == name && c.1 == ino) {
                if let Ok(now) = std::fs::read(&from) {
                    if now.len() > bytes.len() {
                        let torn = rng.random_range(0..=now.len() - bytes.len());
                        let at = bytes.len();
                        bytes.extend_from_slice(&now[at..at + torn]);
                    }
                }
            }
            std::fs::write(&to, &bytes).expect("image file");
        }
    }
}
