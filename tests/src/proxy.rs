//! A TCP proxy that fault tests put between two real components (agent ↔ coordinator, agent ↔ database,
//! coordinator ↔ etcd, coordinator ↔ store), with the fault switched at run time. Small and our own rather than
//! Toxiproxy (`noxious`): a test needs five faults, switched from the test itself, and nothing else.
//!
//! Everything is on loopback and ends when the `Proxy` is dropped.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// What the proxy does to traffic, now and to every open connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forward both ways.
    Pass,
    /// Stop listening (new connections are refused) and reset every open one.
    Refuse,
    /// Accept, forward nothing either way, never close: a partition as a client sees it.
    Blackhole,
    /// Reset every open connection (RST) and every new one, mid-stream.
    Reset,
    /// Forward each chunk after this delay.
    Delay(Duration),
    /// Let each connection pass this many more bytes (both ways together), then reset it.
    CutAfter(u64),
}

pub struct Proxy {
    addr: SocketAddr,
    fault: watch::Sender<Fault>,
    /// Where new connections go (open ones stay where they are, as behind a virtual IP that fails over).
    upstream: watch::Sender<SocketAddr>,
    stop: CancellationToken,
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

fn listen(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = TcpSocket::new_v4()?;
    // The port is bound again after `Refuse`: allow it while old connections sit in TIME_WAIT.
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

impl Proxy {
    /// A proxy on a free loopback port forwarding to `upstream` (`host:port`).
    pub async fn start(upstream: &str) -> Proxy {
        let upstream: SocketAddr = tokio::net::lookup_host(upstream)
            .await
            .ok()
            .and_then(|mut a| a.next())
            .unwrap_or_else(|| panic!("proxy upstream `{upstream}` does not resolve"));
        let listener = listen("127.0.0.1:0".parse().expect("addr")).expect("proxy listens");
        let addr = listener.local_addr().expect("proxy address");
        let (fault, faults) = watch::channel(Fault::Pass);
        let (upstream, upstreams) = watch::channel(upstream);
        let stop = CancellationToken::new();
        tokio::spawn(accept_loop(listener, addr, upstreams, faults, stop.clone()));
        Proxy { addr, fault, upstream, stop }
    }

    /// Sends new connections to `upstream` (`host:port`) from now on: a failover.
    pub async fn retarget(&self, upstream: &str) {
        let to = tokio::net::lookup_host(upstream).await.ok().and_then(|mut a| a.next()).expect("upstream resolves");
        self.upstream.send_replace(to);
    }

    /// A proxy in front of the server `url` names; returns it and the same URL pointed through it.
    pub async fn in_front_of(url: &str) -> (Proxy, String) {
        let (start, end) = authority(url);
        let proxy = Proxy::start(&url[start..end]).await;
        let through = proxy.url(url);
        (proxy, through)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Switches the fault; open connections follow at once.
    pub fn set(&self, fault: Fault) {
        self.fault.send_replace(fault);
    }

    /// `url` with its `host:port` replaced by the proxy's, so a client goes through it.
    pub fn url(&self, url: &str) -> String {
        let (start, end) = authority(url);
        format!("{}{}{}", &url[..start], self.addr, &url[end..])
    }
}

/// Where `host:port` stands in a URL.
fn authority(url: &str) -> (usize, usize) {
    let after_scheme = url.find("://").map_or(0, |i| i + 3);
    let end = url[after_scheme..].find(['/', '?']).map_or(url.len(), |i| after_scheme + i);
    let start = url[after_scheme..end].rfind('@').map_or(after_scheme, |i| after_scheme + i + 1);
    (start, end)
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    addr: SocketAddr,
    upstream: watch::Receiver<SocketAddr>,
    mut faults: watch::Receiver<Fault>,
    stop: CancellationToken,
) {
    let mut listener = Some(listener);
    loop {
        let refusing = *faults.borrow_and_update() == Fault::Refuse;
        if refusing {
            listener = None;
        } else if listener.is_none() {
            match listen(addr) {
                Ok(l) => listener = Some(l),
                Err(_) => {
                    // The old socket is not gone yet; try again shortly.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            changed = faults.changed() => if changed.is_err() { return },
            accepted = async { listener.as_ref().expect("listening").accept().await }, if listener.is_some() => {
                if let Ok((client, _)) = accepted {
                    let _ = client.set_nodelay(true);
                    tokio::spawn(connection(client, *upstream.borrow(), faults.clone(), stop.child_token()));
                }
            }
        }
    }
}

fn reset(stream: &TcpStream) {
    let _ = stream.set_zero_linger();
}

async fn connection(
    client: TcpStream,
    upstream: SocketAddr,
    mut faults: watch::Receiver<Fault>,
    stop: CancellationToken,
) {
    // A blackholed connection is held before it reaches upstream, as a partition would hold a SYN's answer.
    loop {
        match *faults.borrow_and_update() {
            Fault::Blackhole => {}
            Fault::Refuse | Fault::Reset => return reset(&client),
            _ => break,
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            changed = faults.changed() => if changed.is_err() { return },
        }
    }
    let Ok(server) = TcpStream::connect(upstream).await else { return reset(&client) };
    let _ = server.set_nodelay(true);
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let mut budget = Budget::new(*faults.borrow());
    let mut up = [0u8; 16 * 1024];
    let mut down = [0u8; 16 * 1024];
    loop {
        let fault = *faults.borrow_and_update();
        if matches!(fault, Fault::Refuse | Fault::Reset) {
            break;
        }
        let forwarding = fault != Fault::Blackhole;
        tokio::select! {
            _ = stop.cancelled() => break,
            changed = faults.changed() => {
                if changed.is_err() { break }
                budget = Budget::new(*faults.borrow());
            }
            n = client_read.read(&mut up), if forwarding => {
                match n {
                    Ok(0) | Err(_) => { let _ = server_write.shutdown().await; return }
                    Ok(n) => if !forward(&mut server_write, &up[..n], fault, &mut budget).await { break },
                }
            }
            n = server_read.read(&mut down), if forwarding => {
                match n {
                    Ok(0) | Err(_) => { let _ = client_write.shutdown().await; return }
                    Ok(n) => if !forward(&mut client_write, &down[..n], fault, &mut budget).await { break },
                }
            }
        }
    }
    // Reset both ends: a cut in the middle of a stream, as a crash or a broken link looks.
    if let (Ok(client), Ok(server)) = (client_read.reunite(client_write), server_read.reunite(server_write)) {
        reset(&client);
        reset(&server);
    }
}

/// Bytes a connection may still pass under `CutAfter`.
struct Budget(Option<u64>);

impl Budget {
    fn new(fault: Fault) -> Budget {
        Budget(match fault {
            Fault::CutAfter(n) => Some(n),
            _ => None,
        })
    }
}

/// Writes `data` (or as much of it as the budget allows); `false` when the connection is to be cut.
async fn forward(to: &mut tokio::net::tcp::OwnedWriteHalf, data: &[u8], fault: Fault, budget: &mut Budget) -> bool {
    if let Fault::Delay(d) = fault {
        tokio::time::sleep(d).await;
    }
    let allowed = match budget.0 {
        Some(left) => usize::try_from(left).unwrap_or(usize::MAX).min(data.len()),
        None => data.len(),
    };
    if to.write_all(&data[..allowed]).await.is_err() {
        return false;
    }
    if let Some(left) = budget.0.as_mut() {
        *left -= allowed as u64;
    }
    // Cut only when more than the budget comes: the bytes that fit are delivered before the reset.
    allowed == data.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn echo_server() -> SocketAddr {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        addr
    }

    async fn roundtrip(s: &mut TcpStream, msg: &[u8]) -> std::io::Result<Vec<u8>> {
        s.write_all(msg).await?;
        let mut buf = vec![0u8; msg.len()];
        tokio::time::timeout(Duration::from_millis(500), s.read_exact(&mut buf))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no answer"))??;
        Ok(buf)
    }

    #[tokio::test]
    async fn each_fault_does_what_it_says_on_open_and_new_connections() {
        let proxy = Proxy::start(&echo_server().await.to_string()).await;
        let mut open = TcpStream::connect(proxy.addr()).await.expect("connect");
        assert_eq!(roundtrip(&mut open, b"hello").await.expect("pass"), b"hello");

        proxy.set(Fault::Blackhole);
        let err = roundtrip(&mut open, b"lost").await.expect_err("a blackhole answers nothing");
        assert_eq!(err.kind(), std::io::ErrorKind::TimedOut);
        proxy.set(Fault::Pass);
        // What was sent into the blackhole is delivered late once it lifts, as TCP would after a partition.
        let mut late = [0u8; 4];
        open.read_exact(&mut late).await.expect("late bytes");
        assert_eq!(&late, b"lost");

        proxy.set(Fault::Reset);
        assert!(roundtrip(&mut open, b"x").await.is_err(), "an open connection is reset");
        proxy.set(Fault::Refuse);
        tokio::time::sleep(Duration::from_millis(50)).await;
        let refused = TcpStream::connect(proxy.addr()).await.expect_err("refused");
        assert_eq!(refused.kind(), std::io::ErrorKind::ConnectionRefused);

        proxy.set(Fault::Pass);
        let mut again = loop {
            if let Ok(s) = TcpStream::connect(proxy.addr()).await {
                break s;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(roundtrip(&mut again, b"back").await.expect("pass again"), b"back");

        proxy.set(Fault::CutAfter(6));
        assert_eq!(roundtrip(&mut again, b"abc").await.expect("3 up, 3 down"), b"abc");
        assert!(roundtrip(&mut again, b"defg").await.is_err(), "cut after 6 bytes");

        proxy.set(Fault::Delay(Duration::from_millis(100)));
        let mut slow = TcpStream::connect(proxy.addr()).await.expect("connect");
        let started = std::time::Instant::now();
        assert_eq!(roundtrip(&mut slow, b"slow").await.expect("delayed"), b"slow");
        assert!(started.elapsed() >= Duration::from_millis(200), "delayed both ways");
    }

    #[test]
    fn urls_are_pointed_at_the_proxy() {
        let proxy_url = |url: &str| {
            let addr: SocketAddr = "127.0.0.1:4000".parse().unwrap();
            let (fault, _) = watch::channel(Fault::Pass);
            let (upstream, _) = watch::channel(addr);
            Proxy { addr, fault, upstream, stop: CancellationToken::new() }.url(url)
        };
        assert_eq!(proxy_url("postgres://u:p@127.0.0.1:55432/db"), "postgres://u:p@127.0.0.1:4000/db");
        assert_eq!(proxy_url("mysql://root@127.0.0.1:53306/t_1"), "mysql://root@127.0.0.1:4000/t_1");
        assert_eq!(
            proxy_url("mongodb://127.0.0.1:57017/t?directConnection=true"),
            "mongodb://127.0.0.1:4000/t?directConnection=true"
        );
        assert_eq!(proxy_url("http://127.0.0.1:52379"), "http://127.0.0.1:4000");
    }
}
