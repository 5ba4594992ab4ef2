//! One request's exchange: its state while it is answered, its metrics and its access-log
//! line (the log phase).
use super::*;

/// The state of one request while it is answered, and its access-log line.
pub(super) struct Exchange {
    log: AccessLog,
    pub(super) inbound: Arc<Inbound>,
    /// This request's metrics, with Istio's standard labels.
    pub(super) labels: RequestSeries,
    /// Their `request_protocol`: `grpc` or `http`.
    pub(super) protocol: RequestProtocol,
    pub(super) entry: AccessLogEntry,
    started: Instant,
    pub(super) activity: Arc<Activity>,
    pub(super) received: Arc<AtomicU64>,
    /// Its line has been written.
    logged: bool,
    drain: DrainSignal,
    /// A gRPC request (`content-type: application/grpc…`): local replies are gRPC statuses.
    grpc: bool,
    /// The response's `grpc-status` + 1 (0: none yet), for `grpc_response_status`.
    grpc_status: Arc<AtomicU32>,
}

impl Exchange {
    pub(super) fn start<B>(waypoint: &Waypoint, inbound: Arc<Inbound>, req: &Request<B>) -> Self {
        let mut entry = inbound.entry(SystemTime::now());
        let headers = req.headers();
        let text = |name: &str| {
            headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned)
        };
        entry.method = Some(req.method().as_str().to_owned());
        entry.path = req.uri().path_and_query().map(|pq| pq.as_str().to_owned());
        entry.protocol = Some(protocol(req.version()));
        entry.x_forwarded_for = text("x-forwarded-for");
        entry.user_agent = text("user-agent");
        entry.request_id = text("x-request-id");
        let grpc = text("content-type").is_some_and(|t| t.starts_with("application/grpc"));
        let protocol = phases::request_protocol(req.version(), headers);
        Self {
            protocol,
            grpc,
            grpc_status: Arc::new(AtomicU32::new(0)),
            log: waypoint.access_log.clone(),
            drain: waypoint.drain.signal(),
            logged: false,
            labels: inbound.request_labels(&inbound.service, protocol),
            inbound,
            entry,
            started: Instant::now(),
            activity: Activity::new(),
            received: Arc::new(AtomicU64::new(0)),
        }
    }

    /// A response of the waypoint's own (Envoy's "local reply"), logged at once.
    pub(super) fn local(mut self, reply: LocalReply) -> Response<ResponseBody> {
        if self.grpc {
            return self.local_grpc(reply);
        }
        let body = Bytes::from(reply.body.into_owned());
        self.entry.response_code = reply.status.as_u16();
        self.entry.response_flags = reply.flag.map(str::to_owned);
        self.entry.response_code_details = Some(reply.details.into_owned());
        self.entry.bytes_sent = body.len() as u64;
        self.finish();

        let mut response = Response::new(Either::Right(Full::new(body)));
        *response.status_mut() = reply.status;
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        if reply.close {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        phases::append_via(headers);
        response
    }

    /// A local reply to a gRPC request, as Envoy sends one: HTTP 200, trailers-only, the
    /// status mapped to gRPC's (`httpToGrpcStatus`: 403 is PERMISSION_DENIED) and the body as
    /// `grpc-message`. gRPC clients read statuses there, not in the HTTP status.
    pub(super) fn local_grpc(mut self, reply: LocalReply) -> Response<ResponseBody> {
        let status = grpc_status_of(reply.status);
        self.grpc_status.store(status + 1, Ordering::Relaxed);
        self.entry.response_code = StatusCode::OK.as_u16();
        self.entry.response_flags = reply.flag.map(str::to_owned);
        self.entry.response_code_details = Some(reply.details.into_owned());
        let message = HeaderValue::from_str(&reply.body)
            .unwrap_or_else(|_| HeaderValue::from_static("local reply"));
        self.finish();
        let mut response = Response::new(empty_body());
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/grpc"),
        );
        headers.insert("grpc-status", HeaderValue::from(status));
        headers.insert("grpc-message", message);
        phases::append_via(headers);
        response
    }

    /// The upstream's response, relayed; the line is logged when its body ends.
    pub(super) fn upstream(
        mut self,
        response: Response<UpstreamBody>,
        idle: std::time::Duration,
    ) -> Response<ResponseBody> {
        let (mut parts, body) = response.into_parts();
        self.entry.response_code = parts.status.as_u16();
        self.entry.response_code_details = Some("via_upstream".into());
        self.entry.upstream_local_address = parts
            .extensions
            .get::<HttpInfo>()
            .map(HttpInfo::local_addr)
            .or_else(|| parts.extensions.get::<UpstreamLocal>().map(|l| l.0));
        parts.extensions = http::Extensions::new();
        parts.version = Version::HTTP_11;
        phases::strip_hop_by_hop(&mut parts.headers);
        phases::append_via(&mut parts.headers);

        let sent = Arc::new(AtomicU64::new(0));
        let activity = self.activity.clone();
        let (grpc, grpc_status) = (self.grpc, self.grpc_status.clone());
        if let Some(status) = body::grpc_status(&parts.headers) {
            // Trailers-only: the status came with the headers.
            grpc_status.store(status.saturating_add(1), Ordering::Relaxed);
        }
        let on_end = {
            let sent = sent.clone();
            Box::new(move |end: BodyEnd| {
                self.entry.bytes_sent = sent.load(Ordering::Relaxed);
                match end {
                    BodyEnd::Complete => {}
                    BodyEnd::Failed => {
                        self.entry.response_flags = Some("UC".into());
                        self.entry.response_code_details = Some(
                            "upstream_reset_after_response_started{connection_termination}".into(),
                        );
                    }
                    BodyEnd::IdleTimeout => {
                        self.entry.response_flags = Some("SI".into());
                        self.entry.response_code_details = Some("stream_idle_timeout".into());
                    }
                    BodyEnd::Dropped => self.entry.response_flags = Some("DC".into()),
                }
                self.finish();
            })
        };
        let mut body = Metered::new(body, sent, activity, idle, on_end);
        if grpc {
            body = body.with_grpc_status(grpc_status);
        }
        Response::from_parts(parts, Either::Left(body))
    }

    pub(super) fn finish(mut self) {
        self.write();
    }

    pub(super) fn write(&mut self) {
        self.logged = true;
        self.entry.duration = self.started.elapsed();
        self.entry.bytes_received = self.received.load(Ordering::Relaxed);
        self.log.log(&self.entry);
        let grpc_status = match self.grpc_status.load(Ordering::Relaxed) {
            0 => None,
            status => Some(status - 1),
        };
        self.labels.record(&RequestOutcome {
            grpc_status,
            code: self.entry.response_code,
            flags: self.entry.response_flags.as_deref().unwrap_or("-"),
            duration: self.entry.duration,
            request_bytes: self.entry.bytes_received,
            response_bytes: self.entry.bytes_sent,
        });
    }
}

