#![no_main]
//! See simplepush::fuzzing::client_message for what the input means.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| simplepush::fuzzing::client_message(data));
