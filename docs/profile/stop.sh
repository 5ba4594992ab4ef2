#!/bin/bash
# The cgroup2 mount, from /proc/mounts (hybrid hosts have it at /sys/fs/cgroup/unified).
CG=$(awk '$3 == "cgroup2" {print $2; exit}' /proc/mounts)
D=/tmp/fprof
EG=${EG:?set EG to a release egress built with debug info}
[ -f $D/egress.pid ] && kill $(cat $D/egress.pid) 2>/dev/null; sleep 1
$EG run --config $D/config --cgroup $CG/egress-prof-f --bpffs /sys/fs/bpf/egress-prof-f --cleanup
[ -f $D/nginx.master.pid ] && kill $(cat $D/nginx.master.pid) 2>/dev/null
sleep 1
find $CG/egress-prof-f -depth -type d -exec rmdir {} \; 2>/dev/null
rm -rf /sys/fs/bpf/egress-prof-f
echo stopped
