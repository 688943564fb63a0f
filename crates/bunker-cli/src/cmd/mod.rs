//! One module per subcommand.

pub mod backup;
pub mod demo;
pub mod drill;
pub mod export;
pub mod gc;
pub mod key;
pub mod mount;
pub mod prune;
pub mod restore;
pub mod serve;
pub mod settings;
pub mod snapshots;
pub mod sync;
pub mod token;
pub mod verify;

/// A snapshot reference: `NAME`, `NAME@latest` or `NAME@ID`.
#[derive(Clone, Debug)]
pub struct SnapRef {
    pub name: String,
    pub id: Option<u64>,
}

/// Parses a [`SnapRef`] (a clap value parser: a bad one is a usage error).
pub fn parse_ref(s: &str) -> Result<SnapRef, String> {
    let (name, id) = match s.split_once('@') {
        Some((name, "latest")) => (name, None),
        Some((name, id)) => (
            name,
            Some(id.parse().map_err(|_| {
                format!("{s:?}: the part after @ must be a snapshot id or 'latest'")
            })?),
        ),
        None => (s, None),
    };
    Ok(SnapRef {
        name: name.to_string(),
        id,
    })
}
