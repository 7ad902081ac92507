//! `shells::console`: the web console's shell. One engine session on a [`Lane`] of the shared
//! runtime; one line at a time (a second line while one runs is refused, not queued); output
//! formatted as the console formats it (`engine::format`) and kept, in order and numbered, on a
//! byte-bounded screen that a reconnecting page reads again. Output flows from the running
//! line's [`Outbox`] (back-pressure: a line whose output nobody reads waits, as a WinRS line
//! does) onto the screen only when the page asks for it ([`ConsoleShell::read`]).
//!
//! HTTP, cookies and time-outs are `console`'s; this module knows only lines and text.
#![forbid(unsafe_code)]

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use super::runner::{wake, Budget, Item, Lane, Line, Outbox};
use super::ShellSetup;
use crate::engine::format::{error_text, Formatter};
use crate::engine::{CancelToken, ErrorRecord, Event, EventSink, RunOutcome, Session};

/// Bytes of output the screen keeps (older entries are dropped first, as a terminal's
/// scrollback drops its oldest lines).
pub const SCREEN_BYTES: usize = 1024 * 1024;
/// Most output moved from the running line to the screen by one read.
pub const MAX_PULL_BYTES: usize = 256 * 1024;
/// Most bytes of entries one read returns (the page reads again for the rest).
pub const MAX_READ_BYTES: usize = 256 * 1024;
/// Entries the screen keeps at most (however small they are).
pub const SCREEN_ENTRIES: usize = 20_000;
/// Longest command line accepted, in bytes.
pub const MAX_LINE: usize = 16 * 1024;

/// What a piece of the screen is (the page colours each kind its own way).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// The command line the user ran (the page shows it after the prompt).
    Echo,
    Output,
    Error,
    Warning,
    Verbose,
    Debug,
    Information,
    /// keyhole's own notes ("The pipeline has been stopped.").
    Notice,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Echo => "echo",
            Kind::Output => "output",
            Kind::Error => "error",
            Kind::Warning => "warning",
            Kind::Verbose => "verbose",
            Kind::Debug => "debug",
            Kind::Information => "information",
            Kind::Notice => "notice",
        }
    }
}

/// One numbered piece of the screen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub seq: u64,
    pub kind: Kind,
    pub text: String,
}

/// What the running line queues.
#[derive(Debug)]
enum Piece {
    Text(Kind, String),
    /// The line ended; `exit` when it was `exit` / `Exit-PSSession`.
    Done {
        exit: bool,
    },
}

impl Item for Piece {
    fn weight(&self) -> usize {
        match self {
            Piece::Text(_, t) => t.len(),
            Piece::Done { .. } => 0,
        }
    }
    fn split_front(&mut self, max_cost: usize) -> Option<Self> {
        match self {
            Piece::Text(kind, t) => {
                let mut at = max_cost.min(t.len());
                while at > 0 && !t.is_char_boundary(at) {
                    at -= 1;
                }
                if at == 0 {
                    return None;
                }
                let rest = t.split_off(at);
                let front = std::mem::replace(t, rest);
                Some(Piece::Text(*kind, front))
            }
            Piece::Done { .. } => None,
        }
    }
}

/// Why a line was not started.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RunError {
    #[error("a command is running: wait for it, or stop it (Ctrl+C) first")]
    Busy,
    #[error("the command line is longer than {MAX_LINE} bytes")]
    TooLong,
    #[error("the session has ended")]
    Closed,
}

struct Running {
    out: Arc<Outbox<Piece>>,
    cancel: CancelToken,
}

struct Screen {
    entries: VecDeque<Entry>,
    bytes: usize,
    next_seq: u64,
}

impl Screen {
    /// Append an entry (never changed afterwards: a reader's cursor stays meaningful).
    fn push(&mut self, kind: Kind, text: String) {
        if text.is_empty() {
            return;
        }
        self.bytes = self.bytes.saturating_add(text.len());
        self.entries.push_back(Entry {
            seq: self.next_seq,
            kind,
            text,
        });
        self.next_seq = self.next_seq.saturating_add(1);
        while (self.bytes > SCREEN_BYTES || self.entries.len() > SCREEN_ENTRIES)
            && self.entries.len() > 1
        {
            if let Some(e) = self.entries.pop_front() {
                self.bytes = self.bytes.saturating_sub(e.text.len());
            }
        }
    }
}

struct State {
    running: Option<Running>,
    screen: Screen,
    /// `exit` / `Exit-PSSession` ran: the session is over.
    exited: bool,
    closed: bool,
    /// Lines started.
    lines: u64,
}

/// What [`ConsoleShell::read`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Entries after the cursor the page gave, in order.
    pub entries: Vec<Entry>,
    /// Give this back to read what comes next.
    pub cursor: u64,
    /// Output after the page's cursor was dropped from the screen before it was read.
    pub gap: bool,
    /// A line is running (the page shows Stop instead of the prompt).
    pub running: bool,
    /// More entries are ready than this read returned.
    pub more: bool,
    /// The session ran `exit` or was closed.
    pub ended: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The console's shell over one engine session (see the module documentation).
