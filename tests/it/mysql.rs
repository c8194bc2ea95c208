//! MariaDB/MySQL sources: consistent logical backups of a database on the local MariaDB
//! (127.0.0.1:3306, a fresh database per test), restored into a scratch `mariadbd` started by
//! the test; row counts and CHECKSUM TABLE must be equal. Fault cases: unreachable server,
//! bad credentials, non-empty target. (A table altered during the dump is tested in
//! backup-engine's tests, where the dump can be paused at a table.)
//!
//! Skipped with a message under BACKUPD_SKIP_MYSQL_TESTS=1.

use backup_testing::mysql::{self, FreshDb, MariaServer};

use crate::support::*;

fn mysql_config(url: &str, database: &str, extra: &str) -> String {
    format!(
        r#"{CONFIG_HEAD}
[[repository]]
name = "region-a"
kind = "local"
path = "var/repo/region-a"
[[repository]]
name = "region-b"
kind = "local"
path = "var/repo/region-b"
[[source]]
name = "shop"
kind = "mysql"
url = "{url}"
databases = ["{database}"]
repository = "region-a"
{extra}"#
    )
}

/// Tables of many column types, NULLs, awkward bytes, a generated column, a foreign key,
/// a row with id 0 in an AUTO_INCREMENT column, views (one on another), routines, a trigger,
/// and a table large enough to be streamed in many chunks and inserted in many batches.
fn fill(db: &FreshDb) {
    db.sql(
        r#"
CREATE TABLE customers (
  id INT AUTO_INCREMENT PRIMARY KEY,
  name VARCHAR(100) CHARACTER SET utf8mb4 NOT NULL,
  note TEXT CHARACTER SET latin1,
  photo BLOB,
  balance DECIMAL(20,6),
  score DOUBLE,
  ratio FLOAT,
  born DATE,
  seen DATETIME(6),
  changed TIMESTAMP NULL DEFAULT NULL,
  span TIME(3),
  flags BIT(10),
  tier ENUM('free','pro','max'),
  tags SET('a','b','c'),
  doc JSON,
  upper_name VARCHAR(100) AS (UPPER(name)) VIRTUAL
) ENGINE=InnoDB;
SET SESSION sql_mode = CONCAT(@@sql_mode, ',NO_AUTO_VALUE_ON_ZERO');
INSERT INTO customers (id, name, note, photo, balance, score, ratio, born, seen, changed, span, flags, tier, tags, doc) VALUES
 (0, 'zero', NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL),
 (1, 'Zoë 🚀 ''quoted'' \\ back', CONVERT(UNHEX('636166E9') USING latin1), UNHEX('00FF27225C0A0D1A'), -12345678901234.123456, 0.1, 3.25, '1999-12-31', '2024-02-29 23:59:59.999999', '2021-06-01 12:00:00', '-838:59:59.000', b'1010101010', 'pro', 'a,c', '{"k": [1, 2, {"x": null}]}'),
 (2, '', '', '', 0, 1e300, 1.5, '0001-01-01', '1000-01-01 00:00:00', NULL, '00:00:00.001', b'0', 'free', '', '[]');
CREATE TABLE orders (
  id BIGINT UNSIGNED AUTO_INCREMENT PRIMARY KEY,
  customer_id INT NOT NULL,
  amount DECIMAL(10,2) NOT NULL,
  comment VARCHAR(200),
  CONSTRAINT fk_customer FOREIGN KEY (customer_id) REFERENCES customers (id)
) ENGINE=InnoDB;
SET SESSION max_recursive_iterations = 100000;
INSERT INTO orders (customer_id, amount, comment)
  WITH RECURSIVE seq(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM seq WHERE n < 20000)
  SELECT 1 + (n % 2), n * 1.25, IF(n % 7 = 0, NULL, REPEAT(CHAR(65 + n % 26), n % 150)) FROM seq;
CREATE TABLE audit (id INT AUTO_INCREMENT PRIMARY KEY, what VARCHAR(50)) ENGINE=InnoDB;
CREATE VIEW big_orders AS SELECT id, amount FROM orders WHERE amount > 1000;
CREATE VIEW biggest AS SELECT MAX(amount) AS top FROM big_orders;
CREATE FUNCTION double_it(x INT) RETURNS INT DETERMINISTIC RETURN x * 2;
DELIMITER //
CREATE PROCEDURE count_orders(OUT n INT) BEGIN SELECT COUNT(*) INTO n FROM orders; SET n = n + 0; END//
DELIMITER ;
CREATE TRIGGER orders_audit AFTER INSERT ON orders FOR EACH ROW INSERT INTO audit (what) VALUES (CONCAT('order ', NEW.id));
"#,
    );
}

