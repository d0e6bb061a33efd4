//! A panicking component never leaves a half-alive gateway. Every task of a run is spawned
//! through [`Supervisor::spawn`]: if it panics, the error is logged, the run is shut down the
//! ordinary way (sources stop, what was mapped is spooled, the sink settles within its grace
//! period, the "last sent" memory is saved) and [`super::run`] returns
//! [`super::RuntimeError::Panicked`], so `tagbridge run` exits non-zero and systemd
//! (`Restart=on-failure`) starts it again. What the spool holds is sent after the restart.
//!
//! [`fault_point`] is a test hook: inert unless the environment variable
//! `TAGBRIDGE_TEST_PANIC` is set to `COMPONENT@N` (panic on the N-th pass through that
//! component's fault point).

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Watches the tasks of one run.
#[derive(Clone, Debug)]
pub struct Supervisor {
    shutdown: CancellationToken,
    failed: Arc<Mutex<Option<String>>>,
}

impl Supervisor {
    /// A supervisor that cancels `shutdown` when a task panics.
    pub fn new(shutdown: CancellationToken) -> Self {
        Supervisor {
            shutdown,
            failed: Arc::default(),
        }
    }

    /// Spawns `task` (on `tracker`: waiting for it waits for the task) as `component`.
    pub fn spawn<F>(&self, tracker: &TaskTracker, component: &str, task: F)
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let watch = self.watch(component, tokio::spawn(task));
        tracker.spawn(watch);
    }

    /// Like [`Supervisor::spawn`] without a tracker: await the returned handle to wait for
    /// the task; aborting it aborts the task.
    pub fn spawn_untracked<F>(&self, component: &str, task: F) -> Supervised
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let inner = tokio::spawn(task);
        let abort = inner.abort_handle();
        Supervised {
            watcher: tokio::spawn(self.watch(component, inner)),
            abort,
        }
    }

    fn watch(
        &self,
        component: &str,
        inner: tokio::task::JoinHandle<()>,
    ) -> impl Future<Output = ()> + Send + 'static {
        let me = self.clone();
        let component = component.to_string();
        async move {
            if let Err(error) = inner.await {
                if error.is_panic() {
                    me.fail(&component, &panic_message(error.into_panic()));
                }
            }
        }
    }

    /// Records a failure of `component` and shuts the run down.
    pub fn fail(&self, component: &str, why: &str) {
        tracing::error!(
            message = "A gateway component panicked; stopping the gateway so that it is restarted. Spooled readings are sent after the restart.",
            component,
            panic = why
        );
        let mut failed = self.failed.lock().unwrap_or_else(|p| p.into_inner());
        failed.get_or_insert_with(|| component.to_string());
        self.shutdown.cancel();
    }

    /// The first component that panicked, if one did.
    pub fn failed(&self) -> Option<String> {
        self.failed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// A task spawned by [`Supervisor::spawn_untracked`].
pub struct Supervised {
    watcher: tokio::task::JoinHandle<()>,
    abort: tokio::task::AbortHandle,
}

impl Supervised {
    pub fn abort(&self) {
        self.abort.abort();
    }
}

impl Future for Supervised {
    type Output = Result<(), tokio::task::JoinError>;
    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.watcher).poll(cx)
    }
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".into())
}

/// Test hook: panics on the N-th call for `component` when `TAGBRIDGE_TEST_PANIC=component@N`.
pub fn fault_point(component: &str) {
    static FAULT: OnceLock<Option<(String, u64)>> = OnceLock::new();
    static HITS: AtomicU64 = AtomicU64::new(0);
    let fault = FAULT.get_or_init(|| {
        let spec = std::env::var("TAGBRIDGE_TEST_PANIC").ok()?;
        let (name, n) = spec.split_once('@').unwrap_or((&spec, "1"));
        Some((name.to_string(), n.parse().unwrap_or(1)))
    });
    if let Some((name, n)) = fault {
        if name == component && HITS.fetch_add(1, Ordering::Relaxed) + 1 == *n {
            panic!("injected fault in {component} (TAGBRIDGE_TEST_PANIC)");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_task_shuts_the_run_down_and_is_named() {
        let shutdown = CancellationToken::new();
        let sup = Supervisor::new(shutdown.clone());
        let tracker = TaskTracker::new();
        sup.spawn(&tracker, "fine", async {});
        tracker.close();
        tracker.wait().await;
        assert!(!shutdown.is_cancelled());
        let tracker = TaskTracker::new();
        sup.spawn(&tracker, "mapping", async { panic!("boom") });
        tracker.close();
        tracker.wait().await;
        assert!(shutdown.is_cancelled());
        assert_eq!(sup.failed().as_deref(), Some("mapping"));
    }
}
