//! DNS for ServiceEntry hosts (design §11): VIP allocation, the names the proxy answers, and
//! the DNS listener. The kernel side is `egress-ebpf/src/dns.rs`.
pub mod names;
pub mod server;
pub mod vip;

pub use names::{Answer, DnsNames, NameMatch};
pub use server::{DnsLimits, DnsProxy, Forwarding, ResolverSource};
