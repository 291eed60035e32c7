//! Throw-away Redis servers for integration tests.
//!
//! Include with `#[path = "common/redis_server.rs"] mod redis_server;`.
//!
//! Every server is started by the test on a free port of 127.0.0.1, in its
//! own temporary directory, without persistence (`--save "" --appendonly
//! no`), and killed on drop. A server someone left running (for example on
//! 6379) is never used. [`RedisSentinels`] adds a master with replicas
//! watched by three sentinels (`redis-server --sentinel`). `redis-server`
//! and `redis-cli` must be on the PATH
//! (Debian: `apt-get install redis-server`); otherwise the tests fail with a
//! clear message.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

const MISSING: &str = "redis-server / redis-cli not found on PATH: these tests start their own \
     Redis servers; install them (Debian/Ubuntu: `apt-get install -y redis-server`)";

fn check_binaries() {
    for bin in ["redis-server", "redis-cli"] {
        let found = Command::new(bin)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(found, "{MISSING}");
    }
}

fn temp_dir(tag: &str) -> PathBuf {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let dir = std::env::temp_dir().join(format!(
        "tt-{tag}-{}-{}-{nanos}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).expect("create a temporary directory");
    dir
}

/// Whether `port` (and `port + 10000`, the cluster bus, when `bus`) can be
/// bound on 127.0.0.1 right now.
fn port_free(port: u16, bus: bool) -> bool {
    TcpListener::bind(("127.0.0.1", port)).is_ok()
        && (!bus
            || port
                .checked_add(10000)
                .is_some_and(|p| TcpListener::bind(("127.0.0.1", p)).is_ok()))
}

/// A free port, from the kernel (single servers) or from 20000..30000 (cluster
/// nodes, whose bus port is `port + 10000`).
fn free_port(bus: bool) -> u16 {
    if !bus {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        return l.local_addr().unwrap().port();
    }
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let start = std::process::id().wrapping_mul(37) % 10000;
    for _ in 0..10000 {
        let offset = (start + NEXT.fetch_add(1, Ordering::SeqCst)) % 10000;
        let port = 20000 + offset as u16;
        if port_free(port, true) {
            return port;
        }
    }
    panic!("no free port pair found in 20000..40000");
}

/// Sends one command over RESP and returns the raw reply (no redis-cli).
fn raw_command(port: u16, args: &[&str], timeout: Duration) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    let mut req = format!("*{}\r\n", args.len());
    for a in args {
        req.push_str(&format!("${}\r\n{a}\r\n", a.len()));
    }
    s.write_all(req.as_bytes())?;
    let mut buf = [0u8; 512];
    let n = s.read(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

fn pings(port: u16) -> bool {
    raw_command(port, &["PING"], Duration::from_millis(200))
        .map(|r| r.starts_with("+PONG"))
        .unwrap_or(false)
}

/// One `redis-server` process on 127.0.0.1.
pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    extra: Vec<String>,
    child: Option<Child>,
    paused: bool,
}

impl RedisServer {
    /// Starts a standalone server on a free port and waits until it answers PING.
    pub fn new() -> Self {
        Self::with_args(&[])
    }

    /// Starts a server with extra command-line arguments.
    pub fn with_args(extra: &[&str]) -> Self {
        check_binaries();
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let bus = extra.iter().any(|a| a == "--cluster-enabled");
        let mut last = String::new();
        for _ in 0..5 {
            let mut server = RedisServer {
                port: free_port(bus),
                dir: temp_dir("redis"),
                extra: extra.clone(),
                child: None,
                paused: false,
            };
            match server.spawn() {
                Ok(()) => return server,
                Err(e) => last = e, // port taken meanwhile: try another one
            }
        }
        panic!("could not start redis-server: {last}");
    }

    fn spawn(&mut self) -> Result<(), String> {
        let log = self.dir.join("redis.log");
        let mut cmd = Command::new("redis-server");
        if self.extra.iter().any(|a| a == "--sentinel") {
            // A sentinel needs a writable configuration file, first argument
            // (it records what it learns there; kept across restarts).
            let conf = self.dir.join("sentinel.conf");
            if !conf.exists() {
                std::fs::write(&conf, "").map_err(|e| format!("write {conf:?}: {e}"))?;
            }
            cmd.arg(conf);
        }
        cmd.arg("--port")
            .arg(self.port.to_string())
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .arg("--logfile")
            .arg(&log)
            .args(["--daemonize", "no", "--protected-mode", "no"])
            .args(&self.extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child = cmd.spawn().map_err(|e| format!("{MISSING} ({e})"))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = child.try_wait() {
                let log = std::fs::read_to_string(&log).unwrap_or_default();
                return Err(format!("redis-server exited with {status}: {log}"));
            }
            if pings(self.port) {
                self.child = Some(child);
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        Err(format!(
            "redis-server on port {} did not answer PING within 10 s",
            self.port
        ))
    }

    /// Whether the process is running (not stopped; it may be paused).
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// The process id, while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The server's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Kills the server (SIGKILL: a crash; all data is lost).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            self.confirm_down();
        }
        self.paused = false;
    }

    fn kill_quietly(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "server already running");
        let mut last = String::new();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            match self.spawn() {
                Ok(()) => return,
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "could not restart redis-server on port {}: {last}",
            self.port
        );
    }

    /// Freezes the process (SIGSTOP): connections stay open, nothing answers.
    /// Returns once the kernel reports the process stopped (state `T` in
    /// `/proc/PID/stat`) and a PING goes unanswered: the fault is confirmed.
    pub fn pause(&mut self) {
        self.signal("STOP");
        self.paused = true;
        let pid = self.pid().expect("server not running");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !process_stopped(pid) {
            assert!(
                Instant::now() < deadline,
                "redis-server {pid} not stopped 10 s after SIGSTOP"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        self.confirm_down();
    }

    /// Panics unless a PING goes unanswered (within 200 ms): the server is
    /// down or frozen. Called after [`stop`](Self::stop) and
    /// [`pause`](Self::pause), so fault tests time the outage from a
    /// confirmed fault.
    pub fn confirm_down(&self) {
        assert!(
            !pings(self.port),
            "redis-server on port {} still answers PING",
            self.port
        );
    }

    /// Resumes a paused process (SIGCONT).
    pub fn resume(&mut self) {
        self.signal("CONT");
        self.paused = false;
    }

    fn signal(&self, sig: &str) {
        let child = self.child.as_ref().expect("server not running");
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(child.id().to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -{sig} failed");
    }

    /// Runs `redis-cli -p PORT args…` and returns its standard output;
    /// panics (with the command and the answer) when redis-cli fails or
    /// Redis answers an error.
    pub fn cli(&self, args: &[&str]) -> String {
        cli(self.port, args)
    }

    /// [`cli`](Self::cli), the failure as an `Err` (for servers that may be down).
    pub fn try_cli(&self, args: &[&str]) -> Result<String, String> {
        try_cli(self.port, args)
    }

    /// An integer reply; panics on anything else (an error, nil, no answer).
    pub fn int(&self, args: &[&str]) -> i64 {
        parse_int(self.port, args, &self.cli(args))
            .unwrap_or_else(|| panic!("{}: nil reply", command_line(self.port, args)))
    }

    /// An integer reply or nil (`GET`/`HGET` of a missing key or field:
    /// `None`); panics on anything else.
    pub fn int_or_nil(&self, args: &[&str]) -> Option<i64> {
        parse_int(self.port, args, &self.cli(args))
    }

    /// `INFO section` parsed into `(field, value)` lines.
    pub fn info(&self, section: &str) -> Vec<(String, String)> {
        self.cli(&["INFO", section])
            .lines()
            .filter_map(|l| l.trim().split_once(':'))
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect()
    }

    /// The `calls` of `cmdstat_<command>` in `INFO commandstats` (0 when
    /// the command was never called; panics when INFO does not answer).
    pub fn command_calls(&self, command: &str) -> u64 {
        command_calls(self.port, command)
    }

    /// The store's script calls: `EVALSHA` (scripts) and `FCALL` (the lean
    /// scripts, called as Redis functions).
    pub fn script_calls(&self) -> u64 {
        self.command_calls("evalsha") + self.command_calls("fcall")
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill_quietly();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Whether process `pid` is stopped (state `T` in `/proc/PID/stat`).
fn process_stopped(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            // `pid (comm) state …`: the state follows the last `)`.
            let rest = &stat[stat.rfind(')')? + 1..];
            rest.split_whitespace().next().map(|s| s == "T")
        })
        .unwrap_or(false)
}

fn command_line(port: u16, args: &[&str]) -> String {
    format!("redis-cli -p {port} {}", args.join(" "))
}

/// Error replies redis-cli prints on standard output (with exit status 0).
const ERROR_REPLIES: &[&str] = &[
    "ERR",
    "WRONGTYPE",
    "MOVED",
    "ASK",
    "CLUSTERDOWN",
    "NOSCRIPT",
    "BUSY",
    "LOADING",
    "READONLY",
    "NOAUTH",
    "MASTERDOWN",
    "TRYAGAIN",
    "CROSSSLOT",
    "OOM",
    "EXECABORT",
    "NOPERM",
    "NOREPLICAS",
    "MISCONF",
];

/// Runs `redis-cli -p port args…`: its standard output, or why not (redis-cli
/// failed, e.g. no server, or Redis answered an error).
pub fn try_cli(port: u16, args: &[&str]) -> Result<String, String> {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{MISSING} ({e})"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let first = stdout.split_whitespace().next().unwrap_or_default();
    if !out.status.success() || ERROR_REPLIES.contains(&first) {
        return Err(format!(
            "{} failed ({}): stdout {stdout:?}, stderr {stderr:?}",
            command_line(port, args),
            out.status
        ));
    }
    Ok(stdout)
}

/// Runs `redis-cli -p port args…` and returns its standard output; panics
/// with the command and the answer when redis-cli fails or Redis answers
/// an error, so a check never passes because Redis was not asked.
pub fn cli(port: u16, args: &[&str]) -> String {
    try_cli(port, args).unwrap_or_else(|e| panic!("{e}"))
}

/// An integer reply (`Some`), nil (`None`: redis-cli prints an empty line);
/// panics on anything else.
fn parse_int(port: u16, args: &[&str], answer: &str) -> Option<i64> {
    let t = answer.trim();
    if t.is_empty() {
        return None;
    }
    Some(t.parse().unwrap_or_else(|_| {
        panic!(
            "{}: expected an integer, got {answer:?}",
            command_line(port, args)
        )
    }))
}

/// The `calls` of `cmdstat_<command>` on the server at `port`.
pub fn command_calls(port: u16, command: &str) -> u64 {
    let needle = format!("cmdstat_{}:", command.to_ascii_lowercase());
    let info = cli(port, &["INFO", "commandstats"]);
    assert!(
        info.contains("# Commandstats"),
        "INFO commandstats on port {port}: {info:?}"
    );
    // A command never called has no line: 0 calls.
    info.lines()
        .find_map(|l| l.trim().strip_prefix(&needle).map(str::to_owned))
        .map(|rest| {
            rest.split(',')
                .find_map(|kv| kv.strip_prefix("calls=").map(|v| v.parse().unwrap()))
                .unwrap_or_else(|| panic!("no calls= in {rest:?}"))
        })
        .unwrap_or(0)
}

/// A Redis Cluster of three masters (optionally with replicas), torn down
/// on drop.
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts three `--cluster-enabled` servers, joins them with
    /// `redis-cli --cluster create`, and waits for `cluster_state:ok` on
    /// every node.
    pub fn new() -> Self {
        Self::with_replicas(0)
    }

    /// Three masters with `replicas` replicas each (`--cluster-replicas`):
    /// `3 × (1 + replicas)` servers. With replicas, a killed master is
    /// replaced by one of its replicas (automatic failover after the node
    /// timeout of 2 s). Waits for `cluster_state:ok` on every node and,
    /// with replicas, for every replica's link to its master.
    pub fn with_replicas(replicas: usize) -> Self {
        check_binaries();
        let nodes: Vec<RedisServer> = (0..3 * (1 + replicas))
            .map(|_| {
                RedisServer::with_args(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "2000",
                ])
            })
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port()))
            .collect();
        let out = Command::new("redis-cli")
            .arg("--cluster")
            .arg("create")
            .args(&addrs)
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("{MISSING} ({e})"));
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = RedisCluster { nodes };
        let waited = cluster.wait_ok(Duration::from_secs(30));
        assert!(
            waited.is_some(),
            "cluster did not reach cluster_state:ok within 30 s"
        );
        if replicas > 0 {
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let linked = cluster
                    .nodes
                    .iter()
                    .filter(|n| n.cli(&["ROLE"]).starts_with("slave"))
                    .filter(|n| {
                        n.cli(&["INFO", "replication"])
                            .contains("master_link_status:up")
                    })
                    .count();
                if linked == 3 * replicas {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "replicas not linked within 30 s ({linked} of {})",
                    3 * replicas
                );
                std::thread::sleep(Duration::from_millis(100));
            }
            // Every node must know every replica before a failover can be voted.
            let deadline = Instant::now() + Duration::from_secs(30);
            while !cluster.running().all(|n| {
                n.cli(&["CLUSTER", "NODES"])
                    .lines()
                    .filter(|l| l.contains("slave"))
                    .count()
                    == 3 * replicas
            }) {
                assert!(Instant::now() < deadline, "replicas not known within 30 s");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        cluster
    }

    /// The running nodes.
    fn running(&self) -> impl Iterator<Item = &RedisServer> {
        self.nodes.iter().filter(|n| n.is_running())
    }

    /// Waits until every running node reports `cluster_state:ok` (and knows
    /// a master for every slot); returns how long that took, or `None` on
    /// timeout.
    pub fn wait_ok(&self, timeout: Duration) -> Option<Duration> {
        poll(timeout, || {
            self.running()
                .all(|n| n.cli(&["CLUSTER", "INFO"]).contains("cluster_state:ok"))
        })
    }

    /// The node at `index`, mutable (to stop, start, pause it).
    pub fn node_mut(&mut self, index: usize) -> &mut RedisServer {
        &mut self.nodes[index]
    }

    /// The index of the node serving `key`'s slot, as the running nodes see it.
    pub fn index_for(&self, key: &str) -> usize {
        self.try_index_for(key)
            .unwrap_or_else(|| panic!("no node serves the slot of {key}"))
    }

    /// [`index_for`](Self::index_for), `None` while no running master serves it.
    pub fn try_index_for(&self, key: &str) -> Option<usize> {
        let port = self.try_node_for(key)?.port();
        self.nodes.iter().position(|n| n.port() == port)
    }

    /// The nodes.
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// The nodes' URLs.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// The node serving `key`'s slot.
    pub fn node_for(&self, key: &str) -> &RedisServer {
        self.try_node_for(key)
            .unwrap_or_else(|| panic!("no node serves the slot of {key}"))
    }

    /// The running master serving `key`'s slot, as the running nodes see
    /// it; `None` while its master has failed and no replica has taken over.
    pub fn try_node_for(&self, key: &str) -> Option<&RedisServer> {
        let any = self.running().next().expect("a running node");
        let slot: u16 = any
            .cli(&["CLUSTER", "KEYSLOT", key])
            .trim()
            .parse()
            .expect("CLUSTER KEYSLOT");
        let nodes = any.cli(&["CLUSTER", "NODES"]);
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if fields.len() < 9 || !fields[2].contains("master") || fields[2].contains("fail") {
                continue;
            }
            let port: u16 = fields[1]
                .split(['@', ':'])
                .nth(1)
                .and_then(|p| p.parse().ok())
                .unwrap_or(0);
            for range in &fields[8..] {
                let (lo, hi) = match range.split_once('-') {
                    Some((lo, hi)) => (lo.parse().unwrap_or(1), hi.parse().unwrap_or(0)),
                    None => {
                        let s = range.parse().unwrap_or(1);
                        (s, s)
                    }
                };
                if (lo..=hi).contains(&slot) {
                    return self
                        .nodes
                        .iter()
                        .find(|n| n.port() == port)
                        .filter(|n| n.is_running());
                }
            }
        }
        None
    }

    /// The sum over the nodes of `cmdstat_<command>` calls.
    pub fn command_calls(&self, command: &str) -> u64 {
        self.nodes.iter().map(|n| n.command_calls(command)).sum()
    }
}

