#!/bin/bash
D=/tmp/fprof
EG=${EG:?set EG to a release egress built with debug info}
[ -f $D/egress.pid ] && kill $(cat $D/egress.pid) 2>/dev/null; sleep 1
$EG run --config $D/config --cgroup /sys/fs/cgroup/unified/egress-prof-f --bpffs /sys/fs/bpf/egress-prof-f --cleanup
[ -f $D/nginx.master.pid ] && kill $(cat $D/nginx.master.pid) 2>/dev/null
sleep 1
find /sys/fs/cgroup/unified/egress-prof-f -depth -type d -exec rmdir {} \; 2>/dev/null
rm -rf /sys/fs/bpf/egress-prof-f
echo stopped
