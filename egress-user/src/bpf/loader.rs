//! Load, attach and pin. Start-up replaces whatever an earlier run pinned without a window in
//! which capture is off: the new links are attached and pinned before the old ones are removed.
use std::{
    fs::{self, File},
    io,
    net::SocketAddrV4,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, SockHash},
    programs::{
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, CgroupSockAddr, SkMsg, SockOps,
        links::{FdLink, PinnedLink},
        sk_msg::SkMsgLink,
    },
};
use egress_common::names;
use tracing::{debug, info};

use super::{BpfError, ServiceRoute, kernel_log, maps::Maps};
use crate::cgroup;

/// The kernel object, built by build.rs with the pinned nightly and bpf-linker.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/egress"));

/// Directory under the pin directory that holds the pinned links.
pub(super) const LINKS_DIR: &str = "links";

/// Suffix of a link pinned by a start-up that has not finished replacing the old one.
/// (bpffs refuses names with dots.)
const NEXT_SUFFIX: &str = "_next";

/// How the kernel treats an identity anchor (`IDENTITY_F_*`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AnchorFlags {
    /// Verdicts for it may be cached in the kernel (it has a principal).
    pub cacheable: bool,
    /// An enrolled workload (a Kubernetes pod): under enrollment-only capture
    /// ([`Capture::set_enrolled_only`]) only tasks below such an anchor are captured.
    pub enrolled: bool,
}

impl AnchorFlags {
    fn bits(self) -> u32 {
        let mut bits = 0;
        if self.cacheable {
            bits |= egress_common::IDENTITY_F_CACHEABLE;
        }
        if self.enrolled {
            bits |= egress_common::IDENTITY_F_ENROLLED;
        }
        bits
    }
}

/// Capture attached to one cgroup, with handles on its pinned maps. Dropping it leaves the
/// links and maps pinned: capture (and fail-closed refusal) outlives the process.
pub struct Capture {
    pub(super) maps: Maps,
    pin_dir: PathBuf,
    cgroup: PathBuf,
}

impl Capture {
    /// Attaches the kernel programs to `cgroup`, with maps and links pinned under `pin_dir`.
    /// Maps pinned by an earlier run are reused (their contents survive a restart); links pinned
    /// by an earlier run are replaced.
    ///
    /// With `attach_programs` false the maps are loaded and pinned but no program is attached
    /// (capture by iptables); links an earlier run pinned there are then an error, not replaced.
    ///
    /// The loading itself runs in a short-lived child process, `egress __install` (see
    /// [`install_pinned`]): it parses the kernel's BTF (several MiB of transient memory) and
    /// leaves nothing behind but the pins, which this process then opens. The long-running
    /// waypoint never carries the loader's peak memory.
    ///
    /// With `kernel_log` the programs log each decision (see [`super::spawn_kernel_log_reader`]).
    pub fn install(
        cgroup_dir: &Path,
        pin_dir: &Path,
        verdict_cache_size: Option<u32>,
        attach_programs: bool,
        sockmap: bool,
        kernel_log: bool,
    ) -> Result<Self, BpfError> {
        run_installer(
            cgroup_dir,
            pin_dir,
            verdict_cache_size,
            attach_programs,
            sockmap,
            kernel_log,
        )?;
        let maps = Maps::open(pin_dir)?;
        maps.set_sockmap(sockmap && attach_programs)?;
        Ok(Self {
            maps,
            pin_dir: pin_dir.to_owned(),
            cgroup: cgroup_dir.to_owned(),
        })
    }
}

