//! Nothing that does not need a staple waits for a responder: not at start, not at a
//! graceful reload, whatever the responder does.

mod common;

use std::time::{Duration, Instant};

use common::*;

/// Plain HTTP, HTTPS without a status request, and a status-requesting handshake, each
/// timed from now.
fn time_requests(https: u16, http: u16, pki: &Pki, server_name: &str) -> (Duration, Duration, Duration) {
    let t = Instant::now();
    let (code, _) = http_get(http, "/");
    let plain = t.elapsed();
    assert!(code > 0, "plain HTTP answered {code}");
    let t = Instant::now();
    let (ok, out) = curl_get(https, &pki.path("root.crt"));
    let tls = t.elapsed();
    assert!(ok, "HTTPS without a status request failed: {out}");
    let t = Instant::now();
    let r = handshake_sni(https, server_name, &pki.path("root.crt"));
    let status = t.elapsed();
    assert!(!r.stapled, "nothing can be stapled from a black hole");
    (plain, tls, status)
}

fn assert_quick((plain, tls, status): (Duration, Duration, Duration), what: &str) {
    eprintln!("{what}: plain HTTP {plain:?}, HTTPS {tls:?}, status request {status:?}");
    assert!(plain < Duration::from_secs(1), "{what}: plain HTTP took {plain:?}");
    assert!(tls < Duration::from_secs(1), "{what}: HTTPS without a status request took {tls:?}");
    // StaplingStartupWait (1 s) + 0.5 s.
    assert!(status < Duration::from_millis(1500), "{what}: the status-requesting handshake took {status:?}");
}

#[test]
fn a_black_holed_responder_stalls_nothing_at_start_or_at_a_graceful_reload() {
    let hole = BlackHole::start(free_port());
    let pki = Pki::temp(&ocsp_url(hole.port));
    let leaves = issue_leaves(&pki, "late", 1);
    let http = free_port();
    let mut o = ApacheOptions::for_pki(&pki);
    o.vhost_conf = "Stapling on\nStaplingResponderTimeout 10\n".into();
    o.global_conf = format!("Listen 127.0.0.1:{http} http\n");
    let mut apache = Apache::begin_start(o).expect("apache2 -k start");
    // `apache2 -k start` has returned. The listeners open before post_config, so from
    // then on connections queue until children take them: that is where a stall shows.
    assert!(wait_until(Duration::from_secs(10), || port_listening(http)), "not listening");
    let started = time_requests(apache.port(), http, &pki, "localhost");
    apache.wait_started().expect("apache");
    assert_quick(started, "after apache2 -k start");
    assert!(hole.accepted() >= 1, "the helper asked the black hole");

    let port = apache.port();
    apache.reconfigure(|o| o.extra_vhosts = sni_vhosts(port, &leaves, "Stapling on\nStaplingResponderTimeout 10\n"));
    apache.graceful();
    // The new certificate has never had a response: only its status request may wait.
    assert_quick(
        time_requests(port, http, &pki, &leaves[0].server_name),
        "after a graceful reload adding a certificate",
    );
    assert_quick(time_requests(port, http, &pki, "localhost"), "the first certificate after the reload");
}

#[test]
fn with_startup_wait_0_a_status_request_never_waits() {
    let hole = BlackHole::start(free_port());
    let pki = Pki::temp(&ocsp_url(hole.port));
    let mut o = ApacheOptions::for_pki(&pki);
    o.vhost_conf = "Stapling on\nStaplingResponderTimeout 10\nStaplingStartupWait 0\n".into();
    let apache = Apache::start(o).expect("apache");
    let t = Instant::now();
    let r = handshake(apache.port(), &pki.path("root.crt"), None);
    let took = t.elapsed();
    assert!(!r.stapled);
    assert!(took < Duration::from_millis(500), "took {took:?}");
}
