//! Kernel programs. Each entry is thin: it calls a fallible body and maps the outcome to the
//! program's return convention in one place (cgroup sock_addr: 1 = proceed, 0 = refuse with EPERM).
//! Hooks need Linux >= 5.7 for cgroup `bpf_link`; getpeername hooks need >= 5.8.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]

#[cfg(target_arch = "bpf")]
mod connect;
#[cfg(target_arch = "bpf")]
mod dns;
#[cfg(target_arch = "bpf")]
mod maps;
#[cfg(target_arch = "bpf")]
mod peername;
#[cfg(target_arch = "bpf")]
mod sendmsg;
#[cfg(target_arch = "bpf")]
mod sockmap;
#[cfg(target_arch = "bpf")]
mod sockops;

#[cfg(target_arch = "bpf")]
mod entries {
    use aya_ebpf::{
        macros::{cgroup_skb, cgroup_sock_addr, sk_msg, sock_ops},
        programs::{SkBuffContext, SkMsgContext, SockAddrContext, SockOpsContext},
    };

    use crate::{connect, dns, peername, sendmsg, sockmap, sockops};

    /// Allow the operation to proceed (possibly with a rewritten address).
    const PROCEED: i32 = 1;
    /// Refuse the operation: the syscall fails with EPERM.
    const REFUSE: i32 = 0;

    fn verdict(r: Result<(), ()>) -> i32 {
        match r {
            Ok(()) => PROCEED,
            Err(()) => REFUSE,
        }
    }

    #[cgroup_sock_addr(connect4)]
    pub fn eg_connect4(ctx: SockAddrContext) -> i32 {
        verdict(connect::connect4(&ctx))
    }

    #[cgroup_sock_addr(connect6)]
    pub fn eg_connect6(ctx: SockAddrContext) -> i32 {
        verdict(connect::connect6(&ctx))
    }

    #[cgroup_sock_addr(sendmsg4)]
    pub fn eg_sendmsg4(ctx: SockAddrContext) -> i32 {
        verdict(sendmsg::sendmsg4(&ctx))
    }

    #[cgroup_sock_addr(sendmsg6)]
    pub fn eg_sendmsg6(ctx: SockAddrContext) -> i32 {
        verdict(sendmsg::sendmsg6(&ctx))
    }

    #[sock_ops]
    pub fn eg_sockops(ctx: SockOpsContext) -> u32 {
        sockops::sockops(&ctx);
        // sock_ops programs return 1 for "handled"; the value does not affect the connection.
        1
    }

    #[sk_msg]
    pub fn eg_skmsg(ctx: SkMsgContext) -> u32 {
        sockmap::redirect(&ctx);
        // SK_PASS: redirected if the helper found the peer, else the normal path.
        1
    }

    #[cgroup_sock_addr(getpeername4)]
    pub fn eg_getpeername4(ctx: SockAddrContext) -> i32 {
        peername::getpeername4(&ctx);
        // getpeername hooks must return 1.
        PROCEED
    }

    #[cgroup_sock_addr(getpeername6)]
    pub fn eg_getpeername6(ctx: SockAddrContext) -> i32 {
        peername::getpeername6(&ctx);
        PROCEED
    }

    #[cgroup_sock_addr(recvmsg4)]
    pub fn eg_recvmsg4(ctx: SockAddrContext) -> i32 {
        dns::recvmsg4(&ctx);
        // recvmsg hooks must return 1.
        PROCEED
    }

    #[cgroup_sock_addr(recvmsg6)]
    pub fn eg_recvmsg6(ctx: SockAddrContext) -> i32 {
        dns::recvmsg6(&ctx);
        PROCEED
    }

    #[cgroup_skb(egress)]
    pub fn eg_dns_egress(ctx: SkBuffContext) -> i32 {
        dns::egress(&ctx);
        // Every packet passes: this program only records.
        1
    }

    #[cfg(not(test))]
    #[panic_handler]
    fn panic(_info: &core::panic::PanicInfo) -> ! {
        loop {}
    }

    #[unsafe(link_section = "license")]
    #[unsafe(no_mangle)]
    static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
}

/// The crate is only meaningful for the BPF target; on the host it is an empty binary so that
/// `cargo clippy --workspace` and `cargo build --workspace` succeed.
#[cfg(not(target_arch = "bpf"))]
fn main() {}
