//! Helpers for backupd's process-level tests: work dirs, configs, servers.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const OPERATE_TOKEN: &str = "operate-token-for-tests";
pub const READ_TOKEN: &str = "read-token-for-tests";

pub fn sha256_hex(s: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(s.as_bytes()))
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A PostgreSQL database of its own, dropped at the end. Panics with
/// instructions when the server is missing, unless BACKUPD_SKIP_POSTGRES_TESTS is set.
pub struct PgDatabase {
    pub name: String,
}

impl PgDatabase {
    pub fn create() -> Option<PgDatabase> {
        let name = format!(
            "backupd_ha_{}_{}",
            std::process::id(),
            Instant::now().elapsed().subsec_nanos()
        );
        let out = psql("test", &format!("CREATE DATABASE {name}"));
        match out {
            Ok(()) => Some(PgDatabase { name }),
            Err(e) => {
                if std::env::var_os("BACKUPD_SKIP_POSTGRES_TESTS").is_some() {
                    eprintln!("SKIPPED: PostgreSQL unavailable ({e}) and BACKUPD_SKIP_POSTGRES_TESTS is set");
                    return None;
                }
                panic!("PostgreSQL at 127.0.0.1:5432 is needed ({e}); start it or set BACKUPD_SKIP_POSTGRES_TESTS=1")
            }
        }
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:5432/{}", self.name)
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let _ = psql(
            "test",
            &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name),
        );
    }
}

