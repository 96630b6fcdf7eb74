//! Starting a task's processes (the task file's interpreter, the startup script, git) from
//! the worker host, with the worker size's limits, without copying the host.
//!
//! Limits must be in place before the program runs, and `posix_spawn` cannot set them, so
//! this used to be a `fork` with a `pre_exec` hook: the kernel copied the host's page
//! tables, every page became copy-on-write, and the `exec` threw it all away, which on a
//! host running hundreds of tasks was about a quarter of the machine's time. Here the child
//! shares the host's memory until it execs (`clone` with `CLONE_VM | CLONE_VFORK`, what
//! `posix_spawn` itself does) and between the two it only makes system calls: default
//! signal handlers and an empty signal mask, a process group of its own, its standard
//! streams, its working directory, its limits, then `execve`.

use std::collections::BTreeMap;
use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use super::limits::{Limits, Pinning};

/// Stack of the child between `clone` and `execve`: it only makes system calls.
const CHILD_STACK: usize = 64 * 1024;

/// A program to start: its arguments, its whole environment (nothing is inherited), its
/// working directory and limits.
#[derive(Clone, Debug)]
pub struct Launch {
    program: OsString,
    args: Vec<OsString>,
    env: BTreeMap<OsString, OsString>,
    cwd: Option<PathBuf>,
    limits: Limits,
}

impl Launch {
    /// `program` (found on the `PATH` of its environment when it has no `/`), with an empty
    /// environment and no limits.
    pub fn new(program: impl AsRef<OsStr>) -> Self {
        Self {
            program: program.as_ref().to_owned(),
            args: Vec::new(),
            env: BTreeMap::new(),
            cwd: None,
            limits: Limits::default(),
        }
    }

    /// Adds an argument.
    pub fn arg(&mut self, arg: impl AsRef<OsStr>) -> &mut Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    /// Adds arguments.
    pub fn args<I, S>(&mut self, args: I) -> &mut Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        self.args
            .extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        self
    }

    /// Sets an environment variable.
    pub fn env(&mut self, name: impl AsRef<OsStr>, value: impl AsRef<OsStr>) -> &mut Self {
        self.env
            .insert(name.as_ref().to_owned(), value.as_ref().to_owned());
        self
    }

    /// Sets environment variables.
    pub fn envs<I, K, V>(&mut self, vars: I) -> &mut Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        for (name, value) in vars {
            self.env(name, value);
        }
        self
    }

    /// Sets the working directory.
    pub fn current_dir(&mut self, dir: impl AsRef<Path>) -> &mut Self {
        self.cwd = Some(dir.as_ref().to_owned());
        self
    }

    /// Sets the limits the process starts with.
    pub fn limits(&mut self, limits: Limits) -> &mut Self {
        self.limits = limits;
        self
    }

    /// The arguments after the program.
    pub fn get_args(&self) -> impl Iterator<Item = &OsStr> {
        self.args.iter().map(OsString::as_os_str)
    }

    /// The value of an environment variable of the process.
    pub fn get_env(&self, name: &str) -> Option<&OsStr> {
        self.env.get(OsStr::new(name)).map(OsString::as_os_str)
    }

    /// Starts the program in a process group of its own (its pid is the group's id), stdin
    /// from `/dev/null`, stdout and stderr to the given descriptors. Returns once the
    /// program runs (or with the reason it could not: not found, not executable, a limit
    /// refused); the descriptors are closed in this process either way.
    pub fn spawn(&self, stdout: OwnedFd, stderr: OwnedFd) -> io::Result<Process> {
        let program = self.resolve()?;
        let program = c_string(program.as_os_str())?;
        let argv0 = c_string(&self.program)?;
        let args: Vec<CString> = std::iter::once(Ok(argv0))
            .chain(self.args.iter().map(|a| c_string(a)))
            .collect::<io::Result<_>>()?;
        let env: Vec<CString> = self
            .env
            .iter()
            .map(|(name, value)| {
                let mut pair = name.clone();
                pair.push("=");
                pair.push(value);
                c_string(&pair)
            })
            .collect::<io::Result<_>>()?;
        let cwd = self
            .cwd
            .as_deref()
            .map(|d| c_string(d.as_os_str()))
            .transpose()?;
        let stdin = std::fs::File::open("/dev/null")?;
        let pinning = self.limits.pinning();
        let memory = self.limits.address_space();
        let argv = null_terminated(&args);
        let envp = null_terminated(&env);
        let plan = ChildPlan {
            program: program.as_ptr(),
            argv: argv.as_ptr(),
            envp: envp.as_ptr(),
            cwd: cwd.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
            stdio: [stdin.as_raw_fd(), stdout.as_raw_fd(), stderr.as_raw_fd()],
            memory,
            cpus: pinning.as_ref().map(Pinning::set),
            failure: AtomicI32::new(0),
        };
        let pid = start_child(&plan)?;
        let failure = plan.failure.load(Ordering::Acquire);
        if failure != 0 {
            let mut status = 0;
            // SAFETY: our own child, which has exited (`_exit` after the failed step).
            unsafe { libc::waitpid(pid, &mut status, 0) };
            return Err(io::Error::from_raw_os_error(failure));
        }
        Ok(Process::new(pid, pinning))
    }

    /// The program's path: as given when it has a `/`, else the first executable file of
    /// that name in the `PATH` of the process's environment (the host's `PATH` when it has
    /// none).
    fn resolve(&self) -> io::Result<PathBuf> {
        let program = Path::new(&self.program);
        if self.program.as_bytes().contains(&b'/') {
            return Ok(program.to_owned());
        }
        let path = self
            .env
            .get(OsStr::new("PATH"))
            .cloned()
            .or_else(|| std::env::var_os("PATH"))
            .unwrap_or_default();
        std::env::split_paths(&path)
            .map(|dir| dir.join(program))
            .find(|candidate| is_executable(candidate))
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!(
                        "no executable {:?} on the PATH ({})",
                        self.program,
                        path.to_string_lossy()
                    ),
                )
            })
    }
}

