//! The startup helper: a detached process, forked from the parent, that drops to the
//! server's User/Group, restores stored responses and fetches the rest into the shared
//! region, and exits. The parent waits only for the restore (local files), never for a
//! responder, and stays single-threaded.

use std::time::{Duration, Instant};

/// The name the helper shows in `ps` and /proc/PID/comm.
const HELPER_NAME: &std::ffi::CStr = c"stapling-helper";

/// How the parent's wait for the helper's first phase ended.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum HelperStart {
    /// The helper said its first phase is done; it goes on in the background.
    Ready,
    /// The helper ended without saying so (it failed, or was killed).
    Ended,
    /// The first phase took longer than the parent waits; the helper goes on.
    TimedOut,
    /// fork() or pipe() failed.
    ForkFailed(String),
}

/// A started helper: its pid (once known) and how the parent's wait ended.
#[derive(Debug)]
pub(crate) struct Helper {
    /// The helper's pid, if the fork succeeded.
    pub pid: Option<u32>,
    /// How the wait ended.
    pub start: HelperStart,
}

/// Runs `work` in a detached helper (a grandchild, so that Apache's MPM never reaps
/// an unknown child) as `uid`/`gid` when the parent is root. `work` calls its argument
/// once its first phase is done; the parent waits for that at most `ready_within`,
/// then returns while the helper goes on.
pub(crate) fn start_helper(uid: u32, gid: u32, ready_within: Duration, work: impl FnOnce(&dyn Fn())) -> Helper {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: pipe2 fills the two-element array; the result is checked.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Helper { pid: None, start: HelperStart::ForkFailed(std::io::Error::last_os_error().to_string()) };
    }
    let [read_end, write_end] = fds;
    // SAFETY: fork() in the single-threaded parent during post_config; the child only
    // forks the helper, reports its pid and _exit()s.
    let intermediate = unsafe { libc::fork() };
    if intermediate == 0 {
        // SAFETY: in the intermediate child: close, fork, write and _exit only.
        unsafe {
            libc::close(read_end);
            let helper = libc::fork();
            if helper == 0 {
                run_in_helper(uid, gid, write_end, work);
            }
            let pid = helper.to_ne_bytes();
            libc::write(write_end, pid.as_ptr().cast(), pid.len());
            libc::_exit(0);
        }
    }
    // SAFETY: the parent's copy of the write end is not used again.
    unsafe { libc::close(write_end) };
    if intermediate < 0 {
        // SAFETY: closing our own descriptor.
        unsafe { libc::close(read_end) };
        return Helper { pid: None, start: HelperStart::ForkFailed(std::io::Error::last_os_error().to_string()) };
    }
    // SAFETY: reap the intermediate child, which exits at once.
    unsafe { libc::waitpid(intermediate, std::ptr::null_mut(), 0) };
    let helper = wait_ready(read_end, ready_within);
    // SAFETY: closing our own descriptor.
    unsafe { libc::close(read_end) };
    helper
}

/// In the helper: a session of its own, the server's User, then `work`, then _exit.
///
/// # Safety
/// Call only in a freshly forked child; it never returns.
unsafe fn run_in_helper(uid: u32, gid: u32, ready_fd: libc::c_int, work: impl FnOnce(&dyn Fn())) -> ! {
    // SAFETY: plain calls in the new process. SIGPIPE is ignored so that a parent that
    // stopped waiting cannot kill the helper; PR_SET_NAME copies at most 16 bytes.
    unsafe {
        libc::setsid();
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
        libc::prctl(libc::PR_SET_NAME, HELPER_NAME.as_ptr());
    }
    let said_ready = std::sync::Once::new();
    let ready = || {
        said_ready.call_once(|| {
            // SAFETY: one byte from a live buffer to our pipe; the fd is closed once.
            unsafe {
                libc::write(ready_fd, b"r".as_ptr().cast(), 1);
                libc::close(ready_fd);
            }
        })
    };
    let code = match drop_privileges(uid, gid) {
        Ok(()) => match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| work(&ready))) {
            Ok(()) => 0,
            Err(_) => 3,
        },
        Err(e) => {
            log::error!("startup helper cannot switch to uid {uid}/gid {gid}: {e}; the children fetch instead");
            2
        }
    };
    // SAFETY: _exit ends the helper at once, without atexit handlers or pool cleanups
    // that belong to the parent.
    unsafe { libc::_exit(code) }
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

/// Reads the helper's pid, then waits up to `within` for its ready byte.
fn wait_ready(read_end: libc::c_int, within: Duration) -> Helper {
    let mut pid = [0u8; 4];
    // SAFETY: reads into a live 4-byte buffer; the intermediate wrote its pid first.
    let got = unsafe { libc::read(read_end, pid.as_mut_ptr().cast(), pid.len()) };
    let pid = (got == 4).then(|| i32::from_ne_bytes(pid)).filter(|&p| p > 0).and_then(|p| u32::try_from(p).ok());
    if pid.is_none() {
        return Helper { pid, start: HelperStart::ForkFailed("the helper did not start".into()) };
    }
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut poll = libc::pollfd { fd: read_end, events: libc::POLLIN, revents: 0 };
        let millis = libc::c_int::try_from(left.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut poll, 1, millis) };
        if n == 0 {
            return Helper { pid, start: HelperStart::TimedOut };
        }
        if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        let mut byte = [0u8; 1];
        // SAFETY: reads into a live 1-byte buffer.
        let read = unsafe { libc::read(read_end, byte.as_mut_ptr().cast(), 1) };
        let start = if read == 1 { HelperStart::Ready } else { HelperStart::Ended };
        return Helper { pid, start };
    }
}
