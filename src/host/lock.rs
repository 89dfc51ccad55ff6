//! One run at a time per profile directory.
//!
//! Two runs on the same destination (a `maxSurge` rollout, a second install, a manual run)
//! would each read the ownership record, write files and save the record: the last write wins
//! and the other run's files stay on disk unowned. So `copy` and `load` hold an advisory lock
//! (`flock`) on the destination directory itself for their whole run; it covers the files,
//! the records and the parser cache they write. The directory, not a file in it, is locked
//! because `load` mounts it read-only and because a refused run must leave the directory as it
//! found it. The kernel releases the lock when the process ends, however it ends.
//!
//! The holder records who it is (pid, step, node, start time) in
//! `<dest>/.apparmor-profile-loader.lock` (a dot-file: `apparmor_parser` never reads it) and
//! removes it when done. A run that has to wait logs that record, and gives up after
//! `--lock-timeout` (exit 1). A holder on a read-only mount (`load` in the DaemonSet) cannot
//! write the record; the waiter says so.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::host::atomic_file;
use crate::host::host_file;
use crate::host::leftovers;

/// Holder record, beside the locked directory's profiles.
pub const LOCK_FILE: &str = ".apparmor-profile-loader.lock";

/// How long a run waits for another one by default: far longer than a normal `copy` or `load`
/// (seconds), short enough that a wedged holder shows up as a failing init container soon.
pub const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(120);

/// How often a waiting run tries again.
const RETRY_EVERY: Duration = Duration::from_millis(200);
/// How often a waiting run repeats who it is waiting for.
const REPORT_EVERY: Duration = Duration::from_secs(30);

/// What a run needs to take the lock.
#[derive(Debug, Clone)]
pub struct LockOptions {
    /// Give up after waiting this long.
    pub timeout: Duration,
    /// This node's name, recorded for whoever waits.
    pub node: String,
}