/// `egress __install`: loads the kernel object, pins its maps under `pin_dir` (reusing pinned
/// ones) and, with `attach_programs`, attaches the programs to `cgroup_dir` and pins the links,
/// replacing an earlier run's without a window. With `sockmap`, the sk_msg program is attached
/// to the sockhash for as long as that map lives: the sockops program holds it, so until the
/// next run replaces the links. With `kernel_log`, the programs log their decisions through
/// aya-log (its `AYA_LOG_LEVEL` global is set before load; 0 otherwise, and the verifier removes
/// the log code). Returns once everything is pinned; the caller exits.
pub fn install_pinned(
    cgroup_dir: &Path,
    pin_dir: &Path,
    verdict_cache_size: Option<u32>,
    attach_programs: bool,
    sockmap: bool,
    kernel_log: bool,
) -> Result<(), BpfError> {
    cgroup::ensure_bpffs(pin_dir)?;
    let links_dir = pin_dir.join(LINKS_DIR);
    fs::create_dir_all(&links_dir).map_err(|source| BpfError::Pin {
        what: "link directory",
        path: links_dir.clone(),
        source,
    })?;

    let map_paths: Vec<(&'static str, PathBuf)> = names::MAPS
        .iter()
        .map(|name| (*name, pin_dir.join(name)))
        .collect();
    let mut loader = EbpfLoader::new();
    for (name, path) in &map_paths {
        loader.map_pin_path(name, path.as_path());
    }
    if let Some(size) = verdict_cache_size {
        // Applies when the map is created; a pinned one keeps its size.
        loader.map_max_entries(names::MAP_VERDICTS, size.max(1));
    }
    let level = kernel_log::level(kernel_log);
    loader.override_global(kernel_log::LEVEL_GLOBAL, &level, true);
    let mut ebpf = loader.load(OBJECT).map_err(|source| BpfError::Load {
        pin_dir: pin_dir.to_owned(),
        source: Box::new(source),
    })?;
    for name in names::RETIRED_MAPS {
        remove_pin(&pin_dir.join(name))?;
    }

    if !attach_programs {
        let pinned = fs::read_dir(&links_dir)
            .map(|entries| entries.flatten().next().is_some())
            .unwrap_or(false);
        if pinned {
            return Err(BpfError::LinksPinned(pin_dir.to_owned()));
        }
        info!(pins = %pin_dir.display(), "maps loaded; no program attached (iptables capture)");
        return Ok(());
    }

    let cgroup_file = File::open(cgroup_dir).map_err(|source| BpfError::OpenCgroup {
        path: cgroup_dir.to_owned(),
        source,
    })?;

    // A start-up that died half-way may have left `_next` pins; the pins without suffix
    // still hold capture, so these can go first.
    for name in names::PROGRAMS {
        remove_pin(&links_dir.join(format!("{name}{NEXT_SUFFIX}")))?;
    }

    for name in names::PROGRAMS {
        let link = attach(&mut ebpf, name, &cgroup_file, cgroup_dir)?;
        let next = links_dir.join(format!("{name}{NEXT_SUFFIX}"));
        link.pin(&next).map_err(|e| BpfError::Pin {
            what: "link",
            path: next.clone(),
            source: io::Error::other(e.to_string()),
        })?;
    }
    // Both generations are attached now. Replace the old pins with the new links.
    let mut replaced = 0;
    for name in names::PROGRAMS {
        let final_path = links_dir.join(name);
        let next = links_dir.join(format!("{name}{NEXT_SUFFIX}"));
        if final_path.exists() {
            replaced += 1;
        }
        remove_pin(&final_path)?;
        let link = PinnedLink::from_pin(&next).map_err(|e| BpfError::OpenPinned {
            what: format!("link {name}"),
            path: next.clone(),
            source: io::Error::other(e.to_string()),
        })?;
        FdLink::from(link)
            .pin(&final_path)
            .map_err(|e| BpfError::Pin {
                what: "link",
                path: final_path.clone(),
                source: io::Error::other(e.to_string()),
            })?;
        remove_pin(&next)?;
    }
    if replaced > 0 {
        info!(replaced, "replaced links pinned by an earlier run");
    }

    if sockmap {
        // The attachment outlives this process: the sockhash holds the program, and the
        // sockops program (pinned through its link) holds the sockhash.
        std::mem::forget(attach_sk_msg(&mut ebpf)?);
    }
    info!(cgroup = %cgroup_dir.display(), pins = %pin_dir.display(), "capture attached");
    Ok(())
}

impl Capture {
    /// Tells the kernel where the waypoint listens and which cgroup it runs in (exempt).
    pub fn set_waypoint(&self, addr: SocketAddrV4, cgroup_id: u64) -> Result<(), BpfError> {
        self.maps.set_waypoint(addr, cgroup_id)
    }

    /// DNS capture (`--dns-capture`): with `on`, captured tasks' DNS (port 53) goes to the DNS
    /// listener at `listen`; off, it is left alone.
    pub fn set_dns(&self, listen: SocketAddrV4, on: bool) -> Result<(), BpfError> {
        self.maps.set_dns(listen, on)
    }

    /// The resolver a DNS client asked, by the client's (netns cookie, address) as the DNS
    /// listener sees it: `udp` from the datagram bookkeeping, else from the TCP peer map
    /// (one-shot, as for the waypoint).
    pub fn dns_origin(
        &self,
        netns_cookie: u64,
        client: std::net::SocketAddr,
        udp: bool,
    ) -> Option<egress_common::Origin> {
        let std::net::SocketAddr::V4(client) = client else {
            return None;
        };
        if udp {
            self.maps.dns_peer(netns_cookie, client)
        } else {
            self.maps.take_origin(netns_cookie, client)
        }
    }

    /// Makes the kernel capture exactly these ServiceEntry addresses and ports.
    pub fn sync_services(&self, routes: &[ServiceRoute]) -> Result<(), BpfError> {
        self.maps.sync_services(routes)
    }

    /// Istio's `outboundTrafficPolicy.mode`: REGISTRY_ONLY refuses, in the kernel, connects
    /// from the captured cgroup to anything that is no ServiceEntry address, except `allowed`.
    pub fn set_outbound_policy(
        &self,
        registry_only: bool,
        allowed: &[crate::config::IpNet],
    ) -> Result<(), BpfError> {
        self.maps.set_outbound_policy(registry_only, allowed)
    }

    /// Starts a new policy generation in the kernel (stale cached verdicts are ignored at once).
    pub fn set_generation(&self, generation: u64) -> Result<(), BpfError> {
        self.maps.set_generation(generation)
    }

    /// Makes the kernel's identity anchors exactly these (cgroup id, cacheable), none enrolled
    /// (host mode). Enrolled anchors ([`Capture::register_anchor`] with
    /// [`AnchorFlags::enrolled`]) are left alone: [`Capture::remove_anchor`] removes those.
    pub fn sync_anchors(&self, anchors: &[(u64, bool)]) -> Result<(), BpfError> {
        let anchors: Vec<(u64, u32)> = anchors
            .iter()
            .map(|(id, cacheable)| {
                let flags = AnchorFlags {
                    cacheable: *cacheable,
                    enrolled: false,
                };
                (*id, flags.bits())
            })
            .collect();
        self.maps.sync_anchors(&anchors)
    }

    /// Makes the kernel's identity anchors exactly these, each with its flags (Kubernetes mode:
    /// pod anchors are enrolled).
    pub fn sync_anchors_flagged(&self, anchors: &[(u64, AnchorFlags)]) -> Result<(), BpfError> {
        let anchors: Vec<(u64, u32)> = anchors.iter().map(|(id, f)| (*id, f.bits())).collect();
        self.maps.sync_anchors(&anchors)
    }

    /// Registers (or updates) one identity anchor: the cgroup `cgroup_id` and every cgroup below
    /// it (up to a deeper anchor) carry its identity in the kernel. For Kubernetes pods:
    /// [`AnchorFlags::enrolled`] makes the pod captured under enrollment-only capture.
    pub fn register_anchor(&self, cgroup_id: u64, flags: AnchorFlags) -> Result<(), BpfError> {
        self.maps.insert_anchor(cgroup_id, flags.bits())
    }

    /// Removes one identity anchor and every verdict cached for it (a pod deleted). Returns how
    /// many cached verdicts went with it.
    pub fn remove_anchor(&self, cgroup_id: u64) -> Result<usize, BpfError> {
        self.maps.remove_anchor(cgroup_id)
    }

    /// Enrollment-only capture (Kubernetes mode): with `on`, connect4/6 and sendmsg4/6 leave
    /// every task alone that is not below an anchor registered with [`AnchorFlags::enrolled`]
    /// (no redirect, no REGISTRY_ONLY refusal). Off (host mode): the whole attached cgroup is
    /// captured. Kept in the pinned config across restarts until set again.
    pub fn set_enrolled_only(&self, on: bool) -> Result<(), BpfError> {
        self.maps.set_enrolled_only(on)
    }

    /// Caches an L4-decidable deny for (identity anchor, service, port).
    pub fn cache_deny(
        &self,
        identity_id: u64,
        service_id: u32,
        port: u16,
        generation: u64,
    ) -> Result<(), BpfError> {
        self.maps.deny(
            egress_common::VerdictKey {
                identity_id,
                service_id,
                port,
                _pad: 0,
            },
            generation,
        )
    }

    /// Drops cached verdicts of other generations; returns how many are left.
    pub fn sweep_verdicts(&self, generation: u64) -> Result<usize, BpfError> {
        self.maps.sweep_verdicts(generation)
    }

    /// Kernel counters by reason name, plus the verdict cache's entry count.
    pub fn counters(&self) -> Vec<(&'static str, u64)> {
        let mut counters = self.maps.counters();
        counters.push(("verdict_cache_entries", self.maps.verdict_entries() as u64));
        counters
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    pub fn cgroup(&self) -> &Path {
        &self.cgroup
    }
}

fn attach(
    ebpf: &mut aya::Ebpf,
    name: &'static str,
    cgroup_file: &File,
    cgroup_dir: &Path,
) -> Result<FdLink, BpfError> {
    let program = ebpf
        .program_mut(name)
        .ok_or(BpfError::MissingProgram { name })?;
    let attach_err = |source| BpfError::Attach {
        name,
        cgroup: cgroup_dir.to_owned(),
        source,
    };
    let load_err = |source| BpfError::LoadProgram { name, source };
    // cgroup bpf_links are always multi-attach; the kernel wants mode flags of 0 for them.
    let link: FdLink = if let Ok(p) = <&mut CgroupSockAddr>::try_from(&mut *program) {
        p.load().map_err(load_err)?;
        let id = p
            .attach(cgroup_file, CgroupAttachMode::Single)
            .map_err(attach_err)?;
        p.take_link(id)
            .map_err(attach_err)?
            .try_into()
            .map_err(|source| BpfError::Link { name, source })?
    } else if let Ok(p) = <&mut CgroupSkb>::try_from(&mut *program) {
        p.load().map_err(load_err)?;
        let id = p
            .attach(
                cgroup_file,
                CgroupSkbAttachType::Egress,
                CgroupAttachMode::Single,
            )
            .map_err(attach_err)?;
        p.take_link(id)
            .map_err(attach_err)?
            .try_into()
            .map_err(|source| BpfError::Link { name, source })?
    } else {
        let p: &mut SockOps = program.try_into().map_err(load_err)?;
        p.load().map_err(load_err)?;
        let id = p
            .attach(cgroup_file, CgroupAttachMode::Single)
            .map_err(attach_err)?;
        p.take_link(id)
            .map_err(attach_err)?
            .try_into()
            .map_err(|source| BpfError::Link { name, source })?
    };
    debug!(program = name, "attached");
    Ok(link)
}

/// Removes a pin; a missing one is fine.
fn remove_pin(path: &Path) -> Result<(), BpfError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(BpfError::Cleanup {
            path: path.to_owned(),
            source,
        }),
    }
}

