//! Resource limits of a local task, applied in the child between `fork` and `exec`.
//!
//! Everything here runs in `pre_exec`, so it only makes system calls: no allocation, no locks.

use std::io;

/// Limits for one task process (and everything it starts, which inherits them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// CPUs the task may run on: it is pinned to the first `min(cpus, available)` CPUs that
    /// this process may use (`sched_setaffinity`). 0 leaves the affinity alone.
    pub cpus: u32,
    /// Address-space limit in MiB (`setrlimit(RLIMIT_AS)`): allocations past it fail (Python
    /// raises `MemoryError`). It limits virtual memory, not resident memory, so programs that
    /// reserve large address ranges (JVMs, some BLAS builds) need a larger size. 0 means none.
    pub memory_mib: u64,
}

impl Limits {
    /// Applies the limits to the calling process. Meant for `pre_exec`.
    pub fn apply(&self) -> io::Result<()> {
        if self.memory_mib > 0 {
            let bytes = self.memory_mib.saturating_mul(1024 * 1024);
            let limit = libc::rlimit {
                rlim_cur: bytes as libc::rlim_t,
                rlim_max: bytes as libc::rlim_t,
            };
            // SAFETY: setrlimit reads the struct we pass; no memory is shared.
            if unsafe { libc::setrlimit(libc::RLIMIT_AS, &limit) } != 0 {
                return Err(io::Error::last_os_error());
            }
        }
        if self.cpus > 0 {
            pin_to_first_cpus(self.cpus as usize)?;
        }
        Ok(())
    }
}

/// Restricts the calling process to the first `wanted` CPUs of its current affinity mask.
fn pin_to_first_cpus(wanted: usize) -> io::Result<()> {
    // SAFETY: cpu_set_t is plain data; the libc calls read and write only the sets we pass.
    unsafe {
        let mut available: libc::cpu_set_t = std::mem::zeroed();
        let size = std::mem::size_of::<libc::cpu_set_t>();
        if libc::sched_getaffinity(0, size, &mut available) != 0 {
            return Err(io::Error::last_os_error());
        }
        let mut chosen: libc::cpu_set_t = std::mem::zeroed();
        let mut count = 0;
        for cpu in 0..libc::CPU_SETSIZE as usize {
            if count == wanted {
                break;
            }
            if libc::CPU_ISSET(cpu, &available) {
                libc::CPU_SET(cpu, &mut chosen);
                count += 1;
            }
        }
        if count == 0 {
            return Ok(());
        }
        if libc::sched_setaffinity(0, size, &chosen) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    #[cfg(target_os = "linux")]
    use std::os::unix::process::CommandExt;

    #[test]
    fn a_child_gets_the_memory_limit_and_one_cpu() {
        let limits = Limits {
            cpus: 1,
            memory_mib: 1024,
        };
        let mut command = Command::new("bash");
        command.args(["-c", "ulimit -v; grep Cpus_allowed_list /proc/self/status"]);
        // SAFETY: Limits::apply only makes system calls.
        unsafe { command.pre_exec(move || limits.apply()) };
        let output = command.output().unwrap();
        let text = String::from_utf8_lossy(&output.stdout);
        assert!(text.starts_with("1048576\n"), "{text}");
        let cpus = text.lines().nth(1).unwrap();
        let list = cpus.split(':').nth(1).unwrap().trim();
        assert!(list.parse::<u32>().is_ok(), "more than one CPU: {list}");
    }
}
