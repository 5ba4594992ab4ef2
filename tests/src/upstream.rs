//! A real HTTP/1.1 server on loopback that answers every request with what it received and
//! remembers each one, so a test can tell whether (and how) a request arrived.
use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Duration,
};

/// Idle time after which the server closes a kept-alive connection.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest request head the server reads.
const MAX_HEAD: usize = 64 << 10;
/// Largest request body the server reads (and keeps).
const MAX_BODY: usize = 64 << 20;

/// One request as the upstream saw it.
#[derive(Clone, Debug)]
pub struct Hit {
    pub method: String,
    pub path: String,
    /// The `Host` header, when there was one.
    pub host: Option<String>,
    /// Every header, names lower-cased, in order.
    pub headers: Vec<(String, String)>,
    /// The address the connection came from.
    pub peer: SocketAddr,
    /// The request body (`content-length` framing).
    pub body: Vec<u8>,
}

impl Hit {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key.eq_ignore_ascii_case(name))
            .map(|(_, value)| value.as_str())
    }
}

/// An HTTP server on `127.0.0.1:<free port>`; it stops when dropped.
pub struct Upstream {
    addr: SocketAddr,
    hits: Arc<Mutex<Vec<Hit>>>,
    stop: Arc<AtomicBool>,
}

impl Upstream {
    /// Starts a server on 127.0.0.1 with a port the kernel picks.
    pub fn http() -> Self {
        Self::http_on(IpAddr::V4(Ipv4Addr::LOCALHOST))
    }

    /// Starts a server on `ip` (a loopback address) with a port the kernel picks.
    pub fn http_on(ip: IpAddr) -> Self {
        Self::http_at(SocketAddr::new(ip, 0))
    }

    /// Starts a server on `addr` (a loopback address; port 0: one the kernel picks), e.g. a
    /// second server on another address with the port of the first.
    pub fn http_at(addr: SocketAddr) -> Self {
        let ip = addr.ip();
        assert!(
            ip.is_loopback(),
            "test upstreams stay on loopback, not {ip}"
        );
        let listener = TcpListener::bind(addr).expect("binding the upstream listener");
        let addr = listener.local_addr().expect("upstream listener address");
        let hits = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (accept_hits, accept_stop) = (hits.clone(), stop.clone());
        thread::spawn(move || {
            for stream in listener.incoming() {
                if accept_stop.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let hits = accept_hits.clone();
                thread::spawn(move || serve(stream, addr, &hits));
            }
        });
        Upstream { addr, hits, stop }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `http://<addr><path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Every request received so far.
    pub fn hits(&self) -> Vec<Hit> {
        self.hits.lock().expect("hits lock").clone()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
    }
}

/// Serves requests on one connection until the client closes it, asks to, or idles out.
fn serve(stream: TcpStream, local: SocketAddr, hits: &Mutex<Vec<Hit>>) {
    let Ok(peer) = stream.peer_addr() else { return };
    let _ = stream.set_read_timeout(Some(IDLE_TIMEOUT));
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    while let Some((hit, http10)) = read_request(&mut reader, peer) {
        let close = http10
            || hit
                .header("connection")
                .is_some_and(|v| v.eq_ignore_ascii_case("close"));
        // `/echo-body` answers with the request body, `/counter/<len>` with `counter_bytes(len)`;
        // anything else with what the request was.
        let counter_len = hit
            .path
            .strip_prefix("/counter/")
            .and_then(|n| n.parse().ok());
        let body = if hit.path == "/echo-body" {
            hit.body.clone()
        } else if let Some(len) = counter_len.filter(|&len| len <= MAX_BODY) {
            counter_bytes(len)
        } else {
            format!(
                "method={}\npath={}\nhost={}\n",
                hit.method,
                hit.path,
                hit.host.as_deref().unwrap_or("-")
            )
            .into_bytes()
        };
        // `/delay/<ms>` answers after that long (a slow upstream; the hit is recorded first).
        let delay = hit
            .path
            .strip_prefix("/delay/")
            .and_then(|ms| ms.parse().ok())
            .map(Duration::from_millis);
        hits.lock().expect("hits lock").push(hit);
        if let Some(delay) = delay {
            thread::sleep(delay);
        }
        let mut response = format!(
            "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\
             x-upstream: {local}\r\n{}\r\n",
            body.len(),
            if close { "connection: close\r\n" } else { "" },
        )
        .into_bytes();
        response.extend_from_slice(&body);
        if writer.write_all(&response).is_err() || close {
            return;
        }
    }
}

/// `len` bytes of little-endian u64s counting up from 0 (the last one cut short): a body in
/// which every 8-byte word is different, so a lost, repeated or reordered piece shows.
pub fn counter_bytes(len: usize) -> Vec<u8> {
    (0..len.div_ceil(8) as u64)
        .flat_map(u64::to_le_bytes)
        .take(len)
        .collect()
}

/// Reads one request head and its `content-length` body; `true` for HTTP/1.0.
fn read_request(reader: &mut BufReader<TcpStream>, peer: SocketAddr) -> Option<(Hit, bool)> {
    let mut request_line = String::new();
    reader.read_line(&mut request_line).ok()?;
    let mut parts = request_line.split_whitespace();
    let (method, path) = (parts.next()?.to_owned(), parts.next()?.to_owned());
    let http10 = parts.next() == Some("HTTP/1.0");
    let mut headers = Vec::new();
    let mut head_len = request_line.len();
    loop {
        let mut line = String::new();
        let n = reader.read_line(&mut line).ok()?;
        head_len += n;
        if n == 0 || head_len > MAX_HEAD {
            return None;
        }
        let line = line.trim_end_matches(['\r', '\n']);
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':')?;
        headers.push((name.trim().to_ascii_lowercase(), value.trim().to_owned()));
    }
    let length: usize = headers
        .iter()
        .find(|(name, _)| name == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    if length > MAX_BODY {
        return None;
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    let hit = Hit {
        body,
        host: headers
            .iter()
            .find(|(name, _)| name == "host")
            .map(|(_, v)| v.clone()),
        method,
        path,
        headers,
        peer,
    };
    Some((hit, http10))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http;

    #[test]
    fn records_and_echoes_each_request() {
        let upstream = Upstream::http();
        let (status, body) = http::get(upstream.addr(), "/echo?q=1", Duration::from_secs(5))
            .expect("the upstream answers");
        assert_eq!(status, 200);
        let host = upstream.addr().to_string();
        assert_eq!(body, format!("method=GET\npath=/echo?q=1\nhost={host}\n"));
        let hits = upstream.hits();
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].path, "/echo?q=1");
        assert_eq!(hits[0].host.as_deref(), Some(host.as_str()));
        assert!(hits[0].peer.ip().is_loopback());
    }
}
