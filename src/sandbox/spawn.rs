//! Starting the program: `clone3` straight into the command's cgroup, with a pidfd.
//!
//! The fast path (x86_64, Linux ≥ 5.7) is `clone3(CLONE_VM | CLONE_VFORK | CLONE_PIDFD |
//! CLONE_CLEAR_SIGHAND | CLONE_INTO_CGROUP)`, as `posix_spawn` does it plus the cgroup:
//! - the child is *created* in its cgroup: no write to `cgroup.procs` (which takes the
//!   cgroup-wide `cgroup_threadgroup_rwsem` for writing: 6.5–20 ms measured under load);
//! - no page-table copy (the child borrows the parent's memory until `exec`, on a stack of its
//!   own; the calling thread is suspended until then), whatever keyhole's size;
//! - a pidfd, which the parent polls together with the pipes: the program's exit wakes it.
//!
//! Between `clone3` and `exec` the child only makes system calls on data prepared before
//! ([`Exec`], [`Prepared`]): no allocation, no lock, no glibc function that keeps state (the
//! credential changes are raw system calls, see `privileges`). All signals are blocked around
//! `clone3` in the parent; the child starts with every handled signal reset to its default
//! (`CLONE_CLEAR_SIGHAND`), restores SIGPIPE's default, unblocks everything and execs. An error
//! before `exec` is written into shared memory (the child shares the parent's) and the child
//! exits 127; the parent reads it when `clone3` returns.
//!
//! Where the kernel refuses `clone3` (ENOSYS from an old kernel or a seccomp filter, EINVAL for
//! an unknown flag, E2BIG, EPERM), the refusal is remembered and every program starts the way it
//! did before: `fork` through `std::process::Command`, the child writing itself into
//! `cgroup.procs`, and a pidfd from `pidfd_open` (Linux ≥ 5.3) to wait on.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};

use nix::unistd::Pid;

use super::privileges::{child_setup, Prepared};

/// Once the kernel refused `clone3`, programs start through `fork`.
static CLONE3_REFUSED: AtomicBool = AtomicBool::new(false);
/// Test hook: start every program through `fork` ([`force_fork_path`]).
static FORCE_FORK: AtomicBool = AtomicBool::new(false);
/// How many programs started on each path (for tests and the log).
static STARTED_CLONE3: AtomicU64 = AtomicU64::new(0);
static STARTED_FORK: AtomicU64 = AtomicU64::new(0);

/// The way a program was started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpawnPath {
    /// `clone3` into the cgroup, vfork-style, with a pidfd.
    Clone3,
    /// `fork` (std's `Command`), `cgroup.procs` written by the child, `pidfd_open`.
    Fork,
}

/// Start every program through `fork` from now on (tests of the fallback path). Exists only in
/// test builds (the `test-util` feature).
#[cfg(any(test, feature = "test-util"))]
pub fn force_fork_path() {
    FORCE_FORK.store(true, Ordering::SeqCst);
}

/// Programs started so far on each path: (clone3, fork).
pub fn started_counts() -> (u64, u64) {
    (
        STARTED_CLONE3.load(Ordering::Relaxed),
        STARTED_FORK.load(Ordering::Relaxed),
    )
}

/// What `execve` needs, built before the child exists.
pub(crate) struct Exec {
    path: CString,
    /// Owns the strings `argv_ptrs` points into.
    _argv: Vec<CString>,
    argv_ptrs: Vec<*const libc::c_char>,
    _envp: Vec<CString>,
    envp_ptrs: Vec<*const libc::c_char>,
}

