//! cgroup/getpeername4 and getpeername6: a redirected socket reports the address the application
//! dialled, not the waypoint's.
use aya_ebpf::{EbpfContext as _, helpers::bpf_get_socket_cookie, programs::SockAddrContext};
use egress_common::{FAMILY_INET, FAMILY_INET6, Origin, stats};

use crate::{
    connect::V4_MAPPED_WORD,
    maps::{EG_ORIGINS_V1, count},
};

#[inline(always)]
fn origin(ctx: &SockAddrContext, family: u16) -> Option<Origin> {
    // SAFETY: the context is a valid bpf_sock_addr for this program type.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let origin = EG_ORIGINS_V1.get_ptr(cookie)?;
    // SAFETY: pointer from a successful lookup; copied out at once.
    let origin = unsafe { *origin };
    (origin.family == family).then_some(origin)
}

pub fn getpeername4(ctx: &SockAddrContext) {
    let Some(origin) = origin(ctx, FAMILY_INET) else {
        return;
    };
    // SAFETY: valid context, see above.
    let sa = unsafe { &mut *ctx.sock_addr };
    sa.user_ip4 = u32::from_ne_bytes(origin.dst_addr);
    sa.user_port = u32::from(origin.dst_port.to_be());
    count(stats::PEERNAME_REWRITTEN);
}

pub fn getpeername6(ctx: &SockAddrContext) {
    let Some(origin) = origin(ctx, FAMILY_INET6) else {
        return;
    };
    // SAFETY: valid context, see above.
    let sa = unsafe { &mut *ctx.sock_addr };
    sa.user_ip6[0] = 0;
    sa.user_ip6[1] = 0;
    sa.user_ip6[2] = V4_MAPPED_WORD;
    sa.user_ip6[3] = u32::from_ne_bytes(origin.dst_addr);
    sa.user_port = u32::from(origin.dst_port.to_be());
    count(stats::PEERNAME_REWRITTEN);
}
