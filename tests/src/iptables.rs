//! nat OUTPUT rules for `egress run --capture iptables`, in a chain of their own that is removed
//! with the guard (also when the test panicked).
use std::{
    net::{Ipv4Addr, SocketAddr},
    path::Path,
    process::Command,
    sync::atomic::{AtomicUsize, Ordering},
};

use crate::process::{COMMAND_TIMEOUT, Output, run_bounded};

static NEXT: AtomicUsize = AtomicUsize::new(0);

/// REDIRECT rules sending TCP connects for some addresses to a waypoint listener.
pub struct Redirect {
    chain: String,
}

fn iptables(args: &[&str]) -> Output {
    run_bounded(
        Command::new("iptables")
            .args(["-w", "5", "-t", "nat"])
            .args(args),
        COMMAND_TIMEOUT,
    )
}

impl Redirect {
    /// Connects to `vip:port` from anywhere but `exempt_cgroup` (the waypoint's own cgroup,
    /// a directory under `cgroup_root`) are REDIRECTed to `listen`'s port, the way a sidecar's
    /// iptables capture works.
    pub fn install(
        vip: Ipv4Addr,
        port: u16,
        listen: SocketAddr,
        cgroup_root: &Path,
        exempt_cgroup: &Path,
    ) -> Self {
        let chain = format!(
            "EGT-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::SeqCst)
        );
        iptables(&["-N", &chain]).expect_success("iptables -N (is iptables installed?)");
        let guard = Self { chain };
        let exempt = exempt_cgroup
            .strip_prefix(cgroup_root)
            .expect("the exempt cgroup is under the cgroup2 mount");
        let exempt = format!("/{}", exempt.display());
        let (vip, port, to) = (vip.to_string(), port.to_string(), listen.port().to_string());
        #[rustfmt::skip]
        iptables(&[
            "-A", &guard.chain, "-p", "tcp", "-d", &vip, "--dport", &port,
            "-m", "cgroup", "!", "--path", &exempt,
            "-j", "REDIRECT", "--to-ports", &to,
        ])
        .expect_success("adding the REDIRECT rule");
        iptables(&["-I", "OUTPUT", "1", "-j", &guard.chain]).expect_success("jumping to the chain");
        guard
    }
}

impl Drop for Redirect {
    fn drop(&mut self) {
        // Every step runs even when one fails; what failed is printed.
        for args in [
            vec!["-D", "OUTPUT", "-j", self.chain.as_str()],
            vec!["-F", self.chain.as_str()],
            vec!["-X", self.chain.as_str()],
        ] {
            let out = iptables(&args);
            if !out.success() {
                eprintln!("cleanup: {out:?}");
            }
        }
    }
}
