#!/bin/bash
# The cgroup2 mount, from /proc/mounts (hybrid hosts have it at /sys/fs/cgroup/unified).
CG=$(awk '$3 == "cgroup2" {print $2; exit}' /proc/mounts)
# Reproduces the bench's E: nginx (1 worker, CPU 0), egress run (--workers 1, CPU 0), seed policy.
set -e
D=/tmp/fprof
EG=${EG:?set EG to a release egress built with debug info}
mkdir -p $D/www $D/tmp $D/logs $D/config
python3 -c "import sys; b=bytes((b'abcdefghijklmnopqrstuvwxyz0123456789'[i%36]) for i in range(1023))+b'\n'; open('$D/www/get','wb').write(b)"
cd $D
if [ ! -f server.pem ]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=egress-bench-ca -keyout ca-key.pem -out ca.pem 2>/dev/null
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=upstream.bench.test -keyout server-key.pem -out server.csr 2>/dev/null
  printf 'subjectAltName=DNS:upstream.bench.test\nextendedKeyUsage=serverAuth\n' > server.ext
  openssl x509 -req -in server.csr -CA ca.pem -CAkey ca-key.pem -days 1 -out server.pem -extfile server.ext 2>/dev/null
fi
cat > nginx.conf <<N
worker_processes 1;
daemon off;
pid $D/nginx.pid;
error_log $D/logs/error.log warn;
events { worker_connections 16384; }
http {
    access_log off;
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    default_type application/octet-stream;
    client_body_temp_path $D/tmp/body;
    proxy_temp_path $D/tmp/proxy;
    fastcgi_temp_path $D/tmp/fastcgi;
    uwsgi_temp_path $D/tmp/uwsgi;
    scgi_temp_path $D/tmp/scgi;
    server { listen 127.0.0.1:18180 backlog=4096; location = /get { root $D/www; } }
    server { listen 127.0.0.1:18443 ssl backlog=4096; ssl_certificate $D/server.pem; ssl_certificate_key $D/server-key.pem;
             ssl_protocols TLSv1.2 TLSv1.3; ssl_session_cache shared:bench:1m; location = /get { root $D/www; } }
}
N
setsid taskset -c 0 nginx -p $D -c $D/nginx.conf -e $D/logs/error.log </dev/null >$D/logs/nginx.out 2>&1 &
echo $! > $D/nginx.master.pid
cat > config/bench.yaml <<Y
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: bench, namespace: default}
spec:
  hosts: [bench.test]
  addresses: [127.89.0.1]
  ports: [{number: 80, name: http, protocol: HTTP}]
  location: MESH_EXTERNAL
  resolution: STATIC
  endpoints: [{address: 127.0.0.1, ports: {http: 18180}}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: bench-tls, namespace: default}
spec:
  hosts: [upstream.bench.test]
  addresses: [127.89.0.2]
  ports: [{number: 80, name: http, protocol: HTTP, targetPort: 18443}]
  location: MESH_EXTERNAL
  resolution: STATIC
  endpoints: [{address: 127.0.0.1}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: bench-tls, namespace: default}
spec:
  host: upstream.bench.test
  trafficPolicy:
    tls: {mode: SIMPLE, caCertificates: $D/ca.pem, sni: upstream.bench.test}
Y
for se in bench bench-tls; do cat >> config/bench.yaml <<P
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: $se, namespace: default}
spec:
  targetRefs:
  - {kind: ServiceEntry, group: networking.istio.io, name: $se}
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/default/sa/sleep"]
    to:
    - operation:
        methods: ["GET"]
        paths: ["/get"]
  - from:
    - source:
        principals: ["cluster.local/ns/default/sa/admin"]
P
done
RUST_LOG=warn setsid taskset -c 0 $EG run --config $D/config --cgroup $CG/egress-prof-f --bpffs /sys/fs/bpf/egress-prof-f \
  --listen 127.0.0.1:18101 --admin 127.0.0.1:18100 --access-log $D/access.log --verdict-cache on --workers 1 --dns-listen 127.0.0.1:18153 \
  </dev/null >$D/logs/egress.log 2>&1 &
echo $! > $D/egress.pid
for i in $(seq 100); do curl -sf http://127.0.0.1:18100/healthz/ready >/dev/null && break; sleep 0.1; done
echo ready egress $(cat $D/egress.pid) nginx $(cat $D/nginx.master.pid)
