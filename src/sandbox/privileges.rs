//! The privilege drop: everything a child needs is computed in the parent ([`Prepared`]), and
//! the child (between `fork` and `exec`) only makes system calls with it ([`child_setup`],
//! [`set_target_user`]). No allocation, no NSS lookup, no lock after `fork`.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use nix::unistd::{Gid, Pid, Uid, User};

use super::SandboxError;

/// Resource limits applied to every program (soft = hard).
pub const RLIMIT_NOFILE_MAX: u64 = 1024;
/// Counted per *real uid* by the kernel, across every process of the run-as account (not per
/// command), and not enforced for uid 0. 256 leaves room for several concurrent commands of one
/// endpoint while stopping a fork bomb.
pub const RLIMIT_NPROC_MAX: u64 = 256;
pub const RLIMIT_CORE_MAX: u64 = 0;
/// Address space: 4 GiB.
pub const RLIMIT_AS_MAX: u64 = 4 * 1024 * 1024 * 1024;
/// Most supplementary groups an account may have.
const MAX_GROUPS: usize = 1024;
/// Highest capability number we try to drop when `/proc/sys/kernel/cap_last_cap` is unreadable.
const FALLBACK_LAST_CAP: u32 = 63;

/// `_LINUX_CAPABILITY_VERSION_3`: two 32-bit words per set.
const CAP_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// The credential change to make, resolved before `fork`.
#[derive(Debug, Clone)]
pub(crate) enum Identity {
    /// keyhole is root: become this account with exactly these groups.
    Switch {
        uid: Uid,
        gid: Gid,
        groups: Vec<libc::gid_t>,
    },
    /// keyhole is not root and the run-as account is its own: keep the credentials, still drop
    /// capabilities and set no-new-privs.
    Keep,
}

/// Everything the child needs, computed in the parent.
#[derive(Debug)]
pub(crate) struct Prepared {
    pub identity: Identity,
    /// Bit n set: capability n is kept.
    pub caps: u64,
    /// Numbers of the kept capabilities (for the ambient set).
    pub cap_list: Vec<u32>,
    pub last_cap: u32,
    /// Drop the bounding set (needs CAP_SETPCAP, i.e. keyhole is root).
    pub drop_bounding: bool,
    /// (resource, limit) pairs, limits already clamped to what the parent may set.
    pub rlimits: Vec<(libc::__rlimit_resource_t, u64)>,
    /// The parent's pid, to detect a parent that died before PR_SET_PDEATHSIG took effect.
    pub parent: Pid,
    /// Open `cgroup.procs` of the command's cgroup: the child writes "0" to join it.
    pub cgroup_procs: Option<OwnedFd>,
    /// keyhole's open descriptors above 2 when the command was prepared: marked close-on-exec
    /// one by one in the child when the kernel has no `close_range` (before Linux 5.11); empty
    /// (not listed) when it has.
    pub open_fds: Vec<libc::c_int>,
}

/// Most descriptors listed for the `close_range` fallback (keyhole's own RLIMIT_NOFILE is far
/// below in practice; beyond it the listing stops and the rest rely on close-on-exec).
const MAX_LISTED_FDS: usize = 65_536;

/// Whether the kernel has `close_range` with `CLOSE_RANGE_CLOEXEC` (Linux ≥ 5.11), probed once
/// on a range that holds no descriptor (it changes nothing). When it has, the child marks every
/// descriptor close-on-exec in one call and the parent lists none: reading /proc/self/fd per
/// command costs a directory walk of every open descriptor (one per session's transcript: 10,000
/// entries with 10,000 sessions).
pub(crate) fn has_close_range_cloexec() -> bool {
    static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *HAS.get_or_init(|| {
        // SAFETY: close_range(2) takes integer arguments only; the range [u32::MAX, u32::MAX]
        // is beyond any descriptor table, so the call marks nothing.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_close_range,
                libc::c_uint::MAX,
                libc::c_uint::MAX,
                libc::CLOSE_RANGE_CLOEXEC,
            )
        };
        rc == 0
    })
}

