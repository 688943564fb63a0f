//! What one client may hold: per-token quotas of concurrent work and
//! server-wide memory budgets.
//!
//! A [`Quota`] counts, per token, the ingest slots or the restores it holds;
//! a [`Budget`] counts bytes of memory (buffered request bodies, decoded
//! restore chunks) across all requests. Both hand out guards that give back
//! what they hold when dropped, however the request ends (answered, failed,
//! or its future dropped because the client went away), so no count is ever
//! left high.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// At most `per_token` of something at once for each token.
pub struct Quota {
    per_token: usize,
    held: Mutex<HashMap<u64, usize>>,
}

/// One unit of a token's quota, given back on drop.
pub struct QuotaGuard {
    quota: Arc<Quota>,
    token: u64,
}

impl Quota {
    pub fn new(per_token: usize) -> Arc<Quota> {
        Arc::new(Quota {
            per_token: per_token.max(1),
            held: Mutex::default(),
        })
    }

    pub fn per_token(&self) -> usize {
        self.per_token
    }

    /// One more for `token`, or `None` when it already holds its quota.
    pub fn take(self: &Arc<Self>, token: u64) -> Option<QuotaGuard> {
        // A count is a plain integer: a panic elsewhere cannot leave it
        // half-updated, so a poisoned lock is still good.
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        let n = held.entry(token).or_default();
        if *n >= self.per_token {
            return None;
        }
        *n += 1;
        Some(QuotaGuard {
            quota: self.clone(),
            token,
        })
    }

    /// How many `token` holds now.
    pub fn held(&self, token: u64) -> usize {
        let held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        held.get(&token).copied().unwrap_or(0)
    }
}

impl Drop for QuotaGuard {
    fn drop(&mut self) {
        let mut held = self
            .quota
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = held.get_mut(&self.token) {
            *n -= 1;
            if *n == 0 {
                held.remove(&self.token);
            }
        }
    }
}

/// Bytes of memory shared by all requests of one kind.
pub struct Budget {
    bytes: u64,
    free: Arc<Semaphore>,
}

impl Budget {
    pub fn new(bytes: u64) -> Budget {
        let bytes = bytes.clamp(1, Semaphore::MAX_PERMITS as u64);
        Budget {
            bytes,
            free: Arc::new(Semaphore::new(bytes as usize)),
        }
    }

    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Bytes held now.
    pub fn in_use(&self) -> u64 {
        self.bytes - self.free.available_permits() as u64
    }

    /// A request larger than the whole budget takes all of it (it would
    /// otherwise wait forever).
    fn permits(&self, n: u64) -> u32 {
        n.clamp(1, self.bytes.min(u64::from(u32::MAX))) as u32
    }

    /// `n` bytes, waiting at most `wait` for them to be given back (first
    /// come, first served); `None` if they were not.
    pub async fn take(&self, n: u64, wait: Duration) -> Option<OwnedSemaphorePermit> {
        let permits = self.permits(n);
        tokio::time::timeout(wait, self.free.clone().acquire_many_owned(permits))
            .await
            .ok()?
            .ok()
    }

    /// `n` bytes if they are free now.
    pub fn try_take(&self, n: u64) -> Option<OwnedSemaphorePermit> {
        self.free
            .clone()
            .try_acquire_many_owned(self.permits(n))
            .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quota_is_per_token_and_given_back_on_drop() {
        let q = Quota::new(2);
        let a1 = q.take(1).unwrap();
        let _a2 = q.take(1).unwrap();
        assert!(q.take(1).is_none(), "a third for token 1");
        let b = q.take(2).expect("token 2 has its own quota");
        assert_eq!(q.held(1), 2);
        drop(a1);
        assert_eq!(q.held(1), 1);
        let _a3 = q.take(1).expect("one was given back");
        drop(b);
        assert_eq!(q.held(2), 0);
    }

    #[test]
    fn a_budget_waits_then_refuses_and_never_overcommits() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        rt.block_on(async {
            let b = Budget::new(100);
            let p = b.take(60, Duration::ZERO).await.unwrap();
            assert_eq!(b.in_use(), 60);
            assert!(b.try_take(50).is_none());
            assert!(b.take(50, Duration::from_millis(10)).await.is_none());
            drop(p);
            let all = b
                .take(1000, Duration::ZERO)
                .await
                .expect("clamped to the budget");
            assert_eq!(b.in_use(), 100);
            drop(all);
            assert_eq!(b.in_use(), 0);
        });
    }
}
