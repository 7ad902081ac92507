//! The request pool: a bounded set of threads on which the CPU work of authenticated requests
//! runs — envelope parsing, PSRP fragment reassembly and CLIXML decoding (inside the shells'
//! `send`/`command`), Receive encoding — so that the async threads that accept connections,
//! run TLS handshakes and answer 401s never do it (issue 9, finding 2: one user's expensive
//! request must not delay another user's 401).
//!
//! Fair between users: each user (the key a job is submitted under) has a FIFO queue, and free
//! threads take jobs from the users' queues in turn, so a user with many queued requests delays
//! another user's request by at most one job per thread. The number of jobs in flight is
//! bounded by the connection slots (`http`): each is one request waiting for its answer.
//! Threads are started on demand up to the cap and exit after [`IDLE_EXIT`] without work.
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
const FALLBACK_THREADS: usize = 2;
/// Most threads the default pool starts, however many cores there are.
const MAX_DEFAULT_THREADS: usize = 16;

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
    queued: usize,
    threads: usize,
    idle: usize,
    busy: usize,
}

impl State {
    /// The next job: the front of the first key's queue; that key goes to the back of the turns.
    fn next(&mut self) -> Option<Job> {
        let key = self.turns.pop_front()?;
        let q = self.queues.get_mut(&key)?;
        let job = q.pop_front();
        if q.is_empty() {
            self.queues.remove(&key);
        } else {
            self.turns.push_back(key);
        }
        if job.is_some() {
            self.queued = self.queued.saturating_sub(1);
        }
        job
    }
}

/// The pool (see the module documentation).
pub struct RequestPool {
    max_threads: usize,
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
        Arc::new(RequestPool {
            max_threads: max_threads.max(1),
            idle_exit,
            state: Mutex::new(State::default()),
            cv: Condvar::new(),
        })
    }

    /// The server's default size: one thread per core (at most 16).
    pub fn default_threads() -> usize {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(FALLBACK_THREADS)
            .clamp(1, MAX_DEFAULT_THREADS)
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
        if st.idle >= st.queued {
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
            if let Some(job) = st.next() {
                st.busy += 1;
                drop(st);
                job();
                st = lock(&self.state);
                st.busy -= 1;
                continue;
            }
            st.idle += 1;
            let (g, waited) = self
                .cv
                .wait_timeout(st, self.idle_exit)
                .unwrap_or_else(|e| e.into_inner());
            st = g;
            st.idle -= 1;
            if waited.timed_out() && st.queued == 0 {
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
