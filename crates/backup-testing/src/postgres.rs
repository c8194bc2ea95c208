//! Real PostgreSQL 15 clusters for tests (WAL archiving, base backups, point-in-time
//! recovery), each on a free loopback port in its own temp directory and stopped when dropped.
//!
//! ```no_run
//! use std::time::Duration;
//! use backup_testing::postgres::{PgCluster, PgClusterOptions};
//!
//! let archive = PgCluster::scratch_dir("archive");
//! let mut pg = PgCluster::init(PgClusterOptions {
//!     archive_command: Some(format!("cp %p {}/%f", archive.path().display())),
//!     ..PgClusterOptions::default()
//! });
//! pg.start();
//! pg.psql("CREATE TABLE t (x int); INSERT INTO t VALUES (1)");
//! let segment = pg.switch_wal();
//! pg.wait_archived(&segment, Duration::from_secs(30));
//! ```
//!
//! The binaries come from `/usr/lib/postgresql/15/bin` (or `$BACKUPD_PG_BIN_DIR`).
//! `initdb` and `postgres` refuse to run as root, so when the tests run as root (CI, this
//! machine) every server-side program runs as the OS user `postgres` through
//! `runuser -u postgres --`; otherwise as the current user. Whatever the server itself runs,
//! such as the `archive_command` and `restore_command`, runs as that user too and with the
//! test's environment: the files and binaries it needs must be reachable by
//! [`PgCluster::os_user`]. [`PgCluster::scratch_dir`], [`PgCluster::make_accessible`] and
//! [`PgCluster::accessible_binary`] arrange that (a binary under `/root`, such as a cargo
//! target dir in `$HOME`, is not executable by `postgres`).
//!
//! Clients (`psql`, `pgbench`, and tests connecting to [`PgCluster::url`]) connect over TCP
//! as the database user `postgres` with trust authentication.

use std::cell::Cell;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// Where Debian's `postgresql-15` package puts the server binaries.
const DEFAULT_BIN_DIR: &str = "/usr/lib/postgresql/15/bin";

/// How long `start` waits for the server to accept connections (crash or archive recovery
/// included) before failing, as `pg_ctl -w -t 120` would.
const START_TIMEOUT: Duration = Duration::from_secs(120);

/// Lines of the server log shown when something fails.
const LOG_LINES_ON_FAILURE: usize = 40;

/// How a new cluster is set up. Every field has a default ([`Default`]): a cluster without
/// archiving, `fsync=off`, no data checksums.
#[derive(Clone, Debug, Default)]
pub struct PgClusterOptions {
    /// `initdb --data-checksums`.
    pub data_checksums: bool,
    /// Sets `archive_mode = on` and this `archive_command` (`%p` is the segment's path
    /// relative to the data dir, `%f` its file name). It runs as [`PgCluster::os_user`].
    pub archive_command: Option<String>,
    /// `archive_timeout`: force a segment switch after this long when WAL was written
    /// (whole seconds, at least 1).
    pub archive_timeout: Option<Duration>,
    /// `max_wal_size` in MiB (PostgreSQL's default is 1024).
    pub max_wal_size_mb: Option<u32>,
    /// `fsync`; off by default for speed (a killed server loses nothing, only a machine
    /// crash would).
    pub fsync: bool,
    /// More `key = value` lines for `postgresql.conf`, written last so they override the
    /// settings above. Values are written as given: quote strings (`key = 'value'`).
    pub extra_settings: Vec<String>,
}

/// How long [`PgCluster::pgbench_run`] runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PgbenchLength {
    /// `-T`: for this many seconds.
    Seconds(u32),
    /// `-t`: this many transactions per client.
    Transactions(u32),
}

/// A PostgreSQL cluster: a data directory and, while started, its server. Dropping it stops
/// the server at once (`pg_ctl stop -m immediate`) and removes its temp directory.
pub struct PgCluster {
    port: u16,
    data_dir: PathBuf,
    log: PathBuf,
    /// The running server: `postgres` itself, or the `runuser` that waits for it when root.
    server: Option<Child>,
    /// Whether a panic of ours already showed the server log (then `drop` does not).
    log_shown: Cell<bool>,
    // Holds the log and the Unix socket (and the data dir of a cluster made by `init`);
    // dropped after the server is stopped in `drop`.
    dir: TempDir,
}