#[test]
fn mysql_backup_restores_into_another_server_with_equal_counts_and_checksums() {
    if mysql::skip("mysql_backup_restores_into_another_server_with_equal_counts_and_checksums") {
        return;
    }
    let db = FreshDb::local("roundtrip");
    fill(&db);
    let before = db.table_checksums();
    assert_eq!(before.len(), 3, "{before:?}");
    assert!(before
        .iter()
        .any(|(t, rows, _)| t == "orders" && *rows == 20000));

    let work = Work::new();
    work.write_config(&mysql_config(
        "mysql://root@127.0.0.1:3306/",
        &db.name,
        "copy-to = [\"region-b\"]\nkeep = { last = 1 }\n",
    ));
    work.init();
    let out = work.ok(&["backup", "shop", "--json"]);
    let id = out.json()["backup_id"].as_str().unwrap().to_owned();
    assert_eq!(work.status_of(&id), "complete");
    // A normal backup: verified like any other, also its copy.
    work.ok(&["verify", &id]).expect_mentions(&["ok"]);

    let scratch = MariaServer::start();
    // Users are not part of a dump (docs/sources/mysql.md): the definer of the views,
    // routines and trigger is created on the target first, as an operator would.
    mysql::sql(
        scratch.port(),
        None,
        "CREATE USER IF NOT EXISTS 'root'@'127.0.0.1'; \
         GRANT ALL ON *.* TO 'root'@'127.0.0.1' WITH GRANT OPTION",
    );
    let restored = work.ok(&[
        "restore",
        "shop",
        "--latest",
        "--target-url",
        &scratch.url(),
        "--database",
        "shop_copy",
        "--from",
        "region-b",
        "--json",
    ]);
    let report = restored.json();
    assert_eq!(report["repository"], "region-b", "{}", restored.dump());
    assert_eq!(
        report["rows"].as_u64(),
        Some(3 + 20000), // customers + orders (audit is empty)
        "{}",
        restored.dump()
    );
    let after = mysql::table_checksums(scratch.port(), "shop_copy");
    assert_eq!(before, after, "row counts and CHECKSUM TABLE must be equal");

    // Views, routines and triggers came along and work.
    let port = scratch.port();
    let q = |s: &str| mysql::sql(port, Some("shop_copy"), s).trim().to_owned();
    assert_eq!(q("SELECT top FROM biggest"), "25000.00");
    assert_eq!(q("SELECT double_it(21)"), "42");
    assert_eq!(q("CALL count_orders(@n); SELECT @n"), "20000");
    assert_eq!(
        q("SELECT upper_name FROM customers WHERE id = 1"),
        "ZOË 🚀 'QUOTED' \\ BACK"
    );
    assert_eq!(
        q("SELECT HEX(photo), HEX(flags), note, tags, balance FROM customers WHERE id = 1"),
        "00FF27225C0A0D1A\t2AA\tcafé\ta,c\t-12345678901234.123456"
    );
    // The trigger fires, and AUTO_INCREMENT continues where the source's does (a bulk
    // INSERT ... SELECT reserves ids in batches, so that is not simply 20001).
    q("INSERT INTO orders (customer_id, amount) VALUES (0, 1)");
    db.sql("INSERT INTO orders (customer_id, amount) VALUES (0, 1)");
    let source_audit = db.sql("SELECT what FROM audit").trim().to_owned();
    assert!(source_audit.starts_with("order "), "{source_audit}");
    assert_eq!(q("SELECT what FROM audit"), source_audit);

    // A non-empty target is refused without --drop, and replaced with it.
    let target = scratch.url();
    let args = [
        "restore",
        "shop",
        "--backup",
        &id,
        "--target-url",
        &target,
        "--database",
        "shop_copy",
    ];
    work.run(&args)
        .expect_code(EXIT_USAGE)
        .expect_mentions(&["shop_copy", "not empty", "--drop"]);
    assert_eq!(
        q("SELECT COUNT(*) FROM orders"),
        "20001",
        "refused restore changed nothing"
    );
    let mut with_drop = args.to_vec();
    with_drop.push("--drop");
    work.ok(&with_drop);
    assert_eq!(mysql::table_checksums(port, "shop_copy"), before);

    // Retention: a newer backup, then prune keeps only it (`keep = { last = 1 }`).
    let newer = work.ok(&["backup", "shop"]).stdout.trim().to_owned();
    assert_eq!(work.status_of(&newer), "complete");
    work.ok(&["prune", "--source", "shop"]);
    assert!(
        work.listed(&id).is_none(),
        "the older backup was not pruned"
    );
    assert_eq!(work.status_of(&newer), "complete");
    work.ok(&["verify", &newer]).expect_mentions(&["ok"]);
}

