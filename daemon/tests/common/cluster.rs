//! Real `loomd` cluster members on loopback: free ports, member lists,
//! start and stop, clients, the current leader, and a peer-link proxy that
//! can cut two members apart.

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use loomcache_client::{Client, ClientConfig};

#[derive(Clone, Copy, Debug)]
pub struct Member {
    pub id: u64,
    pub client: SocketAddr,
    pub peer: SocketAddr,
}

/// A running `loomd`, killed (SIGKILL) when dropped.
pub struct Proc {
    pub child: Child,
}

impl Proc {
    pub fn signal(&self, sig: &str) {
        let pid = self.child.id().to_string();
        assert!(Command::new("kill").args([sig, &pid]).status().unwrap().success());
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A loopback port free right now, drawn below the kernel's ephemeral
/// range (32768 and up), so that outgoing connections, which take their
/// local ports from that range, cannot grab it before `loomd` binds it.
pub fn free_port() -> u16 {
    use std::sync::atomic::AtomicU16;
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let base = 20_000 + (std::process::id() % 1_000) as u16 * 12;
    loop {
        let offset = NEXT.fetch_add(1, Ordering::Relaxed) % 12_000;
        let port = 20_000 + (base - 20_000 + offset) % 12_000;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

fn free_addr() -> SocketAddr {
    format!("127.0.0.1:{}", free_port()).parse().unwrap()
}

/// Three members on free loopback ports.
pub fn three_members() -> Vec<Member> {
    (1..=3)
        .map(|id| Member {
            id,
            client: free_addr(),
            peer: free_addr(),
        })
        .collect()
}

pub fn members_arg(members: &[Member]) -> String {
    members
        .iter()
        .map(|m| format!("{}={}/{}", m.id, m.client, m.peer))
        .collect::<Vec<_>>()
        .join(",")
}

/// The `loomd` command for member `m` with the member list `members` (as
/// `--members` takes it) and its data in `dir/node-<id>`.
pub fn loomd(m: &Member, members: &str, dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_loomd"));
    cmd.args([
        "--node-id",
        &m.id.to_string(),
        "--listen",
        &m.client.to_string(),
        "--members",
        members,
        "--data-dir",
        &dir.join(format!("node-{}", m.id)).display().to_string(),
        "--log-level",
        "warn",
    ]);
    cmd
}

/// Starts member `m` (see [`loomd`]) and waits for its first line.
pub fn start(m: &Member, members: &str, dir: &Path) -> Proc {
    spawn(loomd(m, members, dir))
}

/// Spawns a `loomd` command and waits for its first line.
pub fn spawn(cmd: Command) -> Proc {
    spawn_logging(cmd, Stdio::null())
}

/// [`spawn`], with the node's log going to `stderr`.
pub fn spawn_logging(mut cmd: Command, stderr: impl Into<Stdio>) -> Proc {
    let mut child = cmd.stdout(Stdio::piped()).stderr(stderr).spawn().expect("spawn loomd");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("a first line");
    assert!(line.contains("listening on"), "{line:?}");
    assert!(line.contains("cluster member"), "{line:?}");
    Proc { child }
}

/// A client seeded with every member.
pub fn client(members: &[Member]) -> Client {
    client_with(members, Duration::from_secs(5), Duration::from_secs(20))
}

pub fn client_with(members: &[Member], request_timeout: Duration, retry_budget: Duration) -> Client {
    Client::connect(ClientConfig {
        addrs: members.iter().map(|m| m.client).collect(),
        retry_budget,
        request_timeout,
        ..ClientConfig::default()
    })
    .expect("a member answers")
}

pub fn put_until_ok(c: &Client, key: &[u8], value: &[u8]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match c.map("m").set(key, value) {
            Ok(()) => return,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Err(e) => panic!("write never succeeded: {e}"),
        }
    }
}

/// The member whose NODE_INFO says it leads.
pub fn leader_of(members: &[Member]) -> Option<usize> {
    members.iter().position(|m| {
        let Ok(c) = Client::connect(ClientConfig {
            addrs: vec![m.client],
            retry_budget: Duration::ZERO,
            request_timeout: Duration::from_secs(2),
            ..ClientConfig::default()
        }) else {
            return false;
        };
        c.info()
            .map(|pairs| pairs.iter().any(|(k, v)| k == "raft_role" && v == "leader"))
            .unwrap_or(false)
    })
}

/// Waits (bounded) for a member to report itself leader.
pub fn wait_for_leader(members: &[Member], within: Duration) -> Option<usize> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(i) = leader_of(members) {
            return Some(i);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A TCP forwarder standing on the peer link between two members. While
/// the link is cut, bytes already read are held and nothing more is read,
/// so both ends see silence (as across a network partition, with no reset)
/// and their sends back up into their own bounded queues; on healing, what
/// was held is delivered late.
pub struct LinkProxy {
    pub listen: SocketAddr,
    cut: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    accept: Option<JoinHandle<()>>,
}

impl LinkProxy {
    pub fn new(target: SocketAddr) -> LinkProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let listen = listener.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let (c, s) = (cut.clone(), stop.clone());
        let accept = std::thread::spawn(move || {
            let mut pumps = Vec::new();
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((inbound, _)) => {
                        let Ok(outbound) = TcpStream::connect(target) else {
                            continue;
                        };
                        for (from, to) in [
                            (inbound.try_clone().unwrap(), outbound.try_clone().unwrap()),
                            (outbound, inbound),
                        ] {
                            let (c, s) = (c.clone(), s.clone());
                            pumps.push(std::thread::spawn(move || pump(from, to, &c, &s)));
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::sleep(Duration::from_millis(5)),
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
            for p in pumps {
                let _ = p.join();
            }
        });
        LinkProxy {
            listen,
            cut,
            stop,
            accept: Some(accept),
        }
    }

    pub fn set_cut(&self, cut: bool) {
        self.cut.store(cut, Ordering::SeqCst);
    }
}

impl Drop for LinkProxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(a) = self.accept.take() {
            let _ = a.join();
        }
    }
}

fn pump(mut from: TcpStream, mut to: TcpStream, cut: &AtomicBool, stop: &AtomicBool) {
    from.set_read_timeout(Some(Duration::from_millis(20))).unwrap();
    let mut buf = vec![0u8; 64 << 10];
    while !stop.load(Ordering::Relaxed) {
        while cut.load(Ordering::SeqCst) {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => continue,
            Err(_) => break,
        };
        while cut.load(Ordering::SeqCst) && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(5));
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

/// Three members whose peer links all run through [`LinkProxy`]s, so the
/// test can cut any member off from the others. Member `i` dials each
/// higher-numbered member `j` through the proxy of link (i, j); each
/// member's own entry names its real peer address.
pub struct ProxiedCluster {
    pub members: Vec<Member>,
    /// `(lower index, higher index, proxy)` per link.
    pub links: Vec<(usize, usize, LinkProxy)>,
}

impl ProxiedCluster {
    pub fn new() -> ProxiedCluster {
        let members = three_members();
        let mut links = Vec::new();
        for i in 0..members.len() {
            for (j, higher) in members.iter().enumerate().skip(i + 1) {
                links.push((i, j, LinkProxy::new(higher.peer)));
            }
        }
        ProxiedCluster { members, links }
    }

    /// The `--members` argument for member `i`.
    pub fn members_arg_for(&self, i: usize) -> String {
        let view: Vec<Member> = self
            .members
            .iter()
            .enumerate()
            .map(|(j, m)| match self.links.iter().find(|(a, b, _)| *a == i && *b == j) {
                Some((_, _, proxy)) => Member {
                    peer: proxy.listen,
                    ..*m
                },
                None => *m,
            })
            .collect();
        members_arg(&view)
    }

    pub fn start(&self, i: usize, dir: &Path) -> Proc {
        start(&self.members[i], &self.members_arg_for(i), dir)
    }

    /// Cuts member `i` off from every other member.
    pub fn isolate(&self, i: usize) {
        for (a, b, proxy) in &self.links {
            if *a == i || *b == i {
                proxy.set_cut(true);
            }
        }
    }

    pub fn heal(&self) {
        for (_, _, proxy) in &self.links {
            proxy.set_cut(false);
        }
    }
}