/// A started process: wait for it on the event loop (through a pidfd where the kernel has
/// them). Dropped before it was reaped, it is killed and reaped.
pub struct Process {
    pid: i32,
    exited: Option<ExitStatus>,
    /// Readable once the process has exited; registered with the event loop at the first
    /// wait.
    pidfd: Option<OwnedFd>,
    watched: Option<AsyncFd<OwnedFd>>,
    /// The CPUs it was pinned to, given back to the host's count when it has exited.
    pinning: Option<Pinning>,
}

impl Process {
    fn new(pid: i32, pinning: Option<Pinning>) -> Self {
        Self {
            pid,
            exited: None,
            pidfd: pidfd_open(pid),
            watched: None,
            pinning,
        }
    }

    /// Its pid, which is also its process group's id.
    pub fn id(&self) -> i32 {
        self.pid
    }

    /// Waits until it has exited, and reaps it.
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(status);
            }
            if let Some(pidfd) = self.pidfd.take() {
                // SAFETY: the AsyncFd owns the descriptor, which stays open while it lives.
                self.watched =
                    unsafe { AsyncFd::register_with_interest(pidfd, Interest::READABLE) }.ok();
            }
            match &self.watched {
                Some(pidfd) => pidfd.readable().await?.clear_ready(),
                None => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    }

    fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        if let Some(status) = self.exited {
            return Ok(Some(status));
        }
        let mut status = 0;
        // SAFETY: waitpid on our own child's pid only.
        match unsafe { libc::waitpid(self.pid, &mut status, libc::WNOHANG) } {
            0 => Ok(None),
            pid if pid == self.pid => {
                let status = ExitStatus::from_raw(status);
                self.exited = Some(status);
                self.pinning = None;
                Ok(Some(status))
            }
            _ => Err(io::Error::last_os_error()),
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.exited.is_some() {
            return;
        }
        // SAFETY: signals and reaps our own child only.
        unsafe {
            libc::kill(self.pid, libc::SIGKILL);
            let mut status = 0;
            libc::waitpid(self.pid, &mut status, 0);
        }
    }
}

/// What the child does between `clone` and `execve`, prepared by the parent: the child
/// only reads it (and writes `failure`), it allocates nothing and takes no lock.
struct ChildPlan {
    program: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    /// Null: the parent's working directory.
    cwd: *const libc::c_char,
    /// stdin, stdout, stderr.
    stdio: [RawFd; 3],
    memory: Option<libc::rlimit>,
    cpus: Option<libc::cpu_set_t>,
    /// The errno of the step that failed; 0 when the program runs.
    failure: AtomicI32,
}