impl super::VerdictSink for Capture {
    fn deny(&self, identity_id: u64, service_id: u32, port: u16, generation: u64) {
        match self.cache_deny(identity_id, service_id, port, generation) {
            Ok(()) => debug!(
                identity_id,
                service_id, port, generation, "deny cached in the kernel"
            ),
            Err(error) => {
                tracing::warn!(%error, "caching a deny in the kernel failed (only speed is lost)")
            }
        }
    }
}

/// Detaches capture and removes every pin under `pin_dir` (`egress run --cleanup`).
/// Returns how many pins were removed.
pub fn cleanup(pin_dir: &Path) -> Result<usize, BpfError> {
    let mut removed = 0;
    let links_dir = pin_dir.join(LINKS_DIR);
    if links_dir.is_dir() {
        for entry in fs::read_dir(&links_dir).map_err(|source| BpfError::Cleanup {
            path: links_dir.clone(),
            source,
        })? {
            let entry = entry.map_err(|source| BpfError::Cleanup {
                path: links_dir.clone(),
                source,
            })?;
            remove_pin(&entry.path())?;
            removed += 1;
        }
        let _ = fs::remove_dir(&links_dir);
    }
    for name in names::MAPS.iter().chain(names::RETIRED_MAPS.iter()) {
        let path = pin_dir.join(name);
        if path.exists() {
            remove_pin(&path)?;
            removed += 1;
        }
    }
    let _ = fs::remove_dir(pin_dir);
    Ok(removed)
}

