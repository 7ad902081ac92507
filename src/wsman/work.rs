//! The request pool: a bounded set of threads on which the CPU work of authenticated requests
//! runs — envelope parsing, PSRP fragment reassembly and CLIXML decoding (inside the shells'
//! `send`/`command`), Receive encoding — so that the async threads that accept connections,
//! run TLS handshakes and answer 401s never do it (issue 9, finding 2: one user's expensive
//! request must not delay another user's 401).
//!
//! Fair between users: each user (the key a job is submitted under) has a FIFO queue, free
//! threads take jobs from the users' queues in turn, and one user's jobs hold at most half of
//! the threads ([`RequestPool::per_key`]): however many expensive requests one user sends,
//! another user's request finds a thread at once and shares the CPU with them (the pool has
//! twice as many threads as cores by default, so that this costs no throughput). The number of
//! jobs in flight is bounded by the connection slots (`http`): each is one request waiting for
//! its answer. Threads are started on demand up to the cap and exit after [`IDLE_EXIT`]
//! without work.
//!
//! Lines (the engine's work) do not run here: they run on the shells' own workers
//! (`shells::runner::Workers`), whose threads may wait for minutes (a program, a client that
//! does not receive); a request job never waits on anything but locks held for short work.
#![forbid(unsafe_code)]

use std::collections::{HashMap, VecDeque};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

/// A thread with nothing to do for this long exits.
pub const IDLE_EXIT: Duration = Duration::from_secs(10);
/// Threads when the machine's parallelism cannot be read.
const FALLBACK_THREADS: usize = 4;
/// Threads the default pool starts per core.
const THREADS_PER_CORE: usize = 2;
/// Most threads the default pool starts, however many cores there are.
const MAX_DEFAULT_THREADS: usize = 32;

type Job = Box<dyn FnOnce() + Send + 'static>;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[derive(Default)]
struct State {
    /// Per key, jobs in submission order.
    queues: HashMap<String, VecDeque<Job>>,
    /// Keys with queued jobs, in the order they get their next turn.
    turns: VecDeque<String>,
    /// Jobs running now, per key.
    running: HashMap<String, usize>,
    queued: usize,
    threads: usize,
    idle: usize,
    busy: usize,
}

impl State {
    /// The next job: the front of the queue of the first key (in turn order) that holds fewer
    /// than `per_key` threads; that key goes to the back of the turns.
    fn next(&mut self, per_key: usize) -> Option<(String, Job)> {
        let pos = self
            .turns
            .iter()
            .position(|k| self.running.get(k).copied().unwrap_or(0) < per_key)?;
        let key = self.turns.remove(pos)?;
        let q = self.queues.get_mut(&key)?;
        let job = q.pop_front();
        if q.is_empty() {
            self.queues.remove(&key);
        } else {
            self.turns.push_back(key.clone());
        }
        let job = job?;
        self.queued = self.queued.saturating_sub(1);
        *self.running.entry(key.clone()).or_insert(0) += 1;
        Some((key, job))
    }

    fn done(&mut self, key: &str) {
        if let Some(n) = self.running.get_mut(key) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.running.remove(key);
            }
        }
    }

    /// Jobs some thread could take now.
    fn runnable(&self, per_key: usize) -> bool {
        self.turns
            .iter()
            .any(|k| self.running.get(k).copied().unwrap_or(0) < per_key)
    }
}

/// The pool (see the module documentation).
pub struct RequestPool {
    max_threads: usize,
    /// Threads one key's jobs may hold at once.
    per_key: usize,
    idle_exit: Duration,
    state: Mutex<State>,
    cv: Condvar,
}

/// A job could not be run (no thread could be started, or it panicked).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct PoolFailure(pub String);

impl RequestPool {
    /// At most `max_threads` threads (at least one).
    pub fn new(max_threads: usize) -> Arc<RequestPool> {
        RequestPool::with_idle_exit(max_threads, IDLE_EXIT)
    }