#[test]
fn mysql_password_comes_from_the_environment_and_bad_credentials_fail_clearly() {
    if mysql::skip("mysql_password_comes_from_the_environment_and_bad_credentials_fail_clearly") {
        return;
    }
    let db = FreshDb::local("auth");
    db.sql("CREATE TABLE t (a INT PRIMARY KEY, b VARCHAR(10)); INSERT INTO t VALUES (1, 'x'), (2, NULL)");
    let user = format!("bku{:08x}", rand_suffix());
    let secret = "s3cret-Pa55word";
    mysql::sql(
        3306,
        None,
        &format!(
            "CREATE USER '{user}'@'%' IDENTIFIED BY '{secret}'; \
             GRANT SELECT, SHOW VIEW, TRIGGER, EVENT ON *.* TO '{user}'@'%'"
        ),
    );
    struct DropUser(String);
    impl Drop for DropUser {
        fn drop(&mut self) {
            let _ = mysql::try_sql(3306, None, &format!("DROP USER IF EXISTS '{}'@'%'", self.0));
        }
    }
    let _user = DropUser(user.clone());

    let work = Work::new();
    let url = format!("mysql://{user}@127.0.0.1:3306/");
    work.write_config(&mysql_config(
        &url,
        &db.name,
        "password-env = \"SHOP_DB_PASSWORD\"\n",
    ));
    work.init();

    let mut cmd = work.command(&["backup", "shop"]);
    cmd.env("SHOP_DB_PASSWORD", "wrong-password");
    let out = cmd.output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.status.code(), Some(EXIT_FAILED), "{text}");
    assert!(
        text.contains("authentication failed") && text.contains("password-env"),
        "{text}"
    );
    assert!(
        !text.contains("wrong-password"),
        "the password leaked: {text}"
    );
    let listed = work.list();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["status"], "failed", "{listed:?}");

    let mut cmd = work.command(&["backup", "shop"]);
    cmd.env("SHOP_DB_PASSWORD", secret);
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let id = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert_eq!(work.status_of(&id), "complete");
    assert!(!work.ok(&["show", &id, "--json"]).stdout.contains(secret));

    // A literal password in the URL is refused at config load.
    work.write_config(&mysql_config(
        &format!("mysql://{user}:{secret}@127.0.0.1:3306/"),
        &db.name,
        "",
    ));
    let out = work.run(&["backup", "shop"]);
    out.expect_code(EXIT_USAGE)
        .expect_mentions(&["password-env"]);
    assert!(!out.text().contains(secret), "{}", out.dump());
}

#[test]
fn mysql_unreachable_server_fails_the_backup_and_nothing_is_complete() {
    if mysql::skip("mysql_unreachable_server_fails_the_backup_and_nothing_is_complete") {
        return;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let work = Work::new();
    work.write_config(&mysql_config(
        &format!("mysql://root@127.0.0.1:{port}/"),
        "shop",
        "",
    ));
    work.init();
    work.run(&["backup", "shop"])
        .expect_code(EXIT_FAILED)
        .expect_mentions(&["server unreachable", &format!("127.0.0.1:{port}")]);
    let listed = work.list();
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0]["status"], "failed");
    work.run(&[
        "restore",
        "shop",
        "--latest",
        "--target-url",
        "mysql://root@127.0.0.1:3306/",
    ])
    .expect_code(EXIT_FAILED)
    .expect_mentions(&["no complete backup"]);
    // A database that does not exist is named.
    if mysql::try_sql(3306, None, "SELECT 1").is_ok() {
        work.write_config(&mysql_config(
            "mysql://root@127.0.0.1:3306/",
            "bk_no_such_db_x",
            "",
        ));
        work.run(&["backup", "shop"])
            .expect_code(EXIT_FAILED)
            .expect_mentions(&["bk_no_such_db_x", "does not exist"]);
    }
}

