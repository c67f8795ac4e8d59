//! Any bytes: see `sluice_fuzz::head_scan` for the property.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| sluice_fuzz::head_scan(data));
