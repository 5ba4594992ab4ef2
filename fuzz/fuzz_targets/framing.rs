//! Bytes from a client through the request framing gate in front of hyper.
//! The property is `egress::fuzzing::framing`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| egress::fuzzing::framing(data));
