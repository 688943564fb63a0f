//! Human output: byte sizes, rates, progress bars (hidden when stderr is
//! not a terminal).

use indicatif::{ProgressBar, ProgressStyle};

pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.2} {}", UNITS[u])
    }
}

pub fn rate(bytes: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        bytes as f64 / seconds / 1e9
    } else {
        0.0
    }
}

/// A byte progress bar on stderr; indicatif draws nothing when stderr is
/// not a terminal.
pub fn bar(total: Option<u64>, message: &str) -> ProgressBar {
    let pb = match total {
        Some(t) => ProgressBar::new(t),
        None => ProgressBar::new_spinner(),
    };
    let template = if total.is_some() {
        "{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta} {prefix}"
    } else {
        "{msg} {bytes} {binary_bytes_per_sec} {prefix}"
    };
    if let Ok(style) = ProgressStyle::with_template(template) {
        pb.set_style(style.progress_chars("=> "));
    }
    pb.set_message(message.to_string());
    pb
}

pub fn time(unix_ms: i64) -> String {
    bunker_store::calendar::format_utc(unix_ms)
}

/// A span of seconds, short: "45s", "12m", "3h", "2d".
pub fn age(secs: u64) -> String {
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

/// A configured interval in its own unit: "90s", "15m", "1h", "1d".
pub fn interval(secs: u64) -> String {
    match secs {
        0 => "0s".into(),
        s if s % 86_400 == 0 => format!("{}d", s / 86_400),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// A recorded check in a table cell: "ok 3h ago", "FAILED 2d ago", "never".
pub fn check(c: Option<&bunker_api::Check>, now_unix_ms: i64) -> String {
    let Some(c) = c else {
        return "never".into();
    };
    let secs = (now_unix_ms - c.at_unix_ms).max(0) / 1000;
    format!(
        "{} {} ago",
        if c.ok { "ok" } else { "FAILED" },
        age(secs as u64)
    )
}

/// A recorded drill in a table cell, with who verified it: "ok 3h ago
/// (server)", "FAILED 2d ago (client)", "never".
pub fn drill_check(c: Option<&bunker_api::Check>, now_unix_ms: i64) -> String {
    match c {
        None => check(None, now_unix_ms),
        Some(d) => format!("{} ({})", check(c, now_unix_ms), d.verified_by.as_str()),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats() {
        assert_eq!(super::bytes(512), "512 B");
        assert_eq!(super::bytes(3 << 30), "3.00 GiB");
        assert_eq!(super::time(0), "1970-01-01 00:00:00Z");
        assert_eq!(super::time(1_763_771_696_000), "2025-11-22 00:34:56Z");
        let c = |at, ok| bunker_api::Check {
            at_unix_ms: at,
            ok,
            detail: String::new(),
            verified_by: bunker_api::Verifier::Server,
            token: None,
            token_name: None,
        };
        assert_eq!(super::check(None, 0), "never");
        assert_eq!(super::check(Some(&c(0, true)), 30_000), "ok 30s ago");
        assert_eq!(
            super::check(Some(&c(0, false)), 3 * 3_600_000),
            "FAILED 3h ago"
        );
        assert_eq!(super::check(Some(&c(0, true)), 5 * 86_400_000), "ok 5d ago");
        assert_eq!(super::drill_check(None, 0), "never");
        assert_eq!(
            super::drill_check(Some(&c(0, true)), 30_000),
            "ok 30s ago (server)"
        );
        let reported = bunker_api::Check {
            verified_by: bunker_api::Verifier::Client,
            ..c(0, false)
        };
        assert_eq!(
            super::drill_check(Some(&reported), 30_000),
            "FAILED 30s ago (client)"
        );
    }
}
