//! One `ordersync run` per SQLite database file. Two daemons on one file would both poll every
//! account (twice the requests, twice each rate limit) and take turns at SQLite's write lock;
//! several replicas need Postgres. The lock is the operating system's lock on a file beside the
//! database: it goes with the process, however it ends (SIGKILL included), so a stale lock
//! cannot stop the next start.

use super::StoreError;
use crate::config::{Backend, DatabaseConfig};
use sqlx::sqlite::SqliteConnectOptions;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::str::FromStr;

/// Held for as long as the daemon runs; dropping it releases the lock.
#[derive(Debug)]
pub struct RunLock {
    _file: File,
}

/// Takes the run lock of a SQLite database (`None` for Postgres or an in-memory database);
/// fails with [`StoreError::AlreadyRunning`] naming the process that holds it.
pub fn lock_for_run(config: &DatabaseConfig) -> Result<Option<RunLock>, StoreError> {
    if config.backend != Backend::Sqlite {
        return Ok(None);
    }
    let options =
        SqliteConnectOptions::from_str(config.url.expose()).map_err(StoreError::Connect)?;
    let database = options.get_filename().to_path_buf();
    let name = database.display().to_string();
    if name.is_empty() || name == ":memory:" {
        return Ok(None);
    }
    let path = PathBuf::from(format!("{name}.run-lock"));
    let lock_error = |error| StoreError::RunLock {
        path: path.display().to_string(),
        error,
    };
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(lock_error)?;
    match file.try_lock() {
        Ok(()) => {
            // The holder's pid, for the message a second start prints.
            file.set_len(0).map_err(lock_error)?;
            write!(file, "pid {}", std::process::id()).map_err(lock_error)?;
            Ok(Some(RunLock { _file: file }))
        }
        Err(TryLockError::WouldBlock) => {
            let mut holder = String::new();
            let _ = file.seek(SeekFrom::Start(0));
            let _ = file.take(64).read_to_string(&mut holder);
            let holder = holder.trim();
            Err(StoreError::AlreadyRunning {
                database: name,
                holder: if holder.is_empty() {
                    "process unknown".to_owned()
                } else {
                    holder.to_owned()
                },
            })
        }
        Err(TryLockError::Error(error)) => Err(lock_error(error)),
    }
}