pub struct ConsoleShell {
    lane: Lane<Session>,
    budget: Budget,
    notify: Arc<Notify>,
    state: Mutex<State>,
}

impl ConsoleShell {
    /// A shell over `session` (opened by the gates with `SessionKind::Console`).
    pub fn new(session: Session, setup: ShellSetup) -> ConsoleShell {
        ConsoleShell {
            lane: Lane::new(session, setup.workers, setup.command_timeout, setup.keep),
            budget: setup.budget,
            notify: Arc::new(Notify::new()),
            state: Mutex::new(State {
                running: None,
                screen: Screen {
                    entries: VecDeque::new(),
                    bytes: 0,
                    next_seq: 1,
                },
                exited: false,
                closed: false,
                lines: 0,
            }),
        }
    }

    /// Woken whenever output arrives, a line ends or the shell closes.
    pub fn notify(&self) -> Arc<Notify> {
        self.notify.clone()
    }

    /// Start `line` (echoed on the screen first). Refused while another line runs.
    pub fn run(&self, line: &str) -> Result<(), RunError> {
        if line.len() > MAX_LINE {
            return Err(RunError::TooLong);
        }
        let mut st = lock(&self.state);
        if st.closed || st.exited {
            return Err(RunError::Closed);
        }
        self.pull(&mut st);
        if st.running.is_some() {
            return Err(RunError::Busy);
        }
        st.screen.push(Kind::Echo, line.to_string());
        let out = Outbox::new(self.budget.for_line(), self.notify.clone());
        let cancel = CancelToken::new();
        st.running = Some(Running {
            out: out.clone(),
            cancel: cancel.clone(),
        });
        st.lines = st.lines.saturating_add(1);
        drop(st);
        self.lane.run(
            cancel.clone(),
            Box::new(ConsoleLine {
                line: line.to_string(),
                out,
                cancel,
                formatter: Formatter::new(),
                errors: Vec::new(),
            }),
        );
        wake(&self.notify);
        Ok(())
    }

    /// Stop the running line (its programs are killed). False when nothing was running.
    pub fn stop(&self) -> bool {
        let st = lock(&self.state);
        match &st.running {
            Some(r) => {
                r.out.cancel(&r.cancel);
                true
            }
            None => false,
        }
    }

    /// Whether a line is running (or its output has not all been read yet).
    pub fn busy(&self) -> bool {
        lock(&self.state).running.is_some()
    }

    /// Lines started in this session.
    pub fn lines(&self) -> u64 {
        lock(&self.state).lines
    }

    /// Move what the running line produced onto the screen (at most [`MAX_PULL_BYTES`]).
    fn pull(&self, st: &mut State) {
        let Some(r) = &st.running else {
            return;
        };
        let taken = r.out.take(MAX_PULL_BYTES, Piece::weight);
        let mut exit = false;
        // Consecutive text of one kind becomes one entry (fewer, larger entries).
        let mut pending: Option<(Kind, String)> = None;
        for p in taken.items {
            match p {
                Piece::Text(kind, text) => match &mut pending {
                    Some((k, t)) if *k == kind => t.push_str(&text),
                    _ => {
                        if let Some((k, t)) = pending.replace((kind, text)) {
                            st.screen.push(k, t);
                        }
                    }
                },
                Piece::Done { exit: e } => exit = e,
            }
        }
        if let Some((k, t)) = pending {
            st.screen.push(k, t);
        }
        if taken.finished {
            st.running = None;
            if exit {
                st.exited = true;
            }
        }
    }

    /// The entries after `cursor` (at most [`MAX_READ_BYTES`], at least one), after moving
    /// the running line's output onto the screen.
    pub fn read(&self, cursor: u64) -> Snapshot {
        let mut st = lock(&self.state);
        self.pull(&mut st);
        // The first number still on the screen (the next one when the screen is empty).
        let first = st
            .screen
            .entries
            .front()
            .map_or(st.screen.next_seq, |e| e.seq);
        let gap = first > cursor.saturating_add(1);
        let mut entries = Vec::new();
        let mut bytes = 0usize;
        let mut more = false;
        for e in st.screen.entries.iter().filter(|e| e.seq > cursor) {
            if !entries.is_empty() && bytes.saturating_add(e.text.len()) > MAX_READ_BYTES {
                more = true;
                break;
            }
            bytes = bytes.saturating_add(e.text.len());
            entries.push(e.clone());
        }
        let next = entries.last().map_or(cursor, |e| e.seq).max(cursor);
        Snapshot {
            entries,
            cursor: next,
            gap,
            running: st.running.is_some(),
            more: more
                || st
                    .running
                    .as_ref()
                    .is_some_and(|r| r.out.queued_bytes() > 0),
            ended: st.exited || st.closed,
        }
    }

    /// End the session: stop the running line, drop its output, wake the page.
    pub fn close(&self) {
        let mut st = lock(&self.state);
        st.closed = true;
        if let Some(r) = st.running.take() {
            r.cancel.cancel();
            r.out.close();
        }
        drop(st);
        wake(&self.notify);
    }

