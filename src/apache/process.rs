//! The startup helper: a short-lived child of the parent that drops to the server's
//! User/Group, does the network I/O and parsing, writes into the shared region, and
//! exits. The parent stays single-threaded, so nothing is left running across the
//! fork of the workers or a restart.

use std::time::{Duration, Instant};

/// The name the helper shows in `ps` and /proc/PID/comm.
const HELPER_NAME: &std::ffi::CStr = c"stapling-helper";

/// How the helper ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum HelperEnd {
    /// Exited with this status.
    Exited(i32),
    /// Killed by this signal (not by us).
    Killed(i32),
    /// Killed after the deadline.
    TimedOut,
    /// fork() failed.
    ForkFailed(String),
}

/// A helper run: its pid (once forked) and how it ended. It has always been reaped.
#[derive(Debug)]
pub(crate) struct Helper {
    /// The helper's pid, if the fork succeeded.
    pub pid: Option<u32>,
    /// How it ended.
    pub end: HelperEnd,
}

/// Runs `work` in a forked helper as `uid`/`gid` (when the parent is root), waiting at
/// most `deadline`.
pub(crate) fn run_helper(uid: u32, gid: u32, deadline: Duration, work: impl FnOnce()) -> Helper {
    // SAFETY: fork() in the single-threaded parent during post_config; the child only
    // runs `work` and then _exit()s without running Apache's cleanups.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Helper { pid: None, end: HelperEnd::ForkFailed(std::io::Error::last_os_error().to_string()) };
    }
    if pid == 0 {
        // SAFETY: PR_SET_NAME copies at most 16 bytes from a NUL-terminated string.
        unsafe { libc::prctl(libc::PR_SET_NAME, HELPER_NAME.as_ptr()) };
        let code = match drop_privileges(uid, gid) {
            Ok(()) => match std::panic::catch_unwind(std::panic::AssertUnwindSafe(work)) {
                Ok(()) => 0,
                Err(_) => 3,
            },
            Err(e) => {
                log::error!(
                    "startup helper cannot switch to uid {uid}/gid {gid}: {e}; no responses fetched at startup"
                );
                2
            }
        };
        // SAFETY: _exit ends the helper at once, without atexit handlers or pool cleanups
        // that belong to the parent.
        unsafe { libc::_exit(code) };
    }
    Helper { pid: u32::try_from(pid).ok(), end: wait_bounded(pid, deadline) }
}

fn drop_privileges(uid: u32, gid: u32) -> std::io::Result<()> {
    // SAFETY: plain syscalls on integers; results are checked.
    unsafe {
        if libc::geteuid() != 0 {
            return Ok(());
        }
        let groups = [gid];
        if libc::setgroups(1, groups.as_ptr()) != 0 || libc::setgid(gid) != 0 || libc::setuid(uid) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

fn wait_bounded(pid: libc::pid_t, deadline: Duration) -> HelperEnd {
    let start = Instant::now();
    loop {
        let mut status = 0;
        // SAFETY: waitpid on our own child with a valid out-pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        if r == pid {
            return match (libc::WIFEXITED(status), libc::WIFSIGNALED(status)) {
                (true, _) => HelperEnd::Exited(libc::WEXITSTATUS(status)),
                (_, true) => HelperEnd::Killed(libc::WTERMSIG(status)),
                _ => HelperEnd::Exited(-1),
            };
        }
        if r < 0 {
            return HelperEnd::Exited(-1);
        }
        if start.elapsed() >= deadline {
            // SAFETY: kill and reap our own child.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, &mut status, 0);
            }
            return HelperEnd::TimedOut;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}
