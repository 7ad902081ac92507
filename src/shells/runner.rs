//! `shells::runner`: the one shell runtime under WinRS, PSRP (and, later, the web console).
//!
//! - [`Workers`]: a bounded pool of threads shared by every shell. Threads are spawned on demand
//!   up to a cap and exit after [`WORKER_IDLE_EXIT`] without work; work beyond the cap waits in
//!   FIFO order. Nothing holds a thread while it waits: not an idle session, not a queued line.
//! - [`Lane`]: one engine session. Its lines run one at a time, in order, each on whichever
//!   worker is free; a line waiting for its turn is an entry in a queue, not a thread. The lane
//!   arms the line's deadline (`[limits] command_timeout`) on its [`CancelToken`] when the line
//!   starts, so built-ins that check cancellation stop too, and turns a panic into an error
//!   record.
//! - [`Outbox`]: what one running line produced and the client has not received yet, bounded in
//!   bytes by an [`OutputBudget`]. A producer over the budget waits on a condition variable
//!   until a Receive takes something, the line is cancelled (or reaches its deadline) or the
//!   shell is closed. Every push wakes the shell's waiting Receive.
//! - [`Budget`] says which budget a new line's outbox draws from: its own (today) or one shared
//!   object (so that `max_buffered_output_bytes` can become per user without touching shells).
#![forbid(unsafe_code)]

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use crate::engine::{CancelToken, ErrorCategory, ErrorRecord, RunOutcome};

/// Worker threads the server runs lines on, at most (`keyhole serve`).
pub const DEFAULT_MAX_WORKERS: usize = 64;
/// A worker with nothing to do for this long exits.
pub const WORKER_IDLE_EXIT: Duration = Duration::from_secs(10);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Wake a waiting Receive; also leaves a permit so a Receive about to wait does not miss it.
pub fn wake(n: &Notify) {
    n.notify_waiters();
    n.notify_one();
}

// ---------------------------------------------------------------------------------------------
// Workers

/// Whether a task may run, or must give up because no thread could be started for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Go {
    Run,
    NoWorker,
}

type Task = Box<dyn FnOnce(Go) + Send + 'static>;

struct WorkersState {
    queue: VecDeque<Task>,
    threads: usize,
    idle: usize,
    /// Tasks running now.
    busy: usize,
}

/// A bounded pool of worker threads (see the module documentation).
pub struct Workers {
    max_threads: usize,
    idle_exit: Duration,
    state: Mutex<WorkersState>,
    cv: Condvar,
}

impl Workers {
    /// A pool of at most `max_threads` threads (at least one).
    pub fn new(max_threads: usize) -> Arc<Workers> {
        Workers::with_idle_exit(max_threads, WORKER_IDLE_EXIT)
    }

    /// As [`Workers::new`], with the idle time after which a thread exits.
    pub fn with_idle_exit(max_threads: usize, idle_exit: Duration) -> Arc<Workers> {
        Arc::new(Workers {
            max_threads: max_threads.max(1),
            idle_exit,
            state: Mutex::new(WorkersState {
                queue: VecDeque::new(),
                threads: 0,
                idle: 0,
                busy: 0,
            }),
            cv: Condvar::new(),
        })
    }

    /// Threads alive now (busy or idle).
    pub fn threads(&self) -> usize {
        lock(&self.state).threads
    }

    /// Tasks waiting for a thread.
    pub fn queued(&self) -> usize {
        lock(&self.state).queue.len()
    }

    /// Tasks running now (a line holding a thread: running, or waiting for the client).
    pub fn busy(&self) -> usize {
        lock(&self.state).busy
    }

    fn submit(self: &Arc<Self>, task: Task) {
        let mut st = lock(&self.state);
        st.queue.push_back(task);
        if st.idle >= st.queue.len() {
            self.cv.notify_one();
            return;
        }
        if st.threads >= self.max_threads {
            // Every thread is busy: the task waits its turn (FIFO).
            return;
        }
        st.threads += 1;
        let me = self.clone();
        let spawned = std::thread::Builder::new()
            .name("keyhole-worker".into())
            .spawn(move || me.work());
        if let Err(e) = spawned {
            st.threads -= 1;
            tracing::error!("cannot start a worker thread: {e}");
            if st.threads == 0 {
                // Nobody will ever take it: end it now (cheap: it only reports the failure).
                if let Some(t) = st.queue.pop_back() {
                    drop(st);
                    t(Go::NoWorker);
                }
            }
        }
    }

