//! A `PING` loop per Redis server on plain threads with blocking sockets,
//! outside the Tokio runtime of the test: it tells a server that stalls
//! (every client waits) from a client that holds its own calls.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// One answer: the server's port, when the `PING` was sent (ms since the
/// Unix epoch) and how long the answer took (`None`: no answer, the
/// connection failed).
#[derive(Debug, Clone, Copy)]
pub struct Ping {
    pub port: u16,
    pub sent_ms: f64,
    pub took: Option<Duration>,
}

/// `PING`s each server every `every` until stopped.
pub struct Pinger {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<Vec<Ping>>>,
}

fn unix_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        * 1000.0
}

impl Pinger {
    pub fn start(ports: &[u16], every: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = ports
            .iter()
            .map(|&port| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut out = Vec::new();
                    let mut conn: Option<TcpStream> = None;
                    let mut buf = [0u8; 64];
                    while !stop.load(Ordering::Relaxed) {
                        let sent_ms = unix_ms();
                        let start = Instant::now();
                        let ok = (|| {
                            if conn.is_none() {
                                let c = TcpStream::connect(("127.0.0.1", port)).ok()?;
                                c.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
                                c.set_nodelay(true).ok()?;
                                conn = Some(c);
                            }
                            let c = conn.as_mut()?;
                            c.write_all(b"PING\r\n").ok()?;
                            let mut got = 0;
                            while got < 7 {
                                let n = c.read(&mut buf[got..]).ok()?;
                                if n == 0 {
                                    return None;
                                }
                                got += n;
                            }
                            (&buf[..7] == b"+PONG\r\n").then_some(())
                        })();
                        if ok.is_none() {
                            conn = None;
                        }
                        out.push(Ping {
                            port,
                            sent_ms,
                            took: ok.map(|()| start.elapsed()),
                        });
                        std::thread::sleep(every);
                    }
                    out
                })
            })
            .collect();
        Self { stop, threads }
    }

    /// Stops the threads; every answer, in sending order per server.
    pub fn stop(self) -> Vec<Ping> {
        self.stop.store(true, Ordering::Relaxed);
        self.threads
            .into_iter()
            .flat_map(|t| t.join().unwrap())
            .collect()
    }
}

/// The slowest answer of `port` among the `PING`s in flight at any time
/// between `from_ms` and `to_ms` (sent before `to_ms`, answered after
/// `from_ms`); a failed `PING` counts as its time to fail.
pub fn slowest_between(pings: &[Ping], port: u16, from_ms: f64, to_ms: f64) -> Option<Duration> {
    pings
        .iter()
        .filter(|p| p.port == port && p.sent_ms <= to_ms)
        .filter(|p| p.sent_ms + p.took.unwrap_or_default().as_secs_f64() * 1000.0 >= from_ms)
        .filter_map(|p| p.took)
        .max()
}
