//! The daemon's tasks under their names.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio_util::task::TaskTracker;

/// The daemon's tasks, each under a name, so a shutdown that runs out of time can say what it
/// abandoned.
#[derive(Clone, Default)]
pub(super) struct Tasks {
    pub(super) tracker: TaskTracker,
    running: Arc<Mutex<BTreeMap<u64, String>>>,
    next_id: Arc<AtomicU64>,
}

impl Tasks {
    pub(super) fn spawn<F>(&self, name: String, task: F)
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(id, name);
        let done = DoneGuard {
            running: self.running.clone(),
            id,
        };
        self.tracker.spawn(async move {
            let _done = done;
            task.await
        });
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, String>> {
        // Only names live under this lock; a panic elsewhere leaves them usable.
        self.running
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The names of the tasks still running, each once, with a count when repeated.
    pub(super) fn still_running(&self) -> Vec<String> {
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        for name in self.lock().values() {
            *counts.entry(name.clone()).or_default() += 1;
        }
        counts
            .into_iter()
            .map(|(name, n)| {
                if n == 1 {
                    name
                } else {
                    format!("{name} (x{n})")
                }
            })
            .collect()
    }
}

/// Takes a task's name off the list when the task ends, however it ends.
struct DoneGuard {
    running: Arc<Mutex<BTreeMap<u64, String>>>,
    id: u64,
}

impl Drop for DoneGuard {
    fn drop(&mut self) {
        self.running
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .remove(&self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn only_tasks_still_running_are_named_once_with_a_count() {
        let tasks = Tasks::default();
        let (release, held) = tokio::sync::watch::channel(false);
        for name in ["run of a", "run of a", "outbox of b"] {
            let mut held = held.clone();
            tasks.spawn(name.to_owned(), async move {
                let _ = held.wait_for(|go| *go).await;
            });
        }
        tasks.spawn("finished".to_owned(), async {});
        tokio::time::timeout(std::time::Duration::from_secs(5), async {
            while tasks.still_running().len() != 2 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the finished task leaves the list");
        assert_eq!(tasks.still_running(), ["outbox of b", "run of a (x2)"]);
        release.send_replace(true);
        tasks.tracker.close();
        tasks.tracker.wait().await;
        assert!(tasks.still_running().is_empty());
    }
}
