//! Any bytes: see `sluice_fuzz::exposition` for the property.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| sluice_fuzz::exposition(data));