impl Exec {
    /// `None` when a string holds a NUL (validated earlier; never happens).
    pub(crate) fn new(path: &str, args: &[String], env: &[(String, String)]) -> Option<Exec> {
        let path = CString::new(path).ok()?;
        let mut argv = Vec::with_capacity(args.len() + 1);
        argv.push(path.clone());
        for a in args {
            argv.push(CString::new(a.as_bytes()).ok()?);
        }
        let mut envp = Vec::with_capacity(env.len());
        for (k, v) in env {
            envp.push(CString::new(format!("{k}={v}")).ok()?);
        }
        let argv_ptrs = argv
            .iter()
            .map(|s| s.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect();
        let envp_ptrs = envp
            .iter()
            .map(|s| s.as_ptr())
            .chain(std::iter::once(std::ptr::null()))
            .collect();
        Some(Exec {
            path,
            _argv: argv,
            argv_ptrs,
            _envp: envp,
            envp_ptrs,
        })
    }
}

/// The standard descriptors the child gets (the parent keeps the other ends).
pub(crate) struct ChildFds {
    pub stdin: OwnedFd,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

/// A started program.
pub(crate) struct Started {
    pub pid: Pid,
    /// Readable once the program has exited (None only on kernels without pidfds, < 5.3).
    pub pidfd: Option<OwnedFd>,
}

/// Why `clone3` did not start the program.
pub(crate) enum Clone3Error {
    /// The kernel (or a seccomp filter) refuses this `clone3`: use the fork path.
    Refused(io::Error),
    /// The program could not be started (e.g. `execve` failed): report it.
    Failed(io::Error),
}

/// Whether the fast path may be tried.
pub(crate) fn clone3_wanted() -> bool {
    cfg!(target_arch = "x86_64")
        && !CLONE3_REFUSED.load(Ordering::Relaxed)
        && !FORCE_FORK.load(Ordering::Relaxed)
}

pub(crate) fn count(path: SpawnPath) {
    let (counter, first) = match path {
        SpawnPath::Clone3 => (&STARTED_CLONE3, "clone3 into the command's cgroup, pidfd"),
        SpawnPath::Fork => (
            &STARTED_FORK,
            "fork, the child joins its cgroup, pidfd_open",
        ),
    };
    if counter.fetch_add(1, Ordering::Relaxed) == 0 {
        tracing::info!("sandbox: programs start with {first}");
    }
}

/// `pidfd_open(pid)`: a descriptor that becomes readable when `pid` exits (Linux ≥ 5.3).
pub(crate) fn pidfd_open(pid: Pid) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1; no memory.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    let fd = RawFd::try_from(fd).ok().filter(|fd| *fd >= 0)?;
    // SAFETY: `fd` was just returned by the kernel and is owned by nobody else.
    Some(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Send `sig` through a pidfd (no pid reuse race).
pub(crate) fn pidfd_kill(pidfd: &OwnedFd, sig: libc::c_int) -> bool {
    // SAFETY: integer arguments and a null siginfo pointer (allowed: the kernel fills one in).
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            sig,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    rc == 0
}

/// Remember that the kernel refused `clone3` (after ENOSYS, E2BIG or EINVAL, which do not
/// depend on the command; EPERM may come from one cgroup and is not remembered).
pub(crate) fn note_refusal(e: &io::Error) {
    let permanent = matches!(
        e.raw_os_error(),
        Some(libc::ENOSYS) | Some(libc::E2BIG) | Some(libc::EINVAL)
    );
    if permanent && !CLONE3_REFUSED.swap(true, Ordering::SeqCst) {
        tracing::warn!(error = %e, "sandbox: the kernel refuses clone3; programs start with fork and join their cgroup afterwards (slower)");
    }
}

/// `struct clone_args` (CLONE_ARGS_SIZE_VER2: with `cgroup`).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

const CLONE_VM: u64 = 0x0000_0100;
const CLONE_VFORK: u64 = 0x0000_4000;
const CLONE_PIDFD: u64 = 0x0000_1000;
const CLONE_CLEAR_SIGHAND: u64 = 0x1_0000_0000;
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;

/// The child's stack (it runs on its own stack while it borrows the parent's memory).
const CHILD_STACK: usize = 128 * 1024;
/// The guard page below it.
const GUARD: usize = 4096;

/// What the child reads (shared memory) and where it reports an error.
struct ChildCtx<'a> {
    prepared: &'a Prepared,
    exec: &'a Exec,
    fds: &'a ChildFds,
    /// errno of the first failing step, 0 while none failed.
    error: AtomicI32,
}

/// An anonymous mapping for the child's stack, with a guard page at the bottom.
struct Stack {
    base: *mut libc::c_void,
    len: usize,
}

impl Stack {
    fn new() -> io::Result<Stack> {
        let len = CHILD_STACK + GUARD;
        // SAFETY: a fresh private anonymous mapping; no existing memory is touched.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let stack = Stack { base, len };
        // SAFETY: the first page of the mapping just made, which nothing uses yet.
        if unsafe { libc::mprotect(base, GUARD, libc::PROT_NONE) } != 0 {
            return Err(io::Error::last_os_error()); // Drop unmaps
        }
        Ok(stack)
    }
    /// Lowest usable address (above the guard page) and the usable size.
    fn usable(&self) -> (u64, u64) {
        (self.base as u64 + GUARD as u64, CHILD_STACK as u64)
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping made in `new`; the child that ran on it has
        // exec'd or exited (CLONE_VFORK suspended us until then).
        unsafe {
            libc::munmap(self.base, self.len);
        }
    }
}

/// The child's first and only Rust function, on its own stack. Never returns.
extern "C" fn child_main(arg: *mut libc::c_void) -> ! {
    // SAFETY: `arg` is the `ChildCtx` the parent passed to clone3; the parent is suspended
    // (CLONE_VFORK) and keeps it alive until this child execs or exits.
    let ctx = unsafe { &*(arg as *const ChildCtx<'_>) };
    let err = child_body(ctx);
    ctx.error.store(
        err.raw_os_error().unwrap_or(libc::EIO).max(1),
        Ordering::SeqCst,
    );
    // SAFETY: ends this process at once (no atexit handlers: they belong to the parent).
    unsafe { libc::_exit(127) }
}

/// Put `fd` on `target` (0, 1 or 2) without CLOEXEC.
fn install(fd: RawFd, target: RawFd) -> io::Result<()> {
    if fd == target {
        // SAFETY: clears FD_CLOEXEC on a descriptor this process owns.
        if unsafe { libc::fcntl(fd, libc::F_SETFD, 0) } == -1 {
            return Err(io::Error::last_os_error());
        }
        return Ok(());
    }
    // SAFETY: dup2 of two valid descriptors; the new one is created without CLOEXEC.
    if unsafe { libc::dup2(fd, target) } == -1 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Everything between clone3 and execve; returns only on failure.
fn child_body(ctx: &ChildCtx<'_>) -> io::Error {
    // SAFETY: resets one signal's disposition in this (child) process; signal handlers are
    // not shared with the parent (no CLONE_SIGHAND).
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    // stdin, stdout, stderr: the pipes (or /dev/null), in that order. The sources are
    // CLOEXEC descriptors numbered above 2 (opened while 0–2 are in use, or moved there).
    for (fd, target) in [
        (ctx.fds.stdin.as_raw_fd(), 0),
        (ctx.fds.stdout.as_raw_fd(), 1),
        (ctx.fds.stderr.as_raw_fd(), 2),
    ] {
        if let Err(e) = install(fd, target) {
            return e;
        }
    }
    // SAFETY: a static NUL-terminated path.
    if unsafe { libc::chdir(c"/".as_ptr()) } == -1 {
        return io::Error::last_os_error();
    }
    if let Err(e) = child_setup(ctx.prepared) {
        return e;
    }
    let empty: u64 = 0;
    // SAFETY: rt_sigprocmask(SIG_SETMASK) from a valid 8-byte empty set; only this thread's
    // mask changes (the program starts with nothing blocked, as with std's Command).
    unsafe {
        libc::syscall(
            libc::SYS_rt_sigprocmask,
            libc::SIG_SETMASK,
            &empty as *const u64,
            std::ptr::null_mut::<u64>(),
            8usize,
        );
    }
    // SAFETY: path, argv and envp are NUL-terminated strings and NULL-terminated arrays owned
    // by `ctx.exec`, alive while the parent is suspended.
    unsafe {
        libc::execve(
            ctx.exec.path.as_ptr(),
            ctx.exec.argv_ptrs.as_ptr(),
            ctx.exec.envp_ptrs.as_ptr(),
        );
    }
    io::Error::last_os_error()
}

/// clone3 with the child on `stack`, calling `f(arg)` there. Returns the raw result: the
/// child's pid, or -errno.
///
/// # Safety
/// `args` must describe a valid clone3 request whose `stack` fields point at memory that stays
/// mapped until the child execs or exits; with CLONE_VM the flags must include CLONE_VFORK so
/// that the calling thread does not run on while the child uses shared memory.
#[cfg(target_arch = "x86_64")]
unsafe fn clone3_call(
    args: &mut CloneArgs,
    f: extern "C" fn(*mut libc::c_void) -> !,
    arg: *mut libc::c_void,
) -> i64 {
    let ret: i64;
    // SAFETY: the caller's contract above. In the parent the block is one `syscall` (rcx and
    // r11 clobbered, rax the result). In the child (rax = 0), rsp is the top of the new stack
    // (16-byte aligned): it clears rbp, calls `f(arg)` — which never returns — and `ud2` traps
    // should it ever do so; nothing after the block runs in the child.
    unsafe {
        std::arch::asm!(
            "syscall",
            "test rax, rax",
            "jnz 2f",
            "xor ebp, ebp",
            "mov rdi, r12",
            "call r13",
            "ud2",
            "2:",
            inlateout("rax") libc::SYS_clone3 => ret,
            in("rdi") args as *mut CloneArgs,
            in("rsi") std::mem::size_of::<CloneArgs>(),
            in("r12") arg,
            in("r13") f,
            lateout("rcx") _,
            lateout("r11") _,
        );
    }
    ret
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn clone3_call(
    _args: &mut CloneArgs,
    _f: extern "C" fn(*mut libc::c_void) -> !,
    _arg: *mut libc::c_void,
) -> i64 {
    -i64::from(libc::ENOSYS)
}

/// Start the program with clone3 (see the module's documentation). `cgroup` is the open
/// directory of the command's cgroup, if it has one.
pub(crate) fn clone3_spawn(
    prepared: &Prepared,
    exec: &Exec,
    fds: &ChildFds,
    cgroup: Option<&OwnedFd>,
) -> Result<Started, Clone3Error> {
    let stack = Stack::new().map_err(Clone3Error::Failed)?;
    let ctx = ChildCtx {
        prepared,
        exec,
        fds,
        error: AtomicI32::new(0),
    };
    let mut pidfd: libc::c_int = -1;
    let (stack_lo, stack_size) = stack.usable();
    let mut args = CloneArgs {
        flags: CLONE_VM | CLONE_VFORK | CLONE_PIDFD | CLONE_CLEAR_SIGHAND,
        pidfd: &mut pidfd as *mut libc::c_int as u64,
        exit_signal: libc::SIGCHLD as u64,
        stack: stack_lo,
        stack_size,
        ..CloneArgs::default()
    };
    if let Some(dir) = cgroup {
        args.flags |= CLONE_INTO_CGROUP;
        args.cgroup = u64::try_from(dir.as_raw_fd()).unwrap_or(u64::MAX);
    }

    // Block every signal while the child shares our memory: no handler may run in it.
    // SAFETY: sigset_t values on the stack, initialised by sigfillset before use.
    let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: fills a valid sigset_t.
    unsafe { libc::sigfillset(&mut all) };
    // SAFETY: changes this thread's mask from valid sigset_t values; restored below.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old) };
    // SAFETY: `args` is a complete clone_args with CLONE_VM|CLONE_VFORK; the stack mapping
    // and `ctx` outlive the child's use of them (we are suspended until it execs or exits).
    let ret = unsafe {
        clone3_call(
            &mut args,
            child_main,
            &ctx as *const ChildCtx<'_> as *mut libc::c_void,
        )
    };
    // SAFETY: restores the mask saved above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
    drop(stack);

    if ret < 0 {
        let e = io::Error::from_raw_os_error(i32::try_from(-ret).unwrap_or(libc::EINVAL));
        return Err(match e.raw_os_error() {
            Some(libc::ENOSYS | libc::E2BIG | libc::EINVAL | libc::EPERM) => {
                Clone3Error::Refused(e)
            }
            _ => Clone3Error::Failed(e),
        });
    }
    let pid = Pid::from_raw(i32::try_from(ret).unwrap_or(i32::MAX));
    let pidfd = (pidfd >= 0).then(|| {
        // SAFETY: the kernel returned this new descriptor (CLOEXEC) for us alone.
        unsafe { OwnedFd::from_raw_fd(pidfd) }
    });
    let err = ctx.error.load(Ordering::SeqCst);
    if err != 0 {
        // The child failed before exec and has exited (127): reap it.
        let _ = nix::sys::wait::waitpid(pid, None);
        return Err(Clone3Error::Failed(io::Error::from_raw_os_error(err)));
    }
    Ok(Started { pid, pidfd })
}
