//! sk_msg on the sockhash: a message one accelerated socket sends goes straight to its peer's
//! ingress queue, skipping the TCP/IP stack of the loopback hop. When the peer is not in the
//! map (not yet, or no more), the message takes the normal path.
use aya_ebpf::programs::SkMsgContext;
use egress_common::{SockKey, stats};

use crate::{
    maps::{EG_SOCKS_V1, count},
    sockops::remote_port,
};

/// `BPF_F_INGRESS`: queue on the peer socket's receive side.
const BPF_F_INGRESS: u64 = 1;
/// `SK_PASS`, as `bpf_msg_redirect_hash` returns it on success.
const SK_PASS: i64 = 1;

pub fn redirect(ctx: &SkMsgContext) {
    // SAFETY: the context is a valid sk_msg_md for this program type.
    let md = unsafe { &*ctx.msg };
    let mut peer = SockKey {
        local_ip4: md.remote_ip4,
        remote_ip4: md.local_ip4,
        local_port: u32::from(remote_port(md.remote_port)),
        remote_port: md.local_port,
    };
    if EG_SOCKS_V1.redirect_msg(ctx, &mut peer, BPF_F_INGRESS) == SK_PASS {
        count(stats::SOCKMAP_REDIRECTED);
    }
}
