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
use std::time::Duration;

use crate::cert::CertKey;
use crate::time::UnixTime;

/// Words in the region header.
const HEADER_WORDS: usize = 8;
/// Header word 0: identifies a formatted region.
const MAGIC: u64 = 0x6d6f_645f_7374_6170; // "mod_stap"
/// Layout version; bump when the slot layout changes.
pub const LAYOUT_VERSION: u64 = 2;
/// Header word 4: the configuration generation that owns the store.
const H_GENERATION: usize = 4;
/// Header word 5: the last lease serial handed out.
const H_LEASE_SERIAL: usize = 5;

/// Per-slot metadata words before the DER payload.
const META_WORDS: usize = 18;
const W_SEQ: usize = 0;
const W_KEY: usize = 1; // three words: 20-byte key, zero padded
const W_IN_USE: usize = 4;
const W_DER_LEN: usize = 5;
const W_THIS_UPDATE: usize = 6;
const W_STAPLE_UNTIL: usize = 7;
const W_STATUS: usize = 8;
/// The lease token: expiry (Unix seconds) in the high half, a serial in the low half.
const W_LEASE: usize = 9;
const W_NEXT_FETCH: usize = 10;
const W_FAILURES: usize = 11;
const W_FETCHES: usize = 12;
const W_NEXT_UPDATE: usize = 13;
const W_LAST_OK: usize = 14;
/// The pid that holds the lease, so the parent can free a dead helper's leases.
const W_LEASE_PID: usize = 15;
/// The pid writing the slot (0: nobody): the one-writer lock under the seqlock.
const W_WRITER: usize = 16;

/// Largest DER a slot holds by default: a response with a delegated responder
/// certificate is typically 1.5–3 KiB.
pub const DEFAULT_SLOT_DER_BYTES: usize = 10 * 1024;
/// The longest lease anyone takes: the longest responder timeout plus slack.
pub const MAX_LEASE: Duration = Duration::from_secs(600);
/// Reader retries before it gives up on a slot that is being written.
const READ_RETRIES: usize = 64;
/// Writer attempts before it gives up on a slot another live process is writing.
const CLAIM_RETRIES: usize = 10_000;

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
    /// thisUpdate.
    pub this_update: UnixTime,
    /// nextUpdate, if the response has one.
    pub next_update: Option<UnixTime>,
    /// Staple it only while `now < staple_until` (nextUpdate plus skew).
    pub staple_until: UnixTime,
}

/// What a lease holder records when it lets go of a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Schedule {
    /// When to fetch next (`None`: at once).
    pub next_fetch: Option<UnixTime>,
    /// Consecutive failed fetches.
    pub failures: u32,
    /// Set when this lease ended in a good fetch.
    pub fetched_ok_at: Option<UnixTime>,
}

/// The right to fetch for one slot and write it, until it expires. Every write under
/// it checks that it is still the current one (a fencing token), so a holder that
/// stalled past its expiry can no longer change anything.
#[derive(Debug, PartialEq, Eq)]
#[must_use = "a lease is held until released or expired"]
pub struct Lease {
    slot: usize,
    token: u64,
}

impl Lease {
    /// The slot it is for.
    pub fn slot(&self) -> usize {
        self.slot
    }
}

/// What [`SharedStore::publish`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Published {
    /// The response is what every process staples now.
    Replaced,
    /// The slot holds a newer response (or a revoked one): it stays.
    KeptNewer,
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
    /// The lease expired and another process took it: nothing was written.
    LostLease,
    /// Another live process kept writing the slot: nothing was written.
    Busy,
}

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreError::TooSmall => f.write_str("shared store region is too small"),
            StoreError::Full { slots } => write!(f, "the shared store is full ({slots} slots)"),
            StoreError::TooLarge { len, capacity } => {
                write!(f, "response of {len} bytes does not fit a {capacity}-byte store slot")
            }
            StoreError::LostLease => f.write_str("the refresh lease expired and another process took it over"),
            StoreError::Busy => f.write_str("another process is writing the store slot"),
        }
    }
}

