#!/usr/bin/env python3
"""Groups `perf script --no-inline` samples (with call chains) of the egress process.

Each sample goes to exactly one group ("self" attribution): a kernel sample to the syscall it
runs under (the outermost __x64_sys_* / __do_sys_* frame), or to irq/other kernel work;
a user sample to the first frame, walking from the leaf towards the root, that matches a
group pattern (allocation only at the leaf and its libc/allocator callers).
Also prints inclusive ("children") shares for a few subsystems, and the top self symbols."""
import re, sys, collections

USER_GROUPS = [
    ("allocation (malloc/free/realloc)", re.compile(r"^(malloc|free|realloc|calloc|cfree|_int_malloc|_int_free|_int_realloc|malloc_consolidate|tcache_|__libc_malloc|__libc_free|__libc_realloc|__rust_alloc|__rust_dealloc|__rust_realloc|alloc::alloc::|__rdl_|unlink_chunk|sysmalloc|_int_free_merge|_int_free_create|__malloc|__free)")),
    ("access log (format + write)", re.compile(r"egress::telemetry::access_log")),
    ("metrics", re.compile(r"egress::telemetry::metrics|prometheus")),
    ("authorization + policy", re.compile(r"egress::proxy::authz|egress::policy")),
    ("TLS (rustls/ring)", re.compile(r"rustls|^ring::|ring_core|tokio_rustls|_ring_|aes_|gcm_|chacha|ecp_nistz|x25519|sha256_block|sha512_block|bn_mul")),
    ("hyper client + pool (hyper-util legacy)", re.compile(r"hyper_util::client|hyper::client|hyper::proto::h1::role::Client|hyper::proto::h1::dispatch::Client")),
    ("hyper server codec", re.compile(r"hyper::server|hyper_util::server|hyper::proto::h1::role::Server|hyper::proto::h1::dispatch::Server")),
    ("hyper h1 shared (conn/io/encode/decode, side unknown)", re.compile(r"^<?hyper::|^<hyper")),
    ("http/headers types", re.compile(r"^<?http::|^<http::|^httparse")),
    ("egress waypoint phases (proxy/*)", re.compile(r"egress::proxy")),
    ("egress other", re.compile(r"egress::")),
    ("tokio scheduling + io driver + timers", re.compile(r"tokio::|^<tokio|mio::|^<mio")),
    ("tracing", re.compile(r"tracing")),
]

def parse(path):
    sample = []
    with open(path, errors="replace") as f:
        for line in f:
            line = line.rstrip("\n")
            if not line.strip():
                if sample:
                    yield sample
                sample = []
                continue
            if not re.match(r"^\s+[0-9a-f]+ ", line):
                sample = []  # header line
                continue
            parts = line.strip().split(None, 1)
            if len(parts) < 2:
                continue
            sym_dso = parts[1]
            m = re.match(r"(.*) \((.*)\)$", sym_dso)
            sym, dso = (m.group(1), m.group(2)) if m else (sym_dso, "")
            sym = re.sub(r"\+0x[0-9a-f]+$", "", sym)
            sample.append((sym, dso))
    if sample:
        yield sample

def is_kernel(frame):
    return "kernel.kallsyms" in frame[1] or frame[1].startswith("[kernel") or frame[1] == "[unknown]" and frame[0].startswith(("__x64", "entry_"))

SERVER = re.compile(r"hyper::server|hyper_util::server|role::Server|dispatch::Server")
CLIENT = re.compile(r"hyper_util::client|hyper::client|role::Client|dispatch::Client")

def hyper_side(stack):
    """hyper's shared h1 code (Conn, Buffered, encode/decode) belongs to the side whose marker is
    nearest towards the root."""
    for sym, _ in stack:
        if SERVER.search(sym):
            return "hyper server codec"
        if CLIENT.search(sym):
            return "hyper client + pool (hyper-util legacy)"
    return None

LIBC_SYSCALLS = [
    (r"__send|__libc_send|^send$", "sendto"),
    (r"__recv|__libc_recv|^recv$|recvfrom", "recvfrom"),
    (r"writev", "writev"),
    (r"readv", "readv"),
    (r"epoll_wait", "epoll_wait"),
    (r"epoll_ctl", "epoll_ctl"),
    (r"__GI___libc_write|^write$|__libc_write|__write", "write"),
    (r"__GI___libc_read|^read$|__libc_read", "read"),
    (r"clock_gettime", "clock_gettime"),
    (r"accept", "accept4"),
]

def classify(stack):
    leaf = stack[0]
    if is_kernel(leaf):
        # Name the syscall by the first user frame (the libc wrapper): on this kernel most
        # syscalls are inlined into x64_sys_call, so there is no __x64_sys_* frame.
        user = next((s for s, d in stack if not is_kernel((s, d))), "")
        sysname = "no user frame"
        for pat, name in LIBC_SYSCALLS:
            if re.search(pat, user):
                sysname = name
                break
        else:
            if user:
                sysname = "other (" + user[:40] + ")"
        if any(s in ("__schedule", "finish_task_switch.isra.0", "schedule") for s, _ in stack[:4]):
            return "kernel: context switch (at syscall exit / in epoll_wait)"
        if any(s in ("asm_exc_page_fault", "exc_page_fault") for s, _ in stack):
            return "kernel: page faults"
        return "kernel: syscall " + sysname
    for sym, dso in stack:
        if is_kernel((sym, dso)):
            continue
        for name, pat in USER_GROUPS:
            if pat.search(sym):
                if name.startswith(("hyper h1 shared", "http/headers")):
                    side = hyper_side(stack)
                    if side:
                        return side
                return name
    if "libc" in leaf[1] and leaf[0].startswith(("__memmove", "__memcpy", "__memset", "memcpy", "memmove", "__memcmp", "memcmp", "__strlen")):
        return "libc mem*/str* (caller unknown)"
    return "other user (" + leaf[0][:60] + ")"

INCLUSIVE = [
    ("access log incl. its write(2)", re.compile(r"egress::telemetry::access_log")),
    ("authorization + policy incl.", re.compile(r"egress::proxy::authz|egress::policy")),
    ("metrics incl.", re.compile(r"egress::telemetry::metrics")),
    ("hyper-util legacy client incl.", re.compile(r"hyper_util::client::legacy")),
    ("hyper client conn task incl.", re.compile(r"hyper::client::conn")),
    ("hyper server conn incl.", re.compile(r"hyper::server::conn|hyper_util::server")),
    ("epoll_wait incl.", re.compile(r"epoll_wait")),
    ("allocation incl.", USER_GROUPS[0][1]),
]

def main():
    path = sys.argv[1]
    groups = collections.Counter(); selfsym = collections.Counter(); incl = collections.Counter()
    n = 0
    for stack in parse(path):
        n += 1
        groups[classify(stack)] += 1
        selfsym[stack[0][0][:110]] += 1
        syms = [s for s, _ in stack]
        for name, pat in INCLUSIVE:
            if any(pat.search(s) for s in syms):
                incl[name] += 1
    print(f"samples {n}")
    print("## groups (self)")
    for g, c in groups.most_common():
        print(f"{100*c/n:6.2f}%  {g}")
    print("## inclusive")
    for name, _ in INCLUSIVE:
        print(f"{100*incl[name]/n:6.2f}%  {name}")
    print("## top self symbols")
    for s, c in selfsym.most_common(25):
        print(f"{100*c/n:6.2f}%  {s}")

main()
