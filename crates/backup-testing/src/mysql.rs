//! MariaDB for tests: fresh databases on the server at 127.0.0.1:3306 (dropped when done),
//! and scratch `mariadbd` servers on free loopback ports in temp directories (killed on
//! drop). SQL is run through the `mariadb` client as `root` without a password.
//!
//! `scripts/mysql-test-server.sh` (run by `scripts/test.sh`) installs `mariadb-server` when
//! it is missing. Set `BACKUPD_SKIP_MYSQL_TESTS=1` where no MariaDB can run: the tests then
//! say they skip.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// The local server the tests use for backups.
pub const LOCAL_PORT: u16 = 3306;

/// True (with a message) when `BACKUPD_SKIP_MYSQL_TESTS=1`.
pub fn skip(test: &str) -> bool {
    if std::env::var("BACKUPD_SKIP_MYSQL_TESTS").as_deref() == Ok("1") {
        eprintln!("skipping {test}: BACKUPD_SKIP_MYSQL_TESTS=1");
        return true;
    }
    false
}

/// Runs `sql` on the server at `port` (in `db` when given); the rows, tab-separated.
pub fn try_sql(port: u16, db: Option<&str>, sql: &str) -> Result<String, String> {
    let mut cmd = Command::new("mariadb");
    cmd.args(["-h", "127.0.0.1", "-P", &port.to_string(), "-u", "root"])
        .args(["--batch", "--skip-column-names", "--raw"])
        .args(["--connect-timeout=10", "--default-character-set=utf8mb4"]);
    if let Some(db) = db {
        cmd.arg(db);
    }
    let out =
        cmd.arg("-e").arg(sql).output().map_err(|e| {
            format!("running the mariadb client: {e} (apt-get install mariadb-client)")
        })?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Like [`try_sql`], panicking with the server's message on failure.
pub fn sql(port: u16, db: Option<&str>, sql: &str) -> String {
    try_sql(port, db, sql).unwrap_or_else(|e| panic!("SQL failed on port {port}: {e}\n{sql}"))
}

/// A database of its own on a server, dropped on drop.
pub struct FreshDb {
    pub port: u16,
    pub name: String,
}

impl FreshDb {
    /// A new empty database named after `label` on the server at `port`.
    pub fn new(port: u16, label: &str) -> FreshDb {
        let name = format!("bk_{label}_{:08x}", rand::random::<u32>());
        sql(port, None, &format!("CREATE DATABASE `{name}`"));
        FreshDb { port, name }
    }

    /// A new database on the local server (127.0.0.1:3306).
    pub fn local(label: &str) -> FreshDb {
        Self::new(LOCAL_PORT, label)
    }

    pub fn sql(&self, text: &str) -> String {
        sql(self.port, Some(&self.name), text)
    }

    /// `(rows, CHECKSUM TABLE)` of each table, by name.
    pub fn table_checksums(&self) -> Vec<(String, u64, String)> {
        table_checksums(self.port, &self.name)
    }
}

impl Drop for FreshDb {
    fn drop(&mut self) {
        let _ = try_sql(
            self.port,
            None,
            &format!("DROP DATABASE IF EXISTS `{}`", self.name),
        );
    }
}

/// `(table, rows, CHECKSUM TABLE)` of each base table of `db`.
pub fn table_checksums(port: u16, db: &str) -> Vec<(String, u64, String)> {
    let tables = sql(
        port,
        None,
        &format!(
            "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = '{db}' AND \
             TABLE_TYPE = 'BASE TABLE' ORDER BY TABLE_NAME"
        ),
    );
    tables
        .lines()
        .map(|t| {
            let rows = sql(port, Some(db), &format!("SELECT COUNT(*) FROM `{t}`"));
            let checksum = sql(port, Some(db), &format!("CHECKSUM TABLE `{t}`"));
            let checksum = checksum.split('\t').nth(1).unwrap_or("").trim().to_owned();
            (
                t.to_owned(),
                rows.trim().parse().unwrap_or(u64::MAX),
                checksum,
            )
        })
        .collect()
}

/// A scratch `mariadbd` on a free loopback port; killed (and its files removed) on drop.
pub struct MariaServer {
    child: Child,
    port: u16,
    dir: TempDir,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn find(name: &str, dirs: &[&str]) -> PathBuf {
    for d in dirs {
        let p = Path::new(d).join(name);
        if p.exists() {
            return p;
        }
    }
    PathBuf::from(name)
}

impl MariaServer {
    /// Initialises a data directory and starts a server on it (about 5 s).
    pub fn start() -> MariaServer {
        let dir = tempfile::Builder::new()
            .prefix("backupd-mariadb-")
            .tempdir()
            .expect("temp dir");
        let data = dir.path().join("data");
        let install = find("mariadb-install-db", &["/usr/bin", "/usr/sbin"]);
        let out = Command::new(&install)
            .args([
                "--no-defaults",
                "--user=root",
                "--auth-root-authentication-method=normal",
            ])
            .arg(format!("--datadir={}", data.display()))
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "{}: {e}; run scripts/mysql-test-server.sh (apt-get install mariadb-server) or set \
                     BACKUPD_SKIP_MYSQL_TESTS=1",
                    install.display()
                )
            });
        assert!(
            out.status.success(),
            "mariadb-install-db failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("server.log")).expect("log file");
        let child = Command::new(find("mariadbd", &["/usr/sbin", "/usr/bin"]))
            .arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--port={port}"))
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--socket={}", dir.path().join("s").display()))
            .arg(format!("--pid-file={}", dir.path().join("pid").display()))
            .args([
                "--user=root",
                "--skip-log-bin",
                "--innodb-buffer-pool-size=32M",
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("starting mariadbd");
        let mut server = MariaServer { child, port, dir };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if try_sql(port, None, "SELECT 1").is_ok() {
                break;
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                panic!("mariadbd exited ({status}): {}", server.log_tail());
            }
            assert!(
                Instant::now() < deadline,
                "mariadbd did not accept connections within 60 s: {}",
                server.log_tail()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        server
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `mysql://root@127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        format!("mysql://root@127.0.0.1:{}/", self.port)
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.path().join("server.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

impl Drop for MariaServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
