//! A request target through path normalization and the path-parameter rule.
//! The property is `egress::fuzzing::normalize`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| egress::fuzzing::normalize(data));