impl std::error::Error for StoreError {}

/// True if `pid` is a live process (a zombie counts until it is reaped).
fn process_alive(pid: u32) -> bool {
    // Without /proc (an unusual chroot) a stuck writer is presumed dead, so that its
    // slot is repaired rather than frozen.
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Whether a response with `status` and `this_update` may replace what `current`
/// holds at `now`: never an older one over a newer one; revoked always wins over good;
/// anything replaces a slot that holds nothing stapleable.
pub fn supersedes(current: &SlotState, status: SlotStatus, this_update: UnixTime, now: UnixTime) -> bool {
    if !current.stapleable_at(now) {
        return true;
    }
    let not_older = current.this_update.is_none_or(|t| this_update >= t);
    match (current.status, status) {
        (SlotStatus::Revoked, SlotStatus::Good) => false,
        (SlotStatus::Good | SlotStatus::Empty, SlotStatus::Revoked) => true,
        _ => not_older,
    }
}

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
    /// Formats a fresh region (all zero) or adopts one formatted with the same layout;
    /// a region with another layout is reformatted.
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

    /// Increments and returns the generation counter.
    pub fn bump_generation(&self) -> u64 {
        self.words[H_GENERATION].fetch_add(1, Ordering::AcqRel) + 1
    }

    /// The current generation: processes of an older one stop refreshing.
    pub fn generation(&self) -> u64 {
        self.words[H_GENERATION].load(Ordering::Acquire)
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
    pub fn assign(&self, keys: &[CertKey], now: UnixTime) -> Result<Vec<usize>, StoreError> {
        let mut assigned = vec![usize::MAX; keys.len()];
        let mut free = Vec::new();
        for slot in 0..self.slots {
            match self.key_of(slot).and_then(|k| keys.iter().position(|x| *x == k)) {
                Some(i) if assigned[i] == usize::MAX => assigned[i] = slot,
                _ => free.push(slot),
            }
        }
        // Re-key a slot only under its lease: a refresher of the old generation then
        // can never publish the old key's response into it.
        let mut free = free.into_iter().filter_map(|slot| self.try_lease(slot, now, MAX_LEASE));
        let unchanged = Schedule { next_fetch: None, failures: 0, fetched_ok_at: None };
        for (i, slot) in assigned.iter_mut().enumerate() {
            if *slot != usize::MAX {
                continue;
            }
            let lease = free.next().ok_or(StoreError::Full { slots: self.slots })?;
            *slot = lease.slot;
            self.under_lease(&lease, || self.reset_slot(lease.slot, Some(&keys[i])))?;
            self.release(lease, unchanged)?;
        }
        for lease in free {
            if self.key_of(lease.slot).is_some() {
                self.under_lease(&lease, || self.reset_slot(lease.slot, None))?;
            }
            self.release(lease, unchanged)?;
        }
        Ok(assigned)
    }

    /// Clears a slot's response and schedule (the caller holds the write claim).
    fn reset_slot(&self, slot: usize, key: Option<&CertKey>) {
        for w in [W_IN_USE, W_DER_LEN, W_THIS_UPDATE, W_STAPLE_UNTIL, W_STATUS, W_NEXT_FETCH, W_FAILURES]
            .into_iter()
            .chain([W_FETCHES, W_NEXT_UPDATE, W_LAST_OK])
            .chain(W_KEY..W_KEY + 3)
        {
            self.word(slot, w).store(0, Ordering::Relaxed);
        }
        if let Some(key) = key {
            for (i, v) in key_words(key).into_iter().enumerate() {
                self.word(slot, W_KEY + i).store(v, Ordering::Relaxed);
            }
            self.word(slot, W_IN_USE).store(1, Ordering::Relaxed);
        }
    }

    /// Becomes the one writer of `slot` and makes its sequence odd. A writer that died
    /// mid-write is taken over (its half-written response is dropped); a live one is
    /// waited for briefly, then `Busy`.
    fn claim_write(&self, slot: usize) -> Result<u64, StoreError> {
        let me = std::process::id() as u64;
        let writer = self.word(slot, W_WRITER);
        for attempt in 0..CLAIM_RETRIES {
            let current = writer.load(Ordering::Acquire);
            let dead = current != 0 && current != me && !process_alive(current as u32);
            if (current == 0 || dead)
                && writer.compare_exchange(current, me, Ordering::AcqRel, Ordering::Acquire).is_ok()
            {
                let seq = self.word(slot, W_SEQ);
                let cur = seq.load(Ordering::Relaxed);
                // Odd means the dead writer stopped mid-write: it stays odd while we repair.
                let odd = cur | 1;
                seq.store(odd, Ordering::Relaxed);
                fence(Ordering::Release);
                if dead {
                    self.word(slot, W_STATUS).store(0, Ordering::Relaxed);
                    self.word(slot, W_DER_LEN).store(0, Ordering::Relaxed);
                }
                return Ok(odd);
            }
            if attempt % 64 == 63 {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
        Err(StoreError::Busy)
    }

    fn end_write(&self, slot: usize, odd: u64) {
        self.word(slot, W_SEQ).store(odd + 1, Ordering::Release);
        self.word(slot, W_WRITER).store(0, Ordering::Release);
    }

    /// Runs `write` as the slot's one writer, if `lease` is still the current lease.
    fn under_lease<R>(&self, lease: &Lease, write: impl FnOnce() -> R) -> Result<R, StoreError> {
        let odd = self.claim_write(lease.slot)?;
        if self.word(lease.slot, W_LEASE).load(Ordering::Acquire) != lease.token {
            self.end_write(lease.slot, odd);
            return Err(StoreError::LostLease);
        }
        let result = write();
        self.end_write(lease.slot, odd);
        Ok(result)
    }

    /// Publishes a response for every process, unless the slot holds a newer one (or a
    /// revoked one, see [`supersedes`]) or `lease` is no longer current.
    pub fn publish(&self, lease: &Lease, p: &Publish<'_>, now: UnixTime) -> Result<Published, StoreError> {
        if p.der.len() > self.capacity() {
            return Err(StoreError::TooLarge { len: p.der.len(), capacity: self.capacity() });
        }
        let slot = lease.slot;
        self.under_lease(lease, || {
            if !supersedes(&self.state(slot), p.status, p.this_update, now) {
                return Published::KeptNewer;
            }
            for (i, chunk) in p.der.chunks(8).enumerate() {
                let mut word = [0u8; 8];
                word[..chunk.len()].copy_from_slice(chunk);
                self.word(slot, META_WORDS + i).store(u64::from_ne_bytes(word), Ordering::Relaxed);
            }
            self.word(slot, W_DER_LEN).store(p.der.len() as u64, Ordering::Relaxed);
            self.word(slot, W_THIS_UPDATE).store(p.this_update.to_word(), Ordering::Relaxed);
            self.word(slot, W_NEXT_UPDATE).store(p.next_update.map_or(0, UnixTime::to_word), Ordering::Relaxed);
            self.word(slot, W_STAPLE_UNTIL).store(p.staple_until.to_word(), Ordering::Relaxed);
            self.word(slot, W_STATUS).store(p.status as u64, Ordering::Relaxed);
            Published::Replaced
        })
    }

    /// Copies the response for `key` into `out` if it may be stapled at `now`.
    /// This is the handshake path: no lock, no allocation once `out` has grown, no I/O.
    pub fn read(&self, slot: usize, key: &CertKey, now: UnixTime, out: &mut StapleBuffer) -> Option<SlotStatus> {
        let key_words = key_words(key);
        for _ in 0..READ_RETRIES {
            let before = self.word(slot, W_SEQ).load(Ordering::Acquire);
            if before % 2 == 1 {
                std::hint::spin_loop();
                continue;
            }
            let result = self.read_unchecked(slot, &key_words, now.to_word(), out);
            fence(Ordering::Acquire);
            if self.word(slot, W_SEQ).load(Ordering::Relaxed) == before {
                return result;
            }
        }
        None
    }

    fn read_unchecked(&self, slot: usize, key: &[u64; 3], now: u64, out: &mut StapleBuffer) -> Option<SlotStatus> {
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
        if now >= load(W_STAPLE_UNTIL) || len == 0 || len > self.capacity() {
            return None;
        }
        let base = HEADER_WORDS + slot * self.slot_words + META_WORDS;
        out.words.clear();
        out.words.extend(self.words[base..base + len.div_ceil(8)].iter().map(|w| w.load(Ordering::Relaxed)));
        out.len = len;
        Some(status)
    }

    /// The slot's schedule and state, for the refresher (not under the seqlock: each
    /// field is one atomic word and only the slot's one writer changes them).
    pub fn state(&self, slot: usize) -> SlotState {
        let load = |w| self.word(slot, w).load(Ordering::Acquire);
        let time = |w| UnixTime::from_word(load(w));
        SlotState {
            status: match load(W_STATUS) {
                1 => SlotStatus::Good,
                2 => SlotStatus::Revoked,
                _ => SlotStatus::Empty,
            },
            this_update: time(W_THIS_UPDATE),
            next_update: time(W_NEXT_UPDATE),
            staple_until: time(W_STAPLE_UNTIL),
            next_fetch: time(W_NEXT_FETCH),
            failures: u32::try_from(load(W_FAILURES)).unwrap_or(u32::MAX),
            fetches: load(W_FETCHES),
            last_ok: time(W_LAST_OK),
        }
    }

    /// Takes the refresh lease of `slot` for `ttl` (at most [`MAX_LEASE`]). Only one
    /// process wins; a lease whose holder died expires on its own.
    pub fn try_lease(&self, slot: usize, now: UnixTime, ttl: Duration) -> Option<Lease> {
        let lease = self.word(slot, W_LEASE);
        let current = lease.load(Ordering::Acquire);
        let now_secs = now.to_word();
        let expiry = current >> 32;
        // An expiry further out than any holder may take means the clock went back.
        let held = current != 0 && expiry > now_secs && expiry <= now_secs.saturating_add(MAX_LEASE.as_secs());
        if held {
            return None;
        }
        let until = now.plus(ttl.min(MAX_LEASE)).to_word().min(u64::from(u32::MAX));
        let token = (until << 32) | self.next_lease_serial();
        lease.compare_exchange(current, token, Ordering::AcqRel, Ordering::Acquire).ok()?;
        self.word(slot, W_LEASE_PID).store(u64::from(std::process::id()), Ordering::Release);
        Some(Lease { slot, token })
    }

    /// A lease serial, never 0, so that no two leases share a token.
    fn next_lease_serial(&self) -> u64 {
        loop {
            let serial = self.words[H_LEASE_SERIAL].fetch_add(1, Ordering::Relaxed).wrapping_add(1) & 0xffff_ffff;
            if serial != 0 {
                return serial;
            }
        }
    }

    /// Records the outcome of a fetch and lets go of the lease. Fails with `LostLease`
    /// (recording nothing) if the lease expired and another process took it, or `Busy`
    /// (recording nothing, but still letting go) if another live process kept writing.
    pub fn release(&self, lease: Lease, schedule: Schedule) -> Result<(), StoreError> {
        let slot = lease.slot;
        let recorded = self.under_lease(&lease, || {
            self.word(slot, W_NEXT_FETCH).store(schedule.next_fetch.map_or(0, UnixTime::to_word), Ordering::Relaxed);
            self.word(slot, W_FAILURES).store(u64::from(schedule.failures), Ordering::Relaxed);
            if let Some(t) = schedule.fetched_ok_at {
                self.word(slot, W_LAST_OK).store(t.to_word(), Ordering::Relaxed);
            }
        });
        // Fails harmlessly when someone already took over an expired lease.
        self.abandon(lease);
        recorded
    }

    /// Lets go of a lease without recording anything (a fetch that was abandoned).
    pub fn abandon(&self, lease: Lease) {
        let _ = self.word(lease.slot, W_LEASE).compare_exchange(lease.token, 0, Ordering::AcqRel, Ordering::Acquire);
    }

    /// Frees every lease held by process `pid`, which has exited: its slots are due
    /// again at once instead of when the leases expire. Returns how many were freed.
    pub fn clear_leases_of(&self, pid: u32) -> usize {
        (0..self.slots)
            .filter(|&slot| {
                let token = self.word(slot, W_LEASE).load(Ordering::Acquire);
                token != 0
                    && self.word(slot, W_LEASE_PID).load(Ordering::Acquire) == u64::from(pid)
                    && self.word(slot, W_LEASE).compare_exchange(token, 0, Ordering::AcqRel, Ordering::Acquire).is_ok()
            })
            .count()
    }

    /// True if `slot` currently belongs to `key`. Checked under the lease before a
    /// refresher fetches, since the parent may have re-keyed the slot meanwhile.
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
    pub this_update: Option<UnixTime>,
    /// nextUpdate of the published response.
    pub next_update: Option<UnixTime>,
    /// Staple only before this time.
    pub staple_until: Option<UnixTime>,
    /// When the next fetch is due (`None`: never scheduled, so at once).
    pub next_fetch: Option<UnixTime>,
    /// Consecutive failed fetches.
    pub failures: u32,
    /// Responder requests made for this slot.
    pub fetches: u64,
    /// When the last good fetch happened.
    pub last_ok: Option<UnixTime>,
}

impl SlotState {
    /// True if the slot holds a response that may be stapled at `now`.
    pub fn stapleable_at(&self, now: UnixTime) -> bool {
        self.status != SlotStatus::Empty && self.staple_until.is_some_and(|t| now < t)
    }

    /// The schedule as it stands, to hand back unchanged.
    pub fn schedule(&self) -> Schedule {
        Schedule { next_fetch: self.next_fetch, failures: self.failures, fetched_ok_at: None }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    const TTL: Duration = Duration::from_secs(20);

    fn region(slots: usize) -> Vec<AtomicU64> {
        (0..region_words(slots, 1024)).map(|_| AtomicU64::new(0)).collect()
    }

    fn t(secs: i64) -> UnixTime {
        UnixTime::from_secs(secs)
    }

    fn good(der: &[u8], this_update: i64, until: i64) -> Publish<'_> {
        Publish {
            der,
            status: SlotStatus::Good,
            this_update: t(this_update),
            next_update: Some(t(until)),
            staple_until: t(until),
        }
    }

    fn revoked(der: &[u8], this_update: i64, until: i64) -> Publish<'_> {
        Publish { status: SlotStatus::Revoked, ..good(der, this_update, until) }
    }

    /// Publishes under a fresh lease at time `now` and releases it.
    fn put(s: &SharedStore<'_>, slot: usize, p: &Publish<'_>, now: i64) -> Published {
        let lease = s.try_lease(slot, t(now), TTL).expect("lease");
        let done = s.publish(&lease, p, t(now)).unwrap();
        s.release(lease, Schedule { next_fetch: None, failures: 0, fetched_ok_at: Some(t(now)) }).unwrap();
        done
    }

    fn bytes_at(s: &SharedStore<'_>, slot: usize, key: &CertKey, now: i64) -> Option<Vec<u8>> {
        let mut out = StapleBuffer::default();
        s.read(slot, key, t(now), &mut out).map(|_| out.bytes().to_vec())
    }

    #[test]
    fn publish_then_read_round_trips() {
        let r = region(2);
        let s = SharedStore::attach(&r, 1024).unwrap();
        let keys = [[1u8; 20], [2u8; 20]];
        let slots = s.assign(&keys, t(0)).unwrap();
        let der: Vec<u8> = (0..1001u32).map(|i| i as u8).collect();
        put(&s, slots[0], &good(&der, 1, 100), 1);
        let mut out = StapleBuffer::default();
        assert_eq!(s.read(slots[0], &keys[0], t(50), &mut out), Some(SlotStatus::Good));
        assert_eq!(out.bytes(), &der[..]);
        assert_eq!(s.read(slots[0], &keys[1], t(50), &mut out), None, "key must match");
        assert_eq!(s.read(slots[1], &keys[1], t(50), &mut out), None, "empty slot");
        assert_eq!(s.read(slots[0], &keys[0], t(100), &mut out), None, "stale is never served");
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
        assert_eq!(s.assign(&[[1; 20], [2; 20]], t(0)), Err(StoreError::Full { slots: 1 }));
        let slots = s.assign(&[[1; 20]], t(0)).unwrap();
        let big = vec![0u8; 2000];
        let lease = s.try_lease(slots[0], t(0), TTL).unwrap();
        assert!(matches!(s.publish(&lease, &good(&big, 1, 9), t(1)), Err(StoreError::TooLarge { .. })));
    }

    #[test]
    fn reassign_keeps_known_keys_and_frees_removed_ones() {
        let r = region(2);
        let s = SharedStore::attach(&r, 1024).unwrap();
        let (a, b, c) = ([1u8; 20], [2u8; 20], [3u8; 20]);
        let first = s.assign(&[a, b], t(0)).unwrap();
        put(&s, first[1], &good(b"bbb", 1, 100), 1);
        let again = SharedStore::attach(&r, 1024).unwrap();
        let second = again.assign(&[b, c], t(2)).unwrap();
        assert_eq!(second[0], first[1], "b keeps its slot and response");
        assert_eq!(bytes_at(&again, second[0], &b, 3).as_deref(), Some(&b"bbb"[..]));
        assert_eq!(bytes_at(&again, second[1], &c, 3), None);
        assert_eq!(again.key_of(second[1]), Some(c));
    }

    #[test]
    fn lease_is_exclusive_and_expires() {
        let r = region(1);
        let s = SharedStore::attach(&r, 1024).unwrap();
        let first = s.try_lease(0, t(1000), Duration::from_secs(10)).expect("free");
        assert_eq!(s.try_lease(0, t(1005), TTL), None);
        let second = s.try_lease(0, t(1011), TTL).expect("a dead holder's lease expires");
        let schedule = Schedule { next_fetch: Some(t(77)), failures: 0, fetched_ok_at: None };
        assert_eq!(s.release(first, schedule), Err(StoreError::LostLease));
        s.release(second, schedule).unwrap();
        assert_eq!(s.state(0).next_fetch, Some(t(77)));
        let hour = 3600;
        let _held = s.try_lease(0, t(10 * hour), TTL).unwrap();
        // The clock went back an hour: the lease must not stay held for that hour.
        let back = s.try_lease(0, t(9 * hour), TTL).expect("clock stepped back");
        assert_eq!(s.try_lease(0, t(9 * hour + 1), TTL), None, "but it is held normally");
        s.abandon(back);
        assert!(s.try_lease(0, t(9 * hour + 2), TTL).is_some(), "abandoned leases are free");
    }

    #[test]
    fn a_holder_that_lost_its_lease_cannot_publish_release_or_reschedule() {
        let r = region(1);
        let s = SharedStore::attach(&r, 1024).unwrap();
        let key = [7; 20];
        let slot = s.assign(&[key], t(0)).unwrap()[0];
        let stalled = s.try_lease(slot, t(100), Duration::from_secs(10)).unwrap();
        // The holder stalls (SIGSTOP) past its expiry; another process takes over.
        let fresh = s.try_lease(slot, t(111), TTL).unwrap();
        assert_eq!(s.publish(&fresh, &good(b"new", 110, 1000), t(111)), Ok(Published::Replaced));
        assert_eq!(s.publish(&stalled, &revoked(b"old", 99, 1000), t(112)), Err(StoreError::LostLease));
        let late = Schedule { next_fetch: Some(t(5000)), failures: 9, fetched_ok_at: None };
        assert_eq!(s.release(stalled, late), Err(StoreError::LostLease));
        assert_eq!(s.state(slot).failures, 0, "the stale failure is not recorded");
        assert_eq!(bytes_at(&s, slot, &key, 112).as_deref(), Some(&b"new"[..]));
        s.release(fresh, Schedule { next_fetch: Some(t(600)), failures: 0, fetched_ok_at: Some(t(111)) }).unwrap();
        assert_eq!(s.state(slot).next_fetch, Some(t(600)));
    }

    #[test]
    fn an_older_response_never_replaces_a_newer_one() {
        let r = region(1);
        let s = SharedStore::attach(&r, 1024).unwrap();
        let key = [8; 20];
        let slot = s.assign(&[key], t(0)).unwrap()[0];
        assert_eq!(put(&s, slot, &good(b"newer", 200, 1000), 210), Published::Replaced);
        assert_eq!(put(&s, slot, &good(b"older", 100, 1000), 211), Published::KeptNewer);
        assert_eq!(bytes_at(&s, slot, &key, 212).as_deref(), Some(&b"newer"[..]));
        assert_eq!(put(&s, slot, &good(b"same-age", 200, 1000), 213), Published::Replaced);
        // Once the newer one has expired, anything valid replaces it.
        assert_eq!(put(&s, slot, &good(b"later", 150, 3000), 1500), Published::Replaced);
    }

    #[test]
    fn revoked_always_replaces_good_and_good_never_replaces_revoked() {
        let r = region(1);
        let s = SharedStore::attach(&r, 1024).unwrap();
        let key = [9; 20];
        let slot = s.assign(&[key], t(0)).unwrap()[0];
        put(&s, slot, &good(b"good", 500, 1000), 510);
        assert_eq!(put(&s, slot, &revoked(b"revoked", 400, 1000), 511), Published::Replaced, "even if older");
        assert_eq!(put(&s, slot, &good(b"good-again", 600, 2000), 512), Published::KeptNewer);
        let mut out = StapleBuffer::default();
        assert_eq!(s.read(slot, &key, t(513), &mut out), Some(SlotStatus::Revoked));
    }

    #[test]
    fn leases_of_an_exited_process_are_freed() {
        let r = region(3);
        let s = SharedStore::attach(&r, 1024).unwrap();
        let mine: Vec<Lease> = (0..3).filter_map(|slot| s.try_lease(slot, t(0), TTL)).collect();
        assert_eq!(mine.len(), 3);
        assert_eq!(s.clear_leases_of(std::process::id().wrapping_add(1)), 0, "another pid");
        assert_eq!(s.clear_leases_of(std::process::id()), 3);
        assert!(s.try_lease(1, t(1), TTL).is_some(), "free at once, not after expiry");
    }

    #[test]
    fn rekeyed_slot_is_not_held_by_the_old_key() {
        let r = region(1);
        let s = SharedStore::attach(&r, 1024).unwrap();
        s.assign(&[[1; 20]], t(0)).unwrap();
        assert!(s.holds(0, &[1; 20]));
        s.assign(&[[2; 20]], t(0)).unwrap();
        assert!(!s.holds(0, &[1; 20]) && s.holds(0, &[2; 20]));
        assert!(s.try_lease(0, t(1), TTL).is_some(), "re-keying released its lease");
    }

    #[test]
    fn leased_slot_of_removed_key_is_not_reused() {
        let r = region(1);
        let s = SharedStore::attach(&r, 1024).unwrap();
        s.assign(&[[1; 20]], t(0)).unwrap();
        let _old_refresher = s.try_lease(0, t(0), TTL).unwrap();
        assert_eq!(s.assign(&[[2; 20]], t(5)), Err(StoreError::Full { slots: 1 }));
    }

    #[test]
    fn a_dead_writers_half_write_is_never_served_and_is_repaired() {
        let r = region(1);
        let s = SharedStore::attach(&r, 1024).unwrap();
        let key = [1; 20];
        let slot = s.assign(&[key], t(0)).unwrap()[0];
        put(&s, slot, &good(b"before", 1, 100), 1);
        // A writer that no longer exists stopped mid-write (pid 0x7fffffff never runs).
        s.word(slot, W_WRITER).store(0x7fff_ffff, Ordering::Relaxed);
        s.word(slot, W_SEQ).fetch_add(1, Ordering::Relaxed);
        assert_eq!(bytes_at(&s, slot, &key, 2), None, "odd sequence: nothing is served");
        // The next writer takes over and drops the half-written response first.
        let lease = s.try_lease(slot, t(3), TTL).unwrap();
        s.release(lease, Schedule { next_fetch: None, failures: 1, fetched_ok_at: None }).unwrap();
        assert_eq!(bytes_at(&s, slot, &key, 4), None, "repaired slot holds no torn bytes");
        put(&s, slot, &good(b"ok", 2, 10), 5);
        assert_eq!(bytes_at(&s, slot, &key, 6).as_deref(), Some(&b"ok"[..]));
    }

    #[test]
    fn a_live_writer_is_never_joined_by_a_second_one() {
        let r = region(1);
        let s = SharedStore::attach(&r, 1024).unwrap();
        let slot = s.assign(&[[1; 20]], t(0)).unwrap()[0];
        // Our parent process is alive and "writing" the slot.
        let parent = std::os::unix::process::parent_id();
        s.word(slot, W_WRITER).store(u64::from(parent), Ordering::Relaxed);
        let lease = s.try_lease(slot, t(1), TTL).unwrap();
        assert_eq!(s.publish(&lease, &good(b"x", 1, 10), t(1)), Err(StoreError::Busy));
        let schedule = Schedule { next_fetch: Some(t(99)), failures: 1, fetched_ok_at: None };
        assert_eq!(s.release(lease, schedule), Err(StoreError::Busy));
        assert_eq!(s.state(slot).next_fetch, None, "nothing recorded");
        assert!(s.try_lease(slot, t(2), TTL).is_some(), "but the lease is let go");
    }

    #[test]
    fn readers_never_see_a_torn_response() {
        let r: Arc<Vec<AtomicU64>> = Arc::new(region(1));
        let s = SharedStore::attach(&r, 1024).unwrap();
        s.assign(&[[9; 20]], t(0)).unwrap();
        let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let writer = {
            let (r, seen) = (Arc::clone(&r), Arc::clone(&seen));
            std::thread::spawn(move || {
                let s = SharedStore::attach(&r, 1024).unwrap();
                let lease = s.try_lease(0, t(0), MAX_LEASE).unwrap();
                // Keep writing until the reader has checked enough reads made meanwhile.
                let mut i = 0usize;
                while seen.load(Ordering::Relaxed) < 2000 && i < 50_000_000 {
                    let der = vec![(i % 251) as u8; 200 + i % 700];
                    s.publish(&lease, &good(&der, i as i64 + 1, i64::MAX), t(1)).unwrap();
                    i += 1;
                }
            })
        };
        let mut out = StapleBuffer::default();
        while !writer.is_finished() {
            if s.read(0, &[9; 20], t(1), &mut out).is_some() {
                let b = out.bytes();
                assert!(b.iter().all(|&x| x == b[0]), "torn read");
                seen.fetch_add(1, Ordering::Relaxed);
            }
        }
        writer.join().unwrap();
        assert!(seen.load(Ordering::Relaxed) >= 2000, "reads checked while writing");
    }
}