impl PgCluster {
    /// Creates a cluster with `initdb -A trust -U postgres` in a new temp directory and writes
    /// the settings of `options` (plus a free port, loopback only, `wal_level = replica`) into
    /// its `postgresql.conf`. The server is not started: call [`PgCluster::start`].
    pub fn init(options: PgClusterOptions) -> PgCluster {
        let dir = PgCluster::scratch_dir("pg");
        let data_dir = dir.path().join("data");
        let port = free_port();
        let mut initdb = server_command("initdb", dir.path());
        initdb
            .arg("-D")
            .arg(&data_dir)
            .args(["-A", "trust", "-U", "postgres", "--no-sync", "--no-locale"])
            .args(["-E", "UTF8"]);
        if options.data_checksums {
            initdb.arg("--data-checksums");
        }
        let out = run(&mut initdb);
        assert!(
            out.status.success(),
            "initdb failed ({}):\n{}",
            out.status,
            output_text(&out)
        );

        let mut conf = String::from("\n# Written by backup_testing::postgres.\n");
        conf.push_str(&format!("port = {port}\n"));
        conf.push_str("listen_addresses = '127.0.0.1'\n");
        conf.push_str(&format!(
            "unix_socket_directories = {}\n",
            quote(&dir.path().display().to_string())
        ));
        conf.push_str("wal_level = replica\n");
        conf.push_str(&format!(
            "fsync = {}\n",
            if options.fsync { "on" } else { "off" }
        ));
        // Several clusters run at once on small machines.
        conf.push_str("shared_buffers = 32MB\nmax_connections = 40\n");
        if let Some(command) = &options.archive_command {
            conf.push_str("archive_mode = on\n");
            conf.push_str(&format!("archive_command = {}\n", quote(command)));
        }
        if let Some(timeout) = options.archive_timeout {
            conf.push_str(&format!(
                "archive_timeout = {}s\n",
                timeout.as_secs().max(1)
            ));
        }
        if let Some(mb) = options.max_wal_size_mb {
            conf.push_str(&format!("max_wal_size = {mb}MB\n"));
        }
        for line in &options.extra_settings {
            conf.push_str(line);
            conf.push('\n');
        }
        OpenOptions::new()
            .append(true)
            .open(data_dir.join("postgresql.conf"))
            .and_then(|mut f| f.write_all(conf.as_bytes()))
            .expect("append the test settings to postgresql.conf");

        PgCluster {
            port,
            log: dir.path().join("server.log"),
            data_dir,
            server: None,
            log_shown: Cell::new(false),
            dir,
        }
    }

    /// Starts a server on an existing data directory, such as one restored from a base
    /// backup (with `recovery.signal` and a `restore_command` in `postgresql.auto.conf`),
    /// listening on `port` (see [`free_port`]) with its log and socket in a new temp directory.
    /// Returns once the server accepts connections: with a recovery target that can be while
    /// recovery still runs (`SELECT pg_is_in_recovery()`; see [`PgCluster::wait_for`]).
    ///
    /// The data directory is handed to [`PgCluster::os_user`] (and set to mode 0700, as the
    /// server requires) but not removed on drop: it belongs to the caller.
    pub fn start_existing(data_dir: &Path, port: u16) -> PgCluster {
        PgCluster::make_accessible(data_dir);
        fs::set_permissions(data_dir, fs::Permissions::from_mode(0o700))
            .unwrap_or_else(|e| panic!("cannot chmod 0700 {}: {e}", data_dir.display()));
        let dir = PgCluster::scratch_dir("pg");
        let mut cluster = PgCluster {
            port,
            log: dir.path().join("server.log"),
            data_dir: data_dir.to_path_buf(),
            server: None,
            log_shown: Cell::new(false),
            dir,
        };
        cluster.start();
        cluster
    }

