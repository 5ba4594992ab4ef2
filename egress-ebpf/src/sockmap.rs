//! sk_msg on the sockhash: a message one accelerated socket sends goes straight to its peer's
//! ingress queue, skipping the TCP/IP stack of the loopback hop — only when sockops paired the
//! connection's two ends (`EG_SHORTCUT_V2`, see sockops.rs for why a 4-tuple alone does not
//! name the peer). Otherwise the message takes the normal path, which always reaches the peer.
use aya_ebpf::{EbpfContext as _, helpers::bpf_get_netns_cookie, programs::SkMsgContext};
use egress_common::{SHORTCUT_PAIRED, SHORTCUT_TCP, SockKey, stats};

use crate::{
    maps::{EG_SHORTCUT_V2, EG_SOCKS_V2, config, count},
    sockops::{BPF_ANY, BPF_NOEXIST, remote_port},
};

/// `BPF_F_INGRESS`: queue on the peer socket's receive side.
const BPF_F_INGRESS: u64 = 1;
/// `SK_PASS`, as `bpf_msg_redirect_hash` returns it on success.
const SK_PASS: i64 = 1;

/// TCP states (include/net/tcp_states.h), as `bpf_sock.state` gives them.
const TCP_ESTABLISHED: u32 = 1;
const TCP_CLOSE_WAIT: u32 = 8;

pub fn redirect(ctx: &SkMsgContext) {
    // SAFETY: the context is a valid sk_msg_md for this program type.
    let md = unsafe { &*ctx.msg };
    // A socket that was reset or has sent its FIN is on no connection that can carry data.
    // SAFETY: sk_msg_md.sk (Linux >= 5.8) is the sending socket, never null.
    let state = unsafe { (*md.__bindgen_anon_3.sk).state };
    if state != TCP_ESTABLISHED && state != TCP_CLOSE_WAIT {
        return;
    }
    let own = SockKey {
        // The sending socket's namespace, as sockops keyed it (sk_msg: Linux >= 5.15).
        // SAFETY: the context is a valid sk_msg_md for this program type.
        netns_cookie: unsafe { bpf_get_netns_cookie(ctx.as_ptr()) },
        local_ip4: md.local_ip4,
        remote_ip4: md.remote_ip4,
        local_port: md.local_port,
        remote_port: u32::from(remote_port(md.remote_port)),
    };
    let mut peer = own.reversed();
    let app_end = match config() {
        Some(config)
            if md.local_ip4.to_ne_bytes() == config.waypoint_addr
                && md.local_port == u32::from(config.waypoint_port) =>
        {
            peer
        }
        Some(_) => own,
        None => {
            // Not ready (the waypoint restarts): whichever end this is, the message goes by TCP
            // and so must every later one of its connection.
            stay_on_tcp(&own);
            stay_on_tcp(&peer);
            return;
        }
    };
    if !claim(&app_end) {
        return;
    }
    if EG_SOCKS_V2.redirect_msg(ctx, &mut peer, BPF_F_INGRESS) == SK_PASS {
        count(stats::SOCKMAP_REDIRECTED);
    } else {
        // The peer left the sockhash (it was closed): this message goes by TCP, later ones too.
        stay_on_tcp(&app_end);
    }
}

/// Whether the connection whose application end is `app_end` is paired. While it is not
/// (yet), this message goes by TCP and the connection is marked to stay there: a later message
/// redirected to the peer's ingress queue would be read before this one.
#[inline(always)]
fn claim(app_end: &SockKey) -> bool {
    if let Some(decided) = decided(app_end) {
        return decided == SHORTCUT_PAIRED;
    }
    // Create-only, like the waypoint's end pairing: whichever comes first decides.
    EG_SHORTCUT_V2
        .insert(app_end, &SHORTCUT_TCP, BPF_NOEXIST)
        .is_err()
        && decided(app_end) == Some(SHORTCUT_PAIRED)
}

/// A message of this connection went by TCP: so do all later ones, in both directions.
#[inline(always)]
fn stay_on_tcp(app_end: &SockKey) {
    let _ = EG_SHORTCUT_V2.insert(app_end, &SHORTCUT_TCP, BPF_ANY);
}

/// What was decided for the connection whose application end is `app_end`, if anything.
#[inline(always)]
fn decided(app_end: &SockKey) -> Option<u32> {
    // SAFETY: pointer from a successful lookup; copied out at once.
    EG_SHORTCUT_V2
        .get_ptr(app_end)
        .map(|value| unsafe { *value })
}
