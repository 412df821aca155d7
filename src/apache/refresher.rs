//! The per-child refresher thread: it wakes every second and refreshes what is due (one
//! process per certificate, by lease). When the child's pool goes away it is told to
//! stop and joined; a fetch in flight is abandoned, so the child exits at once.

use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use log::error;

use super::boundary::guard;
use super::handles::Pool;
use crate::engine::Runtime;
use crate::transport::{Abandonable, Stop};

/// How often each child's refresher looks at the schedule.
const REFRESH_TICK: Duration = Duration::from_secs(1);

/// Stops and joins a child's refresher when the child's pool goes away.
struct Refresher {
    stop: Stop,
    thread: Option<JoinHandle<()>>,
}

impl Drop for Refresher {
    fn drop(&mut self) {
        self.stop.request();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts the refresher for `runtime` in this child, stopped and joined when `pchild`
/// is cleared, before the child exits. The thread holds its own reference to the
/// runtime, so nothing it uses can be freed under it.
pub(super) fn start(pchild: Pool<'_>, runtime: Arc<Runtime>) {
    let stop = Stop::default();
    let stop_for_thread = stop.clone();
    let spawned = std::thread::Builder::new()
        .name("stapling-refresh".into())
        .spawn(move || refresh_loop(&runtime, &stop_for_thread));
    match spawned {
        Ok(handle) => {
            pchild.own(Refresher { stop, thread: Some(handle) });
        }
        Err(e) => error!("cannot start the OCSP refresh thread in this child: {e}"),
    }
}

fn refresh_loop(runtime: &Runtime, stop: &Stop) {
    let transport = Abandonable::new(Arc::new(runtime.http.clone()), stop.clone());
    while !runtime.superseded() {
        guard("refresh", (), || runtime.refresh_pass(&transport, stop));
        if stop.sleep(REFRESH_TICK) {
            return;
        }
    }
}
