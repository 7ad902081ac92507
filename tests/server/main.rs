//! Test binary `server`. The WS-Man server in process and as `keyhole serve`: envelopes, TLS, WinRS and PSRP shells, the web console, golden WinRS replies, check-vs-serve, systemd integration and metrics.
//!
//! One binary per area (link time on 2 cores); each module below was once its own test file.

#[path = "../engine_support/mod.rs"]
mod engine_support;
#[path = "../psrp_common/mod.rs"]
mod psrp_common;
#[path = "../fixtures/config/shipped.rs"]
mod shipped;
#[path = "../wsman_common/mod.rs"]
mod wsman_common;

mod builtin_deadlines;
mod check_vs_serve;
mod connection_slots;
mod console_web;
mod golden_wsman_winrs;
mod live;
mod lockout_live;
mod metrics_counts;
mod negotiate_http;
mod output_budgets;
mod parser_budgets;
mod psrp_shell;
mod request_pool;
mod serve_systemd;
mod under_attack;
mod winrs_shell;
mod wsman_server;
mod wsman_tls;
