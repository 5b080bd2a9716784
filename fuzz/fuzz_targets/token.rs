#![no_main]
//! See simplepush::fuzzing::token for what the input means.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| simplepush::fuzzing::token(data));
