//! The status page at `/`: what it shows before and after a backup, that it hides the
//! config's paths and token hashes, that `[api] status-page = false` turns it off, and that
//! a real browser (headless Chromium) renders it.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::*;

/// Characters of a backup id the page shows.
const ID_PREFIX: usize = 18;

/// A files source with the premium tier, copied to a second local repository.
fn status_config(service_extra: &str) -> String {
    let source_extra = "tier = \"premium\"\ncopy-to = [\"copy\"]\n\
        [[repository]]\nname = \"copy\"\nkind = \"local\"\npath = \"var/copy\"\n";
    config(
        "sqlite://var/catalog.db",
        source_extra,
        &format!("{}{service_extra}", tokens_config()),
    )
}

/// Queues a backup of `files` through the API and returns its id once the job succeeded.
fn backup_now(d: &Daemon) -> String {
    let (status, body) = json(
        "POST",
        &d.url("/api/v1/sources/files/backup"),
        Some(OPERATE_TOKEN),
    );
    assert_eq!(status, 202, "{body}");
    let job_id = body["job_id"].as_str().unwrap().to_owned();
    let job = wait_for("the backup job to succeed", Duration::from_secs(60), || {
        let (_, job) = json(
            "GET",
            &d.url(&format!("/api/v1/jobs/{job_id}")),
            Some(READ_TOKEN),
        );
        assert_ne!(job["status"], "dead", "{job}");
        (job["status"] == "succeeded").then_some(job)
    });
    job["backup_id"]
        .as_str()
        .expect("job names its backup")
        .to_owned()
}

/// The page, checked to be a 200 HTML response.
fn status_page(d: &Daemon) -> String {
    let r = request("GET", &d.url("/"), None, None).unwrap();
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.header("content-type"),
        Some("text/html; charset=utf-8"),
        "{:?}",
        r.headers
    );
    r.body
}

/// The `<section id="ID">` of the page.
fn section<'a>(page: &'a str, id: &str) -> &'a str {
    let start = page
        .find(&format!("<section id=\"{id}\">"))
        .unwrap_or_else(|| panic!("no section {id}:\n{page}"));
    let len = page[start..].find("</section>").expect("section ends");
    &page[start..start + len]
}