impl Drop for Exchange {
    /// A request whose handler is dropped before its line was written was cut off: by the
    /// drain timeout (logged, as Envoy logs a stream it resets), or by the client going away
    /// before the response (not logged, as before).
    fn drop(&mut self) {
        if !self.logged && self.drain.phase() == DrainPhase::Cut {
            self.entry.response_flags = Some("DC".into());
            self.entry.response_code_details =
                Some("downstream_local_disconnect(drain_timeout)".into());
            self.write();
        }
    }
}

/// gRPC's status for an HTTP status (gRPC's "HTTP to gRPC status code mapping", as Envoy's
/// `Grpc::Utility::httpToGrpcStatus`).
fn grpc_status_of(status: StatusCode) -> u32 {
    match status.as_u16() {
        400 => 13,             // INTERNAL
        401 => 16,             // UNAUTHENTICATED
        403 => 7,              // PERMISSION_DENIED
        404 => 12,             // UNIMPLEMENTED
        429 | 502..=504 => 14, // UNAVAILABLE
        _ => 2,                // UNKNOWN
    }
}

fn protocol(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "HTTP/0.9",
        Version::HTTP_10 => "HTTP/1.0",
        Version::HTTP_2 => "HTTP/2",
        Version::HTTP_3 => "HTTP/3",
        _ => "HTTP/1.1",
    }
}
