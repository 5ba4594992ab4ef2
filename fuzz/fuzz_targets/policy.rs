//! Structured policies and requests (via `arbitrary`) through the AuthorizationPolicy engine.
//! The property is `egress::fuzzing::policy`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| egress::fuzzing::policy(data));
