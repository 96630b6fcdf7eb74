//! The worker host and its tasks run at a lower CPU priority than `serve`, so that accepting
//! and recording tasks stays quick while tasks keep every core busy.
//!
//! Two settings, because the kernel weighs CPU time in two steps: first between autogroups
//! (one per session, where `CONFIG_SCHED_AUTOGROUP` is on, as on most distributions), then
//! between the threads of a group by their nice values. The host starts a session of its
//! own, so its tasks' nice value alone would only order them among themselves; the host's
//! autogroup gets the same lowering, which is what puts them behind `serve`. A process can
//! also be outside any autogroup, in the kernel's default group (as the processes of some
//! containers are); the host's own session still gets one.
//!
//! Both only ever lower the priority, which needs no privilege; nothing raises it again.

use std::io;
use std::path::Path;

/// The highest nice value (the lowest priority).
const LOWEST: i32 = 19;

/// Lowers this thread's nice value and this session's autogroup's by `levels` (at most to
/// 19). Threads and processes started from this thread afterwards inherit its nice value, so
/// the host calls it first thing, before any thread exists. Problems are warnings on stderr
/// (the host's log): the tasks run either way.
pub fn lower(levels: u8) {
    if levels == 0 {
        return;
    }
    if let Err(err) = lower_thread(levels) {
        eprintln!("warning: the worker host cannot lower its CPU priority: {err}");
    }
    if let Err(err) = lower_autogroup(Path::new("/proc/self/autogroup"), levels) {
        eprintln!("warning: the worker host cannot lower its autogroup's CPU priority: {err}");
    }
}

/// Nice value of the calling thread.
fn thread_nice() -> io::Result<i32> {
    // getpriority may return -1 as a value, so errors are told apart by errno.
    // SAFETY: reads the calling thread's priority; sets and reads this thread's errno.
    unsafe {
        *libc::__errno_location() = 0;
        let nice = libc::getpriority(libc::PRIO_PROCESS, 0);
        let errno = *libc::__errno_location();
        if errno != 0 {
            return Err(io::Error::from_raw_os_error(errno));
        }
        Ok(nice)
    }
}

fn lower_thread(levels: u8) -> io::Result<()> {
    let target = (thread_nice()? + i32::from(levels)).min(LOWEST);
    // SAFETY: sets the calling thread's own nice value (Linux applies PRIO_PROCESS with 0
    // to the calling thread).
    if unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, target) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Lowers the autogroup described by `file` (`/autogroup-N nice V`). There is nothing to do
/// on a kernel without autogroups (no such file) or for a process in the default group,
/// outside any autogroup (the file is empty).
fn lower_autogroup(file: &Path, levels: u8) -> io::Result<()> {
    let current = match std::fs::read_to_string(file) {
        Ok(text) => text,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(err) => return Err(err),
    };
    if current.trim().is_empty() {
        return Ok(());
    }
    let nice = autogroup_nice(&current).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unexpected contents of {}: {current:?}", file.display()),
        )
    })?;
    let target = (nice + i32::from(levels)).min(LOWEST);
    std::fs::write(file, target.to_string())
}

fn autogroup_nice(text: &str) -> Option<i32> {
    text.split_whitespace()
        .skip_while(|word| *word != "nice")
        .nth(1)?
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_lowered_twice_stops_at_the_lowest_priority() {
        // On a thread of its own: the nice value is per thread and inherited by what it starts.
        std::thread::spawn(|| {
            let before = thread_nice().expect("nice");
            lower_thread(3).expect("lower");
            assert_eq!(thread_nice().expect("nice"), (before + 3).min(LOWEST));
            let child = std::process::Command::new("sh")
                .args(["-c", "cut -d' ' -f19 /proc/self/stat"])
                .output()
                .expect("sh");
            let child_nice: i32 = String::from_utf8_lossy(&child.stdout)
                .trim()
                .parse()
                .unwrap();
            assert_eq!(
                child_nice,
                (before + 3).min(LOWEST),
                "a started process inherits it"
            );
            lower_thread(40).expect("lower");
            assert_eq!(thread_nice().expect("nice"), LOWEST);
        })
        .join()
        .expect("thread");
    }

    #[test]
    fn the_autogroup_is_lowered_from_its_current_value_and_a_missing_or_empty_file_is_no_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = dir.path().join("autogroup");
        std::fs::write(&file, "/autogroup-9529 nice 2\n").expect("write");
        lower_autogroup(&file, 10).expect("lower");
        assert_eq!(std::fs::read_to_string(&file).expect("read"), "12");
        std::fs::write(&file, "/autogroup-9529 nice 15\n").expect("write");
        lower_autogroup(&file, 10).expect("lower");
        assert_eq!(std::fs::read_to_string(&file).expect("read"), "19");
        lower_autogroup(&dir.path().join("absent"), 10).expect("no autogroups: nothing to do");
        std::fs::write(&file, "").expect("write");
        lower_autogroup(&file, 10).expect("in the default group: nothing to do");
        assert_eq!(std::fs::read_to_string(&file).expect("read"), "");
        std::fs::write(&file, "garbage").expect("write");
        let err = lower_autogroup(&file, 10).expect_err("unreadable contents");
        assert!(err.to_string().contains("garbage"), "{err}");
    }
}
