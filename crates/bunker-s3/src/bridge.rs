//! Runs the crate's futures from plain threads.
//!
//! The engine calls the backends from rayon workers, `spawn_blocking`
//! threads and, now and then, a thread that is inside some tokio runtime.
//! `Runtime::block_on` panics in the last case ("cannot block inside a
//! runtime"), so the crate owns a small multi-thread runtime, spawns every
//! future onto it and waits on a channel, which is allowed on any thread.
//! Never call [`Bridge::run`] from a task of the bridge's own runtime: it
//! would park one of its few workers.

use std::future::Future;

use bunker_store::{Error, Result};
use tokio::runtime::{Handle, Runtime};

/// Worker threads: requests are I/O-bound, these only drive them.
const WORKERS: usize = 2;

pub(crate) struct Bridge {
    runtime: Option<Runtime>,
    handle: Handle,
    store: String,
}

impl Bridge {
    pub(crate) fn new(store: String) -> Result<Bridge> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(WORKERS)
            .thread_name("bunker-s3")
            .enable_all()
            .build()
            .map_err(|e| Error::io("tokio runtime", e))?;
        Ok(Bridge {
            handle: runtime.handle().clone(),
            runtime: Some(runtime),
            store,
        })
    }

    /// Runs `fut` on the bridge's runtime and waits for its output.
    pub(crate) fn run<F>(&self, fut: F) -> Result<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let (tx, rx) = crossbeam_channel::bounded(1);
        self.handle.spawn(async move {
            let _ = tx.send(fut.await);
        });
        // The sender is dropped without a value only if the task panicked
        // or the runtime is shutting down.
        rx.recv().map_err(|_| Error::Unavailable {
            store: self.store.clone(),
            reason: "the request task ended without an answer".into(),
        })
    }

    /// Starts `fut` without waiting for it (read-ahead).
    pub(crate) fn spawn<F>(&self, fut: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.handle.spawn(fut);
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        // Dropping a runtime blocks until its workers stop, which panics when
        // the last handle goes away on a thread inside another runtime.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_from_a_plain_thread_and_from_inside_another_runtime() {
        let bridge = std::sync::Arc::new(Bridge::new("test".into()).unwrap());
        assert_eq!(bridge.run(async { 7 }).unwrap(), 7);
        let outer = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let b = bridge.clone();
        let got = outer.block_on(async move { b.run(async { 8 }).unwrap() });
        assert_eq!(got, 8);
        // And the last handle dropped inside a runtime does not panic.
        outer.block_on(async move { drop(bridge) });
    }
}
