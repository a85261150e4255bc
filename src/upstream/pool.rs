//! Each lane's idle keep-alive connections to plain `http://` upstreams (a local model server,
//! a sidecar, the benchmark's mock), as [`super::plain`] uses them.
//!
//! A connection goes back to its lane's list when its answer has been read to the end, and
//! only its own lane takes it again (its socket is registered with that lane's reactor).
//! What a connection in the list may be: closed by the upstream since (found when taken: its
//! socket is readable and says end of file, and the next one is tried), or older than the
//! idle timeout (dropped when taken, when another is returned, or by the lane's [`sweep`],
//! which also drops those the upstream closed and forgets hosts left without idle
//! connections).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use tokio::net::TcpStream;

/// One HTTP/1 connection to an upstream and what was read from it but not yet used.
pub(super) struct PlainConn {
    pub(super) io: TcpStream,
    pub(super) buf: BytesMut,
}

impl PlainConn {
    pub(super) fn new(io: TcpStream) -> Self {
        Self {
            io,
            buf: BytesMut::new(),
        }
    }

    /// Whether an idle connection can carry a request: not closed by the upstream, and
    /// holding nothing the upstream sent unasked. Costs no system call unless the socket
    /// became readable while it idled.
    fn still_open(&mut self) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        match self.io.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            // Readable: end of file (closed), an error, or bytes nobody asked for. Only a
            // spurious wake-up leaves it usable.
            Poll::Ready(Ok(())) => matches!(
                self.io.try_read_buf(&mut self.buf),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock
            ),
        }
    }
}

/// Hosts a lane keeps idle connections to, at most. A new one past it takes the place of the
/// host whose latest connection idled longest (its connections closed): a burst of requests
/// to thousands of `?proxy=` targets would otherwise hold a socket (a file) each for the
/// idle timeout, and every request would search them all. Real setups name a few providers.
const MAX_HOSTS_PER_LANE: usize = 256;

/// The idle connections of every lane. Each lane takes and returns only its own, so its
/// lock is never contended in the server (tests that drive the router from a
/// multi-threaded runtime all count as lane 0, hence a lock and not a `RefCell`).
pub(super) struct LanePools {
    lanes: Box<[Mutex<Lane>]>,
    idle_timeout: Duration,
}

#[derive(Default)]
struct Lane {
    hosts: Vec<Host>,
    /// A [`sweep`] task runs on this lane (while it holds idle connections).
    sweeping: bool,
}

/// The idle connections to one `host:port`, oldest first.
struct Host {
    authority: Arc<str>,
    idle: VecDeque<Idle>,
}

struct Idle {
    conn: PlainConn,
    since: Instant,
}

impl LanePools {
    pub(super) fn new(lanes: usize, idle_timeout: Duration) -> Self {
        Self {
            lanes: (0..lanes.max(1)).map(|_| Mutex::default()).collect(),
            idle_timeout,
        }
    }

    fn lane(&self, lane: usize) -> std::sync::MutexGuard<'_, Lane> {
        self.lanes[lane % self.lanes.len()]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The most recently returned open connection to `authority` within the idle timeout,
    /// and the authority as the pool keeps it.
    pub(super) fn take(&self, lane: usize, authority: &str) -> (Arc<str>, Option<PlainConn>) {
        let mut guard = self.lane(lane);
        match guard.hosts.iter_mut().find(|h| &*h.authority == authority) {
            Some(host) => (Arc::clone(&host.authority), self.take_at(host)),
            // Allocated only when a new connection is made anyway.
            None => (Arc::from(authority), None),
        }
    }

    fn take_at(&self, host: &mut Host) -> Option<PlainConn> {
        while let Some(mut idle) = host.idle.pop_back() {
            if idle.since.elapsed() > self.idle_timeout {
                // Everything older went with it.
                host.idle.clear();
                return None;
            }
            if idle.conn.still_open() {
                return Some(idle.conn);
            }
        }
        None
    }