/// The name under which [`RedisSentinels`] monitor their master.
pub const SENTINEL_MASTER: &str = "tt-master";

/// One master with replicas, watched by three sentinels (quorum 2) that
/// fail it over to a replica once it has not answered for `down_after`
/// (`down-after-milliseconds`); every process killed on drop.
pub struct RedisSentinels {
    /// Index 0 is the first master, then the replicas.
    servers: Vec<RedisServer>,
    sentinels: Vec<RedisServer>,
}

impl RedisSentinels {
    /// Starts the master, `replicas` replicas of it and three sentinels,
    /// and waits (up to 30 s) until every replica is linked and every
    /// sentinel knows the replicas and the two other sentinels: a failover
    /// can then be voted.
    pub fn new(replicas: usize, down_after: Duration) -> Self {
        let master = RedisServer::new();
        let master_port = master.port().to_string();
        let mut servers = vec![master];
        servers.extend(
            (0..replicas)
                .map(|_| RedisServer::with_args(&["--replicaof", "127.0.0.1", &master_port])),
        );
        let down_after = down_after.as_millis().to_string();
        // A failed failover is retried after twice this (default 3 min).
        let failover_timeout = "3000";
        let sentinels = (0..3)
            .map(|_| {
                RedisServer::with_args(&[
                    "--sentinel",
                    "--sentinel",
                    "monitor",
                    SENTINEL_MASTER,
                    "127.0.0.1",
                    &master_port,
                    "2",
                    "--sentinel",
                    "down-after-milliseconds",
                    SENTINEL_MASTER,
                    &down_after,
                    "--sentinel",
                    "failover-timeout",
                    SENTINEL_MASTER,
                    failover_timeout,
                ])
            })
            .collect();
        let group = RedisSentinels { servers, sentinels };
        let ready = poll(Duration::from_secs(30), || {
            group.servers[1..].iter().all(|r| {
                r.try_cli(&["INFO", "replication"])
                    .is_ok_and(|i| i.contains("master_link_status:up"))
            }) && group.sentinels.iter().all(|s| {
                let master = group.sentinel_master(s);
                let field = |name: &str| {
                    master
                        .iter()
                        .find(|(k, _)| k == name)
                        .map(|(_, v)| v.as_str())
                };
                field("num-slaves") == Some(&replicas.to_string())
                    && field("num-other-sentinels") == Some("2")
            })
        });
        assert!(
            ready.is_some(),
            "replicas or sentinels not ready within 30 s: {:?}",
            group
                .sentinels
                .iter()
                .map(|s| group.sentinel_master(s))
                .collect::<Vec<_>>()
        );
        group
    }

