//! The DNS listener: one UDP socket and one TCP listener (in host mode on loopback; in a pod,
//! a pair opened in the pod's netns — call [`DnsProxy::serve`] once per pair). Forwarded
//! queries leave from where [`Forwarding`] says: the agent's namespace in host mode, the pod's
//! namespace for a pod's listener (its resolver is reachable from there, not necessarily from
//! the node), so a pod's proxy is made with [`DnsProxy::with_forwarding`].
//!
//! Per query (parsed and built with hickory-proto): a ServiceEntry host is answered here,
//! authoritatively (A: its VIPs or `addresses`, TTL 30 s; AAAA and other types: NOERROR, no
//! records, so clients use IPv4 and no real address goes direct). Anything else is forwarded,
//! byte for byte, to the resolver the client asked (the kernel's record of the client socket),
//! over the transport the client used, and the reply returned unchanged (rcode, TTLs, TC bit:
//! a truncated UDP answer makes the client retry over TCP, which takes the same path).
//! Bounded: query size, queries in flight, upstream timeout (→ SERVFAIL).
use std::{
    io,
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use hickory_proto::{
    op::{Message, MessageType, OpCode, ResponseCode},
    rr::{DNSClass, RData, Record, RecordType, rdata::A},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream, UdpSocket},
    sync::Semaphore,
    time::timeout,
};
use tracing::{debug, warn};

use super::names::{Answer, DnsNames};
use crate::{
    netns::NetnsSockets,
    telemetry::metrics::{Labels, Metrics},
};

/// TTL of the answers for ServiceEntry hosts.
pub const HOST_TTL: u32 = 30;
/// Largest query accepted (UDP or TCP); DNS queries are a few hundred bytes.
pub const MAX_QUERY: usize = 4096;
/// Largest upstream reply relayed (a TCP reply may be up to 64 KiB).
const MAX_REPLY: usize = 65_535;
/// Metric name.
pub const REQUESTS_TOTAL: &str = crate::telemetry::metrics::DNS_REQUESTS_TOTAL;

/// Where the proxy learns which resolver a client asked (the kernel maps).
pub trait ResolverSource: Send + Sync + 'static {
    /// The resolver the client socket at `client` (in the namespace `netns_cookie`) asked.
    fn resolver(&self, netns_cookie: u64, client: SocketAddr, udp: bool) -> Option<SocketAddr>;
}

impl ResolverSource for crate::bpf::Capture {
    fn resolver(&self, netns_cookie: u64, client: SocketAddr, udp: bool) -> Option<SocketAddr> {
        let origin = self.dns_origin(netns_cookie, client, udp)?;
        (origin.service_id == egress_common::DNS_SERVICE_ID)
            .then(|| SocketAddr::new(IpAddr::V4(Ipv4Addr::from(origin.dst_addr)), origin.dst_port))
    }
}

/// Limits of one proxy.
#[derive(Clone, Copy, Debug)]
pub struct DnsLimits {
    pub in_flight: usize,
    pub upstream_timeout: Duration,
}

impl Default for DnsLimits {
    fn default() -> Self {
        Self {
            in_flight: 1024,
            upstream_timeout: Duration::from_secs(5),
        }
    }
}

/// Where the sockets of forwarded queries are made, and so which network namespace the
/// queries leave from.
#[derive(Clone, Debug, Default)]
pub enum Forwarding {
    /// The agent's own namespace (host mode, where it is also the clients').
    #[default]
    Agent,
    /// Another namespace, a pod's: the resolver its clients asked (a cluster DNS service, say)
    /// is reachable from there, and not necessarily from the agent's.
    Namespace(Arc<NetnsSockets>),
}

impl Forwarding {
    /// A UDP socket connected to `resolver`.
    async fn udp(&self, resolver: SocketAddr) -> io::Result<UdpSocket> {
        let any: SocketAddr = match resolver {
            SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
            SocketAddr::V6(_) => (std::net::Ipv6Addr::UNSPECIFIED, 0).into(),
        };
        let socket = match self {
            Forwarding::Agent => UdpSocket::bind(any).await?,
            Forwarding::Namespace(sockets) => {
                let socket = sockets
                    .socket(socket2::Domain::for_address(resolver), socket2::Type::DGRAM)
                    .await?;
                socket.bind(&any.into())?;
                UdpSocket::from_std(socket.into())?
            }
        };
        socket.connect(resolver).await?;
        Ok(socket)
    }

