//! The per-child refresher thread: it wakes every second, refreshes what is due (one
//! process per certificate, by lease) and is joined when the child's pool goes away.

use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use log::error;

use super::entry::guard;
use super::{ffi, pool};
use crate::engine::{HttpTransport, Runtime};

/// How often each child's refresher looks at the schedule.
const REFRESH_TICK: Duration = Duration::from_secs(1);

/// Stops and joins a child's refresher when the child's pool goes away.
struct Refresher {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Refresher {
    fn drop(&mut self) {
        let (flag, cv) = &*self.stop;
        *flag.lock().unwrap_or_else(|e| e.into_inner()) = true;
        cv.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts the refresher for `runtime` in this child. It is stopped and joined when
/// `pchild` is cleared, before the child exits.
pub(super) fn start(pchild: *mut ffi::apr_pool_t, runtime: *const Runtime) {
    let stop = Arc::new((Mutex::new(false), Condvar::new()));
    let stop_for_thread = Arc::clone(&stop);
    let runtime = runtime as usize;
    let spawned = std::thread::Builder::new().name("stapling-refresh".into()).spawn(move || {
        // SAFETY: the runtime outlives this thread: it is only freed in the parent, and
        // the child's pool cleanup joins this thread before the child exits.
        let runtime = unsafe { &*(runtime as *const Runtime) };
        refresh_loop(runtime, &stop_for_thread);
    });
    match spawned {
        Ok(handle) => {
            pool::pool_owned(pchild, Refresher { stop, thread: Some(handle) });
        }
        Err(e) => error!("cannot start the OCSP refresh thread in this child: {e}"),
    }
}

fn refresh_loop(runtime: &Runtime, stop: &(Mutex<bool>, Condvar)) {
    let (flag, cv) = stop;
    loop {
        if runtime.superseded() {
            return;
        }
        guard("refresh", (), || runtime.refresh_pass(&HttpTransport));
        let stopped = flag.lock().unwrap_or_else(|e| e.into_inner());
        let (stopped, _) = cv.wait_timeout_while(stopped, REFRESH_TICK, |s| !*s).unwrap_or_else(|e| e.into_inner());
        if *stopped {
            return;
        }
    }
}