    /// `SENTINEL MASTER` of `sentinel` as `(field, value)` pairs (empty when
    /// it does not answer).
    fn sentinel_master(&self, sentinel: &RedisServer) -> Vec<(String, String)> {
        let out = sentinel
            .try_cli(&["SENTINEL", "MASTER", SENTINEL_MASTER])
            .unwrap_or_default();
        let lines: Vec<&str> = out.lines().collect();
        lines
            .chunks_exact(2)
            .map(|kv| (kv[0].trim().to_owned(), kv[1].trim().to_owned()))
            .collect()
    }

    /// The sentinels' URLs (`redis://127.0.0.1:PORT`).
    pub fn sentinel_urls(&self) -> Vec<String> {
        self.sentinels.iter().map(RedisServer::url).collect()
    }

    /// The sentinel at `index` (0..3).
    pub fn sentinel(&self, index: usize) -> &RedisServer {
        &self.sentinels[index]
    }

    /// How many clients are subscribed to a channel on the sentinels.
    pub fn sentinel_subscribers(&self) -> usize {
        self.sentinels
            .iter()
            .map(|s| s.cli(&["CLIENT", "LIST"]).matches("flags=P ").count())
            .sum()
    }

    /// The data servers: the first master, then the replicas.
    pub fn servers(&self) -> &[RedisServer] {
        &self.servers
    }

    /// The data server at `index`, mutable (to stop, pause it).
    pub fn server_mut(&mut self, index: usize) -> &mut RedisServer {
        &mut self.servers[index]
    }

    /// The index of the server that a majority of the sentinels (2 of 3)
    /// name as the master now (`SENTINEL GET-MASTER-ADDR-BY-NAME`).
    pub fn master_index(&self) -> Option<usize> {
        let named: Vec<u16> = self
            .sentinels
            .iter()
            .filter_map(|s| {
                let out = s
                    .try_cli(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", SENTINEL_MASTER])
                    .ok()?;
                out.lines().nth(1)?.trim().parse().ok()
            })
            .collect();
        self.servers
            .iter()
            .position(|server| named.iter().filter(|&&p| p == server.port()).count() >= 2)
    }
}

/// Polls `done` every 50 ms until it holds (how long that took) or
/// `timeout` passes (`None`).
pub fn poll(timeout: Duration, mut done: impl FnMut() -> bool) -> Option<Duration> {
    let started = Instant::now();
    loop {
        if done() {
            return Some(started.elapsed());
        }
        if started.elapsed() > timeout {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}
