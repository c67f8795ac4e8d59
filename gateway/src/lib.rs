//! sluice: an LLM gateway on Pingora. The binary's parts are exposed as a library so that
//! benches and tests can drive them directly.
#![forbid(unsafe_code)]

pub mod ab_report;
pub mod access_log;
pub mod admin;
pub mod bind;
pub mod config;
pub mod health;
pub mod listener;
pub mod observe;
pub mod otlp;
pub mod proxy;
pub mod reload;
pub mod report;
pub mod server;
pub mod upgrade;
pub mod usage_log;
pub mod warm;