    /// Starts the server and waits (up to 120 s, recovery included) until it accepts
    /// connections. Panics with the end of the server log if it exits or does not get ready.
    pub fn start(&mut self) {
        assert!(
            !self.is_running(),
            "the server on port {} is already running",
            self.port
        );
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open the server log");
        let err = log.try_clone().expect("clone the log file handle");
        // Port, socket and address on the command line: they override the settings a
        // restored data directory brings from the cluster it was copied from.
        let mut command = server_command("postgres", self.dir.path());
        command
            .arg("-D")
            .arg(&self.data_dir)
            .arg("-p")
            .arg(self.port.to_string())
            .arg("-k")
            .arg(self.dir.path())
            .args(["-c", "listen_addresses=127.0.0.1"])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(err);
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start postgres ({command:?}): {e}"));
        let launcher = child.id();
        self.server = Some(child);

        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self
                .server
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.server = None;
                self.fail(format!(
                    "postgres on {} exited while starting ({status})",
                    self.data_dir.display()
                ));
            }
            // What `pg_ctl -w` reads: the status line of postmaster.pid, once the file is
            // this server's (not left behind by a killed one).
            if let Some(pid_file) = self.pid_file() {
                let ours = pid_file.pid == launcher || parent_pid(pid_file.pid) == Some(launcher);
                if ours && matches!(pid_file.status.as_str(), "ready" | "standby") {
                    return;
                }
            }
            if Instant::now() > deadline {
                self.kill9();
                self.fail(format!(
                    "postgres on {} did not accept connections within {START_TIMEOUT:?}",
                    self.data_dir.display()
                ));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Stops the server cleanly (`pg_ctl stop -m fast`: a shutdown checkpoint, and the last
    /// WAL segments handed to `archive_command`). Panics with the log if that fails.
    pub fn stop(&mut self) {
        if let Err(e) = self.pg_ctl_stop("fast") {
            self.fail(e);
        }
    }

    /// Kills the server and every process it started with SIGKILL, like a crash or the OOM
    /// killer, and waits until they are gone. The next [`PgCluster::start`] runs crash
    /// recovery. Does nothing when the server is not running.
    pub fn kill9(&mut self) {
        let Some(mut child) = self.server.take() else {
            return;
        };
        if let Some(pid_file) = self.pid_file() {
            let launcher = child.id();
            if pid_file.pid == launcher || parent_pid(pid_file.pid) == Some(launcher) {
                let mut pids = vec![pid_file.pid];
                pids.extend(descendants(pid_file.pid));
                let _ = Command::new("kill")
                    .arg("-KILL")
                    .args(pids.iter().map(u32::to_string))
                    .stderr(Stdio::null())
                    .status();
                let deadline = Instant::now() + Duration::from_secs(10);
                while pids.iter().any(|&p| is_alive(p)) && Instant::now() < deadline {
                    thread::sleep(Duration::from_millis(20));
                }
            }
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// [`PgCluster::stop`] then [`PgCluster::start`].
    pub fn restart(&mut self) {
        self.stop();
        self.start();
    }

    /// Whether the server started by this value is still running.
    pub fn is_running(&mut self) -> bool {
        match &mut self.server {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// `postgres://postgres@127.0.0.1:PORT/db` (trust authentication, no password).
    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// The last `lines` lines of the server log.
    pub fn log_tail(&self, lines: usize) -> String {
        let log = fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Runs `sql` (one or more statements) in the database `postgres` with
    /// `psql -X -A -t -q -v ON_ERROR_STOP=1` and returns its trimmed output: rows one a line,
    /// columns separated by `|`. Panics with psql's error.
    pub fn psql(&self, sql: &str) -> String {
        self.psql_db("postgres", sql)
    }

    /// [`PgCluster::psql`] in the database `db`.
    pub fn psql_db(&self, db: &str, sql: &str) -> String {
        self.try_psql_db(db, sql).unwrap_or_else(|e| {
            self.fail(format!(
                "psql on port {} failed: {e}\nSQL: {sql}",
                self.port
            ))
        })
    }

    /// [`PgCluster::psql`], returning psql's error output instead of panicking.
    pub fn try_psql(&self, sql: &str) -> Result<String, String> {
        self.try_psql_db("postgres", sql)
    }

    /// [`PgCluster::try_psql`] in the database `db`.
    pub fn try_psql_db(&self, db: &str, sql: &str) -> Result<String, String> {
        let mut child = self
            .client("psql")
            .args([
                "-X",
                "-A",
                "-t",
                "-q",
                "-v",
                "ON_ERROR_STOP=1",
                "-d",
                db,
                "-f",
                "-",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run psql: {e}"));
        let mut stdin = child.stdin.take().expect("psql's stdin is piped");
        // psql may exit before reading everything (a connection error): ignore EPIPE.
        let _ = stdin.write_all(sql.as_bytes());
        drop(stdin);
        let out = child.wait_with_output().expect("wait for psql");
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
        } else {
            Err(format!("{} {}", out.status, output_text(&out).trim()))
        }
    }

    /// `pgbench -i -s SCALE` in the database `postgres`: tables `pgbench_accounts` (100,000
    /// rows per unit of scale), `pgbench_branches`, `pgbench_tellers`, `pgbench_history`.
    pub fn pgbench_init(&self, scale: u32) {
        let out =
            run(self
                .client("pgbench")
                .args(["-i", "-q", "-s", &scale.to_string(), "postgres"]));
        assert!(
            out.status.success(),
            "pgbench -i failed ({}):\n{}",
            out.status,
            output_text(&out)
        );
    }

    /// Runs pgbench's TPC-B-like workload with `clients` connections (after
    /// [`PgCluster::pgbench_init`]) and returns its report.
    pub fn pgbench_run(&self, clients: u32, length: PgbenchLength) -> String {
        let mut command = self.client("pgbench");
        command
            .arg("-c")
            .arg(clients.to_string())
            .arg("-j")
            .arg(clients.clamp(1, 4).to_string());
        match length {
            PgbenchLength::Seconds(s) => command.arg("-T").arg(s.to_string()),
            PgbenchLength::Transactions(t) => command.arg("-t").arg(t.to_string()),
        };
        let out = run(command.arg("postgres"));
        if !out.status.success() {
            self.fail(format!(
                "pgbench failed ({}):\n{}",
                out.status,
                output_text(&out)
            ));
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Polls `sql` until it returns `expected` (e.g. `SELECT pg_is_in_recovery()` and `f`).
    /// Panics after `timeout` with the last answer or error and the server log.
    pub fn wait_for(&self, sql: &str, expected: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let last = self.try_psql(sql);
            if last.as_deref() == Ok(expected) {
                return;
            }
            if Instant::now() > deadline {
                self.fail(format!(
                    "`{sql}` did not return {expected:?} within {timeout:?}; last: {last:?}"
                ));
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// Ends the current WAL segment (`pg_switch_wal()`) and returns the name of the segment
    /// that completed, which the archiver then hands to `archive_command`. When nothing was
    /// written since the last switch, no segment completes and the name of the previous one
    /// (already archived) is returned.
    pub fn switch_wal(&self) -> String {
        // pg_switch_wal() returns the end of the completed segment, which pg_walfile_name
        // maps to that segment (the same name pg_current_wal_lsn() gives just before).
        self.psql("SELECT pg_walfile_name(pg_switch_wal())")
    }

    /// Waits until the archiver reports `file_name` (or a later segment) archived. Panics
    /// after `timeout` with `pg_stat_archiver` (failures, last failed segment) and the server
    /// log, where `archive_command`'s own errors are.
    pub fn wait_archived(&self, file_name: &str, timeout: Duration) {
        let done = self
            .data_dir
            .join("pg_wal/archive_status")
            .join(format!("{file_name}.done"));
        let deadline = Instant::now() + timeout;
        loop {
            let stats = self.try_psql(
                "SELECT coalesce(last_archived_wal, ''), failed_count, \
                 coalesce(last_failed_wal, ''), coalesce(last_failed_time::text, '') \
                 FROM pg_stat_archiver",
            );
            if let Ok(row) = &stats {
                let last_archived = row.split('|').next().unwrap_or_default();
                if last_archived == file_name
                    || (is_segment_name(last_archived) && last_archived > file_name)
                    || done.exists()
                {
                    return;
                }
            }
            if Instant::now() > deadline {
                let stats = match stats {
                    Ok(row) => {
                        let f: Vec<&str> = row.split('|').collect();
                        format!(
                            "last_archived_wal={:?} failed_count={} last_failed_wal={:?} \
                             last_failed_time={:?}",
                            f.first().unwrap_or(&""),
                            f.get(1).unwrap_or(&""),
                            f.get(2).unwrap_or(&""),
                            f.get(3).unwrap_or(&"")
                        )
                    }
                    Err(e) => format!("pg_stat_archiver unreadable: {e}"),
                };
                self.fail(format!(
                    "WAL segment {file_name} was not archived within {timeout:?}: {stats}"
                ));
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// The OS user the server and its `archive_command`/`restore_command` run as:
    /// `postgres` when the tests run as root, else the current user.
    pub fn os_user() -> &'static str {
        static USER: OnceLock<String> = OnceLock::new();
        USER.get_or_init(|| {
            if is_root() {
                "postgres".to_string()
            } else {
                id(&["-un"])
            }
        })
    }

    /// Gives the directory tree (or file) at `path` to [`PgCluster::os_user`] when running
    /// as root, so the server and its archive or restore commands can read and write it
    /// (symlinks are not followed). Panics if that user still cannot reach `path` because a
    /// parent directory is closed to it (e.g. `/root`: use [`PgCluster::scratch_dir`]).
    pub fn make_accessible(path: &Path) {
        if !is_root() {
            return;
        }
        let (uid, gid) = os_user_ids();
        chown_tree(path, uid, gid);
        let reachable = Command::new("runuser")
            .args(["-u", "postgres", "--", "test", "-e"])
            .arg(path)
            .current_dir("/")
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            reachable,
            "{} is not reachable by the OS user postgres: a parent directory is closed to it; \
             put it under PgCluster::scratch_dir()",
            path.display()
        );
    }

    /// A new temp directory under `/tmp` owned by [`PgCluster::os_user`] (mode 0755), for
    /// what the server's commands use: a WAL archive, a repository, a config or key file
    /// (call [`PgCluster::make_accessible`] on files written into it as root).
    pub fn scratch_dir(prefix: &str) -> TempDir {
        let dir = tempfile::Builder::new()
            .prefix(&format!("backupd-{prefix}-"))
            .tempdir_in("/tmp")
            .expect("create a temp dir under /tmp");
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755))
            .expect("chmod 0755 the temp dir");
        PgCluster::make_accessible(dir.path());
        dir
    }

    /// A path to `binary` that [`PgCluster::os_user`] can execute, for an `archive_command`
    /// or `restore_command`: `binary` itself when it can, else a copy in `dir` (e.g. a
    /// [`PgCluster::scratch_dir`]). A cargo target dir under `/root` is closed to `postgres`.
    pub fn accessible_binary(binary: &Path, dir: &Path) -> PathBuf {
        let executable = !is_root()
            || Command::new("runuser")
                .args(["-u", "postgres", "--", "test", "-x"])
                .arg(binary)
                .current_dir("/")
                .status()
                .is_ok_and(|s| s.success());
        if executable {
            return binary.to_path_buf();
        }
        let name = binary
            .file_name()
            .unwrap_or_else(|| panic!("{} has no file name", binary.display()));
        let copy = dir.join(name);
        fs::copy(binary, &copy).unwrap_or_else(|e| {
            panic!(
                "cannot copy {} to {}: {e}",
                binary.display(),
                copy.display()
            )
        });
        fs::set_permissions(&copy, fs::Permissions::from_mode(0o755))
            .expect("chmod 0755 the copied binary");
        PgCluster::make_accessible(&copy);
        copy
    }

    /// A client program (psql, pgbench) connecting over TCP as the database user `postgres`.
    fn client(&self, program: &str) -> Command {
        let mut command = Command::new(bin_dir().join(program));
        command
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
            ])
            .env("PGCONNECT_TIMEOUT", "10")
            .env_remove("PGPASSWORD")
            .env_remove("PGSERVICE")
            .env_remove("PGOPTIONS");
        command
    }

    fn pg_ctl_stop(&mut self, mode: &str) -> Result<(), String> {
        let Some(mut child) = self.server.take() else {
            return Ok(());
        };
        let out = run(server_command("pg_ctl", self.dir.path())
            .arg("stop")
            .arg("-D")
            .arg(&self.data_dir)
            .args(["-m", mode, "-w", "-t", "60"]));
        if !out.status.success() {
            self.server = Some(child);
            return Err(format!(
                "pg_ctl stop -m {mode} failed ({}): {}",
                out.status,
                output_text(&out).trim()
            ));
        }
        let _ = child.wait();
        Ok(())
    }

    /// Panics with `message` and the end of the server log.
    fn fail(&self, message: String) -> ! {
        self.log_shown.set(true);
        panic!(
            "{message}; the end of the server log ({}):\n{}",
            self.log.display(),
            self.log_tail(LOG_LINES_ON_FAILURE)
        );
    }

    /// The first lines of `postmaster.pid`, when it exists and is complete.
    fn pid_file(&self) -> Option<PidFile> {
        let text = fs::read_to_string(self.data_dir.join("postmaster.pid")).ok()?;
        let lines: Vec<&str> = text.lines().collect();
        Some(PidFile {
            pid: lines.first()?.trim().parse().ok()?,
            status: lines.get(7)?.trim().to_string(),
        })
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if thread::panicking() && !self.log_shown.get() {
            eprintln!(
                "the log of postgres on port {} ({}):\n{}",
                self.port,
                self.data_dir.display(),
                self.log_tail(LOG_LINES_ON_FAILURE)
            );
        }
        if self.pg_ctl_stop("immediate").is_err() {
            self.kill9();
        }
    }
}

struct PidFile {
    pid: u32,
    /// `starting`, `stopping`, `ready` or `standby`.
    status: String,
}

/// A free loopback port (another process may still take it before the server binds it).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a free loopback port")
        .port()
}

fn bin_dir() -> PathBuf {
    let dir = std::env::var_os("BACKUPD_PG_BIN_DIR")
        .map_or_else(|| PathBuf::from(DEFAULT_BIN_DIR), PathBuf::from);
    assert!(
        dir.join("postgres").is_file(),
        "PostgreSQL 15 is not installed in {} (apt-get install postgresql-15), or set \
         BACKUPD_PG_BIN_DIR to the directory holding initdb, pg_ctl and postgres",
        dir.display()
    );
    dir
}

/// `program` from the PostgreSQL bin dir, run as [`PgCluster::os_user`] in `cwd` (the
/// test's own working directory may be closed to that user).
fn server_command(program: &str, cwd: &Path) -> Command {
    let path = bin_dir().join(program);
    let mut command = if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(path);
        c
    } else {
        Command::new(path)
    };
    command.current_dir(cwd);
    command
}

fn run(command: &mut Command) -> Output {
    command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {command:?}: {e}"))
}

fn output_text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A single-quoted `postgresql.conf` string.
fn quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// `000000010000000000000003`: timeline, log, segment (not `.history`, `.partial`, ...).
fn is_segment_name(name: &str) -> bool {
    name.len() == 24 && name.bytes().all(|b| b.is_ascii_hexdigit())
}

fn is_root() -> bool {
    static ROOT: OnceLock<bool> = OnceLock::new();
    *ROOT.get_or_init(|| id(&["-u"]) == "0")
}

/// `id ARGS` (no unsafe code in this crate, so no getuid).
fn id(args: &[&str]) -> String {
    let out = Command::new("id")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run id {args:?}: {e}"));
    assert!(
        out.status.success(),
        "id {args:?} failed: {}",
        output_text(&out)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn os_user_ids() -> (u32, u32) {
    static IDS: OnceLock<(u32, u32)> = OnceLock::new();
    *IDS.get_or_init(|| {
        let parse = |flag: &str| {
            id(&[flag, "postgres"])
                .parse::<u32>()
                .expect("id prints a number")
        };
        (parse("-u"), parse("-g"))
    })
}

fn chown_tree(path: &Path, uid: u32, gid: u32) {
    std::os::unix::fs::lchown(path, Some(uid), Some(gid))
        .unwrap_or_else(|e| panic!("cannot chown {} to postgres: {e}", path.display()));
    let is_dir = fs::symlink_metadata(path).is_ok_and(|m| m.is_dir());
    if is_dir {
        let entries =
            fs::read_dir(path).unwrap_or_else(|e| panic!("cannot list {}: {e}", path.display()));
        for entry in entries {
            let entry = entry.unwrap_or_else(|e| panic!("cannot list {}: {e}", path.display()));
            chown_tree(&entry.path(), uid, gid);
        }
    }
}

/// The parent of process `pid`, from `/proc/PID/stat`.
fn parent_pid(pid: u32) -> Option<u32> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "PID (COMM) STATE PPID ...": COMM may hold spaces and parentheses.
    let after_comm = &stat[stat.rfind(')')? + 1..];
    after_comm.split_whitespace().nth(1)?.parse().ok()
}

/// Whether `pid` exists and is not a zombie (a container's init may never reap).
fn is_alive(pid: u32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next());
    !matches!(state, Some("Z" | "X") | None)
}

/// Every process below `root`, from a scan of `/proc`.
fn descendants(root: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let pairs: Vec<(u32, u32)> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|pid| Some((pid, parent_pid(pid)?)))
        .collect();
    let mut found = Vec::new();
    let mut frontier = vec![root];
    while let Some(parent) = frontier.pop() {
        for &(pid, ppid) in &pairs {
            if ppid == parent {
                found.push(pid);
                frontier.push(pid);
            }
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_names() {
        assert!(is_segment_name("000000010000000000000003"));
        assert!(!is_segment_name("00000002.history"));
        assert!(!is_segment_name("000000010000000000000003.partial"));
    }

    #[test]
    fn quotes_conf_strings() {
        assert_eq!(quote("cp %p '/x y'/%f"), "'cp %p ''/x y''/%f'");
    }
}
