//! The shared response store: slots in memory that every Apache process maps.
//!
//! The region is a slice of `AtomicU64` words (mapped by `apache::shm`), so this module
//! is safe Rust. It holds a one-page header, one 4 KiB slot per certificate (with
//! headroom), and an area of 64 KiB buffers that a slot borrows when its response does
//! not fit inline. Each slot is published with a seqlock: a writer makes the sequence
//! odd, writes, and makes it even; a reader copies the DER out and retries if the
//! sequence moved. Readers never wait on a writer for more than a few retries, and a
//! writer that died mid-write (odd sequence) only costs readers that one slot until the
//! next writer repairs it. Refresh coordination (lease, schedule, failure count) lives
//! in plain atomics beside the payload.
//!
//! Pages of an anonymous shared mapping become resident when first touched, so nothing
//! here walks the whole region: slots beyond the high-water mark are never read, and a
//! large buffer is touched only by the response stored in it.

use std::sync::atomic::{fence, AtomicU64, Ordering};
use std::time::Duration;

use crate::cert::CertKey;
use crate::failure::Failure;
use crate::time::UnixTime;

/// Words in the region header: one page, so that slots are page-aligned.
const HEADER_WORDS: usize = 512;
/// Header word 0: identifies a formatted region.
const MAGIC: u64 = 0x6d6f_645f_7374_6170; // "mod_stap"
/// Layout version; bump when the layout changes.
pub const LAYOUT_VERSION: u64 = 3;
const H_MAGIC: usize = 0;
const H_VERSION: usize = 1;
const H_SLOTS: usize = 2;
const H_LARGE: usize = 3;
/// Header word 4: the configuration generation that owns the store.
const H_GENERATION: usize = 4;
/// Header word 5: the last lease serial handed out.
const H_LEASE_SERIAL: usize = 5;
/// Header word 6: slots at or above this index have never held a key.
const H_HIGH_WATER: usize = 6;
/// Header word 7: 1 while the fleet tier is unreachable (0 in older regions: up).
const H_FLEET_DOWN: usize = 7;
/// Header words 64..192: when each group of alike alerts (responder host, cause) was
/// last said, as (group hash, time) pairs in a direct-mapped table.
const H_GROUPS: usize = 64;
const GROUP_ENTRIES: usize = 64;
/// Header words 192..448: per responder host, the requests in flight and the rate, as
/// entries of (host hash, the current second and the requests counted in it, a spare
/// word, then one expiry time per request in flight), direct-mapped by host hash. Requests in flight are tokens with an
/// expiry, so a process that dies mid-fetch frees its token when the expiry passes.
const H_HOSTS: usize = 192;
const HOST_ENTRIES: usize = 32;
const HOST_WORDS: usize = 8;
/// Header words 448..512: certificates a handshake is waiting for (their first
/// response), so that the fetcher takes them before the rest: a push counter, a pop
/// counter, then a ring of slot numbers plus one (0: empty).
const H_WANTED_PUSHED: usize = 448;
const H_WANTED_POPPED: usize = 449;
const H_WANTED: usize = 450;
const WANTED_ENTRIES: usize = HEADER_WORDS - H_WANTED;
/// The most requests in flight to one responder host, from the whole server.
pub const MAX_IN_FLIGHT_PER_HOST: usize = HOST_WORDS - 3;

/// A request slot to one responder host, held while the request is in flight.
#[derive(Debug)]
#[must_use = "give the permit back with end_request"]
pub struct HostPermit {
    word: usize,
    until: u64,
}

/// Words per slot: one page.
const SLOT_WORDS: usize = 512;
/// Per-slot metadata words before the inline DER payload.
const META_WORDS: usize = 25;
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
/// The large buffer holding the DER, plus one (0: the DER is inline).
const W_LARGE: usize = 17;
/// producedAt of the published response.
const W_PRODUCED_AT: usize = 18;
/// When the last fetch was attempted.
const W_LAST_ATTEMPT: usize = 19;
/// When the last failure happened, and its [`Failure`] word.
const W_LAST_ERROR_AT: usize = 20;
const W_LAST_ERROR: usize = 21;
/// Where the published response came from ([`Source`]).
const W_SOURCE: usize = 22;
/// The alert in force: when it was last logged (high bits) and its kind (low 8 bits).
const W_ALERT: usize = 23;
/// Requests to the responder that failed (a counter, like `W_FETCHES`).
const W_FAILED_FETCHES: usize = 24;

/// Largest DER held inline in a slot; typical responses (0.5–3 KiB) fit.
pub const INLINE_DER_BYTES: usize = (SLOT_WORDS - META_WORDS) * 8;
/// Words per large buffer.
const LARGE_WORDS: usize = 8192;
/// Largest DER the store holds: the fetch limit.
pub const LARGE_DER_BYTES: usize = LARGE_WORDS * 8;
const _: () = assert!(LARGE_DER_BYTES as u64 == crate::ocsp::MAX_RESPONSE_BYTES);

/// Slots with no `StaplingCache` size: room for twice the certificates, so that a
/// graceful restart can add some and keep the mapping (and every response in it).
const HEADROOM_FACTOR: usize = 2;
const MIN_SLOTS: usize = 16;
/// One large buffer per this many slots (at least `MIN_LARGE`): responses over
/// [`INLINE_DER_BYTES`] are rare (a responder that packs many SingleResponses).
const SLOTS_PER_LARGE: usize = 4;
const MIN_LARGE: usize = 8;

/// The longest lease anyone takes: the longest responder timeout plus slack.
pub const MAX_LEASE: Duration = Duration::from_secs(600);
/// Reader retries before it gives up on a slot that is being written.
const READ_RETRIES: usize = 64;
/// Writer attempts before it gives up on a slot another live process is writing.
const CLAIM_RETRIES: usize = 10_000;

/// The shape of a region: how many slots, and how many large buffers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Slots, one per certificate.
    pub slots: usize,
    /// 64 KiB buffers for responses that do not fit inline.
    pub large: usize,
}

/// The region's size and use. Only touched pages take memory, so `bytes` is an upper
/// bound: used slots take a page each, and a large buffer only the pages its response fills.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Bytes mapped.
    pub bytes: usize,
    /// Slots in the region.
    pub slots: usize,
    /// Slots that have held a certificate.
    pub slots_used: usize,
    /// 64 KiB buffers for responses that do not fit in a slot.
    pub large_buffers: usize,
    /// Large buffers holding a response.
    pub large_in_use: usize,
}

/// A `StaplingCache` size too small for the configured certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CapTooSmall {
    /// Certificates that fit.
    pub fit: usize,
    /// The smallest size that holds every certificate.
    pub needed_bytes: usize,
    /// The size the store takes without a cap.
    pub planned_bytes: usize,
}

impl Layout {
    /// The layout for `certs` certificates with no size given: headroom for a graceful
    /// restart that adds certificates, and large buffers for a share of them.
    pub fn for_certs(certs: usize) -> Layout {
        let slots = certs.saturating_mul(HEADROOM_FACTOR).max(MIN_SLOTS);
        Layout { slots, large: (slots / SLOTS_PER_LARGE).max(MIN_LARGE) }
    }

