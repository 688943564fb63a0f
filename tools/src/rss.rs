//! Resident memory of a process, from /proc/<pid>/status.

/// A `kB` field of /proc/`pid`/status (or `self`), in bytes.
pub fn status_field(pid: &str, name: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix(name))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// (peak, current) resident set size of this process in bytes; zeros
/// where /proc is absent.
pub fn peak_and_current() -> (u64, u64) {
    (
        status_field("self", "VmHWM:").unwrap_or(0),
        status_field("self", "VmRSS:").unwrap_or(0),
    )
}

/// (anonymous, file-backed) resident bytes of this process: heap versus
/// mapped files.
pub fn anon_and_file() -> (u64, u64) {
    (
        status_field("self", "RssAnon:").unwrap_or(0),
        status_field("self", "RssFile:").unwrap_or(0),
    )
}
