//! [`Finish`]: work that must finish even if whoever awaits it gives up,
//! without a thread hop when nobody does.
//!
//! The root's commits are made durable this way (`make_durable`): a child
//! or a client that drops its request must not leave a version pending
//! for good. Spawning that work on the node's runtime and awaiting the
//! task gave the same guarantee, but every batch then crossed from the
//! actix worker that received it to a runtime thread and back (two
//! wake-ups, two context switches); a root held to a quarter of a core
//! spent about a sixth of its CPU on it.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::runtime::Handle;

/// Runs `work` where it is awaited; if dropped before `work` is done, the
/// rest of `work` runs as a task on `runtime` (its output is dropped).
///
/// Whatever `work` registered where it was first polled stays registered
/// there: a tokio timer created inside it keeps its first runtime's
/// driver, which lives as long as the node's HTTP workers do.
pub(crate) struct Finish<T: Send + 'static> {
    work: Option<Pin<Box<dyn Future<Output = T> + Send>>>,
    runtime: Handle,
}

impl<T: Send + 'static> Finish<T> {
    pub(crate) fn new(runtime: Handle, work: impl Future<Output = T> + Send + 'static) -> Self {
        Finish { work: Some(Box::pin(work)), runtime }
    }
}

impl<T: Send + 'static> Future for Finish<T> {
    type Output = T;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let work = self.work.as_mut().expect("Finish polled after it finished");
        let done = work.as_mut().poll(cx);
        if done.is_ready() {
            self.work = None;
        }
        done
    }
}

impl<T: Send + 'static> Drop for Finish<T> {
    fn drop(&mut self) {
        if let Some(work) = self.work.take() {
            self.runtime.spawn(async move {
                let _ = work.await;
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn work_that_is_ready_runs_on_the_awaiting_thread() {
        let here = std::thread::current().id();
        let ran_on = Finish::new(Handle::current(), async { std::thread::current().id() }).await;
        assert_eq!(ran_on, here);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn work_dropped_half_way_still_finishes() {
        let (go, wait) = tokio::sync::oneshot::channel::<()>();
        let finished = Arc::new(AtomicBool::new(false));
        let (flag, (done_tx, done_rx)) = (finished.clone(), tokio::sync::oneshot::channel::<()>());
        let mut work = Box::pin(Finish::new(Handle::current(), async move {
            wait.await.expect("go");
            flag.store(true, Ordering::SeqCst);
            let _ = done_tx.send(());
        }));
        // Polled once: it waits for `go`; then whoever awaited it gives up.
        assert!(futures::poll!(work.as_mut()).is_pending());
        drop(work);
        assert!(!finished.load(Ordering::SeqCst));
        go.send(()).expect("the work is still there, on the runtime");
        done_rx.await.expect("the work finished");
        assert!(finished.load(Ordering::SeqCst));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn work_that_finished_is_not_run_again_when_dropped() {
        let runs = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counted = runs.clone();
        let out = Finish::new(Handle::current(), async move { counted.fetch_add(1, Ordering::SeqCst) + 1 }).await;
        assert_eq!(out, 1);
        tokio::task::yield_now().await;
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    }
}
