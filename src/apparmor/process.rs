//! Running a child process bounded in time: in a process group of its own (so a timeout kills
//! its children too), its output read on threads of their own (a chatty child never blocks on a
//! full pipe), and a failure to start explained (which file was missing). Nothing here knows
//! what the child is; the parser wrapper gives these failures their meaning.

use std::io::Read;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How often a running child is checked for exit or timeout.
const POLL_EVERY: Duration = Duration::from_millis(20);

/// What a finished run printed.
pub(crate) struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Why a run gave no [`Finished`].
#[derive(Debug)]
pub(crate) enum ProcessError {
    /// The child could not be started ([`spawn_failure`] says why).
    Spawn(std::io::Error),
    /// Its output or its status could not be read.
    Output(std::io::Error),
    /// It ran past the timeout; its whole process group was killed.
    TimedOut,
    /// It was killed by this signal (9: most often the memory limit).
    Killed(i32),
}

/// Runs `cmd` in its own process group, stdin from `/dev/null`, stdout and stderr captured
/// (`merged`: both into stdout, in the order written). Calls `progress` with the elapsed time
/// every `progress_every` while it runs; at `timeout` kills the whole group.
pub(crate) fn run(
    mut cmd: Command,
    merged: bool,
    timeout: Duration,
    progress_every: Duration,
    mut progress: impl FnMut(Duration),
) -> Result<Finished, ProcessError> {
    cmd.process_group(0);
    let merged_reader = if merged {
        let (reader, writer) = std::io::pipe().map_err(ProcessError::Output)?;
        cmd.stdout(writer.try_clone().map_err(ProcessError::Output)?)
            .stderr(writer);
        Some(reader)
    } else {
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        None
    };
    cmd.stdin(Stdio::null());
    let mut child = cmd.spawn().map_err(ProcessError::Spawn)?;
    // The command holds the pipe's write ends; drop it so the readers see EOF.
    drop(cmd);
    let stdout: Option<Box<dyn Read + Send>> = match merged_reader {
        Some(reader) => Some(Box::new(reader)),
        None => child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    };
    let stderr = child
        .stderr
        .take()
        .map(|p| Box::new(p) as Box<dyn Read + Send>);
    let stdout_reader = reader_thread(stdout);
    let stderr_reader = reader_thread(stderr);
    let status = wait(&mut child, timeout, progress_every, &mut progress)?;
    let stdout = stdout_reader
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e));
    let stderr = stderr_reader
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e));
    let finished = Finished {
        status,
        stdout: stdout.map_err(ProcessError::Output)?,
        stderr: stderr.map_err(ProcessError::Output)?,
    };
    if let Some(signal) = finished.status.signal() {
        return Err(ProcessError::Killed(signal));
    }
    Ok(finished)
}

/// Waits for the child, reporting progress; kills its process group at the timeout.
fn wait(
    child: &mut Child,
    timeout: Duration,
    progress_every: Duration,
    progress: &mut impl FnMut(Duration),
) -> Result<ExitStatus, ProcessError> {
    let started = Instant::now();
    let deadline = started + timeout;
    let mut next_progress = started + progress_every;
    loop {
        if let Some(status) = child.try_wait().map_err(ProcessError::Output)? {
            return Ok(status);
        }
        let now = Instant::now();
        if now >= deadline {
            kill_group(child);
            return Err(ProcessError::TimedOut);
        }
        if now >= next_progress {
            progress(started.elapsed());
            next_progress += progress_every;
        }
        std::thread::sleep(POLL_EVERY);
    }
}

/// Reads a pipe to its end on a thread of its own, so a chatty child never blocks on a full
/// pipe while we wait for it.
fn reader_thread(
    pipe: Option<Box<dyn Read + Send>>,
) -> std::thread::JoinHandle<std::io::Result<String>> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        if let Some(mut p) = pipe {
            p.read_to_end(&mut bytes)?;
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    })
}

/// Kills the child's whole process group (it runs in one of its own), then reaps it.
fn kill_group(child: &mut Child) {
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: kill(2) with a negative pid signals that process group; no memory is shared.
        unsafe {
            libc::kill(-pid, libc::SIGKILL);
        }
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// Says which file was missing when starting `binary` failed with ENOENT: the binary itself,
/// the `/dev/null` its stdin is bound to, or its dynamic loader.
pub(crate) fn spawn_failure(binary: &Path, e: &std::io::Error) -> String {
    if e.kind() != std::io::ErrorKind::NotFound {
        e.to_string()
    } else if !binary.exists() {
        format!("{} does not exist", binary.display())
    } else if !Path::new("/dev/null").exists() {
        "/dev/null does not exist in this container (the runtime normally provides it)".into()
    } else {
        match elf_interpreter(binary) {
            Some(interp) if !interp.exists() => format!(
                "its dynamic loader {} does not exist (the image lacks the parser's libraries)",
                interp.display()
            ),
            _ => format!("{e} (a file it needs to start is missing)"),
        }
    }
}

/// The `PT_INTERP` path of a 64-bit little-endian ELF executable, if it has one.
fn elf_interpreter(path: &Path) -> Option<PathBuf> {
    let bytes = std::fs::read(path).ok()?;
    if bytes.get(0..5)? != b"\x7fELF\x02" {
        return None;
    }
    let u16_at = |o: usize| Some(u16::from_le_bytes(bytes.get(o..o + 2)?.try_into().ok()?));
    let u32_at = |o: usize| Some(u32::from_le_bytes(bytes.get(o..o + 4)?.try_into().ok()?));
    let u64_at = |o: usize| Some(u64::from_le_bytes(bytes.get(o..o + 8)?.try_into().ok()?));
    let phoff = usize::try_from(u64_at(0x20)?).ok()?;
    let phentsize = usize::from(u16_at(0x36)?);
    let phnum = usize::from(u16_at(0x38)?);
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        if u32_at(ph)? == 3 {
            let offset = usize::try_from(u64_at(ph + 8)?).ok()?;
            let size = usize::try_from(u64_at(ph + 32)?).ok()?;
            let raw = bytes.get(offset..offset + size)?;
            let text = raw.split(|b| *b == 0).next()?;
            return Some(PathBuf::from(String::from_utf8_lossy(text).into_owned()));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elf_interpreter_of_a_dynamic_executable() {
        // /bin/sh on Debian (dash) is dynamically linked.
        let interp = elf_interpreter(Path::new("/bin/sh")).expect("/bin/sh has an interpreter");
        assert!(interp.to_string_lossy().contains("ld-linux"), "{interp:?}");
        assert_eq!(elf_interpreter(Path::new("/etc/hostname")), None);
    }
}