    /// Whether the session ended (`exit`, or closed).
    pub fn ended(&self) -> bool {
        let st = lock(&self.state);
        st.exited || st.closed
    }
}

impl Drop for ConsoleShell {
    fn drop(&mut self) {
        self.close();
    }
}

/// One console line: engine events become screen text as they come.
struct ConsoleLine {
    line: String,
    out: Arc<Outbox<Piece>>,
    cancel: CancelToken,
    formatter: Formatter,
    errors: Vec<ErrorRecord>,
}

impl ConsoleLine {
    fn push(&mut self, kind: Kind, text: String) {
        if text.is_empty() {
            return;
        }
        // Waits while the page is not reading (back-pressure); dropped once stopped.
        self.out.push(Piece::Text(kind, text), &self.cancel);
    }

    fn ending(&mut self, outcome: &RunOutcome) -> Vec<Piece> {
        let mut v = Vec::new();
        let tail = self.formatter.finish();
        if !tail.is_empty() {
            v.push(Piece::Text(Kind::Output, tail));
        }
        let record = match outcome {
            RunOutcome::Refused(r) => Some(r.to_error_record()),
            RunOutcome::Failed(rec) => Some(rec.clone()),
            _ => None,
        };
        if let Some(rec) = record {
            if !self.errors.iter().any(|e| e.message == rec.message) {
                v.push(Piece::Text(Kind::Error, error_text(&rec)));
            }
        }
        if *outcome == RunOutcome::Stopped {
            v.push(Piece::Text(
                Kind::Notice,
                "The pipeline has been stopped.\n".into(),
            ));
        }
        v.push(Piece::Done {
            exit: *outcome == RunOutcome::Exit,
        });
        v
    }
}

impl EventSink for ConsoleLine {
    fn event(&mut self, e: Event) {
        match e {
            Event::Output(v) => {
                let t = self.formatter.push(&v);
                self.push(Kind::Output, t);
            }
            Event::Error(rec) => {
                let t = error_text(&rec);
                self.errors.push(rec);
                self.push(Kind::Error, t);
            }
            Event::Warning(m) => self.push(Kind::Warning, format!("WARNING: {m}\n")),
            Event::Verbose(m) => self.push(Kind::Verbose, format!("VERBOSE: {m}\n")),
            Event::Debug(m) => self.push(Kind::Debug, format!("DEBUG: {m}\n")),
            Event::Information(m) => self.push(Kind::Information, format!("{m}\n")),
        }
    }
}

impl Line<Session> for ConsoleLine {
    fn run(&mut self, session: &mut Session, cancel: &CancelToken) -> RunOutcome {
        let line = std::mem::take(&mut self.line);
        session.run_line(&line, self, cancel)
    }

    fn end(mut self: Box<Self>, outcome: RunOutcome) {
        let last = self.ending(&outcome);
        self.out.push_last(last);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::indexing_slicing)]
mod tests {
    use super::*;

    #[test]
    fn text_splits_on_character_boundaries() {
        let mut p = Piece::Text(Kind::Output, "aé b".into());
        // 'é' is two bytes at 1..3: a cut at 2 falls back to 1.
        match p.split_front(2) {
            Some(Piece::Text(Kind::Output, t)) => assert_eq!(t, "a"),
            other => panic!("{other:?}"),
        }
        match &p {
            Piece::Text(_, t) => assert_eq!(t, "é b"),
            other => panic!("{other:?}"),
        }
        let mut p = Piece::Text(Kind::Output, "é".into());
        assert!(p.split_front(1).is_none(), "nothing fits: no empty piece");
        assert!(Piece::Done { exit: false }.split_front(10).is_none());
    }

    #[test]
    fn the_screen_keeps_the_newest_bytes_and_never_renumbers() {
        let mut s = Screen {
            entries: VecDeque::new(),
            bytes: 0,
            next_seq: 1,
        };
        s.push(Kind::Echo, "Get-Date".into());
        s.push(Kind::Output, "a\n".into());
        s.push(Kind::Output, String::new());
        assert_eq!(s.entries.len(), 2, "empty text is no entry");
        assert_eq!(s.entries[1].seq, 2);
        for _ in 0..40 {
            s.push(Kind::Error, "e".repeat(60 * 1024));
            s.push(Kind::Output, "o".repeat(60 * 1024));
        }
        assert!(s.bytes <= SCREEN_BYTES, "{}", s.bytes);
        assert_eq!(
            s.bytes,
            s.entries.iter().map(|e| e.text.len()).sum::<usize>()
        );
        assert_ne!(s.entries[0].kind, Kind::Echo, "the oldest went first");
        let seqs: Vec<u64> = s.entries.iter().map(|e| e.seq).collect();
        assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
        assert_eq!(*seqs.last().unwrap(), 82);
        for _ in 0..SCREEN_ENTRIES + 5 {
            s.push(Kind::Output, "x".into());
        }
        assert_eq!(s.entries.len(), SCREEN_ENTRIES);
    }
}
