#!/bin/bash
# The cgroup2 mount, from /proc/mounts (hybrid hosts have it at /sys/fs/cgroup/unified).
CG=$(awk '$3 == "cgroup2" {print $2; exit}' /proc/mounts)
# run.sh NAME URL HOST: E set-up already running; wrk 16 keep-alive connections through it.
# 1) 20 s clean run: req/s, proxy and nginx CPU per request from /proc/PID/stat
# 2) 20 s run with perf record (dwarf) on the proxy for 10 s of it
# 3) 10 s run with strace -c -f on the proxy
D=/tmp/fprof; NAME=$1; URL=$2; HOST=$3
EG=${EG:?set EG to a release egress built with debug info}
EP=$(cat $D/egress.pid); NM=$(cat $D/nginx.master.pid); NW=$(cat /proc/$NM/task/$NM/children | awk '{print $1}')
TICK=$(getconf CLK_TCK)
cpu() { awk '{print $14+$15}' /proc/$1/stat; }
WRK() { taskset -c 1 $EG exec --cgroup $CG/egress-prof-f --bpffs /sys/fs/bpf/egress-prof-f --namespace default --service-account sleep -- wrk -t1 -c16 -d$1s --timeout 5s -H "Host: $HOST" $URL; }
steal() { awk '/^cpu /{print $9}' /proc/stat; }
WRK 3 > $D/$NAME-warm.txt
a=$(cpu $EP); b=$(cpu $NW); s0=$(steal); read u0 n0 y0 i0 rest < <(awk '/^cpu /{print $2,$3,$4,$5}' /proc/stat)
WRK 20 > $D/$NAME-clean.txt
a2=$(cpu $EP); b2=$(cpu $NW); s1=$(steal); read u1 n1 y1 i1 rest < <(awk '/^cpu /{print $2,$3,$4,$5}' /proc/stat)
REQ=$(awk '/requests in/{print $1}' $D/$NAME-clean.txt)
echo "clean: $(grep -E 'Requests/sec|requests in|Non-2xx|Socket' $D/$NAME-clean.txt | tr '\n' ' ')"
python3 - <<P
req=$REQ; t=$TICK
print(f"proxy CPU us/req {($a2-$a)/t/req*1e6:.1f}  nginx CPU us/req {($b2-$b)/t/req*1e6:.1f}  steal ticks {$s1-$s0}  idle ticks {$i1-$i0} (2 cpus x 20 s = {2*20*t})")
P
( sleep 5; taskset -c 1 perf record -F 997 --call-graph dwarf,32768 -p $EP -o $D/$NAME.perf.data -- sleep 10 > $D/$NAME-perf.log 2>&1 ) &
PP=$!
WRK 20 > $D/$NAME-perfrun.txt
wait $PP
echo "perf run: $(grep -E 'Requests/sec' $D/$NAME-perfrun.txt)"
taskset -c 1 strace -c -f -o $D/$NAME-strace.txt -p $EP &
ST=$!
sleep 2
WRK 10 > $D/$NAME-strace-run.txt
kill -INT $ST; wait $ST
echo "strace run: $(grep -E 'Requests/sec|requests in' $D/$NAME-strace-run.txt | tr '\n' ' ')"
