//! Resource limits of a local task: what its process starts with ([`super::spawn`] applies
//! them between `clone` and `exec`), and which CPUs it is pinned to.

use std::sync::{Mutex, OnceLock, PoisonError};

/// Limits for one task process (and everything it starts, which inherits them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    /// CPUs the task may run on (`sched_setaffinity`): the `min(cpus, available)` CPUs of
    /// the host's own affinity that have the fewest pinned tasks running, so that one-CPU
    /// tasks spread over the machine instead of sharing its first CPU. 0 leaves the
    /// affinity alone.
    pub cpus: u32,
    /// Address-space limit in MiB (`setrlimit(RLIMIT_AS)`): allocations past it fail (Python
    /// raises `MemoryError`). It limits virtual memory, not resident memory, so programs that
    /// reserve large address ranges (JVMs, some BLAS builds) need a larger size. 0 means none.
    pub memory_mib: u64,
}

impl Limits {
    /// The `RLIMIT_AS` to set, if any.
    pub fn address_space(&self) -> Option<libc::rlimit> {
        (self.memory_mib > 0).then(|| {
            let bytes = self.memory_mib.saturating_mul(1024 * 1024) as libc::rlim_t;
            libc::rlimit {
                rlim_cur: bytes,
                rlim_max: bytes,
            }
        })
    }

    /// Chooses the CPUs for a new process (counted as taken until the pinning is dropped);
    /// `None` when the affinity is left alone.
    pub fn pinning(&self) -> Option<Pinning> {
        if self.cpus == 0 {
            return None;
        }
        let load = cpu_load()?;
        let mut counts = load.lock().unwrap_or_else(PoisonError::into_inner);
        Some(Pinning {
            cpus: take_least_loaded(&mut counts, self.cpus as usize),
        })
    }
}

/// Takes the `wanted` CPUs with the fewest processes running (among equals, the lower CPU)
/// and counts one more on each; gives them in CPU order.
fn take_least_loaded(counts: &mut [(usize, u32)], wanted: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..counts.len()).collect();
    order.sort_by_key(|&i| (counts[i].1, counts[i].0));
    order.truncate(wanted);
    order.sort_unstable();
    order
        .into_iter()
        .map(|i| {
            counts[i].1 += 1;
            counts[i].0
        })
        .collect()
}

/// Counts one process fewer on each of `cpus`.
fn give_back(counts: &mut [(usize, u32)], cpus: &[usize]) {
    for (cpu, running) in counts.iter_mut() {
        if cpus.contains(cpu) {
            *running = running.saturating_sub(1);
        }
    }
}

/// Each CPU of the host's affinity with the number of pinned processes running on it.
type CpuLoad = Mutex<Vec<(usize, u32)>>;

/// The host's CPU load; `None` when its affinity cannot be read (then nothing is pinned).
fn cpu_load() -> Option<&'static CpuLoad> {
    static LOAD: OnceLock<Option<CpuLoad>> = OnceLock::new();
    LOAD.get_or_init(|| {
        // SAFETY: cpu_set_t is plain data; sched_getaffinity writes only the set we pass.
        let available = unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            let size = std::mem::size_of::<libc::cpu_set_t>();
            (libc::sched_getaffinity(0, size, &mut set) == 0).then_some(set)
        }?;
        let cpus: Vec<(usize, u32)> = (0..libc::CPU_SETSIZE as usize)
            // SAFETY: CPU_ISSET reads the set within its size.
            .filter(|&cpu| unsafe { libc::CPU_ISSET(cpu, &available) })
            .map(|cpu| (cpu, 0))
            .collect();
        (!cpus.is_empty()).then(|| Mutex::new(cpus))
    })
    .as_ref()
}

/// CPUs chosen for one process; dropping it (when the process has exited) gives them back.
#[derive(Debug)]
pub struct Pinning {
    cpus: Vec<usize>,
}

impl Pinning {
    /// The chosen CPUs as an affinity mask.
    pub fn set(&self) -> libc::cpu_set_t {
        // SAFETY: cpu_set_t is plain data; CPU_SET writes within the set.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            for &cpu in &self.cpus {
                libc::CPU_SET(cpu, &mut set);
            }
            set
        }
    }
}

impl Drop for Pinning {
    fn drop(&mut self) {
        let Some(load) = cpu_load() else { return };
        give_back(
            &mut load.lock().unwrap_or_else(PoisonError::into_inner),
            &self.cpus,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_cpu_tasks_spread_over_the_cpus_and_give_them_back() {
        let mut counts = vec![(0, 0), (2, 0), (3, 0)];
        assert_eq!(take_least_loaded(&mut counts, 1), [0]);
        assert_eq!(take_least_loaded(&mut counts, 1), [2]);
        assert_eq!(take_least_loaded(&mut counts, 1), [3]);
        assert_eq!(take_least_loaded(&mut counts, 1), [0]);
        give_back(&mut counts, &[3]);
        assert_eq!(take_least_loaded(&mut counts, 1), [3]);
        assert_eq!(counts, [(0, 2), (2, 1), (3, 1)]);
    }

    #[test]
    fn a_wider_task_takes_the_least_loaded_cpus_and_never_more_than_there_are() {
        let mut counts = vec![(0, 3), (1, 0), (2, 1), (3, 0)];
        assert_eq!(take_least_loaded(&mut counts, 2), [1, 3]);
        assert_eq!(take_least_loaded(&mut counts, 8), [0, 1, 2, 3]);
        assert_eq!(counts, [(0, 4), (1, 2), (2, 2), (3, 2)]);
    }

    #[test]
    fn no_limits_set_nothing() {
        let none = Limits::default();
        assert!(none.address_space().is_none());
        assert!(none.pinning().is_none());
        let memory = Limits {
            cpus: 0,
            memory_mib: 1024,
        };
        assert_eq!(memory.address_space().unwrap().rlim_cur, 1 << 30);
    }
}