#[test]
fn status_page_shows_sources_backups_and_verdicts() {
    let work = Work::new(&status_config(""));
    std::fs::write(work.path("data/hello.txt"), b"hello").unwrap();
    work.init();
    let mut d = work.start(free_port(), "status");
    d.wait_healthy();

    // Before any backup; no token needed (like /healthz and /metrics).
    let page = status_page(&d);
    assert!(page.contains("<title>backupd status</title>"), "{page}");
    let sources = section(&page, "sources");
    assert!(sources.contains("<strong>files</strong>"), "{sources}");
    assert!(sources.contains("premium"), "{sources}");
    assert!(sources.contains("no backup yet"), "{sources}");
    let recovery = section(&page, "recovery");
    assert!(recovery.contains("no-restorable-point"), "{recovery}");
    assert!(recovery.contains("badge bad"), "{recovery}");

    let backup_id = backup_now(&d);
    // The daemon copies the backup to `copy` on its own; wait until it has.
    wait_for("the copy to `copy`", Duration::from_secs(60), || {
        let (_, body) = http("GET", &d.url("/metrics"), None, None).unwrap();
        body.contains("backupd_copies_total{destination=\"copy\",outcome=\"succeeded\"} 1")
            .then_some(())
    });

    let page = status_page(&d);
    let sources = section(&page, "sources");
    let prefix = &backup_id[..ID_PREFIX];
    assert!(
        sources.contains(&format!("<code title=\"{backup_id}\">{prefix}</code>")),
        "{backup_id}: {sources}"
    );
    assert!(sources.contains("complete"), "{sources}");
    assert!(sources.contains(" ago"), "{sources}");
    assert!(sources.contains("on demand"), "{sources}");

    let replication = section(&page, "replication");
    assert!(
        replication.contains("<strong>copy</strong>") && replication.contains("caught up"),
        "{replication}"
    );
    let recovery = section(&page, "recovery");
    // Premium targets (RPO 15m, RTO 1h), RPO met, no drill: untested.
    assert!(recovery.contains("<strong>files</strong>"), "{recovery}");
    assert!(
        recovery.contains("15m") && recovery.contains("1h"),
        "{recovery}"
    );
    assert!(
        recovery.contains("badge warn") && recovery.contains("untested"),
        "{recovery}"
    );
    assert!(recovery.contains("no drill yet"), "{recovery}");

    // Names only: no path, URL or token hash of the config.
    for secret in [
        "var/repo",
        "var/copy",
        "var/keys",
        "catalog.db",
        "./data",
        &sha256_hex(OPERATE_TOKEN),
        &sha256_hex(READ_TOKEN),
    ] {
        assert!(!page.contains(secret), "{secret:?} on the page:\n{page}");
    }

    // The newest backup fails (no folder for its objects can be made in the repository):
    // shown as failed, with why and the last complete one.
    std::fs::remove_dir_all(work.path("var/repo/backups")).unwrap();
    std::fs::write(work.path("var/repo/backups"), b"not a folder").unwrap();
    let (status, _) = json(
        "POST",
        &d.url("/api/v1/sources/files/backup"),
        Some(OPERATE_TOKEN),
    );
    assert_eq!(status, 202);
    let page = wait_for(
        "the failed backup on the page",
        Duration::from_secs(60),
        || {
            let page = status_page(&d);
            section(&page, "sources")
                .contains("badge bad")
                .then_some(page)
        },
    );
    let sources = section(&page, "sources");
    assert!(sources.contains("failed"), "{sources}");
    assert!(
        sources.contains(&format!("last complete: {prefix}")),
        "{sources}"
    );
    assert!(d.terminate().success(), "{}", d.log_text());

    // `status-page = false`: 404, the rest unchanged.
    std::fs::write(
        work.config_path(),
        status_config("").replace("[api]\n", "[api]\nstatus-page = false\n"),
    )
    .unwrap();
    let mut d = work.start(free_port(), "status-off");
    d.wait_healthy();
    let r = request("GET", &d.url("/"), None, None).unwrap();
    assert_eq!(r.status, 404, "{}", r.body);
    assert_eq!(http("GET", &d.url("/healthz"), None, None).unwrap().0, 200);
    assert!(d.terminate().success(), "{}", d.log_text());
}

/// Where Chromium is, or why the test cannot run.
fn chromium() -> Option<PathBuf> {
    let found = std::env::var_os("BACKUPD_CHROMIUM")
        .map(PathBuf::from)
        .into_iter()
        .chain(["/usr/bin/chromium", "/usr/bin/chromium-browser"].map(PathBuf::from))
        .find(|p| p.is_file());
    if found.is_none() {
        if std::env::var_os("BACKUPD_SKIP_BROWSER_TESTS").is_some_and(|v| v == "1") {
            eprintln!("SKIPPED: chromium is not installed and BACKUPD_SKIP_BROWSER_TESTS=1");
            return None;
        }
        panic!(
            "headless Chromium is needed at /usr/bin/chromium (or $BACKUPD_CHROMIUM): \
             scripts/test.sh installs it (apt-get install -y chromium); \
             set BACKUPD_SKIP_BROWSER_TESTS=1 to skip this test"
        );
    }
    found
}

