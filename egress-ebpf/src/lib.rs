//! Library target so `egress-user` can list this crate as a build dependency (cargo then rebuilds
//! the kernel object when these sources change). The programs are the binary target.
#![no_std]