    /// A TCP connection to `resolver`.
    async fn tcp(&self, resolver: SocketAddr) -> io::Result<TcpStream> {
        match self {
            Forwarding::Agent => TcpStream::connect(resolver).await,
            Forwarding::Namespace(sockets) => {
                let socket = sockets
                    .socket(
                        socket2::Domain::for_address(resolver),
                        socket2::Type::STREAM,
                    )
                    .await?;
                tokio::net::TcpSocket::from_std_stream(socket.into())
                    .connect(resolver)
                    .await
            }
        }
    }
}

/// Answers DNS queries: ServiceEntry hosts here, the rest forwarded.
pub struct DnsProxy {
    names: Arc<dyn Fn() -> Arc<DnsNames> + Send + Sync>,
    resolvers: Arc<dyn ResolverSource>,
    limits: DnsLimits,
    in_flight: Arc<Semaphore>,
    forwarding: Forwarding,
}

impl DnsProxy {
    /// A proxy whose forwarded queries leave from the agent's own namespace.
    pub fn new(
        names: Arc<dyn Fn() -> Arc<DnsNames> + Send + Sync>,
        resolvers: Arc<dyn ResolverSource>,
        limits: DnsLimits,
    ) -> Arc<Self> {
        Self::with_forwarding(names, resolvers, limits, Forwarding::Agent)
    }

    /// A proxy whose forwarded queries leave as `forwarding` says (a pod's listener: from the
    /// pod's namespace). Its limits are its own: one pod cannot use up another's.
    pub fn with_forwarding(
        names: Arc<dyn Fn() -> Arc<DnsNames> + Send + Sync>,
        resolvers: Arc<dyn ResolverSource>,
        limits: DnsLimits,
        forwarding: Forwarding,
    ) -> Arc<Self> {
        Arc::new(Self {
            names,
            resolvers,
            in_flight: Arc::new(Semaphore::new(limits.in_flight.max(1))),
            limits,
            forwarding,
        })
    }

    /// Serves DNS on `udp` and `tcp`, whose namespace has the cookie `netns_cookie`, until
    /// either fails.
    pub async fn serve(
        self: Arc<Self>,
        udp: UdpSocket,
        tcp: TcpListener,
        netns_cookie: u64,
    ) -> io::Result<()> {
        let udp = Arc::new(udp);
        let udp_loop = {
            let this = self.clone();
            let udp = udp.clone();
            async move {
                let mut buf = vec![0u8; MAX_QUERY + 1];
                loop {
                    let (len, client) = udp.recv_from(&mut buf).await?;
                    if len > MAX_QUERY {
                        debug!(%client, len, "dns query too large; dropped");
                        continue;
                    }
                    let Ok(permit) = this.in_flight.clone().try_acquire_owned() else {
                        debug!(%client, "dns queries in flight at the limit; dropped");
                        continue;
                    };
                    let query = buf[..len].to_vec();
                    let this = this.clone();
                    let udp = udp.clone();
                    tokio::spawn(async move {
                        if let Some(reply) = this.handle(&query, client, netns_cookie, true).await {
                            let _ = udp.send_to(&reply, client).await;
                        }
                        drop(permit);
                    });
                }
            }
        };
        let tcp_loop = {
            let this = self.clone();
            async move {
                loop {
                    let (stream, client) = tcp.accept().await?;
                    let this = this.clone();
                    tokio::spawn(async move {
                        if let Err(error) = this.tcp_client(stream, client, netns_cookie).await {
                            debug!(%client, %error, "dns over tcp ended");
                        }
                    });
                }
            }
        };
        tokio::select! {
            r = udp_loop => r,
            r = tcp_loop => r,
        }
    }

    async fn tcp_client(
        self: Arc<Self>,
        mut stream: TcpStream,
        client: SocketAddr,
        netns_cookie: u64,
    ) -> io::Result<()> {
        // The resolver is recorded per connection (one-shot in the kernel map): look it up
        // once, for every query on it.
        let resolver = self.resolvers.resolver(netns_cookie, client, false);
        // Bounded: a client gets a few queries per connection and an idle timeout.
        for _ in 0..64 {
            let Ok(len) = timeout(Duration::from_secs(10), stream.read_u16()).await else {
                return Ok(());
            };
            let len = usize::from(len?);
            if len > MAX_QUERY {
                return Err(io::Error::other(format!("query of {len} bytes")));
            }
            let mut query = vec![0u8; len];
            timeout(Duration::from_secs(10), stream.read_exact(&mut query))
                .await
                .map_err(|_| io::Error::other("query read timed out"))??;
            let Ok(_permit) = self.in_flight.clone().try_acquire_owned() else {
                return Err(io::Error::other("dns queries in flight at the limit"));
            };
            let Some(reply) = self.answer(&query, client, resolver, false).await else {
                return Ok(());
            };
            let mut framed = Vec::with_capacity(reply.len() + 2);
            framed.extend_from_slice(&(reply.len() as u16).to_be_bytes());
            framed.extend_from_slice(&reply);
            stream.write_all(&framed).await?;
        }
        Ok(())
    }

