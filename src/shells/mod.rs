//! `shells`: what runs behind a WS-Man shell. `runner` is the one runtime (workers, lanes,
//! bounded output); `winrs` and `psrp` are the two shells built on it. Each shell factory opens
//! its session through `gates` (the only place a session is opened).
#![forbid(unsafe_code)]

pub mod runner;
