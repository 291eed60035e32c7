//! Throw-away PostgreSQL servers for integration tests.
//!
//! Include with `#[path = "common/postgres_server.rs"] mod postgres_server;`.
//!
//! Every server is a fresh cluster: `initdb` into its own temporary
//! directory, then `postgres` on a free port of 127.0.0.1 (TCP only, no Unix
//! socket, `fsync=off`: committed data survives
//! [`PgServer::stop`], not a machine crash), stopped and removed on drop, also when the test
//! panics. The server on 5432 (or any other left running) is never used.
//!
//! `initdb` and `postgres` refuse to run as root: when the tests run as root
//! the processes are started as the `postgres` user (created by Debian's
//! `postgresql` package), else `nobody`, through `CommandExt::uid/gid` (no
//! `su`/`runuser` in between, so the child is the postmaster itself). The
//! binaries are found in `$TT_PG_BIN`, on the `PATH`, or in the newest
//! `/usr/lib/postgresql/*/bin` (Debian: `apt-get install postgresql`).
#![allow(dead_code)]

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

const MISSING: &str = "initdb / postgres not found: these tests start their own PostgreSQL \
     servers; install them (Debian/Ubuntu: `apt-get install -y postgresql`) or set TT_PG_BIN \
     to the directory holding initdb and postgres";

/// The superuser of every test cluster (trust authentication on 127.0.0.1).
pub const SUPERUSER: &str = "postgres";

/// The directory holding `initdb` and `postgres`.
fn bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("TT_PG_BIN") {
        return PathBuf::from(dir);
    }
    if let Ok(path) = std::env::var("PATH") {
        for dir in std::env::split_paths(&path) {
            if dir.join("initdb").is_file() && dir.join("postgres").is_file() {
                return dir;
            }
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").is_file().then_some((v, bin))
        })
        .collect();
    versions.sort();
    versions.pop().map(|(_, bin)| bin).expect(MISSING)
}

/// `(uid, gid)` to run the server as: `None` when not root.
fn run_as() -> Option<(u32, u32)> {
    let me = Command::new("id").arg("-u").output().ok()?;
    if String::from_utf8_lossy(&me.stdout).trim() != "0" {
        return None;
    }
    let passwd = std::fs::read_to_string("/etc/passwd").expect("read /etc/passwd");
    let find = |name: &str| {
        passwd.lines().find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() > 3 && f[0] == name).then(|| (f[2].parse().unwrap(), f[3].parse().unwrap()))
        })
    };
    Some(
        find("postgres")
            .or_else(|| find("nobody"))
            .expect("running as root, but neither a `postgres` nor a `nobody` user exists"),
    )
}

fn temp_dir() -> PathBuf {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    let dir = std::env::temp_dir().join(format!(
        "tt-pg-{}-{}-{nanos}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::SeqCst)
    ));
    std::fs::create_dir_all(&dir).expect("create a temporary directory");
    dir
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    l.local_addr().unwrap().port()
}

/// One PostgreSQL cluster and its postmaster on 127.0.0.1.
pub struct PgServer {
    port: u16,
    dir: PathBuf,
    bin: PathBuf,
    user: Option<(u32, u32)>,
    child: Option<Child>,
    starts: u32,
}

