//! Verification slots: how many password verifications (argon2id, 19 MiB and ~15 ms each) run at
//! once, and in which order the others wait (issue 9, "gate 2 under load").
//!
//! Without a bound, 64 concurrent wrong passwords from one address ran 64 verifications at once
//! on the blocking pool and took the server from 9 MiB to 1 GiB. Here at most `total` run at
//! once ([`super::verification_slots`]: twice the cores), one source address (IPv6: its /64)
//! holds at most half of them, and a request that cannot get a slot within the queue deadline
//! is refused with the generic 401. Waiting is first come, first served (tokio's semaphores are
//! fair), so a flood from one address leaves the other half of the slots to everybody else and
//! queues behind itself.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::source_key;

/// How long a request waits for a verification slot before it gets the generic 401.
pub const VERIFY_QUEUE_DEADLINE: Duration = Duration::from_secs(10);

/// Source entries kept before those nobody holds or waits on are dropped.
const SOURCES_KEPT: usize = 1024;

/// Bounded, per-source-fair slots for password verifications.
pub struct VerifySlots {
    all: Arc<Semaphore>,
    total: usize,
    per_source: usize,
    deadline: Duration,
    sources: Mutex<HashMap<IpAddr, Arc<Semaphore>>>,
}

/// A verification slot; freed when dropped.
pub struct VerifyPermit {
    _all: OwnedSemaphorePermit,
    _source: OwnedSemaphorePermit,
}

impl VerifySlots {
    /// `total` slots (at least 1), at most half of them (at least 1) per source, waiting at
    /// most `deadline`.
    pub fn new(total: usize, deadline: Duration) -> VerifySlots {
        let total = total.clamp(1, Semaphore::MAX_PERMITS);
        VerifySlots {
            all: Arc::new(Semaphore::new(total)),
            total,
            per_source: (total / 2).max(1),
            deadline,
            sources: Mutex::new(HashMap::new()),
        }
    }

    /// The server's slots: [`super::verification_slots`], [`VERIFY_QUEUE_DEADLINE`].
    pub fn for_this_host() -> VerifySlots {
        VerifySlots::new(super::verification_slots(), VERIFY_QUEUE_DEADLINE)
    }

    /// Slots in all.
    pub fn total(&self) -> usize {
        self.total
    }

    /// Slots one source may hold at once.
    pub fn per_source(&self) -> usize {
        self.per_source
    }

    /// How long a request waits at most.
    pub fn deadline(&self) -> Duration {
        self.deadline
    }

    /// Slots free now (tests, metrics).
    pub fn available(&self) -> usize {
        self.all.available_permits()
    }

    fn source(&self, ip: IpAddr) -> Arc<Semaphore> {
        let key = source_key(ip);
        let mut m = self.sources.lock().unwrap_or_else(|e| e.into_inner());
        if m.len() >= SOURCES_KEPT && !m.contains_key(&key) {
            // Only entries someone holds or waits on are referenced outside the map.
            m.retain(|_, s| Arc::strong_count(s) > 1);
        }
        m.entry(key)
            .or_insert_with(|| Arc::new(Semaphore::new(self.per_source)))
            .clone()
    }

    /// Wait for a slot for a request from `ip`: first its source's share, then one of all.
    /// None when none came within the deadline (the caller answers the generic 401).
    pub async fn acquire(&self, ip: IpAddr) -> Option<VerifyPermit> {
        let source = self.source(ip);
        let all = self.all.clone();
        let wait = async move {
            let s = source.acquire_owned().await.ok()?;
            let a = all.acquire_owned().await.ok()?;
            Some(VerifyPermit {
                _all: a,
                _source: s,
            })
        };
        tokio::time::timeout(self.deadline, wait)
            .await
            .ok()
            .flatten()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[tokio::test]
    async fn one_source_holds_at_most_half_and_others_still_get_in() {
        let slots = VerifySlots::new(4, Duration::from_millis(200));
        assert_eq!(slots.per_source(), 2);
        let a1 = slots.acquire(ip("10.0.0.1")).await.unwrap();
        let a2 = slots.acquire(ip("10.0.0.1")).await.unwrap();
        // A third from the same address waits for its own share, and times out.
        assert!(slots.acquire(ip("10.0.0.1")).await.is_none());
        // Two other addresses get the other half at once.
        let b = slots.acquire(ip("10.0.0.2")).await.unwrap();
        let c = slots.acquire(ip("10.0.0.3")).await.unwrap();
        assert_eq!(slots.available(), 0);
        // Everything is taken: the next waits, and gets one as soon as one is freed.
        let slots = Arc::new(slots);
        let s2 = slots.clone();
        let waiter = tokio::spawn(async move { s2.acquire(ip("10.0.0.4")).await.is_some() });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(b);
        assert!(waiter.await.unwrap());
        drop((a1, a2, c));
    }

    #[tokio::test]
    async fn a_flood_from_one_address_does_not_starve_another() {
        // 64 requests from one address each hold a slot for a while; a request from another
        // address that arrives after all of them is served before the flood is through: it
        // takes one of the slots the flood cannot have, not a place behind 64 others.
        let slots = Arc::new(VerifySlots::new(4, Duration::from_secs(30)));
        let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut flood = Vec::new();
        for _ in 0..64 {
            let (s, d) = (slots.clone(), done.clone());
            flood.push(tokio::spawn(async move {
                let p = s.acquire(ip("10.1.0.1")).await;
                assert!(p.is_some());
                tokio::time::sleep(Duration::from_millis(20)).await;
                d.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                drop(p);
            }));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        let p = slots.acquire(ip("10.1.0.2")).await;
        assert!(p.is_some());
        let finished = done.load(std::sync::atomic::Ordering::SeqCst);
        drop(p);
        for f in flood {
            f.await.unwrap();
        }
        assert!(
            finished <= 2,
            "the other address waited for {finished} of the flood's 64 verifications"
        );
    }

    #[test]
    fn ipv6_sources_share_their_64_and_entries_are_dropped_when_unused() {
        let slots = VerifySlots::new(4, Duration::from_millis(10));
        let a = slots.source(ip("2001:db8::1"));
        let b = slots.source(ip("2001:db8::2"));
        assert!(Arc::ptr_eq(&a, &b));
        drop((a, b));
        for i in 0..(SOURCES_KEPT + 10) {
            let x = u32::try_from(i).unwrap();
            let _ = slots.source(IpAddr::V4(std::net::Ipv4Addr::from(0x0a00_0000 + x)));
        }
        assert!(slots.sources.lock().unwrap().len() <= SOURCES_KEPT + 1);
    }
}