fn rand_suffix() -> u32 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos()
        ^ std::process::id()
}

/// Databases on the local server whose names start with a drill's scratch prefix.
fn drill_databases() -> String {
    mysql::sql(
        3306,
        None,
        "SELECT COUNT(*) FROM information_schema.SCHEMATA \
         WHERE LEFT(SCHEMA_NAME, 14) = 'backupd_drill_'",
    )
    .trim()
    .to_owned()
}

#[test]
fn mysql_drill_restores_into_scratch_databases_checks_them_and_drops_them() {
    if mysql::skip("mysql_drill_restores_into_scratch_databases_checks_them_and_drops_them") {
        return;
    }
    let db = FreshDb::local("drill");
    fill(&db);
    let work = Work::new();
    work.write_config(&mysql_config(
        "mysql://root@127.0.0.1:3306/",
        &db.name,
        "[source.drill]\ntarget = \"./scratch\"\nchecks = [\"integrity\", \"counts\", \
         { query = \"SELECT COUNT(*) FROM orders\", expect = \"20000\" }]\n",
    ));
    work.init();
    let id = work.backup_of("shop");

    // Restored under a scratch prefix on the source's own server, checked, dropped.
    let out = work.ok(&["drill", "shop", "--now", "--json"]);
    let drill = out.json();
    assert_eq!(drill["status"], "passed", "{}", out.dump());
    assert_eq!(drill["backup_id"], id.as_str());
    let checks = drill["checks"].as_array().unwrap();
    let named = |name: &str| {
        checks
            .iter()
            .find(|c| c["name"].as_str().unwrap().starts_with(name))
            .unwrap_or_else(|| panic!("no {name} check: {drill:#}"))
    };
    assert_eq!(named("integrity")["passed"], true, "{drill:#}");
    assert_eq!(named("counts")["passed"], true, "{drill:#}");
    assert!(
        named("counts")["detail"]
            .as_str()
            .unwrap()
            .contains("3 tables"),
        "{drill:#}"
    );
    assert_eq!(named("query")["passed"], true, "{drill:#}");
    assert!(drill["rto_millis"].as_u64().unwrap() > 0, "{drill:#}");
    assert_eq!(
        drill_databases(),
        "0",
        "the scratch databases were not dropped"
    );
    // The source's own database is untouched.
    assert_eq!(db.sql("SELECT COUNT(*) FROM orders").trim(), "20000");

    // --keep leaves the scratch database for inspection, with the backup's rows in it.
    let kept = work
        .ok(&["drill", "shop", "--now", "--keep", "--json"])
        .json();
    assert_eq!(kept["status"], "passed", "{kept:#}");
    let scratch = mysql::sql(
        3306,
        None,
        &format!(
            "SELECT SCHEMA_NAME FROM information_schema.SCHEMATA \
             WHERE SCHEMA_NAME LIKE 'backupd\\_drill\\_%\\_{}'",
            db.name
        ),
    )
    .trim()
    .to_owned();
    assert!(!scratch.is_empty(), "--keep dropped the scratch database");
    assert_eq!(
        mysql::sql(3306, Some(&scratch), "SELECT COUNT(*) FROM orders").trim(),
        "20000"
    );
    mysql::sql(3306, None, &format!("DROP DATABASE `{scratch}`"));

    // A query that does not return what is expected fails the drill (exit 1), and the
    // scratch databases still go.
    let mut config = mysql_config(
        "mysql://root@127.0.0.1:3306/",
        &db.name,
        "[source.drill]\nchecks = [{ query = \"SELECT COUNT(*) FROM orders\", expect = \"7\" }]\n",
    );
    config.push('\n');
    work.write_config(&config);
    let out = work.run(&["drill", "shop", "--now", "--json"]);
    out.expect_code(EXIT_FAILED);
    let failed = out.json();
    assert_eq!(failed["status"], "failed", "{}", out.dump());
    assert!(
        failed["checks"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("returned \"20000\", expected \"7\""),
        "{failed:#}"
    );
    assert_eq!(drill_databases(), "0");

    // Drill keys of another kind are named.
    work.write_config(&mysql_config(
        "mysql://root@127.0.0.1:3306/",
        &db.name,
        "[source.drill]\nserver-uri-env = \"X\"\n",
    ));
    work.run(&["drill", "shop", "--now"])
        .expect_code(EXIT_USAGE)
        .expect_mentions(&["drill.server-uri-env", "MongoDB"]);
}