    async fn handle(
        &self,
        query: &[u8],
        client: SocketAddr,
        netns_cookie: u64,
        udp: bool,
    ) -> Option<Vec<u8>> {
        let resolver = self.resolvers.resolver(netns_cookie, client, udp);
        self.answer(query, client, resolver, udp).await
    }

    /// The reply to one query, or `None` to send nothing (unparseable).
    async fn answer(
        &self,
        query: &[u8],
        client: SocketAddr,
        resolver: Option<SocketAddr>,
        udp: bool,
    ) -> Option<Vec<u8>> {
        let message = match Message::from_vec(query) {
            Ok(m) => m,
            Err(error) => {
                debug!(%client, %error, "unparseable dns query; dropped");
                return None;
            }
        };
        let (name, qtype) = match message.queries.first() {
            Some(q) => (q.name.to_string(), q.query_type),
            None => (String::new(), RecordType::Unknown(0)),
        };
        let ours = match message.queries.as_slice() {
            [q] if message.metadata.op_code == OpCode::Query
                && message.metadata.message_type == MessageType::Query
                && q.query_class == DNSClass::IN =>
            {
                match (self.names)().answer(&name) {
                    Answer::Host(addrs) => Some(addrs),
                    Answer::Forward => None,
                }
            }
            _ => None,
        };
        let (reply, rcode, via) = match ours {
            Some(addrs) => {
                let reply = local_answer(&message, qtype, &addrs);
                (reply, ResponseCode::NoError, "local".to_owned())
            }
            None => match resolver {
                None => (
                    error_reply(&message, ResponseCode::ServFail),
                    ResponseCode::ServFail,
                    "no_resolver".to_owned(),
                ),
                Some(resolver) => match self.forward(query, resolver, udp).await {
                    Ok(reply) => {
                        let rcode = Message::from_vec(&reply)
                            .map(|m| m.metadata.response_code)
                            .unwrap_or(ResponseCode::NoError);
                        (Some(reply), rcode, resolver.to_string())
                    }
                    Err(error) => {
                        debug!(%client, %resolver, %error, "upstream dns failed");
                        (
                            error_reply(&message, ResponseCode::ServFail),
                            ResponseCode::ServFail,
                            resolver.to_string(),
                        )
                    }
                },
            },
        };
        let qtype_text = qtype.to_string();
        let rcode_text = rcode_name(rcode);
        debug!(
            %client, name = %name, r#type = %qtype_text, rcode = %rcode_text, via = %via,
            tcp = !udp, "dns"
        );
        Metrics::global().add(
            REQUESTS_TOTAL,
            &Labels::new(&[("type", &qtype_text), ("rcode", &rcode_text)]),
            1,
        );
        reply
    }

    async fn forward(&self, query: &[u8], resolver: SocketAddr, udp: bool) -> io::Result<Vec<u8>> {
        let deadline = self.limits.upstream_timeout;
        let exchange = async {
            if udp {
                let socket = self.forwarding.udp(resolver).await?;
                socket.send(query).await?;
                let mut buf = vec![0u8; MAX_REPLY];
                // Bounded: a few stray datagrams with another id are skipped.
                for _ in 0..8 {
                    let len = socket.recv(&mut buf).await?;
                    if len >= 2 && buf[..2] == query[..2] {
                        buf.truncate(len);
                        return Ok(buf);
                    }
                }
                Err(io::Error::other("no reply with the query's id"))
            } else {
                let mut stream = self.forwarding.tcp(resolver).await?;
                let mut framed = Vec::with_capacity(query.len() + 2);
                framed.extend_from_slice(&(query.len() as u16).to_be_bytes());
                framed.extend_from_slice(query);
                stream.write_all(&framed).await?;
                let len = usize::from(stream.read_u16().await?);
                let mut buf = vec![0u8; len];
                stream.read_exact(&mut buf).await?;
                Ok(buf)
            }
        };
        match timeout(deadline, exchange).await {
            Ok(r) => r,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no answer from {resolver} within {deadline:?}"),
            )),
        }
    }
}