    /// The layout for `certs` certificates in at most `cap_bytes`: the uncapped layout
    /// if it fits, else every certificate first, then large buffers, then headroom.
    pub fn capped(certs: usize, cap_bytes: usize) -> Result<Layout, CapTooSmall> {
        let planned = Layout::for_certs(certs);
        if planned.bytes() <= cap_bytes {
            return Ok(planned);
        }
        let bare = Layout { slots: certs, large: 0 };
        if bare.bytes() > cap_bytes {
            let fit = cap_bytes.saturating_sub(HEADER_WORDS * 8) / (SLOT_WORDS * 8);
            return Err(CapTooSmall {
                fit: fit.min(certs),
                needed_bytes: bare.bytes(),
                planned_bytes: planned.bytes(),
            });
        }
        let large = (0..=planned.large).rev().find(|&large| Layout { slots: certs, large }.bytes() <= cap_bytes);
        let large = large.unwrap_or(0);
        let spare = cap_bytes - Layout { slots: certs, large }.bytes();
        let slots = (certs + spare / (SLOT_WORDS * 8)).min(planned.slots);
        Ok(Layout { slots, large })
    }

    /// Words the region takes.
    pub fn words(&self) -> usize {
        self.large_base() + self.large * LARGE_WORDS
    }

    /// Bytes the region takes (address space; pages become resident when used).
    pub fn bytes(&self) -> usize {
        self.words() * 8
    }

    fn owners_base(&self) -> usize {
        HEADER_WORDS + self.slots * SLOT_WORDS
    }

    /// The owner table takes whole pages, so the buffers stay page-aligned.
    fn large_base(&self) -> usize {
        self.owners_base() + self.large.div_ceil(SLOT_WORDS) * SLOT_WORDS
    }
}

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

/// Where a published response came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Nothing published.
    None = 0,
    /// Fetched from the responder.
    Responder = 1,
    /// Restored from the disk store.
    Disk = 2,
    /// Read from the fleet tier (a shared socache).
    Fleet = 3,
}

impl Source {
    fn from_word(word: u64) -> Source {
        match word {
            1 => Source::Responder,
            2 => Source::Disk,
            3 => Source::Fleet,
            _ => Source::None,
        }
    }
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
    /// producedAt, if known.
    pub produced_at: Option<UnixTime>,
    /// Where it came from.
    pub source: Source,
}

/// What a lease holder records when it lets go of a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Schedule {
    /// When to fetch next (`None`: at once).
    pub next_fetch: Option<UnixTime>,
    /// Consecutive failed fetches.
    pub failures: u32,
    /// Set when this lease ended in a good fetch.
    pub fetched_ok_at: Option<UnixTime>,
    /// Set when this lease asked the responder.
    pub attempted_at: Option<UnixTime>,
    /// Set when this lease ended in a failure (recorded at `attempted_at`).
    pub failure: Option<Failure>,
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
    /// A response larger than the store holds.
    TooLarge {
        /// Its size.
        len: usize,
        /// The largest response the store holds.
        capacity: usize,
    },
    /// A response over [`INLINE_DER_BYTES`] while every large buffer is in use.
    NoLargeBuffer {
        /// Its size.
        len: usize,
        /// Large buffers in the store.
        buffers: usize,
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
                write!(f, "response of {len} bytes is larger than the {capacity} bytes the store holds")
            }
            StoreError::NoLargeBuffer { len, buffers } => write!(
                f,
                "response of {len} bytes needs one of the store's {buffers} buffers for responses over \
                 {INLINE_DER_BYTES} bytes, and all are in use (or StaplingCache left room for none)"
            ),
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
    layout: Layout,
}

impl<'a> SharedStore<'a> {
    /// The layout of a region already formatted by this layout version, if it holds at
    /// least `certs` slots: a restart keeps it, with every response in it.
    pub fn adoptable(words: &[AtomicU64], certs: usize) -> Option<Layout> {
        let header = |w: usize| words.get(w).map(|x| x.load(Ordering::Acquire));
        if header(H_MAGIC)? != MAGIC || header(H_VERSION)? != LAYOUT_VERSION {
            return None;
        }
        let layout =
            Layout { slots: usize::try_from(header(H_SLOTS)?).ok()?, large: usize::try_from(header(H_LARGE)?).ok()? };
        let fits = layout.slots.checked_mul(SLOT_WORDS).is_some_and(|_| layout.words() <= words.len());
        (fits && layout.slots >= certs).then_some(layout)
    }

