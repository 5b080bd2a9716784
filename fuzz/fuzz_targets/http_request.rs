#![no_main]
//! See simplepush::fuzzing::http_request for what the input means.

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| simplepush::fuzzing::http_request(data));
