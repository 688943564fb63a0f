//! `bunker prune NAME|--all --keep-...`: retention (admin). Removes
//! manifests only; the space comes back through GC.

use bunker_api::PruneRequest;

use crate::output::time;
use crate::{CmdResult, Global};

#[derive(clap::Args)]
pub struct Args {
    /// The snapshot name to prune.
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    name: Option<String>,
    /// Every name the token may see.
    #[arg(long)]
    all: bool,
    #[arg(long, default_value_t = 0)]
    keep_last: u32,
    #[arg(long, default_value_t = 0)]
    keep_hourly: u32,
    #[arg(long, default_value_t = 0)]
    keep_daily: u32,
    #[arg(long, default_value_t = 0)]
    keep_weekly: u32,
    #[arg(long, default_value_t = 0)]
    keep_monthly: u32,
    #[arg(long, default_value_t = 0)]
    keep_yearly: u32,
    /// Keep everything within this long of the newest snapshot (e.g. 36h,
    /// 7d, 2w, 1y; s m h d w y).
    #[arg(long, value_parser = parse_duration)]
    keep_within: Option<u64>,
    /// List what would go and why; delete nothing.
    #[arg(long)]
    dry_run: bool,
}

/// Seconds of a duration like `90m` or `7d`.
pub fn parse_duration(s: &str) -> Result<u64, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected a number and a unit, like 7d"))?;
    let mult = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        "w" => 7 * 86_400,
        "y" => 365 * 86_400,
        _ => return Err(format!("{s:?}: the unit must be one of s m h d w y")),
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too long"))
}

pub fn run(g: &Global, a: Args) -> CmdResult {
    let req = PruneRequest {
        name: a.name,
        all: a.all,
        keep_last: a.keep_last,
        keep_hourly: a.keep_hourly,
        keep_daily: a.keep_daily,
        keep_weekly: a.keep_weekly,
        keep_monthly: a.keep_monthly,
        keep_yearly: a.keep_yearly,
        keep_within_secs: a.keep_within,
        dry_run: a.dry_run,
    };
    let result = g.client()?.prune(&req)?;
    if g.json {
        println!("{}", serde_json::to_string(&result)?);
        return Ok(());
    }
    let verb = if result.dry_run {
        "would remove"
    } else {
        "removed"
    };
    for n in &result.names {
        let removed = n.snapshots.iter().filter(|s| !s.keep).count();
        println!(
            "{}: keep {}, {verb} {removed}",
            n.name,
            n.snapshots.len() - removed
        );
        for s in &n.snapshots {
            let fate = if s.keep {
                format!("keep ({})", s.reasons.join(", "))
            } else {
                verb.to_string()
            };
            println!(
                "  {}@{:<8} {}  {fate}",
                n.name,
                s.id,
                time(s.created_unix_ms)
            );
        }
    }
    Ok(())
}

/// The rest of `bunker prune --help`, after the options; also in docs/CLI.md.
pub(crate) const LONG_HELP: &str = r##"Needs an admin token.

Applies a retention policy to one name or to every name the token may see.
Rules (any combination; a policy that keeps nothing is refused): --keep-last
N, --keep-hourly N, --keep-daily N, --keep-weekly N, --keep-monthly N,
--keep-yearly N (the newest snapshot of each of the N most recent UTC
periods that have one; weeks start on Monday), and --keep-within DURATION
(36h, 7d, 2w, 1y: everything committed at most that long before the newest
snapshot). Times are the server's commit times; "newest" is the highest id
(commit order), so a snapshot committed under a clock set ahead never
outranks later ones. The newest snapshot of a name is always kept. --dry-run
lists each snapshot with the rules that keep it, or what would be removed.
Pruning removes manifests only; their chunks stay until garbage collection
reclaims them (bunker gc).

    $ bunker prune vol1 --keep-last 2 --dry-run
    vol1: keep 2, would remove 3
      vol1@5        2026-11-22 01:58:03Z  keep (last)
      vol1@4        2026-11-22 01:58:03Z  keep (last)
      vol1@3        2026-11-22 01:58:03Z  would remove
      ..."##;

#[cfg(test)]
mod tests {
    #[test]
    fn durations() {
        assert_eq!(super::parse_duration("36h"), Ok(36 * 3600));
        assert_eq!(super::parse_duration("2w"), Ok(14 * 86_400));
        assert!(super::parse_duration("7").is_err());
        assert!(super::parse_duration("d").is_err());
        assert!(super::parse_duration("3x").is_err());
    }
}
