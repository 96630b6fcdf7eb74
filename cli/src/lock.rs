//! One owner per data directory: `serve`, `run` and `cleanup` hold an exclusive `flock` on
//! `owner.lock` inside it for as long as the process lives. The kernel drops the lock when
//! the holder exits, even after `kill -9`, so a stale file never blocks a restart.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{Context, Result, bail};

/// The locks this process holds, kept open until it exits.
static HELD: Mutex<Vec<(PathBuf, File)>> = Mutex::new(Vec::new());

/// The lock file's name inside the data directory.
pub const LOCK_FILE: &str = "owner.lock";

/// Takes the data directory's lock for the rest of this process's life, or fails at once
/// naming the directory and the process that holds it.
pub fn own_data_dir(data_dir: &Path) -> Result<()> {
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create the data directory {}", data_dir.display()))?;
    let key = data_dir
        .canonicalize()
        .with_context(|| format!("cannot resolve the data directory {}", data_dir.display()))?;
    let mut held = HELD.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if held.iter().any(|(dir, _)| *dir == key) {
        return Ok(());
    }
    let path = key.join(LOCK_FILE);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .with_context(|| format!("cannot open the lock file {}", path.display()))?;
    // SAFETY: flock on a file descriptor this function owns; no memory is shared.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(err).with_context(|| format!("cannot lock {}", path.display()));
        }
        let mut holder = String::new();
        let _ = file.read_to_string(&mut holder);
        let holder = match holder.trim() {
            "" => "a process that has not written its pid yet".to_owned(),
            pid => format!("process {pid}"),
        };
        bail!(
            "the data directory {} is in use by another taskrunner ({holder}, lock file {}); stop that one first or pass another --data-dir",
            data_dir.display(),
            path.display()
        );
    }
    let pid = std::process::id();
    file.set_len(0)
        .and_then(|()| file.seek(SeekFrom::Start(0)).map(drop))
        .and_then(|()| writeln!(file, "{pid}"))
        .with_context(|| format!("cannot write this process's pid into {}", path.display()))?;
    held.push((key, file));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_owner_in_another_process_is_refused_and_told_the_holder_pid() {
        let dir = tempfile::tempdir().unwrap();
        own_data_dir(dir.path()).unwrap();
        own_data_dir(dir.path()).unwrap();
        let written = std::fs::read_to_string(dir.path().join(LOCK_FILE)).unwrap();
        assert_eq!(written.trim(), std::process::id().to_string());
        // Another open file description stands for another process.
        let other = File::open(dir.path().join(LOCK_FILE)).unwrap();
        // SAFETY: as above.
        let taken = unsafe { libc::flock(other.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        assert_ne!(taken, 0);
    }
}
