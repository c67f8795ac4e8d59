//! Any bytes: see `sluice_fuzz::sse` for the property.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| sluice_fuzz::sse(data));