/// keyhole's open descriptors above 2, from /proc/self/fd (read before `fork`), for kernels
/// without `close_range` only ([`has_close_range_cloexec`]).
fn open_fds() -> Vec<libc::c_int> {
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
        .filter(|fd| *fd > 2)
        .take(MAX_LISTED_FDS)
        .collect()
}

/// Parse a capability name as configuration writes it (`CAP_NET_RAW`, `net_raw`).
pub fn parse_capability(name: &str) -> Result<caps::Capability, SandboxError> {
    let upper = name.trim().to_ascii_uppercase();
    let full = if upper.starts_with("CAP_") {
        upper
    } else {
        format!("CAP_{upper}")
    };
    full.parse::<caps::Capability>()
        .map_err(|_| SandboxError::UnknownCapability(name.to_string()))
}

/// The kernel's highest capability number (read once: it does not change while keyhole runs).
fn last_cap() -> u32 {
    static LAST: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *LAST.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
            .filter(|n| *n < 64)
            .unwrap_or(FALLBACK_LAST_CAP)
    })
}

/// A run-as account as the kernel needs it: looked up once (`getpwnam`, and `getgrouplist`
/// when keyhole is root) and then used for every program of a session.
#[derive(Debug, Clone)]
pub struct Account {
    pub name: String,
    pub uid: Uid,
    pub gid: Gid,
    /// The supplementary groups (looked up only when keyhole is root: otherwise they are not
    /// changed).
    pub groups: Vec<libc::gid_t>,
}

/// Look the account up in the user and group databases (NSS).
pub(crate) fn lookup_account(run_as: &str) -> Result<Account, SandboxError> {
    let user = User::from_name(run_as)
        .map_err(|source| SandboxError::AccountLookup {
            user: run_as.to_string(),
            source,
        })?
        .ok_or_else(|| SandboxError::UnknownUser(run_as.to_string()))?;
    let groups = if nix::unistd::geteuid().is_root() {
        let cname = CString::new(user.name.as_bytes())
            .map_err(|_| SandboxError::NulInAccountName(run_as.to_string()))?;
        let groups = nix::unistd::getgrouplist(&cname, user.gid).map_err(|source| {
            SandboxError::GroupList {
                user: run_as.to_string(),
                source,
            }
        })?;
        if groups.len() > MAX_GROUPS {
            return Err(SandboxError::TooManyGroups {
                user: run_as.to_string(),
                count: groups.len(),
                max: MAX_GROUPS,
            });
        }
        groups.iter().map(|g| g.as_raw()).collect()
    } else {
        Vec::new()
    };
    Ok(Account {
        name: run_as.to_string(),
        uid: user.uid,
        gid: user.gid,
        groups,
    })
}

