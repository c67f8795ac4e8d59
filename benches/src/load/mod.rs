//! The load benchmark harness behind `make bench`: real processes on loopback (nginx as
//! upstream and as the reference proxy, mock-llm for streaming, sluice), `wrk` for closed-loop
//! throughput, our own open-loop generator for latency at fixed rates, and a report; and the
//! comparison of two sluice builds behind `make bench-compare`.

pub mod comparison;
pub mod idle;
pub mod oneshot;
pub mod openloop;
pub mod percore_report;
pub mod procs;
pub mod report;
pub mod sluice;
pub mod soak;
pub mod streams;
pub mod wrk;
