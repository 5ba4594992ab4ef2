//! UTF-8 text through the Istio YAML/JSON config loader.
//! The property is `egress::fuzzing::config`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| egress::fuzzing::config(data));