pub fn psql(db: &str, sql: &str) -> Result<(), String> {
    let out = Command::new("psql")
        .args(["-h", "127.0.0.1", "-U", "postgres", "-d", db, "-qXc", sql])
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// A work directory with a config file; paths in the config are relative to it.
pub struct Work {
    pub dir: tempfile::TempDir,
}

impl Work {
    pub fn new(config: &str) -> Work {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("backupd.toml"), config).unwrap();
        std::fs::create_dir_all(dir.path().join("data")).unwrap();
        Work { dir }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn config_path(&self) -> PathBuf {
        self.path("backupd.toml")
    }

    /// `backupctl init` as a library call (creates key, catalog, repositories).
    pub fn init(&self) {
        let config = backup_engine::Config::load(Some(&self.config_path())).unwrap();
        let _cwd = CwdGuard::enter(self.dir.path());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(backup_engine::init::run_init(
            &config,
            &tokio_util::sync::CancellationToken::new(),
        ))
        .unwrap();
    }

    pub fn start(&self, port: u16, replica: &str) -> Daemon {
        let log = self.path(&format!("{replica}.log"));
        let child = Command::new(env!("CARGO_BIN_EXE_backupd"))
            .current_dir(self.dir.path())
            .args([
                "--config",
                "backupd.toml",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--replica",
                replica,
            ])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        Daemon {
            child: Some(child),
            port,
            log,
        }
    }
}

/// Relative config paths resolve against the current directory; tests that call
/// the library directly switch to the work dir (serialised by a global lock).
pub struct CwdGuard {
    previous: PathBuf,
    _lock: std::sync::MutexGuard<'static, ()>,
}

static CWD: std::sync::Mutex<()> = std::sync::Mutex::new(());

impl CwdGuard {
    pub fn enter(dir: &Path) -> CwdGuard {
        let lock = CWD.lock().unwrap_or_else(|e| e.into_inner());
        let previous = std::env::current_dir().unwrap();
        std::env::set_current_dir(dir).unwrap();
        CwdGuard {
            previous,
            _lock: lock,
        }
    }
}

impl Drop for CwdGuard {
    fn drop(&mut self) {
        let _ = std::env::set_current_dir(&self.previous);
    }
}

pub struct Daemon {
    pub child: Option<Child>,
    pub port: u16,
    pub log: PathBuf,
}

impl Daemon {
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// Waits until /healthz answers.
    pub fn wait_healthy(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if http("GET", &self.url("/healthz"), None, None)
                .map(|(s, _)| s == 200)
                .unwrap_or(false)
            {
                return;
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().unwrap()) {
                panic!("backupd exited with {status}; log:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("backupd did not become healthy; log:\n{}", self.log_text());
    }

    /// Waits for the process to exit by itself (e.g. refused to start).
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let c = self.child.as_mut().expect("running");
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = c.try_wait().unwrap() {
                self.child = None;
                return s;
            }
            if Instant::now() > deadline {
                panic!("backupd kept running; log:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    /// SIGTERM and wait for a clean exit.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(s) = c.try_wait().unwrap() {
                return s;
            }
            if Instant::now() > deadline {
                c.kill().unwrap();
                panic!("backupd did not stop after SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Minimal blocking HTTP/1.1 client (no extra dependencies): returns status and body.
pub fn http(
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> std::io::Result<(u16, String)> {
    request(method, url, token, body).map(|r| (r.status, r.body))
}

/// A response of [`request`]: status, header lines (names lowercased), body.
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl HttpResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// [`http`] with the response headers.
pub fn request(
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> std::io::Result<HttpResponse> {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").expect("http URL");
    let (host, path) = rest
        .split_once('/')
        .map(|(h, p)| (h, format!("/{p}")))
        .unwrap_or((rest, "/".into()));
    let mut stream = std::net::TcpStream::connect(host)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let body = body.unwrap_or("");
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let ctype = if body.is_empty() {
        String::new()
    } else {
        "Content-Type: application/json\r\n".into()
    };
    write!(stream, "{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n{auth}{ctype}Content-Length: {}\r\n\r\n{body}", body.len())?;
    let mut raw = String::new();
    BufReader::new(&mut stream).read_to_string(&mut raw)?;
    let status: u16 = raw
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let (head, body) = raw.split_once("\r\n\r\n").unwrap_or((&raw, ""));
    let headers: Vec<(String, String)> = head
        .lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_owned()
    };
    Ok(HttpResponse {
        status,
        headers,
        body,
    })
}

fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 {
            break;
        }
        out.push_str(&rest[..n]);
        s = &rest[n + 2..];
    }
    out
}

pub fn json(method: &str, url: &str, token: Option<&str>) -> (u16, serde_json::Value) {
    let (status, body) = http(method, url, token, None).unwrap();
    (
        status,
        serde_json::from_str(&body).unwrap_or(serde_json::Value::String(body)),
    )
}

/// Polls `f` until it returns Some or the deadline passes.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Lines of a file, for log assertions.
pub fn lines(path: &Path) -> Vec<String> {
    std::fs::File::open(path)
        .map(|f| BufReader::new(f).lines().map_while(Result::ok).collect())
        .unwrap_or_default()
}

/// Writes `mib` MiB of data that compresses a little (so backups take a while).
pub fn write_data(dir: &Path, files: usize, mib_each: usize) {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    for f in 0..files {
        let mut buf = vec![0u8; mib_each << 20];
        for chunk in buf.chunks_mut(8) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let v = x.to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
        std::fs::write(dir.join(format!("f{f:03}.bin")), &buf).unwrap();
    }
}

/// A config for these tests: catalog URL, one local repository, one files source.
pub fn config(catalog_url: &str, source_extra: &str, service_extra: &str) -> String {
    format!(
        r#"[catalog]
url = "{catalog_url}"
[encryption]
key-file = "var/keys/repo.key"
[scheduler]
tick = "1s"
lease = "3s"
retry-base = "1s"
retry-max = "2s"
{service_extra}
[[repository]]
name = "local"
kind = "local"
path = "var/repo"
[[source]]
name = "files"
kind = "files"
paths = ["./data"]
repository = "local"
{source_extra}
"#
    )
}

pub fn tokens_config() -> String {
    format!(
        "[api]\n[[api.token]]\nname = \"ops\"\nsha256 = \"{}\"\nscope = \"operate\"\n[[api.token]]\nname = \"viewer\"\nsha256 = \"{}\"\nscope = \"read\"\n",
        sha256_hex(OPERATE_TOKEN),
        sha256_hex(READ_TOKEN)
    )
}
