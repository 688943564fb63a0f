//! One module per subcommand.

pub mod backup;
pub mod demo;
pub mod drill;
pub mod restore;
pub mod serve;
pub mod snapshots;
pub mod token;

/// `NAME` or `NAME@ID`.
pub fn parse_ref(s: &str) -> anyhow::Result<(String, Option<u64>)> {
    match s.split_once('@') {
        Some((name, "latest")) => Ok((name.to_string(), None)),
        Some((name, id)) => Ok((
            name.to_string(),
            Some(id.parse().map_err(|_| {
                anyhow::anyhow!("{s:?}: the part after @ must be a snapshot id or 'latest'")
            })?),
        )),
        None => Ok((s.to_string(), None)),
    }
}