    /// As [`RequestPool::new`], with the idle time after which a thread exits.
    pub fn with_idle_exit(max_threads: usize, idle_exit: Duration) -> Arc<RequestPool> {
        let max_threads = max_threads.max(1);
        Arc::new(RequestPool {
            max_threads,
            per_key: (max_threads / 2).max(1),
            idle_exit,
            state: Mutex::new(State::default()),
            cv: Condvar::new(),
        })
    }

    /// The server's default size: two threads per core (at least 4, at most 32).
    pub fn default_threads() -> usize {
        std::thread::available_parallelism()
            .map(|n| n.get().saturating_mul(THREADS_PER_CORE))
            .unwrap_or(FALLBACK_THREADS)
            .clamp(FALLBACK_THREADS, MAX_DEFAULT_THREADS)
    }

    /// Threads one user's jobs may hold at once (half of them).
    pub fn per_key(&self) -> usize {
        self.per_key
    }

    /// Threads alive now.
    pub fn threads(&self) -> usize {
        lock(&self.state).threads
    }

    /// Jobs running now.
    pub fn busy(&self) -> usize {
        lock(&self.state).busy
    }

    /// Jobs waiting for a thread.
    pub fn queued(&self) -> usize {
        lock(&self.state).queued
    }

    /// Run `f` on a pool thread in `key`'s turn and wait (asynchronously) for its result.
    pub async fn run<R, F>(self: &Arc<Self>, key: &str, f: F) -> Result<R, PoolFailure>
    where
        R: Send + 'static,
        F: FnOnce() -> R + Send + 'static,
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.submit(
            key,
            Box::new(move || {
                let r = catch_unwind(AssertUnwindSafe(f));
                let _ = tx.send(r);
            }),
        );
        match rx.await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(_)) => {
                tracing::error!("a request job panicked; the client gets an internal error");
                Err(PoolFailure("the request could not be completed".into()))
            }
            Err(_) => Err(PoolFailure(
                "no thread could be started for the request (the server is out of resources)"
                    .into(),
            )),
        }
    }

    fn submit(self: &Arc<Self>, key: &str, job: Job) {
        let mut st = lock(&self.state);
        match st.queues.get_mut(key) {
            Some(q) => q.push_back(job),
            None => {
                st.queues.insert(key.to_string(), VecDeque::from([job]));
                st.turns.push_back(key.to_string());
            }
        }
        st.queued += 1;
        if !st.runnable(self.per_key) {
            // Its key already holds its share of the threads: it waits for one of them.
            return;
        }
        if st.idle > 0 {
            self.cv.notify_one();
            return;
        }
        if st.threads >= self.max_threads {
            return;
        }
        st.threads += 1;
        let me = self.clone();
        let spawned = std::thread::Builder::new()
            .name("keyhole-request".into())
            .spawn(move || me.work());
        if let Err(e) = spawned {
            st.threads -= 1;
            tracing::error!("cannot start a request thread: {e}");
            if st.threads == 0 {
                // Nobody will take the queued jobs: drop them, which answers their requests
                // with an error (their result channels close).
                st.queues.clear();
                st.turns.clear();
                st.queued = 0;
            }
        }
    }

    fn work(self: Arc<Self>) {
        let mut st = lock(&self.state);
        loop {
            if let Some((key, job)) = st.next(self.per_key) {
                st.busy += 1;
                drop(st);
                job();
                st = lock(&self.state);
                st.busy -= 1;
                st.done(&key);
                // A job of this key may have been waiting for its share.
                if st.idle > 0 && st.runnable(self.per_key) {
                    self.cv.notify_one();
                }
                continue;
            }
            st.idle += 1;
            let (g, waited) = self
                .cv
                .wait_timeout(st, self.idle_exit)
                .unwrap_or_else(|e| e.into_inner());
            st = g;
            st.idle -= 1;
            if waited.timed_out() && !st.runnable(self.per_key) {
                st.threads -= 1;
                return;
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Instant;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn users_take_turns_so_a_flood_delays_another_user_by_one_job() {
        let pool = RequestPool::new(1);
        assert_eq!(pool.per_key(), 1);
        let rt = rt();
        let order = Arc::new(Mutex::new(Vec::new()));
        let (hold_tx, hold_rx) = mpsc::channel::<()>();
        let hold_rx = Arc::new(Mutex::new(hold_rx));
        rt.block_on(async {
            // The one thread is held by mallory's first job.
            let h = hold_rx.clone();
            let o = order.clone();
            let p = pool.clone();
            let first = tokio::spawn(async move {
                p.run("mallory", move || {
                    h.lock().unwrap().recv().unwrap();
                    o.lock().unwrap().push("mallory-0".to_string());
                })
                .await
            });
            while pool.busy() == 0 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let mut jobs = Vec::new();
            for i in 1..=20 {
                let o = order.clone();
                let p = pool.clone();
                jobs.push(tokio::spawn(async move {
                    p.run("mallory", move || {
                        o.lock().unwrap().push(format!("mallory-{i}"))
                    })
                    .await
                }));
            }
            while pool.queued() < 20 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let o = order.clone();
            let p = pool.clone();
            jobs.push(tokio::spawn(async move {
                p.run("alice", move || o.lock().unwrap().push("alice".to_string()))
                    .await
            }));
            while pool.queued() < 21 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            hold_tx.send(()).unwrap();
            first.await.unwrap().unwrap();
            for j in jobs {
                j.await.unwrap().unwrap();
            }
        });
        let order = order.lock().unwrap().clone();
        let alice = order.iter().position(|s| s == "alice").unwrap();
        assert!(alice <= 2, "alice waited behind mallory's queue: {order:?}");
        assert_eq!(order.len(), 22);
    }

    #[test]
    fn one_user_holds_at_most_half_the_threads() {
        let pool = RequestPool::new(4);
        assert_eq!(pool.per_key(), 2);
        let rt = rt();
        let (hold_tx, hold_rx) = mpsc::channel::<()>();
        let hold_rx = Arc::new(Mutex::new(hold_rx));
        rt.block_on(async {
            let mut jobs = Vec::new();
            for _ in 0..10 {
                let h = hold_rx.clone();
                let p = pool.clone();
                jobs.push(tokio::spawn(async move {
                    p.run("mallory", move || {
                        let _ = h.lock().unwrap().recv();
                    })
                    .await
                }));
            }
            let until = Instant::now() + Duration::from_secs(20);
            while pool.busy() < 2 && Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
            assert_eq!(pool.busy(), 2, "mallory holds half of the threads, no more");
            // alice runs at once although mallory's eight other jobs were queued first.
            let p = pool.clone();
            let alice = tokio::time::timeout(Duration::from_secs(20), p.run("alice", || 7))
                .await
                .expect("alice waited for mallory's jobs");
            assert_eq!(alice.unwrap(), 7);
            for _ in 0..10 {
                hold_tx.send(()).unwrap();
            }
            for j in jobs {
                j.await.unwrap().unwrap();
            }
        });
    }

    #[test]
    fn threads_are_bounded_results_come_back_and_a_panic_is_an_error() {
        let pool = RequestPool::with_idle_exit(2, Duration::from_millis(50));
        let rt = rt();
        rt.block_on(async {
            let mut v = Vec::new();
            for i in 0..10u64 {
                let p = pool.clone();
                v.push(tokio::spawn(async move {
                    p.run(&format!("u{}", i % 3), move || {
                        std::thread::sleep(Duration::from_millis(5));
                        i * 2
                    })
                    .await
                }));
            }
            let mut got = Vec::new();
            for j in v {
                got.push(j.await.unwrap().unwrap());
            }
            assert_eq!(got, (0..10).map(|i| i * 2).collect::<Vec<_>>());
            assert!(pool.threads() <= 2);
            let e = pool.run("x", || -> u8 { panic!("bug") }).await;
            assert!(e.is_err());
        });
        let until = Instant::now() + Duration::from_secs(20);
        while pool.threads() > 0 && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(pool.threads(), 0, "idle threads exit");
    }
}