/// Starts the child running [`child_main`] and returns its pid once it has exec'd or exited.
fn start_child(plan: &ChildPlan) -> io::Result<i32> {
    // Not zeroed: nothing reads it before the child writes it.
    let mut stack: Vec<u8> = Vec::with_capacity(CHILD_STACK);
    // SAFETY: the stack grows down from the end of the allocation, aligned to 16 bytes;
    // CLONE_VFORK suspends this thread until the child has exec'd or exited, so `plan` and
    // `stack` outlive its use of them. All signals are blocked around the clone, so no
    // handler of ours runs in the child before it has reset them.
    unsafe {
        let top = stack.as_mut_ptr().add(CHILD_STACK) as usize & !15;
        let mut all: libc::sigset_t = std::mem::zeroed();
        let mut previous: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut previous);
        let pid = libc::clone(
            child_main,
            top as *mut libc::c_void,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            plan as *const ChildPlan as *mut libc::c_void,
        );
        let error = io::Error::last_os_error();
        libc::pthread_sigmask(libc::SIG_SETMASK, &previous, std::ptr::null_mut());
        if pid < 0 { Err(error) } else { Ok(pid) }
    }
}

/// The child's side. Returns only when a step failed (its errno is in `plan.failure`).
extern "C" fn child_main(plan: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `plan` points to the parent's ChildPlan, alive until we exec or exit; every
    // call below is a system call on data prepared by the parent.
    unsafe {
        let plan = &*(plan as *const ChildPlan);
        // The parent's handlers would run on the parent's memory; ignored signals stay
        // ignored (as `nohup` wants), except SIGPIPE, which Rust ignores for itself.
        for signal in 1..65 {
            let mut current: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(signal, std::ptr::null(), &mut current) != 0 {
                continue;
            }
            let ignored = current.sa_sigaction == libc::SIG_IGN && signal != libc::SIGPIPE;
            if !ignored && current.sa_sigaction != libc::SIG_DFL {
                let mut default: libc::sigaction = std::mem::zeroed();
                default.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(signal, &default, std::ptr::null_mut());
            }
        }
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        if libc::setpgid(0, 0) != 0 {
            failed(plan);
        }
        for (target, &fd) in plan.stdio.iter().enumerate() {
            if libc::dup2(fd, target as libc::c_int) < 0 {
                failed(plan);
            }
        }
        if !plan.cwd.is_null() && libc::chdir(plan.cwd) != 0 {
            failed(plan);
        }
        if let Some(memory) = &plan.memory {
            if libc::setrlimit(libc::RLIMIT_AS, memory) != 0 {
                failed(plan);
            }
        }
        if let Some(cpus) = &plan.cpus {
            if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), cpus) != 0 {
                failed(plan);
            }
        }
        libc::execve(plan.program, plan.argv, plan.envp);
        failed(plan)
    }
}

/// Records the errno of the child's step that failed and ends the child.
///
/// # Safety
/// Only in the child, after `clone`.
unsafe fn failed(plan: &ChildPlan) -> ! {
    let errno = io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO);
    plan.failure.store(errno, Ordering::Release);
    // SAFETY: ends the child without running anything of the parent's (no atexit, no flush).
    unsafe { libc::_exit(127) }
}

/// A close-on-exec pipe for a process's output: (read end, write end).
pub fn output_pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two new descriptors into the array, which we then own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn c_string(value: &OsStr) -> io::Result<CString> {
    CString::new(value.as_bytes()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{value:?} holds a NUL byte, which no program argument or variable may hold"),
        )
    })
}

/// The pointers of `strings`, then a null one, as `execve` wants them.
fn null_terminated(strings: &[CString]) -> Vec<*const libc::c_char> {
    strings
        .iter()
        .map(|s| s.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect()
}

fn is_executable(path: &Path) -> bool {
    let Ok(c_path) = c_string(path.as_os_str()) else {
        return false;
    };
    // SAFETY: access only reads the path we pass.
    path.is_file() && unsafe { libc::access(c_path.as_ptr(), libc::X_OK) } == 0
}

/// A pidfd for our child `pid`, readable once it has exited (Linux 5.3 and later).
fn pidfd_open(pid: i32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open returns a new descriptor that we then own, or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    // SAFETY: a descriptor just created and owned by nobody else.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

#[cfg(test)]
mod tests;
