//! The shared response store: fixed-size slots in memory that every Apache process maps.
//!
//! The region is a slice of `AtomicU64` words (mapped by `apache::shm`), so this module
//! is safe Rust. Each slot is published with a seqlock: a writer makes the sequence odd,
//! writes, and makes it even; a reader copies the DER out and retries if the sequence
//! moved. Readers never wait on a writer for more than a few retries, and a writer
//! that died mid-write (odd sequence) only costs readers that one slot until the next
//! writer repairs it. Refresh coordination (lease, schedule, failure count) lives in
//! plain atomics beside the payload.

use std::sync::atomic::{fence, AtomicU64, Ordering};

use crate::cert::CertKey;

/// Words in the region header.
const HEADER_WORDS: usize = 8;
/// Header word 0: identifies a formatted region.
const MAGIC: u64 = 0x6d6f_645f_7374_6170; // "mod_stap"
/// Layout version; bump when the slot layout changes.
const LAYOUT_VERSION: u64 = 1;

/// Per-slot metadata words before the DER payload.
const META_WORDS: usize = 16;
const W_SEQ: usize = 0;
const W_KEY: usize = 1; // three words: 20-byte key, zero padded
const W_IN_USE: usize = 4;
const W_DER_LEN: usize = 5;
const W_THIS_UPDATE: usize = 6;
const W_STAPLE_UNTIL: usize = 7;
const W_STATUS: usize = 8;
const W_LEASE_UNTIL: usize = 9;
const W_NEXT_FETCH: usize = 10;
const W_FAILURES: usize = 11;
const W_FETCHES: usize = 12;
const W_NEXT_UPDATE: usize = 13;
const W_LAST_OK: usize = 14;

/// Largest DER a slot holds by default: a response with a delegated responder
/// certificate is typically 1.5–3 KiB.
pub const DEFAULT_SLOT_DER_BYTES: usize = 10 * 1024;
/// The longest lease anyone takes: the longest responder timeout plus slack.
pub const MAX_LEASE_MS: u64 = 600_000;
/// Reader retries before it gives up on a slot that is being written.
const READ_RETRIES: usize = 64;

/// Status of the published response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SlotStatus {
    /// No response published.
    Empty = 0,
    /// A good response.
    Good = 1,
    /// A revoked response.
    Revoked = 2,
}

/// A response to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish<'a> {
    /// The DER, exactly as the responder sent it.
    pub der: &'a [u8],
    /// Good or revoked.
    pub status: SlotStatus,
    /// thisUpdate, Unix seconds.
    pub this_update: i64,
    /// nextUpdate, Unix seconds, or 0 when absent.
    pub next_update: i64,
    /// Staple it only while `now < staple_until` (nextUpdate plus skew).
    pub staple_until: i64,
}

/// Errors from the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// The region is too small for its header.
    TooSmall,
    /// More certificates than slots.
    Full {
        /// Slots in the store.
        slots: usize,
    },
    /// A response larger than a slot.
    TooLarge {
        /// Its size.
        len: usize,
        /// The slot capacity.
        capacity: usize,
    },
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::TooSmall => f.write_str("shared store region is too small"),
            StoreError::Full { slots } => write!(f, "the shared store is full ({slots} slots)"),
            StoreError::TooLarge { len, capacity } => {
                write!(f, "response of {len} bytes does not fit a {capacity}-byte store slot")
            }
        }
    }
}

impl std::error::Error for StoreError {}

/// The reusable buffer the handshake path copies a response into: whole words, so the
/// copy is one load and one store per 8 bytes.
#[derive(Debug, Default, Clone)]
pub struct StapleBuffer {
    words: Vec<u64>,
    len: usize,
}

impl StapleBuffer {
    /// The DER copied by the last successful read.
    pub fn bytes(&self) -> &[u8] {
        &bytemuck::cast_slice::<u64, u8>(&self.words)[..self.len]
    }
}

