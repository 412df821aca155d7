//! Micro-benchmark of the handshake path: what the get_resp hook does per handshake
//! (`Runtime::staple`: map lookup, seqlock copy of the DER out of shared memory).
//! Run with `cargo bench --bench lookup`.

use std::hint::black_box;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mod_stapling::cert::CertInfo;
use mod_stapling::config::ServerConfig;
use mod_stapling::engine::{ManagedCert, Runtime};
use mod_stapling::store::{Layout, Publish, Schedule, SharedStore, SlotStatus, Source, StapleBuffer};
use mod_stapling::time::{Clock, SystemClock, UnixTime};
use openssl::asn1::Asn1Time;
use openssl::bn::BigNum;
use openssl::hash::MessageDigest;
use openssl::pkey::PKey;
use openssl::rsa::Rsa;
use openssl::x509::{X509NameBuilder, X509};

fn dummy_cert(serial: u32) -> X509 {
    let key = PKey::from_rsa(Rsa::generate(1024).unwrap()).unwrap();
    let mut name = X509NameBuilder::new().unwrap();
    name.append_entry_by_text("CN", &format!("bench{serial}")).unwrap();
    let name = name.build();
    let mut b = X509::builder().unwrap();
    b.set_serial_number(&BigNum::from_u32(serial).unwrap().to_asn1_integer().unwrap()).unwrap();
    b.set_subject_name(&name).unwrap();
    b.set_issuer_name(&name).unwrap();
    b.set_pubkey(&key).unwrap();
    b.set_not_before(&Asn1Time::days_from_now(0).unwrap()).unwrap();
    b.set_not_after(&Asn1Time::days_from_now(1).unwrap()).unwrap();
    b.sign(&key, MessageDigest::sha256()).unwrap();
    b.build()
}

fn runtime(certs: usize) -> Runtime {
    let words: &'static [AtomicU64] =
        Box::leak((0..Layout::for_certs(certs).words()).map(|_| AtomicU64::new(0)).collect());
    let store = SharedStore::attach(words, Layout::for_certs(certs), certs).unwrap();
    let managed = (0..certs)
        .map(|i| {
            let cert = dummy_cert(i as u32 + 1);
            let mut key = [0u8; 20];
            key[..8].copy_from_slice(&(i as u64 + 1).to_le_bytes());
            let pem = [cert.to_pem().unwrap(), cert.to_pem().unwrap()].concat();
            let mut info = CertInfo::from_pem_chain(&pem).unwrap();
            info.key = key;
            ManagedCert {
                info,
                settings: ServerConfig::default().effective(true),
                url: "http://127.0.0.1:1/".into(),
                vhosts: vec![],
            }
        })
        .collect();
    let rt = Runtime::new(store, managed, None, Arc::new(SystemClock)).unwrap();
    let der = vec![0x30u8; 1500]; // a typical directly-signed response
    let now = SystemClock.now();
    for &slot in &rt.slots {
        let p = Publish {
            der: &der,
            status: SlotStatus::Good,
            this_update: UnixTime::EPOCH,
            next_update: None,
            staple_until: now.plus(Duration::from_secs(3600)),
            produced_at: None,
            source: Source::Responder,
        };
        let lease = rt.store.try_lease(slot, now, Duration::from_secs(60)).unwrap();
        rt.store.publish(&lease, &p, now).unwrap();
        rt.store
            .release(lease, Schedule { next_fetch: None, failures: 0, fetched_ok_at: None, ..Schedule::default() })
            .unwrap();
    }
    rt
}

fn bench(certs: usize) {
    let rt = runtime(certs);
    let keys: Vec<[u8; 20]> = rt.certs.iter().map(|c| c.info.key).collect();
    let mut buf = StapleBuffer::default();
    let iterations = 2_000_000;
    for _ in 0..10_000 {
        black_box(rt.staple(&keys[0], &mut buf));
    }
    let start = Instant::now();
    for i in 0..iterations {
        black_box(rt.staple(black_box(&keys[i % keys.len()]), &mut buf));
    }
    let ns = start.elapsed().as_nanos() as f64 / iterations as f64;
    assert_eq!(buf.bytes().len(), 1500);
    println!("get_resp lookup + copy of a 1500-byte staple, {certs:>4} certificates: {ns:6.1} ns/handshake");
}

fn main() {
    for certs in [1, 100, 1000] {
        bench(certs);
    }
}
