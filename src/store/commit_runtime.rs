//! Threads of their own for the tasks that feed SQLite's one writer.
//!
//! SQLite runs each statement on its connection's thread and hands the result back to the task
//! that sent it, which then sends the next. On the runtime's threads that task waited behind
//! whatever else they were running (mostly pages being parsed, a few milliseconds each), and
//! the writer, the one thread a backfill waits for, sat idle meanwhile: about a quarter of a
//! 100,000-order run. On threads that run nothing else, it is woken as soon as the statement
//! is done.

use tokio::runtime::{Builder, Handle, Runtime};

/// Two, so that one stream's committer is not held up by another's work between statements
/// (sorting its batch, binding its first statement): with one thread, fifty accounts
/// backfilling at once took 7% longer than on the runtime's threads; with two, 5% less
/// (`docs/performance-log.md`, "The writer fed from threads of its own").
const COMMIT_THREADS: usize = 2;

pub(super) struct CommitRuntime {
    /// Taken when dropped.
    runtime: Option<Runtime>,
    handle: Handle,
}

impl CommitRuntime {
    pub(super) fn start(thread_name: &str) -> std::io::Result<Self> {
        let runtime = Builder::new_multi_thread()
            .worker_threads(COMMIT_THREADS)
            .thread_name(thread_name)
            .enable_all()
            .build()?;
        Ok(CommitRuntime {
            handle: runtime.handle().clone(),
            runtime: Some(runtime),
        })
    }

    pub(super) fn handle(&self) -> &Handle {
        &self.handle
    }
}

impl Drop for CommitRuntime {
    fn drop(&mut self) {
        // Without waiting: a store is dropped inside another runtime, where waiting for this
        // one's threads would panic. The tasks still on it are dropped.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::sync::oneshot;

    #[tokio::test]
    async fn tasks_run_on_the_named_threads_and_are_dropped_with_the_runtime() {
        let commits = CommitRuntime::start("commit-test").unwrap();
        let name = commits
            .handle()
            .spawn(async { std::thread::current().name().map(str::to_owned) })
            .await
            .unwrap();
        assert_eq!(name.as_deref(), Some("commit-test"));

        let (held, released) = oneshot::channel::<()>();
        let waiting = commits.handle().spawn(async move {
            let _held = held;
            std::future::pending::<()>().await;
        });
        drop(commits);
        let dropped = tokio::time::timeout(Duration::from_secs(5), released).await;
        assert!(
            matches!(dropped, Ok(Err(_))),
            "a task still waiting was not dropped with the runtime"
        );
        assert!(waiting.await.unwrap_err().is_cancelled());
    }
}