/// A key as the three native-endian words a slot stores it in.
fn key_words(key: &CertKey) -> [u64; 3] {
    let mut padded = [0u8; 24];
    padded[..20].copy_from_slice(key);
    std::array::from_fn(|i| u64::from_ne_bytes(padded[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8])))
}

/// A view of the shared region.
#[derive(Clone, Copy)]
pub struct SharedStore<'a> {
    words: &'a [AtomicU64],
    slot_words: usize,
    slots: usize,
}

/// Words needed for `slots` slots of `der_bytes` payload each.
pub fn region_words(slots: usize, der_bytes: usize) -> usize {
    HEADER_WORDS + slots * slot_words_for(der_bytes)
}

/// How many slots of `der_bytes` payload fit in a region of `bytes` bytes.
pub fn slots_in(bytes: usize, der_bytes: usize) -> usize {
    (bytes / 8).saturating_sub(HEADER_WORDS) / slot_words_for(der_bytes)
}

fn slot_words_for(der_bytes: usize) -> usize {
    META_WORDS + der_bytes.div_ceil(8)
}

impl<'a> SharedStore<'a> {
    /// Formats a fresh region (all zero) or adopts one formatted with the same layout.
    /// Returns `None` if the region holds a different layout (it is then reformatted).
    pub fn attach(words: &'a [AtomicU64], der_bytes: usize) -> Result<SharedStore<'a>, StoreError> {
        if words.len() < HEADER_WORDS {
            return Err(StoreError::TooSmall);
        }
        let slot_words = slot_words_for(der_bytes);
        let slots = (words.len() - HEADER_WORDS) / slot_words;
        let same_layout = words[0].load(Ordering::Acquire) == MAGIC
            && words[1].load(Ordering::Relaxed) == LAYOUT_VERSION
            && words[2].load(Ordering::Relaxed) == slot_words as u64
            && words[3].load(Ordering::Relaxed) == slots as u64;
        if !same_layout {
            // A fresh mapping is already zero; clearing it anyway would make every
            // page resident in every process.
            if words[0].load(Ordering::Acquire) != 0 {
                words.iter().for_each(|w| w.store(0, Ordering::Relaxed));
            }
            words[1].store(LAYOUT_VERSION, Ordering::Relaxed);
            words[2].store(slot_words as u64, Ordering::Relaxed);
            words[3].store(slots as u64, Ordering::Relaxed);
            words[0].store(MAGIC, Ordering::Release);
        }
        Ok(SharedStore { words, slot_words, slots })
    }

    /// Number of slots.
    pub fn slots(&self) -> usize {
        self.slots
    }

    /// Largest DER a slot holds.
    pub fn capacity(&self) -> usize {
        (self.slot_words - META_WORDS) * 8
    }

    fn word(&self, slot: usize, w: usize) -> &AtomicU64 {
        &self.words[HEADER_WORDS + slot * self.slot_words + w]
    }

    /// Increments and returns the generation counter (header word 4).
    pub fn bump_generation(&self) -> u64 {
        self.words[4].fetch_add(1, Ordering::AcqRel) + 1
    }

    /// The current generation: processes of an older one stop refreshing.
    pub fn generation(&self) -> u64 {
        self.words[4].load(Ordering::Acquire)
    }

    /// The key held by `slot`, if any.
    pub fn key_of(&self, slot: usize) -> Option<CertKey> {
        if self.word(slot, W_IN_USE).load(Ordering::Acquire) == 0 {
            return None;
        }
        let mut key = [0u8; 24];
        for i in 0..3 {
            key[i * 8..i * 8 + 8].copy_from_slice(&self.word(slot, W_KEY + i).load(Ordering::Relaxed).to_ne_bytes());
        }
        let mut out = [0u8; 20];
        out.copy_from_slice(&key[..20]);
        Some(out)
    }

    /// Gives each key a slot: a key already in the store keeps its slot (and its
    /// response); slots of keys not in `keys` are freed. Call only in the parent, while
    /// no process of this generation runs. Slots whose lease is held by an old process
    /// are not reused, so an old refresher can never write into another key's slot.
    pub fn assign(&self, keys: &[CertKey], now_ms: u64) -> Result<Vec<usize>, StoreError> {
        let mut assigned = vec![usize::MAX; keys.len()];
        let mut free = Vec::new();
        for slot in 0..self.slots {
            match self.key_of(slot).and_then(|k| keys.iter().position(|x| *x == k)) {
                Some(i) if assigned[i] == usize::MAX => assigned[i] = slot,
                _ if self.word(slot, W_LEASE_UNTIL).load(Ordering::Acquire) <= now_ms => free.push(slot),
                _ => {}
            }
        }
        // Take each slot's lease while re-keying it, so that a refresher of the old
        // generation can never publish the old key's response into it.
        let mut free = free.into_iter().filter(|&slot| self.try_lease(slot, now_ms, now_ms + MAX_LEASE_MS));
        for (i, slot) in assigned.iter_mut().enumerate() {
            if *slot != usize::MAX {
                continue;
            }
            *slot = free.next().ok_or(StoreError::Full { slots: self.slots })?;
            self.reset_slot(*slot, Some(&keys[i]));
            self.release(*slot, 0, 0, None);
        }
        for slot in free {
            if self.key_of(slot).is_some() {
                self.reset_slot(slot, None);
            }
            self.release(slot, 0, 0, None);
        }
        Ok(assigned)
    }

    fn reset_slot(&self, slot: usize, key: Option<&CertKey>) {
        let seq = self.begin_write(slot);
        for w in W_KEY..META_WORDS {
            self.word(slot, w).store(0, Ordering::Relaxed);
        }
        if let Some(key) = key {
            for (i, v) in key_words(key).into_iter().enumerate() {
                self.word(slot, W_KEY + i).store(v, Ordering::Relaxed);
            }
            self.word(slot, W_IN_USE).store(1, Ordering::Relaxed);
        }
        self.end_write(slot, seq);
    }

    fn begin_write(&self, slot: usize) -> u64 {
        let seq = self.word(slot, W_SEQ);
        let cur = seq.load(Ordering::Relaxed);
        // An odd sequence means a writer died mid-write; it stays odd while we repair.
        let odd = if cur % 2 == 0 { cur + 1 } else { cur };
        seq.store(odd, Ordering::Relaxed);
        fence(Ordering::Release);
        odd
    }

    fn end_write(&self, slot: usize, odd: u64) {
        self.word(slot, W_SEQ).store(odd + 1, Ordering::Release);
    }

    /// Publishes a response atomically for every process. The caller holds the lease.
    pub fn publish(&self, slot: usize, p: &Publish<'_>) -> Result<(), StoreError> {
        if p.der.len() > self.capacity() {
            return Err(StoreError::TooLarge { len: p.der.len(), capacity: self.capacity() });
        }
        let seq = self.begin_write(slot);
        for (i, chunk) in p.der.chunks(8).enumerate() {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.word(slot, META_WORDS + i).store(u64::from_ne_bytes(word), Ordering::Relaxed);
        }
        self.word(slot, W_DER_LEN).store(p.der.len() as u64, Ordering::Relaxed);
        self.word(slot, W_THIS_UPDATE).store(p.this_update as u64, Ordering::Relaxed);
        self.word(slot, W_NEXT_UPDATE).store(p.next_update as u64, Ordering::Relaxed);
        self.word(slot, W_STAPLE_UNTIL).store(p.staple_until as u64, Ordering::Relaxed);
        self.word(slot, W_STATUS).store(p.status as u64, Ordering::Relaxed);
        self.end_write(slot, seq);
        Ok(())
    }

    /// Copies the response for `key` into `out` if it may be stapled at `now`.
    /// This is the handshake path: no lock, no allocation once `out` has grown, no I/O.
    pub fn read(&self, slot: usize, key: &CertKey, now: i64, out: &mut StapleBuffer) -> Option<SlotStatus> {
        let key_words = key_words(key);
        for _ in 0..READ_RETRIES {
            let before = self.word(slot, W_SEQ).load(Ordering::Acquire);
            if before % 2 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let result = self.read_unchecked(slot, &key_words, now, out);
            fence(Ordering::Acquire);
            if self.word(slot, W_SEQ).load(Ordering::Relaxed) == before {
                return result;
            }
        }
        None
    }

    fn read_unchecked(&self, slot: usize, key: &[u64; 3], now: i64, out: &mut StapleBuffer) -> Option<SlotStatus> {
        let meta = &self.words[HEADER_WORDS + slot * self.slot_words..][..META_WORDS];
        let load = |w: usize| meta[w].load(Ordering::Relaxed);
        if load(W_IN_USE) == 0 || key.iter().enumerate().any(|(i, k)| load(W_KEY + i) != *k) {
            return None;
        }
        let status = match load(W_STATUS) {
            1 => SlotStatus::Good,
            2 => SlotStatus::Revoked,
            _ => return None,
        };
        let len = load(W_DER_LEN) as usize;
        if now >= load(W_STAPLE_UNTIL) as i64 || len == 0 || len > self.capacity() {
            return None;
        }
        let base = HEADER_WORDS + slot * self.slot_words + META_WORDS;
        out.words.clear();
        out.words.extend(self.words[base..base + len.div_ceil(8)].iter().map(|w| w.load(Ordering::Relaxed)));
        out.len = len;
        Some(status)
    }

    /// The slot's schedule and state, for the refresher (not under the seqlock: each
    /// field is one atomic word and only the lease holder changes them).
    pub fn state(&self, slot: usize) -> SlotState {
        let load = |w| self.word(slot, w).load(Ordering::Acquire);
        SlotState {
            status: match load(W_STATUS) {
                1 => SlotStatus::Good,
                2 => SlotStatus::Revoked,
                _ => SlotStatus::Empty,
            },
            this_update: load(W_THIS_UPDATE) as i64,
            next_update: load(W_NEXT_UPDATE) as i64,
            staple_until: load(W_STAPLE_UNTIL) as i64,
            next_fetch: load(W_NEXT_FETCH) as i64,
            failures: load(W_FAILURES) as u32,
            fetches: load(W_FETCHES),
            last_ok: load(W_LAST_OK) as i64,
        }
    }

    /// Tries to take the refresh lease until `until_ms`. Only one process wins; a lease
    /// whose holder died expires on its own.
    pub fn try_lease(&self, slot: usize, now_ms: u64, until_ms: u64) -> bool {
        let lease = self.word(slot, W_LEASE_UNTIL);
        let cur = lease.load(Ordering::Acquire);
        // A lease further out than any holder may take means the clock went back.
        let expired = cur <= now_ms || cur > now_ms.saturating_add(MAX_LEASE_MS);
        expired
            && lease
                .compare_exchange(cur, until_ms.min(now_ms + MAX_LEASE_MS), Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
    }

    /// Releases the lease after recording the outcome of a fetch attempt.
    pub fn release(&self, slot: usize, next_fetch: i64, failures: u32, fetched_ok_at: Option<i64>) {
        self.word(slot, W_NEXT_FETCH).store(next_fetch.max(0) as u64, Ordering::Relaxed);
        self.word(slot, W_FAILURES).store(failures as u64, Ordering::Relaxed);
        if let Some(t) = fetched_ok_at {
            self.word(slot, W_LAST_OK).store(t as u64, Ordering::Relaxed);
        }
        self.word(slot, W_LEASE_UNTIL).store(0, Ordering::Release);
    }

    /// True if `slot` currently belongs to `key`. Checked under the lease before a
    /// refresher publishes, since the parent may have re-keyed the slot meanwhile.
    pub fn holds(&self, slot: usize, key: &CertKey) -> bool {
        self.key_of(slot).as_ref() == Some(key)
    }

    /// Counts one request to the responder for this slot.
    pub fn count_fetch(&self, slot: usize) {
        self.word(slot, W_FETCHES).fetch_add(1, Ordering::Relaxed);
    }
}

/// A snapshot of a slot's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotState {
    /// Status of the published response.
    pub status: SlotStatus,
    /// thisUpdate of the published response.
    pub this_update: i64,
    /// nextUpdate of the published response (0: none).
    pub next_update: i64,
    /// Staple only before this time.
    pub staple_until: i64,
    /// When the next fetch is due.
    pub next_fetch: i64,
    /// Consecutive failed fetches.
    pub failures: u32,
    /// Responder requests made for this slot.
    pub fetches: u64,
    /// When the last good fetch happened.
    pub last_ok: i64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn region(slots: usize) -> Vec<AtomicU64> {
        (0..region_words(slots, 1024)).map(|_| AtomicU64::new(0)).collect()
    }

    fn publish<'a>(der: &'a [u8], until: i64) -> Publish<'a> {
        Publish { der, status: SlotStatus::Good, this_update: 1, next_update: until, staple_until: until }
    }

    #[test]
    fn publish_then_read_round_trips() {
        let r = region(2);
        let s = SharedStore::attach(&r, 1024).unwrap();
        let keys = [[1u8; 20], [2u8; 20]];
        let slots = s.assign(&keys, 0).unwrap();
        let der: Vec<u8> = (0..1001u32).map(|i| i as u8).collect();
        s.publish(slots[0], &publish(&der, 100)).unwrap();
        let mut out = StapleBuffer::default();
        assert_eq!(s.read(slots[0], &keys[0], 50, &mut out), Some(SlotStatus::Good));
        assert_eq!(out.bytes(), &der[..]);
        assert_eq!(s.read(slots[0], &keys[1], 50, &mut out), None, "key must match");
        assert_eq!(s.read(slots[1], &keys[1], 50, &mut out), None, "empty slot");
        assert_eq!(s.read(slots[0], &keys[0], 100, &mut out), None, "stale is never served");
    }

    #[test]
    fn sizes_agree() {
        for n in [0, 1, 7, 100] {
            assert_eq!(slots_in(region_words(n, 1024) * 8, 1024), n);
        }
        assert_eq!(slots_in(8192, DEFAULT_SLOT_DER_BYTES), 0);
    }

    #[test]
    fn too_large_and_full_are_errors() {
        let r = region(1);
        let s = SharedStore::attach(&r, 1024).unwrap();
        assert_eq!(s.assign(&[[1; 20], [2; 20]], 0), Err(StoreError::Full { slots: 1 }));
        let slots = s.assign(&[[1; 20]], 0).unwrap();
        let big = vec![0u8; 2000];
        assert!(matches!(s.publish(slots[0], &publish(&big, 9)), Err(StoreError::TooLarge { .. })));
    }

    #[test]
    fn reassign_keeps_known_keys_and_frees_removed_ones() {
        let r = region(2);
        let s = SharedStore::attach(&r, 1024).unwrap();
        let a = [1u8; 20];
        let b = [2u8; 20];
        let c = [3u8; 20];
        let first = s.assign(&[a, b], 0).unwrap();
        s.publish(first[1], &publish(b"bbb", 100)).unwrap();
        let again = SharedStore::attach(&r, 1024).unwrap();
        let second = again.assign(&[b, c], 0).unwrap();
        assert_eq!(second[0], first[1], "b keeps its slot and response");
        let mut out = StapleBuffer::default();
        assert_eq!(again.read(second[0], &b, 1, &mut out), Some(SlotStatus::Good));
        assert_eq!(again.read(second[1], &c, 1, &mut out), None);
        assert_eq!(again.key_of(second[1]), Some(c));
    }

    #[test]
    fn lease_is_exclusive_and_expires() {
        let r = region(1);
        let s = SharedStore::attach(&r, 1024).unwrap();
        assert!(s.try_lease(0, 1000, 2000));
        assert!(!s.try_lease(0, 1500, 2500));
        assert!(s.try_lease(0, 2001, 3000), "a dead holder's lease expires");
        s.release(0, 77, 0, Some(5));
        assert!(s.try_lease(0, 2002, 3000));
        assert_eq!(s.state(0).next_fetch, 77);
        let hour = 3_600_000;
        assert!(s.try_lease(0, 10 * hour, 10 * hour + 5000));
        // The clock went back an hour: the lease must not stay held for that hour.
        assert!(s.try_lease(0, 9 * hour, 9 * hour + 5000));
        assert!(!s.try_lease(0, 9 * hour + 1, 9 * hour + 5000), "but it is held normally");
    }

    #[test]
    fn leased_slot_of_removed_key_is_not_reused() {
        let r = region(1);
        let s = SharedStore::attach(&r, 1024).unwrap();
        s.assign(&[[1; 20]], 0).unwrap();
        assert!(s.try_lease(0, 0, 10_000));
        assert_eq!(s.assign(&[[2; 20]], 5_000), Err(StoreError::Full { slots: 1 }));
    }

    #[test]
    fn rekeyed_slot_is_not_held_by_the_old_key() {
        let r = region(1);
        let s = SharedStore::attach(&r, 1024).unwrap();
        s.assign(&[[1; 20]], 0).unwrap();
        assert!(s.holds(0, &[1; 20]));
        s.assign(&[[2; 20]], 0).unwrap();
        assert!(!s.holds(0, &[1; 20]) && s.holds(0, &[2; 20]));
        assert!(s.try_lease(0, 1, 2), "re-keying released its lease");
    }

    #[test]
    fn crashed_writer_is_repaired_by_next_writer() {
        let r = region(1);
        let s = SharedStore::attach(&r, 1024).unwrap();
        let slots = s.assign(&[[1; 20]], 0).unwrap();
        let _ = s.begin_write(slots[0]); // writer dies here
        let mut out = StapleBuffer::default();
        assert_eq!(s.read(slots[0], &[1; 20], 0, &mut out), None);
        s.publish(slots[0], &publish(b"ok", 10)).unwrap();
        assert_eq!(s.read(slots[0], &[1; 20], 0, &mut out), Some(SlotStatus::Good));
    }

    #[test]
    fn readers_never_see_a_torn_response() {
        let r: Arc<Vec<AtomicU64>> = Arc::new(region(1));
        let s = SharedStore::attach(&r, 1024).unwrap();
        s.assign(&[[9; 20]], 0).unwrap();
        let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let writer = {
            let (r, seen) = (Arc::clone(&r), Arc::clone(&seen));
            std::thread::spawn(move || {
                let s = SharedStore::attach(&r, 1024).unwrap();
                // Keep writing until the reader has checked enough reads made meanwhile.
                let mut i = 0usize;
                while seen.load(Ordering::Relaxed) < 2000 && i < 50_000_000 {
                    let der = vec![(i % 251) as u8; 200 + i % 700];
                    s.publish(0, &publish(&der, i64::MAX)).unwrap();
                    i += 1;
                }
            })
        };
        let mut out = StapleBuffer::default();
        while !writer.is_finished() {
            if s.read(0, &[9; 20], 0, &mut out).is_some() {
                let b = out.bytes();
                assert!(b.iter().all(|&x| x == b[0]), "torn read");
                seen.fetch_add(1, Ordering::Relaxed);
            }
        }
        writer.join().unwrap();
        assert!(seen.load(Ordering::Relaxed) >= 2000, "reads checked while writing");
    }
}