    fn work(self: Arc<Self>) {
        let mut st = lock(&self.state);
        loop {
            if let Some(task) = st.queue.pop_front() {
                st.busy += 1;
                drop(st);
                // A task catches its own panics; this keeps the thread count right if not.
                if catch_unwind(AssertUnwindSafe(|| task(Go::Run))).is_err() {
                    tracing::error!("a worker task panicked");
                }
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
            if waited.timed_out() && st.queue.is_empty() {
                st.threads -= 1;
                return;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Lanes: one session, lines in order

/// One line to run in a [`Lane`].
pub trait Line<S>: Send + 'static {
    /// Run on a worker with the session, the deadline armed on `cancel`.
    fn run(&mut self, session: &mut S, cancel: &CancelToken) -> RunOutcome;
    /// Called exactly once: after `run`, or instead of it when the line was cancelled before
    /// its turn or no worker could take it. A panic in `run` arrives here as `Failed`; a line
    /// stopped by its deadline arrives as `Failed` with a record that says so.
    fn end(self: Box<Self>, outcome: RunOutcome);
}

struct Pending<S> {
    line: Box<dyn Line<S>>,
    cancel: CancelToken,
}

struct LaneQueue<S> {
    lines: VecDeque<Pending<S>>,
    scheduled: bool,
}

struct LaneInner<S> {
    session: Mutex<S>,
    queue: Mutex<LaneQueue<S>>,
    workers: Arc<Workers>,
    command_timeout: Option<Duration>,
    /// Dropped with the last reference: after the shell and after its last line (the session
    /// guard: slot release, audit "session end").
    _keep: Option<Box<dyn Send + Sync>>,
}

/// One engine session whose lines run one at a time on the shared [`Workers`].
pub struct Lane<S> {
    inner: Arc<LaneInner<S>>,
}

impl<S> Clone for Lane<S> {
    fn clone(&self) -> Self {
        Lane {
            inner: self.inner.clone(),
        }
    }
}

/// The record a line stopped by `command_timeout` ends with.
pub fn timeout_record(timeout: Duration) -> ErrorRecord {
    ErrorRecord::new(
        format!(
            "keyhole stopped the command: it ran longer than command_timeout ({}). Ask the administrator to raise [limits] command_timeout if it needs longer.",
            humantime::format_duration(timeout)
        ),
        "CommandTimeout",
        ErrorCategory::OperationTimeout,
    )
    .exception("System.TimeoutException")
    .terminating()
}

fn internal_error() -> ErrorRecord {
    ErrorRecord::new(
        "keyhole hit an internal error while running this line; the administrator can find details in the server log",
        "InternalError",
        ErrorCategory::NotSpecified,
    )
}

impl<S: Send + 'static> Lane<S> {
    /// A lane over `session`; `keep` lives as long as the session (see [`Lane`]).
    pub fn new(
        session: S,
        workers: Arc<Workers>,
        command_timeout: Option<Duration>,
        keep: Option<Box<dyn Send + Sync>>,
    ) -> Lane<S> {
        Lane {
            inner: Arc::new(LaneInner {
                session: Mutex::new(session),
                queue: Mutex::new(LaneQueue {
                    lines: VecDeque::new(),
                    scheduled: false,
                }),
                workers,
                command_timeout,
                _keep: keep,
            }),
        }
    }

    /// Queue `line`; it runs after the lines queued before it. `cancel` stops it (before or
    /// while it runs).
    pub fn run(&self, cancel: CancelToken, line: Box<dyn Line<S>>) {
        let schedule = {
            let mut q = lock(&self.inner.queue);
            q.lines.push_back(Pending { line, cancel });
            !std::mem::replace(&mut q.scheduled, true)
        };
        if schedule {
            self.schedule();
        }
    }

    /// Lines waiting for their turn (not counting the one running).
    pub fn queued(&self) -> usize {
        lock(&self.inner.queue).lines.len()
    }

    /// Run `f` with the session when no line holds it (waits for a running line).
    pub fn with_session<R>(&self, f: impl FnOnce(&mut S) -> R) -> R {
        f(&mut lock(&self.inner.session))
    }

    fn schedule(&self) {
        let inner = self.inner.clone();
        let workers = inner.workers.clone();
        workers.submit(Box::new(move |go| Lane { inner }.turn(go)));
    }

    /// One turn: run the next line, then give the worker back (one line per turn keeps lanes
    /// fair to each other).
    fn turn(self, go: Go) {
        if go == Go::NoWorker {
            let lines: Vec<Pending<S>> = {
                let mut q = lock(&self.inner.queue);
                q.scheduled = false;
                q.lines.drain(..).collect()
            };
            for p in lines {
                p.line.end(RunOutcome::Failed(ErrorRecord::new(
                    "keyhole could not start a worker thread for this line (the server is out of resources); try again later",
                    "WorkerUnavailable",
                    ErrorCategory::ResourceUnavailable,
                )));
            }
            return;
        }
        let next = lock(&self.inner.queue).lines.pop_front();
        if let Some(Pending { mut line, cancel }) = next {
            let outcome = if cancel.is_cancelled() {
                // Signalled or closed while waiting for its turn: never starts.
                RunOutcome::Stopped
            } else {
                if let Some(t) = self.inner.command_timeout {
                    cancel.set_deadline(Instant::now() + t);
                }
                let run = {
                    let mut s = lock(&self.inner.session);
                    catch_unwind(AssertUnwindSafe(|| line.run(&mut s, &cancel)))
                };
                match run {
                    Ok(RunOutcome::Stopped) if cancel.timed_out() => RunOutcome::Failed(
                        timeout_record(self.inner.command_timeout.unwrap_or_default()),
                    ),
                    Ok(o) => o,
                    Err(_) => {
                        tracing::error!("the engine panicked while running a line; reported to the client as an internal error");
                        RunOutcome::Failed(internal_error())
                    }
                }
            };
            if catch_unwind(AssertUnwindSafe(|| line.end(outcome))).is_err() {
                tracing::error!("ending a line panicked");
            }
        }
        let again = {
            let mut q = lock(&self.inner.queue);
            if q.lines.is_empty() {
                q.scheduled = false;
                false
            } else {
                true
            }
        };
        if again {
            self.schedule();
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Output: budgets and outboxes

/// Bytes of produced-but-unreceived output allowed, shared by every outbox drawing from it.
pub struct OutputBudget {
    limit: usize,
    used: Mutex<usize>,
    cv: Condvar,
}

impl OutputBudget {
    pub fn new(limit: usize) -> Arc<OutputBudget> {
        Arc::new(OutputBudget {
            limit: limit.max(1),
            used: Mutex::new(0),
            cv: Condvar::new(),
        })
    }

    pub fn limit(&self) -> usize {
        self.limit
    }

    /// Bytes held now.
    pub fn used(&self) -> usize {
        *lock(&self.used)
    }

    /// Take `n` bytes, waiting while they do not fit. An item passes anyway when the budget
    /// holds nothing, or when its own outbox holds nothing (`own` is that outbox's queued
    /// bytes): the client has received everything this line produced, so the line may go on
    /// one item at a time at the client's pace even when another shell of the same user has
    /// filled the shared budget and is not being received. The budget is therefore exceeded by
    /// at most one item per running line. False when the line was cancelled, its deadline
    /// passed or the outbox was closed first.
    fn acquire(
        &self,
        n: usize,
        cancel: &CancelToken,
        closed: &AtomicBool,
        own: &AtomicUsize,
    ) -> bool {
        let mut used = lock(&self.used);
        loop {
            if closed.load(Ordering::SeqCst) {
                return false;
            }
            if *used == 0 || used.saturating_add(n) <= self.limit || own.load(Ordering::SeqCst) == 0
            {
                *used = used.saturating_add(n);
                return true;
            }
            if cancel.is_cancelled() {
                return false;
            }
            used = match cancel.deadline() {
                Some(d) => {
                    let left = d.saturating_duration_since(Instant::now());
                    self.cv
                        .wait_timeout(used, left)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
                None => self.cv.wait(used).unwrap_or_else(|e| e.into_inner()),
            };
        }
    }

    /// Take `n` bytes without waiting; false when they do not fit.
    fn try_acquire(&self, n: usize) -> bool {
        let mut used = lock(&self.used);
        if *used == 0 || used.saturating_add(n) <= self.limit {
            *used = used.saturating_add(n);
            true
        } else {
            false
        }
    }

    fn release(&self, n: usize) {
        if n == 0 {
            return;
        }
        {
            let mut used = lock(&self.used);
            *used = used.saturating_sub(n);
        }
        self.cv.notify_all();
    }

    /// Wake every waiting producer (after a cancel or a close) so it can look again.
    pub fn wake_all(&self) {
        let _g = lock(&self.used);
        self.cv.notify_all();
    }
}

/// Which budget a new line's outbox draws from.
#[derive(Clone)]
pub enum Budget {
    /// A budget of its own, this many bytes, for every line.
    PerLine(usize),
    /// One budget shared by every line (e.g. all of one user's).
    Shared(Arc<OutputBudget>),
}

impl Budget {
    pub fn for_line(&self) -> Arc<OutputBudget> {
        match self {
            Budget::PerLine(n) => OutputBudget::new(*n),
            Budget::Shared(b) => b.clone(),
        }
    }
}

/// An item of output: its size in bytes (what the budget counts), and how to split it when a
/// Receive has room for only part of it.
pub trait Item: Send + Sized + 'static {
    fn weight(&self) -> usize;
    /// Split off a front part costing at most `max_cost` (None: items are never split).
    fn split_front(&mut self, _max_cost: usize) -> Option<Self> {
        None
    }
}

struct OutState<T> {
    items: VecDeque<T>,
    bytes: usize,
    ended: bool,
}

/// What one line produced and the client has not received yet.
pub struct Outbox<T> {
    state: Mutex<OutState<T>>,
    /// `state.bytes`, readable without the state lock (by a producer waiting for room).
    held: AtomicUsize,
    closed: AtomicBool,
    budget: Arc<OutputBudget>,
    notify: Arc<Notify>,
}

/// What a Receive took.
#[derive(Debug)]
pub struct Taken<T> {
    pub items: Vec<T>,
    /// The line has ended and everything it produced has now been taken.
    pub finished: bool,
}

impl<T: Item> Outbox<T> {
    /// An outbox drawing from `budget`; every push wakes `notify` (the shell's Receive).
    pub fn new(budget: Arc<OutputBudget>, notify: Arc<Notify>) -> Arc<Outbox<T>> {
        Arc::new(Outbox {
            state: Mutex::new(OutState {
                items: VecDeque::new(),
                bytes: 0,
                ended: false,
            }),
            held: AtomicUsize::new(0),
            closed: AtomicBool::new(false),
            budget,
            notify,
        })
    }

    /// Producer (a worker): queue `item` once its bytes fit the budget, waiting for a Receive
    /// if they do not. False when the item was dropped: the line was cancelled, reached its
    /// deadline or the outbox was closed while waiting.
    pub fn push(&self, item: T, cancel: &CancelToken) -> bool {
        let n = item.weight();
        if !self.budget.acquire(n, cancel, &self.closed, &self.held) {
            return false;
        }
        self.enqueue(item, n)
    }

    /// Producer on a request path (must not wait): queue `item` if it fits now.
    pub fn push_now(&self, item: T) -> bool {
        let n = item.weight();
        if self.closed.load(Ordering::SeqCst) || !self.budget.try_acquire(n) {
            return false;
        }
        self.enqueue(item, n)
    }

    /// The line's last items (its end state): queued whatever the budget, and the outbox is
    /// marked ended.
    pub fn push_last(&self, items: Vec<T>) {
        self.push_unbudgeted(items, true);
    }

    /// Items a request itself produced (a protocol reply of bounded size, e.g. command
    /// metadata): queued whatever the budget, counted so that taking them releases them. A
    /// request never waits for room, and a budget shared with the user's other shells must not
    /// make it fail either.
    pub fn push_reply(&self, items: Vec<T>) {
        self.push_unbudgeted(items, false);
    }

    fn push_unbudgeted(&self, items: Vec<T>, last: bool) {
        if self.closed.load(Ordering::SeqCst) {
            return;
        }
        let mut st = lock(&self.state);
        for item in items {
            let n = item.weight();
            // Counted so that taking it releases it; never waited for.
            let mut used = lock(&self.budget.used);
            *used = used.saturating_add(n);
            drop(used);
            st.bytes = st.bytes.saturating_add(n);
            st.items.push_back(item);
        }
        self.held.store(st.bytes, Ordering::SeqCst);
        if last {
            st.ended = true;
        }
        drop(st);
        wake(&self.notify);
    }

    fn enqueue(&self, item: T, n: usize) -> bool {
        let mut st = lock(&self.state);
        if self.closed.load(Ordering::SeqCst) {
            drop(st);
            self.budget.release(n);
            return false;
        }
        st.items.push_back(item);
        st.bytes = st.bytes.saturating_add(n);
        self.held.store(st.bytes, Ordering::SeqCst);
        drop(st);
        wake(&self.notify);
        true
    }

    /// Consumer (a Receive): take items in order while their `cost` fits in `max` — at least
    /// one item (or its front part, for items that split) so that progress is always made.
    pub fn take(&self, max: usize, cost: impl Fn(&T) -> usize) -> Taken<T> {
        let mut st = lock(&self.state);
        let mut items = Vec::new();
        let mut used = 0usize;
        let mut released = 0usize;
        while let Some(front) = st.items.front_mut() {
            let c = cost(front);
            if used.saturating_add(c) <= max {
                if let Some(item) = st.items.pop_front() {
                    used = used.saturating_add(c);
                    released = released.saturating_add(item.weight());
                    items.push(item);
                }
                continue;
            }
            // It does not fit whole: its front part if it splits, else (when nothing was taken
            // yet) all of it.
            let room = max.saturating_sub(used);
            let before = front.weight();
            if let Some(part) = (room > 0).then(|| front.split_front(room)).flatten() {
                released = released.saturating_add(before.saturating_sub(front.weight()));
                items.push(part);
            } else if items.is_empty() {
                if let Some(item) = st.items.pop_front() {
                    released = released.saturating_add(item.weight());
                    items.push(item);
                }
            }
            break;
        }
        st.bytes = st.bytes.saturating_sub(released);
        self.held.store(st.bytes, Ordering::SeqCst);
        let finished = st.ended && st.items.is_empty();
        drop(st);
        self.budget.release(released);
        Taken { items, finished }
    }

    /// The line has ended (its last items are queued; they may not have been taken yet).
    pub fn ended(&self) -> bool {
        lock(&self.state).ended
    }

    /// Bytes queued now.
    pub fn queued_bytes(&self) -> usize {
        lock(&self.state).bytes
    }

    /// Drop everything queued and refuse what comes after; wake waiting producers and the
    /// Receive (Delete, idle expiry, shutdown).
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let released = {
            let mut st = lock(&self.state);
            st.items.clear();
            self.held.store(0, Ordering::SeqCst);
            std::mem::take(&mut st.bytes)
        };
        self.budget.release(released);
        self.budget.wake_all();
        wake(&self.notify);
    }

    /// Cancel `cancel` and wake a producer of this outbox waiting for room, so that it sees it.
    pub fn cancel(&self, cancel: &CancelToken) {
        cancel.cancel();
        self.budget.wake_all();
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    #[derive(Debug, PartialEq)]
    struct Bytes(Vec<u8>);
    impl Item for Bytes {
        fn weight(&self) -> usize {
            self.0.len()
        }
        fn split_front(&mut self, max_cost: usize) -> Option<Self> {
            let n = max_cost.min(self.0.len());
            Some(Bytes(self.0.drain(..n).collect()))
        }
    }
    #[derive(Debug, PartialEq)]
    struct Whole(usize);
    impl Item for Whole {
        fn weight(&self) -> usize {
            self.0
        }
    }

    const LONG: Duration = Duration::from_secs(20);

    #[test]
    fn workers_are_spawned_on_demand_up_to_the_cap_and_the_rest_wait_in_order() {
        let w = Workers::with_idle_exit(2, Duration::from_millis(50));
        assert_eq!(w.threads(), 0, "no thread before there is work");
        let (release_tx, release_rx) = mpsc::channel::<()>();
        let release_rx = Arc::new(Mutex::new(release_rx));
        let (done_tx, done_rx) = mpsc::channel::<usize>();
        for i in 0..5 {
            let rx = release_rx.clone();
            let done = done_tx.clone();
            w.submit(Box::new(move |go| {
                assert_eq!(go, Go::Run);
                rx.lock().unwrap().recv().unwrap();
                done.send(i).unwrap();
            }));
        }
        let until = Instant::now() + LONG;
        while w.queued() > 3 && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(w.threads(), 2, "never more threads than the cap");
        assert_eq!(w.queued(), 3, "work beyond the cap waits");
        for _ in 0..5 {
            release_tx.send(()).unwrap();
        }
        let mut order: Vec<usize> = (0..5)
            .map(|_| done_rx.recv_timeout(LONG).unwrap())
            .collect();
        // The first two ran together; the three that waited ran in the order they came.
        order.sort_by_key(|i| if *i < 2 { 0 } else { *i });
        assert_eq!(&order[2..], &[2, 3, 4]);
        // Idle threads go away.
        let until = Instant::now() + LONG;
        while w.threads() > 0 && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert_eq!(w.threads(), 0, "idle workers exit");
    }

    struct TestLine {
        name: &'static str,
        log: Arc<Mutex<Vec<String>>>,
        ends: mpsc::Sender<(&'static str, RunOutcome)>,
        behaviour: Behaviour,
    }
    #[derive(Clone, Copy)]
    enum Behaviour {
        Quick,
        UntilCancelled,
        Panic,
    }
    impl Line<Vec<&'static str>> for TestLine {
        fn run(&mut self, session: &mut Vec<&'static str>, cancel: &CancelToken) -> RunOutcome {
            self.log
                .lock()
                .unwrap()
                .push(format!("start {}", self.name));
            session.push(self.name);
            match self.behaviour {
                Behaviour::Quick => {}
                Behaviour::Panic => panic!("engine bug"),
                Behaviour::UntilCancelled => {
                    // A built-in that checks cancellation in its loop.
                    let until = Instant::now() + LONG;
                    while !cancel.is_cancelled() && Instant::now() < until {
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    self.log.lock().unwrap().push(format!("end {}", self.name));
                    return RunOutcome::Stopped;
                }
            }
            self.log.lock().unwrap().push(format!("end {}", self.name));
            RunOutcome::Completed { had_errors: false }
        }
        fn end(self: Box<Self>, outcome: RunOutcome) {
            self.ends.send((self.name, outcome)).unwrap();
        }
    }

    fn line(
        name: &'static str,
        log: &Arc<Mutex<Vec<String>>>,
        ends: &mpsc::Sender<(&'static str, RunOutcome)>,
        behaviour: Behaviour,
    ) -> Box<TestLine> {
        Box::new(TestLine {
            name,
            log: log.clone(),
            ends: ends.clone(),
            behaviour,
        })
    }

    #[test]
    fn a_lane_runs_its_lines_one_at_a_time_in_order_without_a_thread_per_line() {
        let w = Workers::new(4);
        let lane = Lane::new(Vec::new(), w.clone(), None, None);
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let first = CancelToken::new();
        lane.run(
            first.clone(),
            line("a", &log, &tx, Behaviour::UntilCancelled),
        );
        for n in ["b", "c", "d"] {
            lane.run(CancelToken::new(), line(n, &log, &tx, Behaviour::Quick));
        }
        let until = Instant::now() + LONG;
        while log.lock().unwrap().is_empty() && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert_eq!(lane.queued(), 3);
        assert_eq!(w.threads(), 1, "queued lines hold no thread");
        first.cancel();
        let ends: Vec<_> = (0..4).map(|_| rx.recv_timeout(LONG).unwrap()).collect();
        assert_eq!(ends[0], ("a", RunOutcome::Stopped));
        assert_eq!(
            ends[1..].iter().map(|e| e.0).collect::<Vec<_>>(),
            vec!["b", "c", "d"]
        );
        assert_eq!(
            log.lock().unwrap().clone(),
            ["start a", "end a", "start b", "end b", "start c", "end c", "start d", "end d"]
        );
        assert_eq!(lane.with_session(|s| s.clone()), vec!["a", "b", "c", "d"]);
    }

    #[test]
    fn a_line_cancelled_before_its_turn_never_starts() {
        let lane = Lane::new(Vec::new(), Workers::new(2), None, None);
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let first = CancelToken::new();
        lane.run(
            first.clone(),
            line("a", &log, &tx, Behaviour::UntilCancelled),
        );
        let second = CancelToken::new();
        lane.run(second.clone(), line("b", &log, &tx, Behaviour::Quick));
        second.cancel();
        first.cancel();
        assert_eq!(rx.recv_timeout(LONG).unwrap().0, "a");
        assert_eq!(rx.recv_timeout(LONG).unwrap(), ("b", RunOutcome::Stopped));
        assert!(!log.lock().unwrap().contains(&"start b".to_string()));
    }

    #[test]
    fn a_panic_becomes_an_error_record_and_the_lane_goes_on() {
        let lane = Lane::new(Vec::new(), Workers::new(1), None, None);
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        lane.run(
            CancelToken::new(),
            line("boom", &log, &tx, Behaviour::Panic),
        );
        lane.run(
            CancelToken::new(),
            line("next", &log, &tx, Behaviour::Quick),
        );
        match rx.recv_timeout(LONG).unwrap() {
            ("boom", RunOutcome::Failed(rec)) => {
                assert_eq!(rec.fully_qualified_error_id, "InternalError");
                assert!(rec.message.contains("server log"), "{}", rec.message);
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            rx.recv_timeout(LONG).unwrap(),
            ("next", RunOutcome::Completed { had_errors: false })
        );
    }

    #[test]
    fn command_timeout_stops_a_built_in_through_its_cancel_token() {
        let lane = Lane::new(
            Vec::new(),
            Workers::new(1),
            Some(Duration::from_millis(100)),
            None,
        );
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let cancel = CancelToken::new();
        lane.run(
            cancel.clone(),
            line("slow", &log, &tx, Behaviour::UntilCancelled),
        );
        match rx.recv_timeout(LONG).unwrap() {
            ("slow", RunOutcome::Failed(rec)) => {
                assert_eq!(rec.fully_qualified_error_id, "CommandTimeout");
                assert!(
                    rec.message.contains("command_timeout (100ms)"),
                    "{}",
                    rec.message
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(cancel.timed_out());
        assert!(log.lock().unwrap().contains(&"end slow".to_string()));
    }

    /// Start a producer pushing `items` (each `size` bytes) into `out`; reports each push.
    fn producer(
        out: Arc<Outbox<Whole>>,
        cancel: CancelToken,
        sizes: Vec<usize>,
    ) -> mpsc::Receiver<bool> {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for s in sizes {
                let ok = out.push(Whole(s), &cancel);
                if tx.send(ok).is_err() || !ok {
                    return;
                }
            }
        });
        rx
    }

    fn blocked(rx: &mpsc::Receiver<bool>) -> bool {
        matches!(
            rx.recv_timeout(Duration::from_millis(200)),
            Err(mpsc::RecvTimeoutError::Timeout)
        )
    }

    #[test]
    fn a_producer_over_the_budget_waits_until_a_receive_takes_output() {
        let notify = Arc::new(Notify::new());
        let budget = OutputBudget::new(100);
        let out: Arc<Outbox<Whole>> = Outbox::new(budget.clone(), notify);
        let rx = producer(out.clone(), CancelToken::new(), vec![60, 60]);
        assert!(rx.recv_timeout(LONG).unwrap(), "the first push fits");
        assert!(blocked(&rx), "the second waits: 120 > 100");
        assert_eq!(budget.used(), 60);
        let t = out.take(1000, Whole::weight);
        assert_eq!(t.items, vec![Whole(60)]);
        assert!(rx.recv_timeout(LONG).unwrap(), "released by the Receive");
        assert_eq!(budget.used(), 60);
        assert!(!t.finished);
        out.push_last(vec![Whole(0)]);
        let t = out.take(1000, Whole::weight);
        assert_eq!(t.items, vec![Whole(60), Whole(0)]);
        assert!(t.finished);
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn a_waiting_producer_is_released_by_cancel_and_by_close() {
        let budget = OutputBudget::new(10);
        let out: Arc<Outbox<Whole>> = Outbox::new(budget.clone(), Arc::new(Notify::new()));
        let cancel = CancelToken::new();
        let rx = producer(out.clone(), cancel.clone(), vec![10, 10]);
        assert!(rx.recv_timeout(LONG).unwrap());
        assert!(blocked(&rx));
        out.cancel(&cancel);
        assert!(
            !rx.recv_timeout(LONG).unwrap(),
            "cancel: the item is dropped"
        );

        let out2: Arc<Outbox<Whole>> = Outbox::new(budget.clone(), Arc::new(Notify::new()));
        let rx = producer(out2.clone(), CancelToken::new(), vec![10, 10]);
        assert!(
            rx.recv_timeout(LONG).unwrap(),
            "an outbox holding nothing may queue one item, whoever filled the shared budget"
        );
        assert!(
            blocked(&rx),
            "the budget is shared: the first outbox still holds 10, the second 10"
        );
        assert_eq!(budget.used(), 20);
        out.close();
        assert!(
            blocked(&rx),
            "out2's own 10 fill the budget: its second item still waits"
        );
        assert_eq!(out2.take(1000, Whole::weight).items, vec![Whole(10)]);
        assert!(
            rx.recv_timeout(LONG).unwrap(),
            "taking out2's item let its second one in"
        );
        let rx = producer(out2.clone(), CancelToken::new(), vec![10]);
        assert!(blocked(&rx));
        out2.close();
        assert!(
            !rx.recv_timeout(LONG).unwrap(),
            "close: the item is dropped"
        );
        assert_eq!(budget.used(), 0);
        assert!(!out2.push_now(Whole(1)), "nothing is queued after close");
    }

    #[test]
    fn a_waiting_producer_is_released_by_its_deadline() {
        let out: Arc<Outbox<Whole>> = Outbox::new(OutputBudget::new(10), Arc::new(Notify::new()));
        let cancel = CancelToken::new();
        // The lane arms the deadline before the line starts producing.
        cancel.set_deadline(Instant::now() + Duration::from_millis(300));
        let rx = producer(out.clone(), cancel.clone(), vec![10, 10]);
        assert!(rx.recv_timeout(LONG).unwrap());
        // Nobody wakes it: the wait itself ends at the deadline.
        assert!(!rx.recv_timeout(LONG).unwrap());
    }

    #[test]
    fn take_fills_a_receive_and_splits_what_splits() {
        let out: Arc<Outbox<Bytes>> = Outbox::new(OutputBudget::new(1000), Arc::new(Notify::new()));
        let c = CancelToken::new();
        assert!(out.push(Bytes(vec![1; 6]), &c));
        assert!(out.push(Bytes(vec![2; 6]), &c));
        let t = out.take(8, Bytes::weight);
        assert_eq!(t.items, vec![Bytes(vec![1; 6]), Bytes(vec![2; 2])]);
        assert_eq!(out.queued_bytes(), 4);
        let t = out.take(8, Bytes::weight);
        assert_eq!(t.items, vec![Bytes(vec![2; 4])]);
        // Items that do not split go whole, one even when it is larger than the Receive.
        let w: Arc<Outbox<Whole>> = Outbox::new(OutputBudget::new(1000), Arc::new(Notify::new()));
        assert!(w.push(Whole(50), &c));
        assert!(w.push(Whole(5), &c));
        assert_eq!(w.take(10, Whole::weight).items, vec![Whole(50)]);
        assert_eq!(w.take(10, Whole::weight).items, vec![Whole(5)]);
    }

    #[test]
    fn pushes_wake_the_receive() {
        let notify = Arc::new(Notify::new());
        let out: Arc<Outbox<Whole>> = Outbox::new(OutputBudget::new(10), notify.clone());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let woke = rt.block_on(async {
            let n = notify.notified();
            tokio::pin!(n);
            n.as_mut().enable();
            let o = out.clone();
            std::thread::spawn(move || o.push(Whole(1), &CancelToken::new()));
            tokio::time::timeout(LONG, n).await.is_ok()
        });
        assert!(woke);
    }
}
