//! Any bytes as a request target: see `sluice_fuzz::request_target` for the property.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| sluice_fuzz::request_target(data));
