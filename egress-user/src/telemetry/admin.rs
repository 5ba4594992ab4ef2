//! The admin endpoint: readiness, the service table, and Prometheus metrics, over HTTP/1.1.
use std::{
    convert::Infallible,
    io,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::{server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use tokio::{
    net::TcpListener,
    sync::{Semaphore, watch},
};
use tracing::{debug, warn};

use prometheus_client::{
    encoding::prometheus_text,
    metrics::{counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};

use super::metrics::{self, Metrics};
use crate::{
    drain::Gate,
    model::{ServiceTable, Upstream},
};

/// Concurrent admin connections; more are closed on accept (the endpoint is for probes and
/// scrapers, not for traffic).
const MAX_ADMIN_CONNECTIONS: usize = 64;
const ADMIN_HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// What the admin endpoint reports on.
pub struct AdminState {
    /// `/healthz/ready` answers 200 while this is true.
    pub ready: Arc<AtomicBool>,
    /// `/config_dump` renders the current table.
    pub services: Arc<ArcSwap<ServiceTable>>,
    /// Kernel counters by name, rendered as `egress_bpf_<name>_total`; names ending in
    /// `_entries` are gauges, rendered as `egress_bpf_<name>`.
    pub kernel_counters: Arc<dyn Fn() -> Vec<(&'static str, u64)> + Send + Sync>,
    /// Kubernetes mode: the enrolled pods, for `/pods` (and `egress status`).
    pub pods: Option<Arc<std::sync::RwLock<Vec<crate::pods::PodStatus>>>>,
}

/// Serves the admin endpoint while `gate` is open (see [`crate::drain::accept`]); returns,
/// dropping the listener, once it is closed. Per-connection errors are logged.
pub async fn serve_admin(
    listener: TcpListener,
    state: Arc<AdminState>,
    mut gate: watch::Receiver<Gate>,
) -> io::Result<()> {
    let slots = Arc::new(Semaphore::new(MAX_ADMIN_CONNECTIONS));
    while let Some(accepted) = crate::drain::accept(&listener, &mut gate).await {
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) if super::is_transient_accept_error(&error) => {
                warn!(%error, "admin accept failed; retrying");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            Err(error) => return Err(error),
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            warn!(%peer, limit = MAX_ADMIN_CONNECTIONS, "too many admin connections; closing");
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            let _slot = slot;
            let service = service_fn(move |req| {
                let state = state.clone();
                async move { Ok::<_, Infallible>(route(&state, &req)) }
            });
            let served = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(ADMIN_HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(error) = served {
                debug!(%peer, %error, "admin connection ended");
            }
        });
    }
    Ok(())
}

fn route<B>(state: &AdminState, req: &Request<B>) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    let known = matches!(
        path,
        "/healthz/ready" | "/config_dump" | "/stats/prometheus" | "/pods"
    );
    if known && req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
    }
    match path {
        "/healthz/ready" if state.ready.load(Ordering::SeqCst) => text(StatusCode::OK, "LIVE\n"),
        "/healthz/ready" => text(StatusCode::SERVICE_UNAVAILABLE, "NOT READY\n"),
        "/config_dump" => config_dump(&state.services.load()),
        "/stats/prometheus" => prometheus(state),
        "/pods" => pods(state),
        _ => text(StatusCode::NOT_FOUND, "not found\n"),
    }
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    respond(
        status,
        "text/plain; charset=utf-8",
        Bytes::from_static(body.as_bytes()),
    )
}

fn respond(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static(content_type),
    );
    response
}

fn config_dump(table: &ServiceTable) -> Response<Full<Bytes>> {
    let services: Vec<_> = table
        .iter()
        .map(|s| {
            let upstream = match &s.upstream {
                Upstream::OriginalDst => json!({ "original_dst": { "port": s.upstream_port } }),
                Upstream::Endpoints(endpoints) => json!({
                    "endpoints": endpoints.iter().map(ToString::to_string).collect::<Vec<_>>()
                }),
                Upstream::DynamicDns => json!({ "dynamic_dns": { "port": s.upstream_port } }),
            };
            json!({
                "id": s.id,
                "namespace": s.namespace,
                "name": s.name,
                "hosts": s.hosts,
                "addresses": s.addresses.iter().map(ToString::to_string).collect::<Vec<_>>(),
                "port": s.port,
                "port_name": s.port_name,
                "protocol": s.protocol.as_str(),
                "upstream": upstream,
            })
        })
        .collect();
    let body = serde_json::to_vec_pretty(&json!({ "services": services })).unwrap_or_default();
    respond(StatusCode::OK, "application/json", Bytes::from(body))
}

/// `{"kubernetes": bool, "pods": [PodStatus...]}`.
fn pods(state: &AdminState) -> Response<Full<Bytes>> {
    let pods = state
        .pods
        .as_ref()
        .map(|p| p.read().unwrap_or_else(|e| e.into_inner()).clone())
        .unwrap_or_default();
    let body = serde_json::to_vec_pretty(&json!({
        "kubernetes": state.pods.is_some(),
        "pods": pods,
    }))
    .unwrap_or_default();
    respond(StatusCode::OK, "application/json", Bytes::from(body))
}

