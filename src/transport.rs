//! How responses are fetched: the [`Transport`] seam (HTTP in production, scripted in
//! tests), and fetches a stopping process can walk away from.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{sync_channel, RecvTimeoutError};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use crate::ocsp::{Client, Exchange, FetchError};

/// How often a waiting fetch looks at the stop signal.
const STOP_POLL: Duration = Duration::from_millis(50);

/// Fetches the bytes of a response. The real one is HTTP; tests substitute their own.
pub trait Transport: Send + Sync {
    /// Sends one request to a responder and returns the response's bytes.
    fn fetch(&self, x: &Exchange) -> Result<Vec<u8>, FetchError>;
}

/// HTTP/1.1 to the responder, directly or through a proxy, over TLS for https://.
#[derive(Default, Clone)]
pub struct HttpTransport(pub Arc<Client>);

impl Transport for HttpTransport {
    fn fetch(&self, x: &Exchange) -> Result<Vec<u8>, FetchError> {
        self.0.fetch(x)
    }
}

/// A stop request shared by a refresher and whoever ends it.
#[derive(Debug, Clone, Default)]
pub struct Stop(Arc<StopState>);

#[derive(Debug, Default)]
struct StopState {
    requested: AtomicBool,
    lock: Mutex<()>,
    wake: Condvar,
}

impl Stop {
    /// Asks everything watching this signal to stop, and wakes it.
    pub fn request(&self) {
        self.0.requested.store(true, Ordering::SeqCst);
        let _guard = self.0.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.0.wake.notify_all();
    }

    /// True once a stop was requested.
    pub fn requested(&self) -> bool {
        self.0.requested.load(Ordering::SeqCst)
    }

    /// Sleeps for `d` or until a stop is requested; true if it was.
    pub fn sleep(&self, d: Duration) -> bool {
        let guard = self.0.lock.lock().unwrap_or_else(|e| e.into_inner());
        let _ = self.0.wake.wait_timeout_while(guard, d, |_| !self.requested()).unwrap_or_else(|e| e.into_inner());
        self.requested()
    }
}

/// A transport whose fetches are abandoned when `stop` is requested: each fetch runs on
/// a thread of its own that owns everything it touches (its URL, request, and the
/// inner transport), so the caller may return at once and let the process exit while
/// the socket is still waiting for the responder.
pub struct Abandonable {
    inner: Arc<dyn Transport>,
    stop: Stop,
}

impl Abandonable {
    /// Wraps `inner`, watching `stop`.
    pub fn new(inner: Arc<dyn Transport>, stop: Stop) -> Abandonable {
        Abandonable { inner, stop }
    }
}

impl Transport for Abandonable {
    fn fetch(&self, x: &Exchange) -> Result<Vec<u8>, FetchError> {
        let abandoned = || FetchError::Abandoned;
        if self.stop.requested() {
            return Err(abandoned());
        }
        let (tx, rx) = sync_channel(1);
        let (inner, owned) = (Arc::clone(&self.inner), x.clone());
        let spawned = std::thread::Builder::new().name("stapling-fetch".into()).spawn(move || {
            let _ = tx.send(inner.fetch(&owned));
        });
        if spawned.is_err() {
            return self.inner.fetch(x);
        }
        loop {
            match rx.recv_timeout(STOP_POLL) {
                Ok(result) => return result,
                Err(RecvTimeoutError::Timeout) if self.stop.requested() => return Err(abandoned()),
                Err(RecvTimeoutError::Timeout) => {}
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(FetchError::Body("the fetch ended without an answer".into()))
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn exchange(timeout_secs: u64) -> Exchange {
        Exchange {
            url: "http://x/".into(),
            request: b"req".to_vec(),
            timeout: Duration::from_secs(timeout_secs),
            method: Default::default(),
        }
    }

    /// Answers after `delay`, like a responder that holds the connection.
    struct Slow(Duration);

    impl Transport for Slow {
        fn fetch(&self, _x: &Exchange) -> Result<Vec<u8>, FetchError> {
            std::thread::sleep(self.0);
            Ok(b"late".to_vec())
        }
    }

    #[test]
    fn a_fetch_in_flight_is_abandoned_at_once_on_stop() {
        let stop = Stop::default();
        let transport = Abandonable::new(Arc::new(Slow(Duration::from_secs(30))), stop.clone());
        let stopper = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(200));
                stop.request();
            })
        };
        let started = Instant::now();
        let result = transport.fetch(&exchange(60));
        assert!(result.is_err());
        assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
        stopper.join().unwrap();
    }

    #[test]
    fn a_fetch_that_answers_returns_its_answer() {
        let transport = Abandonable::new(Arc::new(Slow(Duration::from_millis(10))), Stop::default());
        assert_eq!(transport.fetch(&exchange(5)).unwrap(), b"late");
    }

    #[test]
    fn sleep_wakes_on_stop() {
        let stop = Stop::default();
        let waker = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(100));
                stop.request();
            })
        };
        let started = Instant::now();
        assert!(stop.sleep(Duration::from_secs(30)));
        assert!(started.elapsed() < Duration::from_secs(5));
        waker.join().unwrap();
        assert!(!Stop::default().sleep(Duration::from_millis(1)));
    }
}