impl PgServer {
    /// Creates a cluster and starts it on a free port; waits until it accepts
    /// connections.
    pub fn new() -> Self {
        let bin = bin_dir();
        let user = run_as();
        let dir = temp_dir();
        if let Some((uid, gid)) = user {
            std::os::unix::fs::chown(&dir, Some(uid), Some(gid)).expect("chown the data directory");
        }
        let mut initdb = Command::new(bin.join("initdb"));
        initdb
            .arg("-D")
            .arg(dir.join("data"))
            .args(["-A", "trust", "-U", SUPERUSER, "--no-sync", "-E", "UTF8"])
            .args(["--locale=C", "--no-instructions"])
            .stdin(Stdio::null());
        if let Some((uid, gid)) = user {
            initdb.uid(uid).gid(gid);
        }
        let out = initdb
            .output()
            .unwrap_or_else(|e| panic!("{MISSING} ({e})"));
        let mut server = PgServer {
            port: 0,
            dir,
            bin,
            user,
            child: None,
            starts: 0,
        };
        assert!(
            out.status.success(),
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let mut last = String::new();
        for _ in 0..5 {
            server.port = free_port();
            match server.spawn() {
                Ok(()) => return server,
                Err(e) => last = e, // port taken meanwhile: try another one
            }
        }
        panic!("could not start postgres: {last}");
    }

    fn spawn(&mut self) -> Result<(), String> {
        self.starts += 1;
        let log = self.dir.join(format!("postgres-{}.log", self.starts));
        let log_file = std::fs::File::create(&log).map_err(|e| e.to_string())?;
        if let Some((uid, gid)) = self.user {
            let _ = std::os::unix::fs::chown(&log, Some(uid), Some(gid));
        }
        let mut cmd = Command::new(self.bin.join("postgres"));
        cmd.arg("-D")
            .arg(self.dir.join("data"))
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-c", "listen_addresses=127.0.0.1"])
            .args(["-c", "unix_socket_directories="])
            .args(["-c", "fsync=off", "-c", "full_page_writes=off"])
            // synchronous_commit stays on: an immediate stop must keep what
            // was committed (fsync=off only skips the flush to the disk).
            .args(["-c", "max_connections=60"])
            .args(["-c", "shared_buffers=16MB", "-c", "logging_collector=off"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file);
        if let Some((uid, gid)) = self.user {
            cmd.uid(uid).gid(gid);
        }
        let mut child = cmd.spawn().map_err(|e| format!("{MISSING} ({e})"))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("postgres exited with {status}: {text}"));
            }
            if text.contains("database system is ready to accept connections") {
                self.child = Some(child);
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        Err(format!(
            "postgres on port {} was not ready within 30 s",
            self.port
        ))
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether the postmaster is running.
    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// A libpq-style connection string for `user` on database `postgres`.
    pub fn conn_str(&self, user: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={user} dbname=postgres connect_timeout=2",
            self.port
        )
    }

    /// `postgres://user@127.0.0.1:PORT/postgres`.
    pub fn url(&self, user: &str) -> String {
        format!("postgres://{user}@127.0.0.1:{}/postgres", self.port)
    }

    /// The cluster's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Stops the server at once (SIGQUIT, PostgreSQL's "immediate" shutdown:
    /// no checkpoint, every connection cut, crash recovery on the next
    /// start) and waits until the postmaster has exited.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .arg("-QUIT")
                .arg(child.id().to_string())
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                match child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() > deadline => {
                        let _ = child.kill();
                        let _ = child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        }
    }

    /// Starts the server again on the same port (committed data is kept).
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "server already running");
        let mut last = String::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            match self.spawn() {
                Ok(()) => return,
                Err(e) => last = e,
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("could not restart postgres on port {}: {last}", self.port);
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A deadpool of up to `max` connections to `server` as `user`.
#[cfg(feature = "postgres")]
pub fn pool(
    server: &PgServer,
    user: &str,
    max: usize,
) -> tower_tenancy::directory::postgres::deadpool_postgres::Pool {
    use tower_tenancy::directory::postgres::{deadpool_postgres, tokio_postgres};
    let config: tokio_postgres::Config = server.conn_str(user).parse().unwrap();
    deadpool_postgres::Pool::builder(deadpool_postgres::Manager::new(
        config,
        tokio_postgres::NoTls,
    ))
    .max_size(max)
    .build()
    .unwrap()
}

/// The `tokio_postgres::Config` for `user`.
#[cfg(feature = "postgres")]
pub fn config(
    server: &PgServer,
    user: &str,
) -> tower_tenancy::directory::postgres::tokio_postgres::Config {
    server.conn_str(user).parse().unwrap()
}

/// Creates an ordinary login role `name` (no superuser, no BYPASSRLS) that
/// may create tables in `public`: what an application should connect as.
#[cfg(feature = "postgres")]
pub async fn create_app_role(server: &PgServer, name: &str) {
    let pool = pool(server, SUPERUSER, 1);
    pool.get()
        .await
        .expect("connect as superuser")
        .batch_execute(&format!(
            "CREATE ROLE {name} LOGIN NOSUPERUSER NOBYPASSRLS; GRANT CREATE ON SCHEMA public TO {name};"
        ))
        .await
        .expect("create the application role");
}