impl Default for LockOptions {
    fn default() -> Self {
        LockOptions {
            timeout: DEFAULT_LOCK_TIMEOUT,
            node: "unknown".into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("cannot open the profile directory {dir} to lock it against concurrent runs: {source}")]
    Open {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot lock {dir} against concurrent runs: {source}")]
    Lock {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "another apparmor-profile-loader run still holds the lock on {dir} after {waited:?} \
         ({holder}); nothing was changed. Two runs on one directory (a maxSurge rollout, a \
         second install of the DaemonSet, a manual run) must not overlap: let the other run \
         finish or stop it, or raise --lock-timeout if runs are legitimately that slow"
    )]
    TimedOut {
        dir: PathBuf,
        waited: Duration,
        holder: String,
    },
    #[error("cannot remove the temporary files a crashed run left in {dir}: {source}")]
    Cleanup {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The lock on one directory, held until dropped.
#[derive(Debug)]
pub struct RunLock {
    /// The locked directory; closing it releases the lock.
    _dir_handle: File,
    dir: PathBuf,
    /// Whether we wrote the holder record (and so remove it).
    recorded: bool,
}

/// Takes the lock on `dir` for `step`, waiting up to `opts.timeout` for another run to finish,
/// then records this run as the holder.
pub fn acquire(dir: &Path, step: &str, opts: &LockOptions) -> Result<RunLock, LockError> {
    let open_error = |source| LockError::Open {
        dir: dir.to_path_buf(),
        source,
    };
    let handle = File::open(dir).map_err(open_error)?;
    if !handle.metadata().map_err(open_error)?.is_dir() {
        return Err(open_error(std::io::Error::from(
            std::io::ErrorKind::NotADirectory,
        )));
    }
    let started = Instant::now();
    let mut last_report: Option<(Instant, String)> = None;
    loop {
        match handle.try_lock() {
            Ok(()) => break,
            Err(fs::TryLockError::WouldBlock) => {}
            Err(fs::TryLockError::Error(source)) => {
                return Err(LockError::Lock {
                    dir: dir.to_path_buf(),
                    source,
                });
            }
        }
        let holder = describe_holder(dir);
        let waited = started.elapsed();
        if waited >= opts.timeout {
            return Err(LockError::TimedOut {
                dir: dir.to_path_buf(),
                waited,
                holder,
            });
        }
        let due = last_report
            .as_ref()
            .is_none_or(|(at, said)| at.elapsed() >= REPORT_EVERY || *said != holder);
        if due {
            tracing::warn!(
                dir = %dir.display(),
                holder = %holder,
                timeout_s = opts.timeout.as_secs(),
                "waiting for another run to finish with {} ({holder}); giving up after {:?}",
                dir.display(),
                opts.timeout
            );
            last_report = Some((Instant::now(), holder));
        }
        std::thread::sleep(RETRY_EVERY.min(opts.timeout.saturating_sub(waited)));
    }
    let record = holder_record(step, &opts.node);
    let recorded = match atomic_file::write(dir, LOCK_FILE, record.as_bytes(), 0o644) {
        Ok(()) => true,
        Err(e) => {
            // Diagnostics only: the lock itself is held. `load` mounts the directory read-only.
            tracing::debug!(dir = %dir.display(), "cannot record the lock holder: {e}");
            false
        }
    };
    Ok(RunLock {
        _dir_handle: handle,
        dir: dir.to_path_buf(),
        recorded,
    })
}

impl RunLock {
    /// Removes the temporary files a crashed run of ours (`kill -9`, OOM, power loss) left in
    /// `dir` through [`atomic_file::write`], and only those (see [`atomic_file::is_temp_name`]),
    /// logging each.
    pub fn remove_stale_temps(&self, dir: &Path) -> Result<(), LockError> {
        for path in self.remove_leftovers(dir, atomic_file::is_temp_name)? {
            tracing::warn!(file = %path.display(),
                "removed {}, a temporary file an interrupted run left behind", path.display());
        }
        Ok(())
    }

    /// Removes the regular files in `dir` whose names `is_ours` claims: temporary files of ours
    /// that a crashed run left behind (see [`leftovers::remove`]). Safe only under the lock,
    /// which is why it is a method of it: no run of ours is writing one meanwhile. Returns the
    /// files removed.
    pub fn remove_leftovers(
        &self,
        dir: &Path,
        is_ours: impl Fn(&str) -> bool,
    ) -> Result<Vec<PathBuf>, LockError> {
        leftovers::remove(dir, is_ours).map_err(|source| LockError::Cleanup {
            dir: dir.to_path_buf(),
            source,
        })
    }
}

impl Drop for RunLock {
    fn drop(&mut self) {
        if self.recorded {
            // Still under the lock: the next holder writes its own record.
            let _ = fs::remove_file(self.dir.join(LOCK_FILE));
        }
    }
}

/// The holder record: one `key=value` per line.
fn holder_record(step: &str, node: &str) -> String {
    let started = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    format!(
        "pid={}\nstep={step}\nnode={node}\nstarted_unix={started}\n",
        std::process::id()
    )
}

/// Who holds the lock, from its record, for the waiting run's log.
fn describe_holder(dir: &Path) -> String {
    let path = dir.join(LOCK_FILE);
    let text = match host_file::read_to_string(&path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return "the holder left no record: a load step, whose mount of the directory is \
                    read-only, or a run that is just starting"
                .into();
        }
        Err(e) => return format!("its record {} cannot be read: {e}", path.display()),
    };
    let field = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .filter(|v| !v.is_empty())
            .unwrap_or("?")
    };
    let since = field("started_unix")
        .parse::<u64>()
        .ok()
        .and_then(|s| {
            let now = SystemTime::now().duration_since(UNIX_EPOCH).ok()?.as_secs();
            Some(format!(", started {} s ago", now.saturating_sub(s)))
        })
        .unwrap_or_default();
    format!(
        "held by {} on node {} (pid {}{since})",
        field("step"),
        field("node"),
        field("pid")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holder_is_recorded_while_held_and_removed_after() {
        let dir = tempfile::tempdir().unwrap();
        let opts = LockOptions {
            timeout: Duration::from_millis(1),
            node: "node-a".into(),
        };
        let lock = acquire(dir.path(), "copy", &opts).unwrap();
        let described = describe_holder(dir.path());
        assert!(
            described.starts_with(&format!(
                "held by copy on node node-a (pid {}, started ",
                std::process::id()
            )),
            "{described}"
        );
        // A second open file description of the same directory cannot take it.
        let err = acquire(dir.path(), "load", &opts).unwrap_err();
        assert!(matches!(err, LockError::TimedOut { .. }), "{err}");
        assert!(
            err.to_string().contains("held by copy on node node-a"),
            "{err}"
        );
        drop(lock);
        assert!(!dir.path().join(LOCK_FILE).exists());
        let again = acquire(dir.path(), "load", &opts).unwrap();
        drop(again);
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn holder_without_a_record_is_described_as_such() {
        let dir = tempfile::tempdir().unwrap();
        assert!(describe_holder(dir.path()).contains("left no record"));
        fs::write(dir.path().join(LOCK_FILE), "garbage").unwrap();
        assert_eq!(describe_holder(dir.path()), "held by ? on node ? (pid ?)");
    }

    #[test]
    fn missing_directory_or_a_file_is_an_open_error() {
        let dir = tempfile::tempdir().unwrap();
        let err = acquire(&dir.path().join("nope"), "copy", &LockOptions::default()).unwrap_err();
        assert!(matches!(err, LockError::Open { .. }), "{err}");
        fs::write(dir.path().join("file"), "").unwrap();
        let err = acquire(&dir.path().join("file"), "copy", &LockOptions::default()).unwrap_err();
        assert!(err.to_string().contains("not a directory"), "{err}");
    }
}
