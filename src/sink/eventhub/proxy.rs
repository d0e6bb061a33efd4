//! HTTP CONNECT tunnels for AMQP over WebSockets, so a plant whose only way out is an HTTPS
//! proxy can still use AMQP: `HTTPS_PROXY=http://[user:password@]proxy:3128` (or
//! `https_proxy`), skipped for hosts listed in `NO_PROXY`. The tunnel carries TLS end to end:
//! the proxy sees only the host name and port.

use base64::Engine as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A proxy from the environment.
#[derive(Clone, PartialEq, Eq)]
pub struct Proxy {
    /// `host:port` of the proxy.
    pub addr: String,
    /// `user:password`, sent as Basic authorization.
    credentials: Option<String>,
}

impl std::fmt::Debug for Proxy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proxy")
            .field("addr", &self.addr)
            .field(
                "credentials",
                &self.credentials.as_ref().map(|_| "<redacted>"),
            )
            .finish()
    }
}

impl Proxy {
    /// The proxy to use for `host`, from `HTTPS_PROXY` / `https_proxy` and `NO_PROXY` /
    /// `no_proxy`.
    pub fn from_env(host: &str) -> Option<Proxy> {
        let var = |names: [&str; 2]| {
            names
                .iter()
                .find_map(|n| std::env::var(n).ok())
                .filter(|v| !v.trim().is_empty())
        };
        let url = var(["HTTPS_PROXY", "https_proxy"])?;
        let no_proxy = var(["NO_PROXY", "no_proxy"]).unwrap_or_default();
        Proxy::parse(&url, &no_proxy, host)
    }

    /// `http://[user:password@]host[:port][/]`; `None` when `host` matches `no_proxy`.
    pub fn parse(url: &str, no_proxy: &str, host: &str) -> Option<Proxy> {
        let host = host.to_ascii_lowercase();
        let bypass = no_proxy.split(',').map(str::trim).any(|entry| {
            let entry = entry.trim_start_matches('.').to_ascii_lowercase();
            entry == "*"
                || (!entry.is_empty() && (host == entry || host.ends_with(&format!(".{entry}"))))
        });
        if bypass {
            return None;
        }
        let rest = url
            .trim()
            .trim_start_matches("http://")
            .trim_end_matches('/');
        let (credentials, addr) = match rest.rsplit_once('@') {
            Some((userinfo, addr)) => (Some(userinfo.to_string()), addr),
            None => (None, rest),
        };
        let addr = if addr
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
        {
            addr.to_string()
        } else {
            format!("{addr}:80")
        };
        Some(Proxy { addr, credentials })
    }

    /// Opens a tunnel to `host:port` through the proxy. The error says why; the caller names
    /// the address (`<host>:<port> through proxy <addr>`).
    pub async fn connect(&self, host: &str, port: u16) -> std::io::Result<TcpStream> {
        let failed = std::io::Error::other;
        let mut tcp = TcpStream::connect(&self.addr)
            .await
            .map_err(|e| failed(e.to_string()))?;
        let _ = tcp.set_nodelay(true);
        let mut request = format!("CONNECT {host}:{port} HTTP/1.1\r\nHost: {host}:{port}\r\n");
        if let Some(credentials) = &self.credentials {
            let encoded = base64::engine::general_purpose::STANDARD.encode(credentials);
            request.push_str(&format!("Proxy-Authorization: Basic {encoded}\r\n"));
        }
        request.push_str("\r\n");
        tcp.write_all(request.as_bytes())
            .await
            .map_err(|e| failed(e.to_string()))?;
        // Read the response head byte by byte: nothing after it may be consumed (TLS follows).
        let mut head = Vec::with_capacity(256);
        while !head.ends_with(b"\r\n\r\n") {
            if head.len() > 8192 {
                return Err(failed("the proxy's answer has no end".into()));
            }
            let byte = tcp.read_u8().await.map_err(|e| failed(e.to_string()))?;
            head.push(byte);
        }
        let head = String::from_utf8_lossy(&head);
        let status_line = head.lines().next().unwrap_or_default();
        match status_line.split_whitespace().nth(1) {
            Some(code) if code.starts_with('2') => Ok(tcp),
            _ => Err(failed(format!(
                "the proxy refused the tunnel: {status_line}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proxy_urls_and_no_proxy() {
        let p = Proxy::parse("http://proxy.plant:3128/", "", "ns.servicebus.windows.net").unwrap();
        assert_eq!(p.addr, "proxy.plant:3128");
        assert_eq!(p.credentials, None);
        let p = Proxy::parse("http://u:p%40ss@10.0.0.1", "", "ns.servicebus.windows.net").unwrap();
        assert_eq!(p.addr, "10.0.0.1:80");
        assert_eq!(p.credentials.as_deref(), Some("u:p%40ss"));
        assert!(
            !format!("{p:?}").contains("p%40ss"),
            "credentials leak in Debug"
        );
        assert_eq!(
            Proxy::parse(
                "http://proxy:3128",
                "localhost, .windows.net",
                "ns.servicebus.windows.net"
            ),
            None
        );
        assert_eq!(Proxy::parse("http://proxy:3128", "*", "anything"), None);
        assert!(Proxy::parse(
            "http://proxy:3128",
            "windows.net.evil",
            "ns.servicebus.windows.net"
        )
        .is_some());
    }
}
