//! The one wall clock: the store stamps commits and accounting with it, the
//! server its check, drill and token times and GC metric, the CLI the "ago"
//! of its tables. Durations are measured with `Instant`, never with this.
//!
//! Nothing in the store depends on the clock being right: snapshot order is
//! commit order (ids), retention measures from the newest snapshot, and GC
//! uses no time at all. The offset exists so the fault suite can run this
//! process as if its clock were set years ahead, weeks behind, or jumping,
//! and show exactly that.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

static OFFSET_MS: AtomicI64 = AtomicI64::new(0);

/// Unix milliseconds, shifted by [`set_offset_ms`] (0 before 1970).
pub fn now_unix_ms() -> i64 {
    let real = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    real.saturating_add(OFFSET_MS.load(Ordering::Relaxed))
}

/// Shifts this process's clock by `ms` (for fault tests; 0 is the truth).
pub fn set_offset_ms(ms: i64) {
    OFFSET_MS.store(ms, Ordering::Relaxed);
}