/// Loads the sk_msg program and attaches it to the (pinned) sockhash, replacing the program an
/// earlier run attached there.
fn attach_sk_msg(ebpf: &mut Ebpf) -> Result<SkMsgLink, BpfError> {
    let map = ebpf
        .take_map(names::MAP_SOCKS)
        .ok_or(BpfError::MissingMap {
            name: names::MAP_SOCKS,
        })?;
    let socks: SockHash<MapData, egress_common::SockKey> =
        SockHash::try_from(map).map_err(BpfError::map(names::MAP_SOCKS))?;
    let name = names::PROG_SKMSG;
    let program: &mut SkMsg = ebpf
        .program_mut(name)
        .ok_or(BpfError::MissingProgram { name })?
        .try_into()
        .map_err(|source| BpfError::LoadProgram { name, source })?;
    program
        .load()
        .map_err(|source| BpfError::LoadProgram { name, source })?;
    let id = program
        .attach(socks.fd())
        .map_err(|source| BpfError::Attach {
            name,
            cgroup: PathBuf::from(names::MAP_SOCKS),
            source,
        })?;
    let link = program.take_link(id).map_err(|source| BpfError::Attach {
        name,
        cgroup: PathBuf::from(names::MAP_SOCKS),
        source,
    })?;
    Ok(link)
}