/// The kernel counters, then the registry's metrics, in the Prometheus text format.
fn prometheus(state: &AdminState) -> Response<Full<Bytes>> {
    let mut kernel = Registry::default();
    for (name, value) in (state.kernel_counters)() {
        let name = format!("egress_bpf_{name}");
        if name.ends_with("_entries") {
            kernel.register(name, "Kernel map entries", ConstGauge::new(value));
        } else {
            // The encoder names a counter `<name>_total`.
            kernel.register(name, "Kernel counter", ConstCounter::new(value));
        }
    }
    let mut out = String::with_capacity(4096);
    // Writing to a String does not fail.
    let _ = prometheus_text::encode(&mut out, &kernel);
    Metrics::global().render(&mut out);
    respond(StatusCode::OK, metrics::CONTENT_TYPE, Bytes::from(out))
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use http_body_util::{BodyExt, Empty};
    use hyper::client::conn::http1 as client;
    use tokio::net::TcpStream;

    use super::*;
    use crate::{
        config::Protocol,
        model::{Service, Upstream},
        telemetry::metrics::{Labels, REPORTER, RequestOutcome},
    };

    async fn get(addr: SocketAddr, path: &str) -> (StatusCode, String) {
        let stream = TcpStream::connect(addr).await.expect("connect to admin");
        let (mut sender, conn) = client::handshake(TokioIo::new(stream))
            .await
            .expect("handshake");
        tokio::spawn(conn);
        let req = Request::get(path)
            .header(header::HOST, "admin")
            .body(Empty::<Bytes>::new())
            .expect("request");
        let res = sender.send_request(req).await.expect("admin response");
        let status = res.status();
        let body = res
            .into_body()
            .collect()
            .await
            .expect("admin body")
            .to_bytes();
        (status, String::from_utf8_lossy(&body).into_owned())
    }

    fn service() -> Service {
        Service {
            id: 0,
            namespace: "egress".into(),
            name: "httpbin".into(),
            hosts: vec!["httpbin.org".into()],
            addresses: vec![],
            port: 80,
            port_name: "http".into(),
            protocol: Protocol::Http,
            upstream_port: 8080,
            upstream: Upstream::OriginalDst,
        }
    }

    #[tokio::test]
    async fn readiness_config_dump_metrics_and_404() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind admin");
        let addr = listener.local_addr().expect("admin addr");
        let ready = Arc::new(AtomicBool::new(false));
        let state = Arc::new(AdminState {
            ready: ready.clone(),
            services: Arc::new(ArcSwap::from_pointee(ServiceTable::new(vec![service()]))),
            kernel_counters: Arc::new(|| {
                vec![("redirected_ipv4", 7), ("verdict_cache_entries", 3)]
            }),
            pods: None,
        });
        let server = tokio::spawn(serve_admin(listener, state, crate::drain::always_open()));

        assert_eq!(
            get(addr, "/healthz/ready").await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        ready.store(true, Ordering::SeqCst);
        assert_eq!(
            get(addr, "/healthz/ready").await,
            (StatusCode::OK, "LIVE\n".into())
        );

        let (status, body) = get(addr, "/config_dump").await;
        assert_eq!(status, StatusCode::OK);
        let dump: serde_json::Value = serde_json::from_str(&body).expect("config_dump is JSON");
        assert_eq!(dump["services"][0]["name"], "httpbin");
        assert_eq!(dump["services"][0]["protocol"], "HTTP");
        assert_eq!(
            dump["services"][0]["upstream"]["original_dst"]["port"],
            8080
        );

        Metrics::global()
            .request_series(Labels::new(&[
                ("reporter", REPORTER),
                ("source_principal", "admin-unit-test"),
            ]))
            .record(&RequestOutcome {
                grpc_status: None,
                code: 200,
                flags: "-",
                duration: Duration::from_millis(3),
                request_bytes: 0,
                response_bytes: 10,
            });
        let (status, body) = get(addr, "/stats/prometheus").await;
        assert_eq!(status, StatusCode::OK);
        assert!(
            body.contains(
                "# TYPE egress_bpf_redirected_ipv4_total counter\negress_bpf_redirected_ipv4_total 7\n"
            ),
            "{body}"
        );
        assert!(
            body.contains(
                "# TYPE egress_bpf_verdict_cache_entries gauge\negress_bpf_verdict_cache_entries 3\n"
            ),
            "{body}"
        );
        assert!(
            body.contains(
                "istio_requests_total{reporter=\"waypoint\",source_principal=\"admin-unit-test\",\
                 response_code=\"200\",grpc_response_status=\"\",response_flags=\"-\"} 1\n"
            ),
            "{body}"
        );

        assert_eq!(get(addr, "/nope").await.0, StatusCode::NOT_FOUND);
        server.abort();
    }
}
