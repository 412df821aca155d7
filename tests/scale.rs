//! A thousand certificates, one SNI vhost each: a cold start staples every vhost's
//! first handshake, the responder never gets more than 4 requests in flight or
//! `StaplingResponderRate` a second from the server, and an unreachable responder gives
//! a handful of warn lines, not one per certificate. A handshake for a certificate
//! still waiting for its turn moves it to the front of the queue.

mod common;

use std::time::{Duration, Instant};

use common::*;

const CERTS: usize = 1000;
const RATE: u64 = 100;

fn thousand_vhosts(pki: &Pki, rate: u64) -> ApacheOptions {
    let leaves = issue_leaves(pki, "scale", CERTS);
    let mut opts = ApacheOptions::for_pki(pki);
    opts.children = 4;
    opts.global_conf = format!("Stapling on\nStaplingResponderRate {rate}\n");
    opts.extra_vhosts = sni_vhosts(0, &leaves, "");
    opts
}

#[test]
fn a_thousand_certificates_staple_politely_and_quietly() {
    if !module_available() {
        return;
    }
    // A responder that takes 50 ms an answer, so that requests overlap.
    let fx = Fixture::new("mode=good&unknown_serials=good&delay=0.05&validity=86400");
    let port = free_port();
    let mut opts = thousand_vhosts(&fx.pki, RATE);
    opts.port = Some(port);
    opts.extra_vhosts = opts.extra_vhosts.replace("127.0.0.1:0>", &format!("127.0.0.1:{port}>"));
    let started = Instant::now();
    let apache = Apache::start(opts).unwrap_or_else(|e| panic!("{e}"));
    let fetched = wait_until(Duration::from_secs(120), || fx.responder.requests() > CERTS as u64);
    assert!(fetched, "{} requests after {:?}", fx.responder.requests(), started.elapsed());
    let took = started.elapsed();
    let (in_flight, per_second) = (fx.responder.stat("max_in_flight"), fx.responder.stat("max_per_second"));
    eprintln!("{CERTS} certificates fetched in {took:?}: at most {in_flight} in flight, {per_second} a second");
    assert!(in_flight <= 4, "{in_flight} requests in flight at once");
    assert!(per_second <= RATE, "{per_second} requests in one second, rate {RATE}");
    let mut unstapled = Vec::new();
    for i in 1..=CERTS {
        let name = format!("scale{i}.test");
        let r = s_client_status_sni(apache.port(), &name, &fx.pki.path("root.crt"), None);
        if !(r.stapled && r.cert_status.as_deref() == Some("good")) {
            unstapled.push(name);
        }
    }
    assert!(unstapled.is_empty(), "first handshakes without a staple: {unstapled:?}");
}

#[test]
fn an_unreachable_responder_for_a_thousand_certificates_gives_a_handful_of_warn_lines() {
    if !module_available() {
        return;
    }
    let dead = free_port();
    let pki = Pki::temp(&ocsp_url(dead));
    let port = free_port();
    let mut opts = thousand_vhosts(&pki, 0);
    opts.port = Some(port);
    opts.extra_vhosts = opts.extra_vhosts.replace("127.0.0.1:0>", &format!("127.0.0.1:{port}>"));
    let apache = Apache::start(opts).unwrap_or_else(|e| panic!("{e}"));
    // Every certificate is tried (the helper's startup pass), each failure recorded.
    assert!(apache.wait_log("no response yet for", Duration::from_secs(60)), "{}", apache.error_log());
    std::thread::sleep(Duration::from_secs(2));
    let log = apache.error_log();
    let warns: Vec<&str> =
        log.lines().filter(|l| l.contains("[stapling:warn]") || l.contains("[stapling:error]")).collect();
    eprintln!("{CERTS} certificates, responder unreachable: {} warn/error lines", warns.len());
    assert!(warns.len() <= 5, "{} warn lines:\n{}", warns.len(), warns.join("\n"));
    assert!(warns.iter().any(|l| l.contains(&format!("127.0.0.1:{dead}"))), "the responder is named: {warns:?}");
}

#[test]
fn a_handshake_moves_its_certificate_to_the_front_of_a_cold_start() {
    if !module_available() {
        return;
    }
    // 200 certificates at 5 requests a second: in order, the last would wait 40 s.
    const N: usize = 200;
    let fx = Fixture::new("mode=good&unknown_serials=good&validity=86400");
    let leaves = issue_leaves(&fx.pki, "front", N);
    let port = free_port();
    let mut opts = ApacheOptions::for_pki(&fx.pki);
    opts.children = 2;
    opts.port = Some(port);
    opts.global_conf = "Stapling on\nStaplingResponderRate 5\n".into();
    opts.extra_vhosts = sni_vhosts(port, &leaves, "");
    let apache = Apache::start(opts).unwrap_or_else(|e| panic!("{e}"));
    let started = Instant::now();
    let mut unstapled = Vec::new();
    for l in leaves.iter().rev().take(10) {
        let r = s_client_status_sni(apache.port(), &l.server_name, &fx.pki.path("root.crt"), None);
        if !(r.stapled && r.cert_status.as_deref() == Some("good")) {
            unstapled.push(l.server_name.clone());
        }
    }
    let took = started.elapsed();
    let fetched = fx.responder.requests();
    eprintln!(
        "the last 10 of {N} certificates asked for first: {} unstapled in {took:?}; {fetched} fetched",
        unstapled.len()
    );
    assert!(unstapled.is_empty(), "first handshakes without a staple: {unstapled:?}");
    assert!(fetched < N as u64 / 2, "the whole queue was fetched ({fetched}): the test proves nothing");
}