/// Resolve the capability set and the credential change for `account`, before the child exists.
pub(crate) fn prepare(
    account: &Account,
    capabilities: &[String],
    cgroup_procs: Option<OwnedFd>,
) -> Result<Prepared, SandboxError> {
    let run_as = account.name.as_str();
    let mut caps_mask = 0u64;
    let mut cap_list = Vec::new();
    for name in capabilities {
        let cap = parse_capability(name)?;
        if !caps::has_cap(None, caps::CapSet::Permitted, cap).unwrap_or(false) {
            return Err(SandboxError::CapabilityNotHeld(cap.to_string()));
        }
        let idx = u32::from(cap.index());
        if idx < 64 && caps_mask & (1u64 << idx) == 0 {
            caps_mask |= 1u64 << idx;
            cap_list.push(idx);
        }
    }

    let root = nix::unistd::geteuid().is_root();
    if root {
        for (cap, why) in [
            (
                caps::Capability::CAP_SETPCAP,
                "to drop capabilities from the bounding set",
            ),
            (
                caps::Capability::CAP_SETUID,
                "to change to the run-as account",
            ),
            (
                caps::Capability::CAP_SETGID,
                "to set the run-as account's groups",
            ),
        ] {
            if !caps::has_cap(None, caps::CapSet::Effective, cap).unwrap_or(false) {
                return Err(SandboxError::RootWithoutCapability {
                    capability: cap.to_string(),
                    why,
                });
            }
        }
    }
    let identity = if root {
        Identity::Switch {
            uid: account.uid,
            gid: account.gid,
            groups: account.groups.clone(),
        }
    } else {
        if account.uid != nix::unistd::getuid() || account.uid != nix::unistd::geteuid() {
            return Err(SandboxError::NotRoot(run_as.to_string()));
        }
        if caps_mask != 0 {
            return Err(SandboxError::CapabilitiesNeedRoot(capabilities.to_vec()));
        }
        Identity::Keep
    };

    let wanted: [(libc::__rlimit_resource_t, u64); 4] = [
        (libc::RLIMIT_NOFILE, RLIMIT_NOFILE_MAX),
        (libc::RLIMIT_NPROC, RLIMIT_NPROC_MAX),
        (libc::RLIMIT_CORE, RLIMIT_CORE_MAX),
        (libc::RLIMIT_AS, RLIMIT_AS_MAX),
    ];
    let mut rlimits = Vec::with_capacity(wanted.len());
    for (res, want) in wanted {
        let mut cur = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes one `rlimit` into the valid, exclusively borrowed `cur`.
        let rc = unsafe { libc::getrlimit(res, &mut cur) };
        let limit = if rc == 0 && !root {
            want.min(cur.rlim_max)
        } else {
            want
        };
        rlimits.push((res, limit));
    }

    Ok(Prepared {
        identity,
        caps: caps_mask,
        cap_list,
        last_cap: last_cap(),
        drop_bounding: root,
        rlimits,
        parent: nix::unistd::getpid(),
        cgroup_procs,
        open_fds: if has_close_range_cloexec() {
            Vec::new()
        } else {
            open_fds()
        },
    })
}

fn check_syscall(rc: libc::c_long) -> io::Result<()> {
    if rc == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Runs in the child between `fork` and `exec`. Only async-signal-safe system calls on data
/// prepared before the fork; errors are `last_os_error` (no allocation).
///
/// Order: join the command's cgroup first (while still root: the cgroup files belong to root),
/// then the process group, resource limits (as root, so hard limits can be set to any value),
/// then [`set_target_user`], and PR_SET_PDEATHSIG last because a credential change clears it.
pub(crate) fn child_setup(p: &Prepared) -> io::Result<()> {
    if let Some(fd) = &p.cgroup_procs {
        let zero = b"0";
        // SAFETY: writes 1 byte from a static buffer to an fd the parent opened and keeps open
        // (owned by `p`, which outlives this call); writing "0" moves the calling process.
        let n = unsafe { libc::write(fd.as_raw_fd(), zero.as_ptr().cast(), zero.len()) };
        if n != 1 {
            return Err(io::Error::last_os_error());
        }
    }
    // SAFETY: setpgid(0, 0) only changes this process's group; no memory is touched.
    check(unsafe { libc::setpgid(0, 0) })?;
    for (res, limit) in &p.rlimits {
        let rl = libc::rlimit {
            rlim_cur: *limit,
            rlim_max: *limit,
        };
        // SAFETY: setrlimit reads one `rlimit` from a valid stack value.
        check(unsafe { libc::setrlimit(*res, &rl) })?;
    }
    set_target_user(p)?;
    // SAFETY: prctl with integer arguments only.
    check(unsafe {
        libc::prctl(
            libc::PR_SET_PDEATHSIG,
            libc::SIGKILL as libc::c_ulong,
            0,
            0,
            0,
        )
    })?;
    // The parent may have died before PR_SET_PDEATHSIG: then nobody supervises us; give up.
    // SAFETY: getppid has no arguments and cannot fail.
    if unsafe { libc::getppid() } != p.parent.as_raw() {
        return Err(io::Error::from_raw_os_error(libc::ESRCH));
    }
    close_on_exec_above_stdio(&p.open_fds);
    Ok(())
}

/// No descriptor but standard input, output and error reaches the program (SPEC §4.4), whatever
/// keyhole inherited or opened without close-on-exec. The standard streams are already in
/// place (std `dup2`s them before this runs). Descriptors from 3 up are marked close-on-exec
/// rather than closed now: std's own error pipe (close-on-exec already) must stay open until
/// `exec` so that an exec failure is still reported to the parent.
pub(crate) fn close_on_exec_above_stdio(listed: &[libc::c_int]) {
    // SAFETY: close_range(2) takes integer arguments only; with CLOSE_RANGE_CLOEXEC it sets the
    // flag on every descriptor in the range and closes none.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            3 as libc::c_uint,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if rc == 0 {
        return;
    }
    // Before Linux 5.11 (ENOSYS, or EINVAL for the flag): the descriptors listed in the parent.
    mark_close_on_exec(listed);
}