/// The rcode as DNS tools print it (`NOERROR`, `SERVFAIL`, ...), for logs and metric labels.
fn rcode_name(rcode: ResponseCode) -> String {
    match rcode {
        ResponseCode::NoError => "NOERROR".into(),
        ResponseCode::FormErr => "FORMERR".into(),
        ResponseCode::ServFail => "SERVFAIL".into(),
        ResponseCode::NXDomain => "NXDOMAIN".into(),
        ResponseCode::NotImp => "NOTIMP".into(),
        ResponseCode::Refused => "REFUSED".into(),
        other => format!("RCODE{}", u16::from(other)),
    }
}

fn response_to(query: &Message) -> Message {
    let mut reply = Message::response(query.metadata.id, query.metadata.op_code);
    reply.metadata.recursion_desired = query.metadata.recursion_desired;
    reply.metadata.recursion_available = true;
    reply.add_queries(query.queries.clone());
    reply
}

fn error_reply(query: &Message, rcode: ResponseCode) -> Option<Vec<u8>> {
    let mut reply = response_to(query);
    reply.metadata.response_code = rcode;
    encode(&reply)
}

fn local_answer(query: &Message, qtype: RecordType, addrs: &[Ipv4Addr]) -> Option<Vec<u8>> {
    let mut reply = response_to(query);
    reply.metadata.authoritative = true;
    if qtype == RecordType::A
        && let Some(q) = query.queries.first()
    {
        for addr in addrs {
            reply.add_answer(Record::from_rdata(
                q.name.clone(),
                HOST_TTL,
                RData::A(A(*addr)),
            ));
        }
    }
    encode(&reply)
}

fn encode(message: &Message) -> Option<Vec<u8>> {
    match message.to_vec() {
        Ok(bytes) => Some(bytes),
        Err(error) => {
            warn!(%error, "encoding a dns reply failed");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::{op::Query, rr::Name};
    use std::str::FromStr;

    fn query(name: &str, qtype: RecordType) -> Message {
        let mut m = Message::query();
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(Name::from_str(name).unwrap(), qtype));
        m
    }

    #[test]
    fn a_host_gets_its_vip_with_ttl_30_and_aaaa_gets_nothing() {
        let q = query("httpbin.org.", RecordType::A);
        let vip: Ipv4Addr = "240.240.1.2".parse().unwrap();
        let reply = Message::from_vec(&local_answer(&q, RecordType::A, &[vip]).unwrap()).unwrap();
        assert_eq!(reply.metadata.id, q.metadata.id);
        assert!(reply.metadata.authoritative);
        assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
        assert_eq!(reply.answers.len(), 1);
        assert_eq!(reply.answers[0].ttl, HOST_TTL);
        assert_eq!(reply.answers[0].data, RData::A(A(vip)));

        let q = query("httpbin.org.", RecordType::AAAA);
        let reply =
            Message::from_vec(&local_answer(&q, RecordType::AAAA, &[vip]).unwrap()).unwrap();
        assert_eq!(reply.metadata.response_code, ResponseCode::NoError);
        assert!(reply.answers.is_empty());
    }

    struct NoResolver;
    impl ResolverSource for NoResolver {
        fn resolver(&self, _: u64, _: SocketAddr, _: bool) -> Option<SocketAddr> {
            None
        }
    }

    #[tokio::test]
    async fn a_query_without_a_known_resolver_is_servfail_and_garbage_is_dropped() {
        let proxy = DnsProxy::new(
            Arc::new(|| Arc::new(DnsNames::default())),
            Arc::new(NoResolver),
            DnsLimits::default(),
        );
        let client: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let q = query("example.com.", RecordType::A);
        let reply = proxy
            .answer(&q.to_vec().unwrap(), client, None, true)
            .await
            .unwrap();
        let reply = Message::from_vec(&reply).unwrap();
        assert_eq!(reply.metadata.response_code, ResponseCode::ServFail);
        assert_eq!(reply.metadata.id, q.metadata.id);
        assert!(proxy.answer(b"\x01", client, None, true).await.is_none());
    }
}
