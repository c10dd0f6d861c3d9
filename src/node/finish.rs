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
/// there: a tokio timer created inside it keeps the driver of the runtime
/// that polled it (an HTTP worker's, the RESP thread's), and fails if that
/// runtime stops first (a worker restarted, the node shutting down). The
/// work given here waits on channels only (the commit log's); work that
/// waits on standbys, with a timeout, is spawned instead.
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
        // Out while it is polled: work that panics is dropped with the
        // panic, not handed to the runtime to panic again when resumed.
        let mut work = self.work.take().expect("Finish polled after it finished");
        let done = work.as_mut().poll(cx);
        if done.is_pending() {
            self.work = Some(work);
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
    async fn work_that_panicked_is_not_handed_to_the_runtime() {
        let mut work = Box::pin(Finish::new(Handle::current(), async {
            panic!("the work failed");
        }));
        let polled = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let waker = futures::task::noop_waker();
            let _ = work.as_mut().poll(&mut Context::from_waker(&waker));
        }));
        assert!(polled.is_err(), "the panic reaches whoever awaited it");
        assert!(work.work.is_none(), "nothing left to resume on the runtime");
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