    pub(super) fn put_back(self: &Arc<Self>, lane: usize, authority: Arc<str>, conn: PlainConn) {
        let now = Instant::now();
        let mut guard = self.lane(lane);
        let at = match guard.hosts.iter().position(|h| h.authority == authority) {
            Some(at) => at,
            None => {
                if guard.hosts.len() >= MAX_HOSTS_PER_LANE {
                    forget_the_longest_idle(&mut guard.hosts);
                }
                guard.hosts.push(Host {
                    authority,
                    idle: VecDeque::new(),
                });
                guard.hosts.len() - 1
            }
        };
        let entry = &mut guard.hosts[at];
        entry.drop_expired(now, self.idle_timeout);
        entry.idle.push_back(Idle { conn, since: now });
        if !guard.sweeping {
            // Outside a runtime (a body dropped as one shuts down) nothing is left to sweep for.
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                guard.sweeping = true;
                runtime.spawn(sweep(Arc::downgrade(self), lane));
            }
        }
    }

    /// How many idle connections lane `lane` holds to `authority` (for tests).
    #[cfg(test)]
    pub(super) fn idle_count(&self, lane: usize, authority: &str) -> usize {
        self.lane(lane)
            .hosts
            .iter()
            .find(|h| &*h.authority == authority)
            .map_or(0, |h| h.idle.len())
    }

    /// Whether lane `lane` has a sweep running, and how many hosts it remembers (for tests).
    #[cfg(test)]
    pub(super) fn sweep_state(&self, lane: usize) -> (bool, usize) {
        let guard = self.lane(lane);
        (guard.sweeping, guard.hosts.len())
    }
}

/// Forgets the host whose most recently returned connection is the oldest (one with none,
/// first), closing its connections.
fn forget_the_longest_idle(hosts: &mut Vec<Host>) {
    let longest = hosts
        .iter()
        .enumerate()
        .min_by_key(|(_, h)| h.idle.back().map(|i| i.since))
        .map(|(at, _)| at);
    if let Some(at) = longest {
        hosts.swap_remove(at);
    }
}

impl Host {
    fn drop_expired(&mut self, now: Instant, idle_timeout: Duration) {
        while self
            .idle
            .front()
            .is_some_and(|oldest| now.duration_since(oldest.since) > idle_timeout)
        {
            self.idle.pop_front();
        }
    }
}

/// How many times per idle timeout a lane's [`sweep`] runs: a connection lives at most a
/// ninth of the timeout past it (100 s for 90 s), where one sweep per timeout let it live
/// almost twice as long.
const SWEEPS_PER_TIMEOUT: u32 = 9;

/// Closes lane `lane`'s connections that idled past the timeout, and those the upstream
/// closed meanwhile (each held a socket, and its file, in CLOSE-WAIT until taken), several
/// times per timeout: otherwise the connections to an upstream that gets no more requests
/// would stay open for as long as the upstream keeps them. Ends when the lane holds no idle
/// connection (the next one returned starts it again) or the client is gone.
async fn sweep(pools: Weak<LanePools>, lane: usize) {
    loop {
        let Some(every) = pools.upgrade().map(|p| p.idle_timeout / SWEEPS_PER_TIMEOUT) else {
            return;
        };
        tokio::time::sleep(every).await;
        let Some(pools) = pools.upgrade() else {
            return;
        };
        let now = Instant::now();
        let mut guard = pools.lane(lane);
        for host in &mut guard.hosts {
            host.drop_expired(now, pools.idle_timeout);
            host.idle.retain_mut(|idle| idle.conn.still_open());
        }
        // A lane that served many hosts (`?proxy=` URLs, say) does not keep them all.
        guard.hosts.retain(|h| !h.idle.is_empty());
        if guard.hosts.is_empty() {
            guard.sweeping = false;
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connected socket (its peer kept open by the returned listener's accepted ends).
    async fn connected(
        listener: &tokio::net::TcpListener,
        peers: &mut Vec<TcpStream>,
    ) -> PlainConn {
        let addr = listener.local_addr().expect("addr");
        let (io, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        peers.push(accepted.expect("accept").0);
        PlainConn::new(io.expect("connect"))
    }

    /// Past the cap of hosts, a new one takes the place of the host idle longest; one
    /// returned to recently stays.
    #[tokio::test]
    async fn a_lane_keeps_at_most_its_cap_of_hosts_forgetting_the_longest_idle() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let mut peers = Vec::new();
        let pools = Arc::new(LanePools::new(1, Duration::from_secs(90)));
        for n in 0..MAX_HOSTS_PER_LANE {
            let conn = connected(&listener, &mut peers).await;
            pools.put_back(0, Arc::from(format!("host-{n}:80")), conn);
        }
        // host-0 used again: now the most recent, host-1 the longest idle.
        let conn = connected(&listener, &mut peers).await;
        pools.put_back(0, Arc::from("host-0:80"), conn);
        let conn = connected(&listener, &mut peers).await;
        pools.put_back(0, Arc::from("new:80"), conn);
        assert_eq!(pools.sweep_state(0).1, MAX_HOSTS_PER_LANE);
        assert_eq!(pools.idle_count(0, "new:80"), 1);
        assert_eq!(pools.idle_count(0, "host-0:80"), 2);
        assert_eq!(pools.idle_count(0, "host-1:80"), 0, "forgotten");
        assert_eq!(pools.idle_count(0, "host-2:80"), 1);
    }
}