/// Runs headless Chromium with its own profile directory, killed if it hangs.
fn run_chromium(chromium: &Path, profile: &Path, args: &[&str]) -> Output {
    let mut child = Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", chromium.display()));
    // Read the pipes on threads so a chatty browser cannot block on a full pipe.
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut b = Vec::new();
        std::io::Read::read_to_end(&mut stdout, &mut b).map(|_| b)
    });
    let err = std::thread::spawn(move || {
        let mut b = Vec::new();
        std::io::Read::read_to_end(&mut stderr, &mut b).map(|_| b)
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium {args:?} did not finish within 120s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    Output {
        status,
        stdout: out.join().unwrap().unwrap_or_default(),
        stderr: err.join().unwrap().unwrap_or_default(),
    }
}

#[test]
fn status_page_renders_in_headless_chromium() {
    let Some(chromium) = chromium() else {
        return;
    };
    let work = Work::new(&status_config(""));
    std::fs::write(work.path("data/hello.txt"), b"hello").unwrap();
    work.init();
    let mut d = work.start(free_port(), "browser");
    d.wait_healthy();
    let backup_id = backup_now(&d);
    let url = d.url("/");

    let shot = work.path("status.png");
    let out = run_chromium(
        &chromium,
        &work.path("chromium-profile"),
        &[
            "--window-size=1280,1000",
            &format!("--screenshot={}", shot.display()),
            &url,
        ],
    );
    assert!(
        out.status.success() && shot.is_file(),
        "chromium --screenshot failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let png = std::fs::read(&shot).unwrap();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG signature");
    let mut decoder = png::Decoder::new(std::io::Cursor::new(&png));
    decoder.set_transformations(png::Transformations::normalize_to_color8());
    let mut reader = decoder.read_info().expect("a decodable PNG");
    let mut pixels = vec![0; reader.output_buffer_size().expect("a sane PNG size")];
    let frame = reader.next_frame(&mut pixels).expect("PNG pixels");
    assert_eq!((frame.width, frame.height), (1280, 1000));
    let colours: std::collections::HashSet<&[u8]> = pixels[..frame.buffer_size()]
        .chunks_exact(frame.color_type.samples())
        .collect();
    // A blank page has one or two colours; the header, tables, badges and anti-aliased
    // text give hundreds.
    assert!(
        colours.len() > 16,
        "the screenshot looks blank: {} distinct colours",
        colours.len()
    );
    // Keep the screenshot for a human to look at.
    let kept = Path::new(env!("CARGO_TARGET_TMPDIR")).join("status_page.png");
    if std::fs::write(&kept, &png).is_ok() {
        eprintln!("screenshot: {}", kept.display());
    }

    // What the browser parsed, not just what the server sent.
    let out = run_chromium(
        &chromium,
        &work.path("chromium-profile-dom"),
        &["--dump-dom", &url],
    );
    let dom = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "chromium --dump-dom failed ({})",
        out.status
    );
    assert!(dom.contains("<title>backupd status</title>"), "{dom}");
    assert!(dom.contains("<strong>files</strong>"), "{dom}");
    assert!(dom.contains(&backup_id[..ID_PREFIX]), "{dom}");
    assert!(dom.contains("untested"), "{dom}");
    assert!(d.terminate().success(), "{}", d.log_text());
}

#[test]
fn status_page_answers_503_when_the_catalog_is_unreachable() {
    let work = Work::new(&status_config(""));
    work.init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let config = backup_engine::Config::load(Some(&work.config_path())).unwrap();
    let engine = {
        let _cwd = CwdGuard::enter(work.dir.path());
        rt.block_on(backup_engine::Engine::open(config)).unwrap()
    };
    // A closed pool fails every query, as a catalog that went away does.
    rt.block_on(engine.catalog.close());
    let app = backupd::api::router(backupd::api::AppState {
        engine: std::sync::Arc::new(engine),
        metrics: Default::default(),
        last_tick: Default::default(),
    });
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let port = listener.local_addr().unwrap().port();
    rt.spawn(async move { axum::serve(listener, app).await });

    let r = request("GET", &format!("http://127.0.0.1:{port}/"), None, None).unwrap();
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    assert!(
        r.body.contains("<title>backupd status</title>"),
        "{}",
        r.body
    );
    assert!(r.body.contains("The catalog is unreachable"), "{}", r.body);
    assert!(!r.body.contains("catalog.db"), "{}", r.body);
}