/// Set FD_CLOEXEC on each listed descriptor above 2 (one that is closed by now fails with
/// EBADF, which is what we want anyway).
pub(crate) fn mark_close_on_exec(listed: &[libc::c_int]) {
    for &fd in listed {
        if fd > 2 {
            // SAFETY: fcntl with integer arguments only.
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        }
    }
}

/// The one audited privilege change. Order and why:
/// 1. drop every undeclared capability from the bounding set — needs CAP_SETPCAP in the
///    effective set, which `setuid` to a non-root account would clear; and with a reduced
///    bounding set even a root run-as account cannot regain the others at `exec`;
/// 2. `setgroups` → 3. `setresgid` → 4. `setresuid`: groups and gid first because changing them
///    needs CAP_SETGID, which is gone once the uid is not 0; PR_SET_KEEPCAPS keeps the
///    permitted set across the uid change so that declared capabilities survive;
/// 5. permitted = effective = inheritable = declared (capset can only lower them), and the
///    declared ones raised as ambient (needs them in permitted and inheritable) so they survive
///    `exec` of an ordinary file;
/// 6. PR_SET_NO_NEW_PRIVS: no setuid bit or file capability can add anything at or after `exec`.
pub(crate) fn set_target_user(p: &Prepared) -> io::Result<()> {
    if p.drop_bounding {
        for cap in 0..=p.last_cap {
            if p.caps & (1u64 << cap) != 0 {
                continue;
            }
            // SAFETY: prctl with integer arguments only.
            let rc = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
            if rc == -1 {
                let e = io::Error::last_os_error();
                if e.raw_os_error() == Some(libc::EINVAL) {
                    break; // beyond the kernel's last capability
                }
                return Err(e);
            }
        }
    }

    if let Identity::Switch { uid, gid, groups } = &p.identity {
        // Raw system calls, not glibc's wrappers: those broadcast the change to every thread
        // glibc knows of, and a child that shares keyhole's memory (clone3 with CLONE_VM)
        // would find keyhole's threads there. The kernel changes the calling process only.
        // SAFETY: `groups` is a live Vec owned by `p`; setgroups reads `len` gid_t from it.
        check_syscall(unsafe {
            libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr())
        })?;
        let g = gid.as_raw();
        // SAFETY: integer arguments only.
        check_syscall(unsafe { libc::syscall(libc::SYS_setresgid, g, g, g) })?;
        if p.caps != 0 {
            // SAFETY: integer arguments only.
            check(unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1 as libc::c_ulong, 0, 0, 0) })?;
        }
        let u = uid.as_raw();
        // SAFETY: integer arguments only.
        check_syscall(unsafe { libc::syscall(libc::SYS_setresuid, u, u, u) })?;
        if p.caps != 0 {
            // SAFETY: integer arguments only.
            check(unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 0 as libc::c_ulong, 0, 0, 0) })?;
        }
    }

    let lo = (p.caps & 0xffff_ffff) as u32;
    let hi = (p.caps >> 32) as u32;
    let mut header = CapHeader {
        version: CAP_VERSION_3,
        pid: 0,
    };
    let data = [
        CapData {
            effective: lo,
            permitted: lo,
            inheritable: lo,
        },
        CapData {
            effective: hi,
            permitted: hi,
            inheritable: hi,
        },
    ];
    // SAFETY: capset reads a valid header and two CapData (the V3 layout) from live stack values.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_capset,
            &mut header as *mut CapHeader,
            data.as_ptr(),
        )
    };
    if rc == -1 {
        return Err(io::Error::last_os_error());
    }

    // SAFETY: prctl with integer arguments only.
    check(unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
            0,
            0,
            0,
        )
    })?;
    for cap in &p.cap_list {
        // SAFETY: prctl with integer arguments only.
        check(unsafe {
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_RAISE as libc::c_ulong,
                *cap as libc::c_ulong,
                0,
                0,
            )
        })?;
    }

    // SAFETY: prctl with integer arguments only.
    check(unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1 as libc::c_ulong, 0, 0, 0) })?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn capability_names() {
        assert_eq!(parse_capability("CAP_NET_RAW").unwrap().index(), 13);
        assert_eq!(parse_capability("net_bind_service").unwrap().index(), 10);
        assert_eq!(parse_capability("cap_sys_admin").unwrap().index(), 21);
        assert!(parse_capability("CAP_FOO").is_err());
        assert!(parse_capability("").is_err());
    }

    #[test]
    fn fallback_marks_listed_descriptors_close_on_exec() {
        let f = std::fs::File::open("/proc/self/status").unwrap();
        // SAFETY: dup of a descriptor this test owns; the copy has no FD_CLOEXEC.
        let fd = unsafe { libc::dup(f.as_raw_fd()) };
        assert!(fd > 2);
        // SAFETY: fcntl with integer arguments only.
        assert_eq!(
            unsafe { libc::fcntl(fd, libc::F_GETFD) } & libc::FD_CLOEXEC,
            0
        );
        assert!(open_fds().contains(&fd));
        mark_close_on_exec(&[0, 1, 2, fd]);
        // SAFETY: as above.
        assert_ne!(
            unsafe { libc::fcntl(fd, libc::F_GETFD) } & libc::FD_CLOEXEC,
            0
        );
        // Standard streams are never touched.
        // SAFETY: as above.
        assert_eq!(
            unsafe { libc::fcntl(2, libc::F_GETFD) } & libc::FD_CLOEXEC,
            0
        );
        // SAFETY: closes the descriptor dup'd above, owned by nothing else.
        unsafe { libc::close(fd) };
    }

    #[test]
    fn descriptors_are_listed_only_where_the_kernel_lacks_close_range() {
        let _f = std::fs::File::open("/proc/self/status").unwrap();
        assert!(!open_fds().is_empty());
        let me = nix::unistd::User::from_uid(nix::unistd::getuid())
            .unwrap()
            .unwrap()
            .name;
        let account = lookup_account(&me).unwrap();
        let p = prepare(&account, &[], None).unwrap();
        // Linux ≥ 5.11 (every kernel CI runs): no directory walk per command.
        assert!(has_close_range_cloexec());
        assert!(
            p.open_fds.is_empty(),
            "listed {} descriptors",
            p.open_fds.len()
        );
    }

    #[test]
    fn unknown_account_is_refused() {
        let e = lookup_account("no-such-account-keyhole-xyz").unwrap_err();
        assert!(matches!(e, SandboxError::UnknownUser(_)));
    }
}