    /// Adopts a region formatted for at least `certs` certificates (see
    /// [`adoptable`](Self::adoptable)), or formats it with `planned`.
    pub fn attach(words: &'a [AtomicU64], planned: Layout, certs: usize) -> Result<SharedStore<'a>, StoreError> {
        if let Some(layout) = SharedStore::adoptable(words, certs) {
            return Ok(SharedStore { words, layout });
        }
        if planned.slots < certs {
            return Err(StoreError::Full { slots: planned.slots });
        }
        if words.len() < planned.words() {
            return Err(StoreError::TooSmall);
        }
        let store = SharedStore { words, layout: planned };
        store.format();
        Ok(store)
    }

    /// Writes the header. A fresh mapping is already zero; a used one has only its
    /// header, slot metadata and owner table cleared, so no payload page is touched.
    fn format(&self) {
        let words = self.words;
        if words[H_MAGIC].load(Ordering::Acquire) != 0 {
            words[..HEADER_WORDS].iter().for_each(|w| w.store(0, Ordering::Relaxed));
            for slot in 0..self.layout.slots {
                let base = HEADER_WORDS + slot * SLOT_WORDS;
                words[base..base + META_WORDS].iter().for_each(|w| w.store(0, Ordering::Relaxed));
            }
            let owners = self.layout.owners_base()..self.layout.owners_base() + self.layout.large;
            words[owners].iter().for_each(|w| w.store(0, Ordering::Relaxed));
        }
        words[H_VERSION].store(LAYOUT_VERSION, Ordering::Relaxed);
        words[H_SLOTS].store(self.layout.slots as u64, Ordering::Relaxed);
        words[H_LARGE].store(self.layout.large as u64, Ordering::Relaxed);
        words[H_MAGIC].store(MAGIC, Ordering::Release);
    }

    /// The region's layout.
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// Number of slots.
    pub fn slots(&self) -> usize {
        self.layout.slots
    }

    /// How much of the region is mapped and in use, for the status page.
    pub fn usage(&self) -> Usage {
        let large_in_use =
            (0..self.layout.large).filter(|&b| self.owner(b).load(Ordering::Acquire) & 0xffff_ffff != 0).count();
        Usage {
            bytes: self.layout.bytes(),
            slots: self.layout.slots,
            slots_used: self.high_water(),
            large_buffers: self.layout.large,
            large_in_use,
        }
    }

    /// Slots that have ever held a key; the ones above were never touched.
    fn high_water(&self) -> usize {
        usize::try_from(self.words[H_HIGH_WATER].load(Ordering::Acquire)).map_or(0, |h| h.min(self.layout.slots))
    }

    fn word(&self, slot: usize, w: usize) -> &AtomicU64 {
        &self.words[HEADER_WORDS + slot * SLOT_WORDS + w]
    }

    /// The words a slot's DER is in: inline, or large buffer `large`.
    fn payload(&self, slot: usize, large: Option<usize>) -> &[AtomicU64] {
        match large {
            Some(b) => &self.words[self.layout.large_base() + b * LARGE_WORDS..][..LARGE_WORDS],
            None => &self.words[HEADER_WORDS + slot * SLOT_WORDS + META_WORDS..][..SLOT_WORDS - META_WORDS],
        }
    }

    /// Buffer `b`'s owner word: the owning slot plus one in the low half (0: free),
    /// and in the high half a serial that every claim bumps, so that two processes
    /// that both saw the same owner can never both take the buffer.
    fn owner(&self, b: usize) -> &AtomicU64 {
        &self.words[self.layout.owners_base() + b]
    }

    /// The large buffer `slot`'s DER is in, if any.
    fn large_of(&self, slot: usize) -> Option<usize> {
        let v = self.word(slot, W_LARGE).load(Ordering::SeqCst);
        v.checked_sub(1).and_then(|b| usize::try_from(b).ok()).filter(|&b| b < self.layout.large)
    }

    /// Takes a large buffer for `slot` (whose write claim the caller holds): a free
    /// one, or one a dead writer claimed and never used.
    fn claim_large(&self, slot: usize) -> Option<usize> {
        let take = |b: usize, seen: u64| {
            let claimed = ((seen >> 32).wrapping_add(1) << 32) | (slot as u64 + 1);
            self.owner(b).compare_exchange(seen, claimed, Ordering::SeqCst, Ordering::SeqCst).is_ok()
        };
        let free = (0..self.layout.large).find(|&b| {
            let seen = self.owner(b).load(Ordering::SeqCst);
            seen & 0xffff_ffff == 0 && take(b, seen)
        });
        free.or_else(|| {
            (0..self.layout.large).find(|&b| {
                let seen = self.owner(b).load(Ordering::SeqCst);
                self.is_leaked(b, seen, slot) && take(b, seen)
            })
        })
    }

    /// True if buffer `b`, owned per `seen`, is not used by its slot and nobody else can
    /// start using it: its slot's writer is us, nobody, or dead. (Writer first, then
    /// the reference: a writer that claimed `b` holds the slot until it refers to `b`.)
    fn is_leaked(&self, b: usize, seen: u64, my_slot: usize) -> bool {
        let Some(slot) = (seen & 0xffff_ffff).checked_sub(1).and_then(|s| usize::try_from(s).ok()) else {
            return false;
        };
        if slot >= self.layout.slots {
            return true;
        }
        let writer = self.word(slot, W_WRITER).load(Ordering::SeqCst);
        let idle = slot == my_slot || writer == 0 || !process_alive(writer as u32);
        idle && self.large_of(slot) != Some(b)
    }

    /// Hands `slot`'s large buffer back (the caller holds the slot's write claim).
    fn free_large_of(&self, slot: usize) {
        if let Some(b) = self.large_of(slot) {
            self.word(slot, W_LARGE).store(0, Ordering::SeqCst);
            self.owner(b).fetch_and(!0xffff_ffff, Ordering::SeqCst);
        }
    }

    /// Increments and returns the generation counter.
    pub fn bump_generation(&self) -> u64 {
        self.words[H_GENERATION].fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Records whether the fleet tier answers; true if that changed, so that the
    /// process that saw the change (and only it) says so.
    pub fn mark_fleet_down(&self, down: bool) -> bool {
        self.words[H_FLEET_DOWN].swap(u64::from(down), Ordering::AcqRel) != u64::from(down)
    }

    /// True while the fleet tier is unreachable.
    pub fn fleet_down(&self) -> bool {
        self.words[H_FLEET_DOWN].load(Ordering::Acquire) != 0
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
        let high_water = self.high_water();
        for slot in 0..high_water {
            match self.key_of(slot).and_then(|k| keys.iter().position(|x| *x == k)) {
                Some(i) if assigned[i] == usize::MAX => assigned[i] = slot,
                _ => free.push(slot),
            }
        }
        // Re-key a slot only under its lease: a refresher of the old generation then
        // can never publish the old key's response into it.
        let mut free = free.into_iter().filter_map(|slot| self.try_lease(slot, now, MAX_LEASE));
        let mut never_used = (high_water..self.layout.slots).filter_map(|slot| self.try_lease(slot, now, MAX_LEASE));
        let unchanged = Schedule::default();
        for (i, slot) in assigned.iter_mut().enumerate() {
            if *slot != usize::MAX {
                continue;
            }
            let lease = free.next().or_else(|| never_used.next()).ok_or(StoreError::Full { slots: self.slots() })?;
            *slot = lease.slot;
            self.words[H_HIGH_WATER].fetch_max(lease.slot as u64 + 1, Ordering::AcqRel);
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
        self.free_large_of(slot);
        for w in [W_IN_USE, W_DER_LEN, W_THIS_UPDATE, W_STAPLE_UNTIL, W_STATUS, W_NEXT_FETCH, W_FAILURES]
            .into_iter()
            .chain([W_FETCHES, W_NEXT_UPDATE, W_LAST_OK, W_PRODUCED_AT, W_LAST_ATTEMPT, W_LAST_ERROR_AT])
            .chain([W_LAST_ERROR, W_SOURCE, W_ALERT, W_FAILED_FETCHES])
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
        let len = p.der.len();
        if len > LARGE_DER_BYTES {
            return Err(StoreError::TooLarge { len, capacity: LARGE_DER_BYTES });
        }
        let slot = lease.slot;
        self.under_lease(lease, || {
            if !supersedes(&self.state(slot), p.status, p.this_update, now) {
                return Ok(Published::KeptNewer);
            }
            let current = self.large_of(slot);
            let large = if len > INLINE_DER_BYTES {
                let buffer = current.or_else(|| self.claim_large(slot));
                Some(buffer.ok_or(StoreError::NoLargeBuffer { len, buffers: self.layout.large })?)
            } else {
                None
            };
            let payload = self.payload(slot, large);
            for (i, chunk) in p.der.chunks(8).enumerate() {
                let mut word = [0u8; 8];
                word[..chunk.len()].copy_from_slice(chunk);
                payload[i].store(u64::from_ne_bytes(word), Ordering::Relaxed);
            }
            if large.is_none() {
                self.free_large_of(slot);
            }
            self.word(slot, W_LARGE).store(large.map_or(0, |b| b as u64 + 1), Ordering::SeqCst);
            self.word(slot, W_DER_LEN).store(p.der.len() as u64, Ordering::Relaxed);
            self.word(slot, W_THIS_UPDATE).store(p.this_update.to_word(), Ordering::Relaxed);
            self.word(slot, W_NEXT_UPDATE).store(p.next_update.map_or(0, UnixTime::to_word), Ordering::Relaxed);
            self.word(slot, W_STAPLE_UNTIL).store(p.staple_until.to_word(), Ordering::Relaxed);
            self.word(slot, W_STATUS).store(p.status as u64, Ordering::Relaxed);
            self.word(slot, W_PRODUCED_AT).store(p.produced_at.map_or(0, UnixTime::to_word), Ordering::Relaxed);
            self.word(slot, W_SOURCE).store(p.source as u64, Ordering::Relaxed);
            Ok(Published::Replaced)
        })?
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
        let meta = &self.words[HEADER_WORDS + slot * SLOT_WORDS..][..META_WORDS];
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
        if now >= load(W_STAPLE_UNTIL) || len == 0 {
            return None;
        }
        let large = match load(W_LARGE) {
            0 => None,
            b => Some(usize::try_from(b - 1).ok().filter(|&b| b < self.layout.large)?),
        };
        let payload = self.payload(slot, large).get(..len.div_ceil(8))?;
        out.words.clear();
        out.words.extend(payload.iter().map(|w| w.load(Ordering::Relaxed)));
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
            failed_fetches: load(W_FAILED_FETCHES),
            last_ok: time(W_LAST_OK),
            produced_at: time(W_PRODUCED_AT),
            source: Source::from_word(load(W_SOURCE)),
            last_attempt: time(W_LAST_ATTEMPT),
            last_error: time(W_LAST_ERROR_AT).zip(Failure::from_word(load(W_LAST_ERROR))),
            alert: Alert::from_word(load(W_ALERT)),
        }
    }

    /// Takes the refresh lease of `slot` for `ttl` (at most [`MAX_LEASE`]). Only one
    /// process wins. A lease whose holder died is taken over at once (the startup
    /// helper runs detached, so nobody reaps it to free its leases).
    pub fn try_lease(&self, slot: usize, now: UnixTime, ttl: Duration) -> Option<Lease> {
        let lease = self.word(slot, W_LEASE);
        let current = lease.load(Ordering::Acquire);
        let now_secs = now.to_word();
        let expiry = current >> 32;
        // An expiry further out than any holder may take means the clock went back.
        let held = current != 0 && expiry > now_secs && expiry <= now_secs.saturating_add(MAX_LEASE.as_secs());
        if held && self.lease_holder_alive(slot) {
            return None;
        }
        let until = now.plus(ttl.min(MAX_LEASE)).to_word().min(u64::from(u32::MAX));
        let token = (until << 32) | self.next_lease_serial();
        lease.compare_exchange(current, token, Ordering::AcqRel, Ordering::Acquire).ok()?;
        self.word(slot, W_LEASE_PID).store(u64::from(std::process::id()), Ordering::Release);
        Some(Lease { slot, token })
    }

    /// False only if the recorded holder is known to have exited. Right after another
    /// process's compare-and-swap the recorded pid may still be the previous holder's;
    /// taking over then only costs that process its write (its token no longer matches).
    fn lease_holder_alive(&self, slot: usize) -> bool {
        match u32::try_from(self.word(slot, W_LEASE_PID).load(Ordering::Acquire)) {
            Ok(0) | Err(_) => true,
            Ok(pid) => pid == std::process::id() || process_alive(pid),
        }
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
            if let Some(t) = schedule.attempted_at {
                self.word(slot, W_LAST_ATTEMPT).store(t.to_word(), Ordering::Relaxed);
                if let Some(failure) = schedule.failure {
                    self.word(slot, W_FAILED_FETCHES).fetch_add(1, Ordering::Relaxed);
                    self.word(slot, W_LAST_ERROR).store(failure.to_word(), Ordering::Relaxed);
                    self.word(slot, W_LAST_ERROR_AT).store(t.to_word(), Ordering::Relaxed);
                }
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
        (0..self.high_water())
            .filter(|&slot| {
                let token = self.word(slot, W_LEASE).load(Ordering::Acquire);
                token != 0
                    && self.word(slot, W_LEASE_PID).load(Ordering::Acquire) == u64::from(pid)
                    && self.word(slot, W_LEASE).compare_exchange(token, 0, Ordering::AcqRel, Ordering::Acquire).is_ok()
            })
            .count()
    }

    /// Raises alert `kind` (non-zero) for `slot`, or repeats it once `every` has passed
    /// since it was last logged. True for exactly one process: the one that should log
    /// it. No lease is needed, so any process that notices may claim it.
    pub fn claim_alert(&self, slot: usize, kind: u8, now: UnixTime, every: Duration) -> bool {
        let word = self.word(slot, W_ALERT);
        let current = word.load(Ordering::Acquire);
        let due = match Alert::from_word(current) {
            Some((k, at)) if k == kind => now >= at.plus(every),
            _ => true,
        };
        due && word.compare_exchange(current, Alert::to_word(kind, now), Ordering::AcqRel, Ordering::Acquire).is_ok()
    }

    /// Takes a permit to send one request to the responder host `host` (a non-zero
    /// hash): at most `in_flight` requests at once and `rate` a second (0: unlimited),
    /// for every process of this server. The permit lapses at `lapse` if its holder
    /// dies; give it back with [`end_request`](Self::end_request). `None`: wait.
    pub fn begin_request(
        &self,
        host: u64,
        now: UnixTime,
        lapse: UnixTime,
        in_flight: usize,
        rate: u32,
    ) -> Option<HostPermit> {
        let host = host.max(1);
        let entry = H_HOSTS + HOST_WORDS * (host as usize % HOST_ENTRIES);
        // Hosts that share an entry share its limits: stricter, never looser.
        self.words[entry].store(host, Ordering::Release);
        let tokens = entry + 3..entry + 3 + in_flight.clamp(1, MAX_IN_FLIGHT_PER_HOST);
        let token = tokens.into_iter().find(|&w| {
            let held = self.words[w].load(Ordering::Acquire);
            UnixTime::from_word(held).is_none_or(|until| until <= now)
                && self.words[w].compare_exchange(held, lapse.to_word(), Ordering::AcqRel, Ordering::Acquire).is_ok()
        })?;
        let permit = HostPermit { word: token, until: lapse.to_word() };
        if rate > 0 && !self.count_in_second(entry, now, rate) {
            self.end_request(permit);
            return None;
        }
        Some(permit)
    }

    /// Counts one request in host entry `entry`'s current second (the latest any
    /// caller has seen); false if `rate` requests were already counted in it. Second and count share one word (second
    /// << 24 | count), so that one compare-and-swap moves both.
    fn count_in_second(&self, entry: usize, now: UnixTime, rate: u32) -> bool {
        let this_second = now.to_word() & ((1 << 40) - 1);
        self.words[entry + 1]
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |word| match (word >> 24, word & 0xff_ffff) {
                // A caller whose clock read is a second behind counts in the newer
                // second: the window never moves back (that would reset its count).
                (second, n) if second >= this_second => (n < u64::from(rate)).then_some(word + 1),
                _ => Some(this_second << 24 | 1),
            })
            .is_ok()
    }

    /// Gives back a permit of [`begin_request`](Self::begin_request).
    pub fn end_request(&self, permit: HostPermit) {
        let _ = self.words[permit.word].compare_exchange(permit.until, 0, Ordering::AcqRel, Ordering::Acquire);
    }

    /// Asks for `slot` to be fetched before the others (a handshake waits for its
    /// first response). Lock-free and best effort: a slot already waiting is not added
    /// twice, and when the ring is full the oldest wishes are dropped (those
    /// certificates are still fetched in their turn).
    pub fn want(&self, slot: usize) {
        let entry = slot as u64 + 1;
        let ring = &self.words[H_WANTED..HEADER_WORDS];
        if ring.iter().any(|w| w.load(Ordering::Relaxed) == entry) {
            return;
        }
        let n = self.words[H_WANTED_PUSHED].fetch_add(1, Ordering::AcqRel);
        ring[n as usize % WANTED_ENTRIES].store(entry, Ordering::Release);
    }

    /// True if a handshake's wish is on the ring.
    pub fn has_wanted(&self) -> bool {
        self.words[H_WANTED_POPPED].load(Ordering::Acquire) < self.words[H_WANTED_PUSHED].load(Ordering::Acquire)
    }

    /// The oldest slot a handshake is waiting for, taken off the ring.
    pub fn next_wanted(&self) -> Option<usize> {
        let (pushed, popped) = (&self.words[H_WANTED_PUSHED], &self.words[H_WANTED_POPPED]);
        loop {
            let (head, tail) = (pushed.load(Ordering::Acquire), popped.load(Ordering::Acquire));
            if tail >= head {
                return None;
            }
            // Entries overwritten by newer pushes are skipped.
            let tail_now = tail.max(head - (WANTED_ENTRIES as u64).min(head));
            if popped.compare_exchange(tail, tail_now + 1, Ordering::AcqRel, Ordering::Acquire).is_err() {
                continue;
            }
            let entry = self.words[H_WANTED + tail_now as usize % WANTED_ENTRIES].swap(0, Ordering::AcqRel);
            if let Some(slot) = entry.checked_sub(1).and_then(|s| usize::try_from(s).ok()) {
                return Some(slot);
            }
        }
    }

    /// Claims the line of alert group `group` (a non-zero hash of responder host and
    /// cause) once every `every`: true for the one process that should say it. Best
    /// effort: two groups that share a table entry, or a race, cost an extra line.
    pub fn claim_group(&self, group: u64, now: UnixTime, every: Duration) -> bool {
        let group = group.max(1);
        let entry = H_GROUPS + 2 * (group as usize % GROUP_ENTRIES);
        let (id, at) = (&self.words[entry], &self.words[entry + 1]);
        let said = at.load(Ordering::Acquire);
        let due = id.load(Ordering::Acquire) != group || UnixTime::from_word(said).is_none_or(|t| now >= t.plus(every));
        if !due || at.compare_exchange(said, now.to_word(), Ordering::AcqRel, Ordering::Acquire).is_err() {
            return false;
        }
        id.store(group, Ordering::Release);
        true
    }

    /// Ends the alert in force for `slot`; returns its kind for the one process that
    /// ended it (which logs the recovery).
    pub fn clear_alert(&self, slot: usize) -> Option<u8> {
        let word = self.word(slot, W_ALERT);
        let current = word.load(Ordering::Acquire);
        let (kind, _) = Alert::from_word(current)?;
        word.compare_exchange(current, 0, Ordering::AcqRel, Ordering::Acquire).ok().map(|_| kind)
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

/// The alert word: when it was last logged (Unix seconds) above its kind.
struct Alert;

impl Alert {
    fn to_word(kind: u8, at: UnixTime) -> u64 {
        (at.to_word() << 8) | u64::from(kind)
    }

    fn from_word(word: u64) -> Option<(u8, UnixTime)> {
        let kind = (word & 0xff) as u8;
        (kind != 0).then(|| (kind, UnixTime::from_word(word >> 8).unwrap_or(UnixTime::from_secs(0))))
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
    /// Of those, the ones that failed.
    pub failed_fetches: u64,
    /// When the last good fetch happened.
    pub last_ok: Option<UnixTime>,
    /// producedAt of the published response.
    pub produced_at: Option<UnixTime>,
    /// Where the published response came from.
    pub source: Source,
    /// When the responder was last asked.
    pub last_attempt: Option<UnixTime>,
    /// The last failure and when it happened (kept after a later success).
    pub last_error: Option<(UnixTime, Failure)>,
    /// The alert in force, if any: its kind and when it was last logged.
    pub alert: Option<(u8, UnixTime)>,
}

impl SlotState {
    /// True if the slot holds a response that may be stapled at `now`.
    pub fn stapleable_at(&self, now: UnixTime) -> bool {
        self.status != SlotStatus::Empty && self.staple_until.is_some_and(|t| now < t)
    }

    /// The schedule as it stands, to hand back unchanged.
    pub fn schedule(&self) -> Schedule {
        Schedule { next_fetch: self.next_fetch, failures: self.failures, ..Schedule::default() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    const TTL: Duration = Duration::from_secs(20);

    const TEST_LARGE: usize = 2;

    fn region(slots: usize) -> Vec<AtomicU64> {
        (0..Layout { slots, large: TEST_LARGE }.words()).map(|_| AtomicU64::new(0)).collect()
    }

    /// Attaches to a region made by `region`, adopting it if formatted.
    fn attach(r: &[AtomicU64]) -> SharedStore<'_> {
        let slots = (r.len() - Layout { slots: 0, large: TEST_LARGE }.words()) / SLOT_WORDS;
        SharedStore::attach(r, Layout { slots, large: TEST_LARGE }, 0).unwrap()
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
            produced_at: None,
            source: Source::Responder,
        }
    }

    fn revoked(der: &[u8], this_update: i64, until: i64) -> Publish<'_> {
        Publish { status: SlotStatus::Revoked, ..good(der, this_update, until) }
    }

    #[test]
    fn wanted_slots_come_out_oldest_first_once_each() {
        let r = region(4);
        let s = attach(&r);
        assert_eq!(s.next_wanted(), None);
        s.want(2);
        s.want(0);
        s.want(2);
        assert!(s.has_wanted());
        assert_eq!((s.next_wanted(), s.next_wanted(), s.next_wanted()), (Some(2), Some(0), None));
        assert!(!s.has_wanted());
        s.want(2);
        assert_eq!(s.next_wanted(), Some(2), "wanted again once taken");
    }

    #[test]
    fn a_full_wanted_ring_drops_the_oldest_wishes() {
        let r = region(200);
        let s = attach(&r);
        (0..WANTED_ENTRIES + 5).for_each(|slot| s.want(slot));
        let taken: Vec<usize> = std::iter::from_fn(|| s.next_wanted()).collect();
        assert_eq!(taken, (5..WANTED_ENTRIES + 5).collect::<Vec<_>>());
    }

    #[test]
    fn wanted_slots_are_taken_once_across_threads() {
        let r = Arc::new(region(100));
        let s = attach(&r);
        (0..WANTED_ENTRIES).for_each(|slot| s.want(slot));
        let taken = std::sync::Mutex::new(Vec::new());
        std::thread::scope(|scope| {
            for _ in 0..4 {
                scope.spawn(|| {
                    while let Some(slot) = s.next_wanted() {
                        taken.lock().unwrap().push(slot);
                    }
                });
            }
        });
        let mut taken = taken.into_inner().unwrap();
        taken.sort();
        assert_eq!(taken, (0..WANTED_ENTRIES).collect::<Vec<_>>());
    }

    /// Publishes under a fresh lease at time `now` and releases it.
    fn put(s: &SharedStore<'_>, slot: usize, p: &Publish<'_>, now: i64) -> Published {
        let lease = s.try_lease(slot, t(now), TTL).expect("lease");
        let done = s.publish(&lease, p, t(now)).unwrap();
        s.release(
            lease,
            Schedule { next_fetch: None, failures: 0, fetched_ok_at: Some(t(now)), ..Schedule::default() },
        )
        .unwrap();
        done
    }

    fn bytes_at(s: &SharedStore<'_>, slot: usize, key: &CertKey, now: i64) -> Option<Vec<u8>> {
        let mut out = StapleBuffer::default();
        s.read(slot, key, t(now), &mut out).map(|_| out.bytes().to_vec())
    }

    #[test]
    fn publish_then_read_round_trips() {
        let r = region(2);
        let s = attach(&r);
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
    fn the_layout_follows_the_certificates_and_a_size_only_caps_it() {
        let one = Layout::for_certs(1);
        assert_eq!(one, Layout { slots: MIN_SLOTS, large: MIN_LARGE });
        assert!(one.bytes() < 1024 * 1024, "{} bytes for one certificate", one.bytes());
        assert_eq!(Layout::for_certs(1000), Layout { slots: 2000, large: 500 });
        assert_eq!(Layout::capped(1, 2_000_000_000), Ok(one), "a huge size allocates nothing more");
        // A size from a mod_ssl guide: every certificate fits, with less headroom.
        let guide = Layout::capped(20, 128_000).unwrap();
        assert!(guide.slots >= 20 && guide.bytes() <= 128_000, "{guide:?}");
        let tight = Layout::capped(40, 128_000).unwrap_err();
        assert_eq!(tight.fit, (128_000 - HEADER_WORDS * 8) / 4096);
        assert_eq!(tight.needed_bytes, Layout { slots: 40, large: 0 }.bytes());
        assert_eq!(Layout::capped(1, 8192), Ok(Layout { slots: 1, large: 0 }));
        assert_eq!(Layout::capped(2, 8192).unwrap_err().fit, 1);
        for (certs, cap) in [(1, 9000), (5, 300_000), (50, 1_000_000), (3, 70_000)] {
            let l = Layout::capped(certs, cap).unwrap();
            assert!(l.slots >= certs && l.bytes() <= cap, "{certs} in {cap}: {l:?}");
        }
    }

    #[test]
    fn a_formatted_region_is_adopted_when_it_has_room() {
        let r = region(4);
        let s = attach(&r);
        s.assign(&[[1; 20]], t(0)).unwrap();
        put(&s, 0, &good(b"kept", 1, 100), 1);
        let smaller = Layout { slots: 2, large: 1 };
        let again = SharedStore::attach(&r, smaller, 3).unwrap();
        assert_eq!(again.layout(), s.layout(), "four slots hold three certificates");
        assert_eq!(bytes_at(&again, 0, &[1; 20], 2).as_deref(), Some(&b"kept"[..]));
        assert_eq!(SharedStore::adoptable(&r, 5), None, "too few slots for five");
        let reformatted = SharedStore::attach(&r, Layout { slots: 5, large: 0 }, 5).unwrap();
        assert_eq!(bytes_at(&reformatted, 0, &[1; 20], 2), None);
        assert_eq!(reformatted.high_water(), 0);
    }

    #[test]
    fn too_large_and_full_are_errors() {
        let r = region(1);
        let s = attach(&r);
        assert_eq!(s.assign(&[[1; 20], [2; 20]], t(0)), Err(StoreError::Full { slots: 1 }));
        let slots = s.assign(&[[1; 20]], t(0)).unwrap();
        let big = vec![0u8; LARGE_DER_BYTES + 1];
        let lease = s.try_lease(slots[0], t(0), TTL).unwrap();
        assert!(matches!(s.publish(&lease, &good(&big, 1, 9), t(1)), Err(StoreError::TooLarge { .. })));
    }

    #[test]
    fn large_responses_borrow_a_buffer_and_give_it_back() {
        let r = region(3);
        let s = attach(&r);
        let keys = [[1; 20], [2; 20], [3; 20]];
        s.assign(&keys, t(0)).unwrap();
        let big: Vec<u8> = (0..41_000u32).map(|i| (i % 253) as u8).collect();
        let exact = vec![7u8; LARGE_DER_BYTES];
        assert_eq!(put(&s, 0, &good(&big, 1, 100), 1), Published::Replaced);
        assert_eq!(put(&s, 1, &good(&exact, 1, 100), 1), Published::Replaced);
        assert_eq!(bytes_at(&s, 0, &keys[0], 2), Some(big.clone()));
        assert_eq!(bytes_at(&s, 1, &keys[1], 2), Some(exact));
        let lease = s.try_lease(2, t(2), TTL).unwrap();
        let third = s.publish(&lease, &good(&big, 1, 100), t(2));
        assert_eq!(third, Err(StoreError::NoLargeBuffer { len: 41_000, buffers: TEST_LARGE }));
        s.abandon(lease);
        // Slot 0 goes back to an inline response: its buffer is free for slot 2.
        put(&s, 0, &good(b"small", 2, 100), 3);
        assert_eq!(bytes_at(&s, 0, &keys[0], 4).as_deref(), Some(&b"small"[..]));
        assert_eq!(put(&s, 2, &good(&big, 1, 100), 4), Published::Replaced);
        assert_eq!(bytes_at(&s, 2, &keys[2], 5), Some(big.clone()));
        // A large response replacing a large one reuses its buffer.
        let other = vec![9u8; INLINE_DER_BYTES + 1];
        put(&s, 2, &good(&other, 3, 100), 6);
        assert_eq!(bytes_at(&s, 2, &keys[2], 7), Some(other));
        // Re-keying a slot frees its buffer.
        s.assign(&[keys[0], keys[2]], t(8)).unwrap();
        let lease = s.try_lease(1, t(9), TTL).unwrap();
        s.assign(&[keys[0], keys[2], [4; 20]], t(9)).unwrap_err();
        s.abandon(lease);
        let slots = s.assign(&[keys[0], keys[2], [4; 20]], t(9)).unwrap();
        assert_eq!(put(&s, slots[2], &good(&big, 1, 100), 10), Published::Replaced);
    }

    #[test]
    fn a_buffer_a_dead_writer_claimed_and_never_used_is_taken_back() {
        let r = region(2);
        let s = attach(&r);
        let keys = [[1; 20], [2; 20]];
        s.assign(&keys, t(0)).unwrap();
        // Both buffers claimed for slot 1 by a writer that died before publishing.
        for b in 0..TEST_LARGE {
            s.owner(b).store((5 << 32) | 2, Ordering::SeqCst);
        }
        s.word(1, W_WRITER).store(0x7fff_ffff, Ordering::SeqCst);
        let big = vec![3u8; 20_000];
        assert_eq!(put(&s, 0, &good(&big, 1, 100), 1), Published::Replaced);
        assert_eq!(bytes_at(&s, 0, &keys[0], 2), Some(big.clone()));
        // A buffer its slot still uses is never taken.
        let used = s.large_of(0).unwrap();
        s.word(0, W_WRITER).store(0x7fff_ffff, Ordering::SeqCst);
        assert!(!s.is_leaked(used, s.owner(used).load(Ordering::SeqCst), 1));
    }

    #[test]
    fn an_alert_is_logged_by_one_process_and_repeated_only_when_due() {
        let r = region(1);
        let s = attach(&r);
        s.assign(&[[1; 20]], t(0)).unwrap();
        let hour = Duration::from_secs(3600);
        assert!(s.claim_alert(0, 1, t(100), hour), "first time");
        assert!(!s.claim_alert(0, 1, t(200), hour), "within the hour");
        assert!(s.claim_alert(0, 2, t(300), hour), "a new kind at once");
        assert!(s.claim_alert(0, 2, t(3900), hour), "again after an hour");
        assert_eq!(s.state(0).alert, Some((2, t(3900))));
        assert_eq!(s.clear_alert(0), Some(2), "the one that ends it logs the recovery");
        assert_eq!(s.clear_alert(0), None);
    }

    #[test]
    fn a_failure_is_recorded_and_kept_after_a_success() {
        let r = region(1);
        let s = attach(&r);
        s.assign(&[[1; 20]], t(0)).unwrap();
        let lease = s.try_lease(0, t(10), TTL).unwrap();
        let failed = Schedule { attempted_at: Some(t(10)), failure: Some(Failure::Timeout), ..Schedule::default() };
        s.release(lease, failed).unwrap();
        put(&s, 0, &good(b"ok", 11, 100), 20);
        let st = s.state(0);
        assert_eq!(st.last_error, Some((t(10), Failure::Timeout)));
        assert_eq!(st.failed_fetches, 1);
        assert_eq!((st.source, st.last_ok), (Source::Responder, Some(t(20))));
    }

    #[test]
    fn assign_touches_only_slots_in_use() {
        let r = region(64);
        let s = attach(&r);
        s.assign(&[[1; 20], [2; 20]], t(0)).unwrap();
        assert_eq!(s.high_water(), 2);
        assert!((2..64).all(|slot| s.word(slot, W_LEASE).load(Ordering::Relaxed) == 0), "never leased");
        s.assign(&[[2; 20], [3; 20], [4; 20]], t(1)).unwrap();
        assert_eq!(s.high_water(), 3, "the freed slot is reused first");
    }

    #[test]
    fn reassign_keeps_known_keys_and_frees_removed_ones() {
        let r = region(2);
        let s = attach(&r);
        let (a, b, c) = ([1u8; 20], [2u8; 20], [3u8; 20]);
        let first = s.assign(&[a, b], t(0)).unwrap();
        put(&s, first[1], &good(b"bbb", 1, 100), 1);
        let again = attach(&r);
        let second = again.assign(&[b, c], t(2)).unwrap();
        assert_eq!(second[0], first[1], "b keeps its slot and response");
        assert_eq!(bytes_at(&again, second[0], &b, 3).as_deref(), Some(&b"bbb"[..]));
        assert_eq!(bytes_at(&again, second[1], &c, 3), None);
        assert_eq!(again.key_of(second[1]), Some(c));
    }

    #[test]
    fn lease_is_exclusive_and_expires() {
        let r = region(1);
        let s = attach(&r);
        let first = s.try_lease(0, t(1000), Duration::from_secs(10)).expect("free");
        assert_eq!(s.try_lease(0, t(1005), TTL), None);
        let second = s.try_lease(0, t(1011), TTL).expect("a dead holder's lease expires");
        let schedule = Schedule { next_fetch: Some(t(77)), failures: 0, fetched_ok_at: None, ..Schedule::default() };
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
        let s = attach(&r);
        let key = [7; 20];
        let slot = s.assign(&[key], t(0)).unwrap()[0];
        let stalled = s.try_lease(slot, t(100), Duration::from_secs(10)).unwrap();
        // The holder stalls (SIGSTOP) past its expiry; another process takes over.
        let fresh = s.try_lease(slot, t(111), TTL).unwrap();
        assert_eq!(s.publish(&fresh, &good(b"new", 110, 1000), t(111)), Ok(Published::Replaced));
        assert_eq!(s.publish(&stalled, &revoked(b"old", 99, 1000), t(112)), Err(StoreError::LostLease));
        let late = Schedule { next_fetch: Some(t(5000)), failures: 9, fetched_ok_at: None, ..Schedule::default() };
        assert_eq!(s.release(stalled, late), Err(StoreError::LostLease));
        assert_eq!(s.state(slot).failures, 0, "the stale failure is not recorded");
        assert_eq!(bytes_at(&s, slot, &key, 112).as_deref(), Some(&b"new"[..]));
        s.release(
            fresh,
            Schedule { next_fetch: Some(t(600)), failures: 0, fetched_ok_at: Some(t(111)), ..Schedule::default() },
        )
        .unwrap();
        assert_eq!(s.state(slot).next_fetch, Some(t(600)));
    }

    #[test]
    fn an_older_response_never_replaces_a_newer_one() {
        let r = region(1);
        let s = attach(&r);
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
        let s = attach(&r);
        let key = [9; 20];
        let slot = s.assign(&[key], t(0)).unwrap()[0];
        put(&s, slot, &good(b"good", 500, 1000), 510);
        assert_eq!(put(&s, slot, &revoked(b"revoked", 400, 1000), 511), Published::Replaced, "even if older");
        assert_eq!(put(&s, slot, &good(b"good-again", 600, 2000), 512), Published::KeptNewer);
        let mut out = StapleBuffer::default();
        assert_eq!(s.read(slot, &key, t(513), &mut out), Some(SlotStatus::Revoked));
    }

    #[test]
    fn a_lease_whose_holder_died_is_taken_over_at_once() {
        let r = region(1);
        let s = attach(&r);
        s.assign(&[[1; 20]], t(0)).unwrap();
        let held = s.try_lease(0, t(10), TTL).unwrap();
        assert_eq!(s.try_lease(0, t(11), TTL), None, "held by this live process");
        s.word(0, W_LEASE_PID).store(0x7fff_fff0, Ordering::Release); // a pid that never runs
        let taken = s.try_lease(0, t(12), TTL).expect("the dead holder's lease");
        assert_eq!(s.release(held, Schedule::default()), Err(StoreError::LostLease));
        s.release(taken, Schedule::default()).unwrap();
    }

    #[test]
    fn leases_of_an_exited_process_are_freed() {
        let r = region(3);
        let s = attach(&r);
        s.assign(&[[1; 20], [2; 20], [3; 20]], t(0)).unwrap();
        let mine: Vec<Lease> = (0..3).filter_map(|slot| s.try_lease(slot, t(0), TTL)).collect();
        assert_eq!(mine.len(), 3);
        assert_eq!(s.clear_leases_of(std::process::id().wrapping_add(1)), 0, "another pid");
        assert_eq!(s.clear_leases_of(std::process::id()), 3);
        assert!(s.try_lease(1, t(1), TTL).is_some(), "free at once, not after expiry");
    }

    #[test]
    fn rekeyed_slot_is_not_held_by_the_old_key() {
        let r = region(1);
        let s = attach(&r);
        s.assign(&[[1; 20]], t(0)).unwrap();
        assert!(s.holds(0, &[1; 20]));
        s.assign(&[[2; 20]], t(0)).unwrap();
        assert!(!s.holds(0, &[1; 20]) && s.holds(0, &[2; 20]));
        assert!(s.try_lease(0, t(1), TTL).is_some(), "re-keying released its lease");
    }

    #[test]
    fn leased_slot_of_removed_key_is_not_reused() {
        let r = region(1);
        let s = attach(&r);
        s.assign(&[[1; 20]], t(0)).unwrap();
        let _old_refresher = s.try_lease(0, t(0), TTL).unwrap();
        assert_eq!(s.assign(&[[2; 20]], t(5)), Err(StoreError::Full { slots: 1 }));
    }

    #[test]
    fn a_dead_writers_half_write_is_never_served_and_is_repaired() {
        let r = region(1);
        let s = attach(&r);
        let key = [1; 20];
        let slot = s.assign(&[key], t(0)).unwrap()[0];
        put(&s, slot, &good(b"before", 1, 100), 1);
        // A writer that no longer exists stopped mid-write (pid 0x7fffffff never runs).
        s.word(slot, W_WRITER).store(0x7fff_ffff, Ordering::Relaxed);
        s.word(slot, W_SEQ).fetch_add(1, Ordering::Relaxed);
        assert_eq!(bytes_at(&s, slot, &key, 2), None, "odd sequence: nothing is served");
        // The next writer takes over and drops the half-written response first.
        let lease = s.try_lease(slot, t(3), TTL).unwrap();
        s.release(lease, Schedule { next_fetch: None, failures: 1, fetched_ok_at: None, ..Schedule::default() })
            .unwrap();
        assert_eq!(bytes_at(&s, slot, &key, 4), None, "repaired slot holds no torn bytes");
        put(&s, slot, &good(b"ok", 2, 10), 5);
        assert_eq!(bytes_at(&s, slot, &key, 6).as_deref(), Some(&b"ok"[..]));
    }

    #[test]
    fn a_live_writer_is_never_joined_by_a_second_one() {
        let r = region(1);
        let s = attach(&r);
        let slot = s.assign(&[[1; 20]], t(0)).unwrap()[0];
        // Our parent process is alive and "writing" the slot.
        let parent = std::os::unix::process::parent_id();
        s.word(slot, W_WRITER).store(u64::from(parent), Ordering::Relaxed);
        let lease = s.try_lease(slot, t(1), TTL).unwrap();
        assert_eq!(s.publish(&lease, &good(b"x", 1, 10), t(1)), Err(StoreError::Busy));
        let schedule = Schedule { next_fetch: Some(t(99)), failures: 1, fetched_ok_at: None, ..Schedule::default() };
        assert_eq!(s.release(lease, schedule), Err(StoreError::Busy));
        assert_eq!(s.state(slot).next_fetch, None, "nothing recorded");
        assert!(s.try_lease(slot, t(2), TTL).is_some(), "but the lease is let go");
    }

    #[test]
    fn readers_never_see_a_torn_response() {
        let r: Arc<Vec<AtomicU64>> = Arc::new(region(1));
        let s = attach(&r);
        s.assign(&[[9; 20]], t(0)).unwrap();
        let seen = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let writer = {
            let (r, seen) = (Arc::clone(&r), Arc::clone(&seen));
            std::thread::spawn(move || {
                let s = attach(&r);
                let lease = s.try_lease(0, t(0), MAX_LEASE).unwrap();
                // Keep writing until the reader has checked enough reads made meanwhile.
                let mut i = 0usize;
                while seen.load(Ordering::Relaxed) < 2000 && i < 50_000_000 {
                    // Inline and large sizes alternate, so buffers are claimed and freed.
                    let len = if i % 3 == 0 { INLINE_DER_BYTES + 1 + i % 9000 } else { 200 + i % 700 };
                    let der = vec![(i % 251) as u8; len];
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

    #[test]
    fn a_responder_host_gets_at_most_its_requests_in_flight_and_its_rate() {
        let r = region(2);
        let s = attach(&r);
        let (now, lapse) = (UnixTime::from_secs(1000), UnixTime::from_secs(1020));
        let permits: Vec<HostPermit> =
            (0..4).map(|_| s.begin_request(7, now, lapse, 4, 0).expect("in flight")).collect();
        assert!(s.begin_request(7, now, lapse, 4, 0).is_none(), "a fifth waits");
        assert!(s.begin_request(8, now, lapse, 4, 0).is_some(), "another host has its own");
        let mut permits = permits.into_iter();
        s.end_request(permits.next().unwrap());
        let again = s.begin_request(7, now, lapse, 4, 0).expect("one was given back");
        // Holders that died: their permits lapse.
        assert!(s.begin_request(7, now, lapse, 4, 0).is_none());
        assert!(s.begin_request(7, lapse, lapse.plus(TTL), 4, 0).is_some(), "lapsed at {lapse:?}");
        permits.for_each(|p| s.end_request(p));
        s.end_request(again);

        // 3 a second: the fourth in the same second waits, the next second has room.
        let t = UnixTime::from_secs(5000);
        for _ in 0..3 {
            let p = s.begin_request(9, t, t.plus(TTL), 4, 3).expect("within the rate");
            s.end_request(p);
        }
        assert!(s.begin_request(9, t, t.plus(TTL), 4, 3).is_none(), "rate reached");
        assert!(s.begin_request(9, t.plus(Duration::from_secs(1)), t.plus(TTL), 4, 3).is_some());
    }

    #[test]
    fn a_caller_a_second_behind_does_not_reset_the_rate_count() {
        let r = region(2);
        let s = attach(&r);
        let (late, now) = (UnixTime::from_secs(5000), UnixTime::from_secs(5001));
        let take = |t: UnixTime| s.begin_request(9, t, t.plus(TTL), 4, 3).map(|p| s.end_request(p)).is_some();
        assert!(take(now) && take(now));
        // A process that read its clock just before the second turned counts in the newer
        // second, and the ones after it find that second full.
        assert!(take(late), "the third of second {now:?}");
        assert!(!take(now), "a fourth in second {now:?}");
        assert!(!take(late), "and none from the second before");
    }
}