/// `egress __object --output PATH`: writes the kernel object this binary loads, for tools that
/// inspect it (the libbpf cross-check test).
pub fn write_object(path: &Path) -> Result<(), BpfError> {
    fs::write(path, OBJECT).map_err(|source| BpfError::WriteObject {
        path: path.to_owned(),
        source,
    })
}

/// How long `egress __install` may take (loading includes the verifier).
const INSTALLER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

/// Runs `egress __install` (this same binary) and waits for it. Its log lines are passed on;
/// its error output becomes the error.
fn run_installer(
    cgroup_dir: &Path,
    pin_dir: &Path,
    verdict_cache_size: Option<u32>,
    attach_programs: bool,
    sockmap: bool,
    kernel_log: bool,
) -> Result<(), BpfError> {
    let exe = std::env::current_exe().map_err(BpfError::Installer)?;
    let mut command = std::process::Command::new(&exe);
    command
        .arg("__install")
        .arg("--cgroup")
        .arg(cgroup_dir)
        .arg("--bpffs")
        .arg(pin_dir)
        .args([
            "--programs",
            if attach_programs { "attach" } else { "none" },
        ])
        .args(["--sockmap", if sockmap { "on" } else { "off" }])
        .args(["--kernel-log", if kernel_log { "on" } else { "off" }])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped());
    if let Some(size) = verdict_cache_size {
        command.args(["--verdict-cache-size", &size.to_string()]);
    }
    let mut child = command.spawn().map_err(BpfError::Installer)?;
    // Read stderr on a thread so a chatty child never blocks on a full pipe.
    let mut stderr = child.stderr.take();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(stderr) = stderr.as_mut() {
            let _ = io::Read::read_to_string(stderr, &mut text);
        }
        text
    });
    let started = std::time::Instant::now();
    let status = loop {
        match child.try_wait().map_err(BpfError::Installer)? {
            Some(status) => break status,
            None if started.elapsed() > INSTALLER_TIMEOUT => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(BpfError::InstallerFailed {
                    status: format!("killed after {INSTALLER_TIMEOUT:?}"),
                    output: reader.join().unwrap_or_default(),
                });
            }
            None => std::thread::sleep(std::time::Duration::from_millis(5)),
        }
    };
    let output = reader.join().unwrap_or_default();
    if !status.success() {
        return Err(BpfError::InstallerFailed {
            status: status.to_string(),
            output,
        });
    }
    // The child logs as this process would (same RUST_LOG); pass its lines on.
    crate::output::stderr(format_args!("{output}"));
    Ok(())
}

#[cfg(test)]
mod tests {
    use egress_common::{IDENTITY_F_CACHEABLE, IDENTITY_F_ENROLLED};

    use super::AnchorFlags;

    #[test]
    fn anchor_flags_are_the_kernel_bits() {
        let bits = |cacheable, enrolled| {
            AnchorFlags {
                cacheable,
                enrolled,
            }
            .bits()
        };
        assert_eq!(bits(false, false), 0);
        assert_eq!(bits(true, false), IDENTITY_F_CACHEABLE);
        assert_eq!(bits(false, true), IDENTITY_F_ENROLLED);
        assert_eq!(bits(true, true), IDENTITY_F_CACHEABLE | IDENTITY_F_ENROLLED);
    }
}
