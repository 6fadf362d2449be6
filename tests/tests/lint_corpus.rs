//! The statement corpora of `tests/fixtures/lint/corpus`: for PostgreSQL every squawk rule, for MySQL (MariaDB 10.11,
//! MySQL 8.0 and 8.4) and MongoDB every Flotilla rule of the engine, each case with the exact set of rules it must
//! give, and half of the cases or more written well (no finding at all). Each case becomes one migration of a
//! directory that `flotilla lint --json` reads, in the file's order (a MySQL case sees the columns earlier cases made).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use flotilla_core::migration::{Script, ScriptKind};
use flotilla_core::{Engine, Timeouts};
use flotilla_tests::*;
use serde_json::Value;

/// One case: its name, the rules it must give, its `-- config:` lines (a `flotilla-lint.toml`), and its UP.
struct Case {
    name: String,
    expect: BTreeSet<String>,
    config: Vec<String>,
    up: String,
    /// `None`: the migration has no DOWN file.
    down: Option<String>,
}

fn corpus(file: &str) -> String {
    std::fs::read_to_string(manifest_dir().join("fixtures/lint/corpus").join(file)).expect("corpus file")
}

/// `-- case:` blocks of a SQL corpus, with the preamble its header describes.
fn sql_cases(text: &str) -> Vec<Case> {
    let mut cases: Vec<(String, Vec<&str>)> = Vec::new();
    for line in text.lines() {
        match line.strip_prefix("-- case: ") {
            Some(name) => cases.push((name.trim().to_string(), Vec::new())),
            None => {
                if let Some((_, lines)) = cases.last_mut() {
                    lines.push(line);
                }
            }
        }
    }
    cases
        .into_iter()
        .map(|(name, lines)| {
            let expect = lines
                .iter()
                .find_map(|l| l.strip_prefix("-- expect:"))
                .unwrap_or_else(|| panic!("case {name} has no `-- expect:` line"))
                .split_whitespace()
                .map(String::from)
                .collect();
            let config = lines.iter().filter_map(|l| l.strip_prefix("-- config: ")).map(String::from).collect();
            let bare = lines.iter().any(|l| l.trim() == "-- bare");
            let body: Vec<&str> = lines
                .iter()
                .copied()
                .filter(|l| !(l.starts_with("-- expect:") || l.starts_with("-- config: ") || l.trim() == "-- bare"))
                .collect();
            let mut up = String::new();
            if !bare {
                up.push_str(&format!("-- Why: lint corpus case {name}\n-- flotilla:statement-timeout 1m\n"));
            }
            up.push_str("-- flotilla:allow empty-down\n-- flotilla:allow no-explicit-transaction\n");
            up.push_str(body.join("\n").trim());
            up.push('\n');
            Case { name, expect, config, up, down: Some("-- nothing to undo\n".into()) }
        })
        .collect()
}

/// The cases of a MongoDB corpus: a JSON array of `{case, expect, config?, up, down?}`.
fn mongo_cases(text: &str) -> Vec<Case> {
    let cases: Vec<Value> = serde_json::from_str(text).expect("MongoDB corpus is JSON");
    cases
        .iter()
        .map(|c| {
            let strings = |v: &Value| -> Vec<String> {
                v.as_array()
                    .map(|a| a.iter().filter_map(|s| s.as_str().map(String::from)).collect())
                    .unwrap_or_default()
            };
            Case {
                name: c["case"].as_str().expect("case name").to_string(),
                expect: strings(&c["expect"]).into_iter().collect(),
                config: strings(&c["config"]),
                up: serde_json::to_string_pretty(&c["up"]).expect("up"),
                down: match c.get("down") {
                    None => Some("[]".into()),
                    Some(Value::Null) => None,
                    Some(d) => Some(serde_json::to_string_pretty(d).expect("down")),
                },
            }
        })
        .collect()
}

/// Lints the cases, grouped by their settings (one directory each, in order): each case with its findings.
async fn lint_cases<'a>(engine: Engine, cases: &'a [Case], project_allow: &[&str]) -> Vec<(&'a Case, Vec<Value>)> {
    let mut groups: BTreeMap<Vec<String>, Vec<&Case>> = BTreeMap::new();
    for c in cases {
        groups.entry(c.config.clone()).or_default().push(c);
    }
    let mut linted = Vec::new();
    for (config, group) in &groups {
        let dir = Dir::new();
        let allow: Vec<String> = project_allow.iter().map(|r| format!("\"{r}\"")).collect();
        let mut toml = format!("allow = [{}]\n", allow.join(", "));
        toml.push_str(&config.join("\n"));
        dir.file("flotilla-lint.toml", &toml);
        for (i, c) in group.iter().enumerate() {
            let ext = if engine == Mongodb { "json" } else { "sql" };
            let stem = format!("{:06}_{}", i + 1, c.name.replace('-', "_"));
            dir.file(&format!("{stem}.up.{ext}"), &c.up);
            if let Some(down) = &c.down {
                dir.file(&format!("{stem}.down.{ext}"), down);
            }
        }
        let d = dir.path().to_str().expect("utf-8");
        let run = flotilla(&["lint", "--dir", d, "--engine", engine.as_str(), "--json"]).await;
        let report = run.json();
        let migrations = report["migrations"].as_array().unwrap_or_else(|| panic!("no report: {run:?}"));
        assert_eq!(migrations.len(), group.len(), "{run:?}");
        for (c, m) in group.iter().zip(migrations) {
            linted.push((*c, m["findings"].as_array().expect("findings").clone()));
        }
    }
    linted
}

/// Lints the cases and compares every case's rules with its `expect`.
async fn assert_corpus(engine: Engine, cases: &[Case], project_allow: &[&str]) {
    let mut mismatches = Vec::new();
    for (c, findings) in lint_cases(engine, cases, project_allow).await {
        let got: BTreeSet<String> = findings.iter().map(|f| f["rule"].as_str().unwrap_or("").to_string()).collect();
        for f in &findings {
            let source = f["source"].as_str().unwrap_or("");
            assert!(source == "squawk" || source == "flotilla", "every finding names its source: {f}");
        }
        if got != c.expect {
            mismatches.push(format!("{}: expected {:?}, got {:?}: {findings:?}", c.name, c.expect, got));
        }
    }
    assert!(mismatches.is_empty(), "{} of {} cases differ:\n{}", mismatches.len(), cases.len(), mismatches.join("\n"));
    let good = cases.iter().filter(|c| c.expect.is_empty()).count();
    assert!(good * 2 >= cases.len(), "the well-written half: {good} of {} cases", cases.len());
}

/// The rules a case names after `-- flotilla:WORD` (`allow`, `deny`).
fn directive_rules<'a>(up: &'a str, word: &str) -> Vec<&'a str> {
    let prefix = format!("-- flotilla:{word} ");
    up.lines().filter_map(|l| l.trim().strip_prefix(prefix.as_str())).flat_map(str::split_whitespace).collect()
}

/// What squawk's own CLI reports on a case's UP, run with the settings lint gives squawk's linter: in a transaction
/// unless the script says `no-transaction` or opens its own; the case's `postgres_version`; its denied opt-in rules
/// included; `require-lock-timeout` left out (the executor sets one) and `require-statement-timeout` too where the
/// script sets a statement timeout. Rules the case allows are dropped, as lint drops them.
async fn squawk_cli(squawk: &str, c: &Case) -> BTreeSet<String> {
    let dir = Dir::new();
    dir.file("case.sql", &c.up);
    let path = dir.path().join("case.sql");
    let mut args = vec!["--reporter".to_string(), "json".into(), "--exclude".into(), "require-lock-timeout".into()];
    if c.up.contains("-- flotilla:statement-timeout") {
        args.extend(["--exclude".into(), "require-statement-timeout".into()]);
    }
    let opens_its_own = c.up.lines().any(|l| {
        let l = l.trim().to_uppercase();
        l.starts_with("BEGIN") || l.starts_with("START TRANSACTION")
    });
    if !c.up.contains("-- flotilla:no-transaction") && !opens_its_own {
        args.push("--assume-in-transaction".into());
    }
    if let Some(v) = c.config.iter().find_map(|l| l.strip_prefix("postgres_version = ")) {
        args.push(format!("--pg-version={}", v.trim_matches('"')));
    }
    for rule in directive_rules(&c.up, "deny") {
        args.extend(["--include".into(), rule.to_string()]);
    }
    args.push(path.to_str().expect("utf-8").to_string());
    let out = tokio::process::Command::new(squawk).args(&args).output().await.expect("run squawk");
    let report: Vec<Value> = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("squawk's JSON for {}: {e}: {}", c.name, String::from_utf8_lossy(&out.stderr)));
    let allowed = directive_rules(&c.up, "allow");
    report.iter().filter_map(|v| v["rule_name"].as_str()).filter(|r| !allowed.contains(r)).map(String::from).collect()
}

/// squawk's own CLI (squawk-cli 2.68, the release of the crates lint is built on; `tests/servers.sh` installs it),
/// run on every PostgreSQL case, reports exactly the rules that lint reports from squawk, with two differences by
/// design: lint also reports a lone CREATE INDEX CONCURRENTLY in a transaction, which squawk leaves alone because
/// other tools run a one-statement file outside one (Flotilla does not), and the CLI's `syntax-error` is lint's
/// `unparsed`, with the line.
#[tokio::test(flavor = "multi_thread")]
async fn postgres_findings_from_squawk_are_what_the_squawk_cli_reports() {
    let squawk =
        std::env::var("FLOTILLA_TEST_SQUAWK").expect("FLOTILLA_TEST_SQUAWK (tests/servers.sh start installs it)");
    let cases = sql_cases(&corpus("postgres.sql"));
    let (mut mismatches, mut findings) = (Vec::new(), 0);
    for (c, found) in lint_cases(Postgres, &cases, &[]).await {
        let ours: BTreeSet<String> = found
            .iter()
            .filter(|f| f["source"] == "squawk")
            .filter_map(|f| f["rule"].as_str().map(String::from))
            .collect();
        let mut theirs = squawk_cli(&squawk, c).await;
        // A statement squawk's parser cannot read is lint's `unparsed`, named with its line.
        if theirs.remove("syntax-error") && !found.iter().any(|f| f["rule"] == "unparsed") {
            mismatches.push(format!("{}: the CLI says syntax-error, lint has no `unparsed` finding", c.name));
        }
        let lone_concurrently = "ban-concurrent-index-creation-in-transaction";
        if ours.contains(lone_concurrently) && c.up.contains("CONCURRENTLY") {
            theirs.insert(lone_concurrently.to_string());
        }
        findings += theirs.len();
        if ours != theirs {
            mismatches.push(format!("{}: lint {ours:?}, squawk CLI {theirs:?}", c.name));
        }
    }
    assert!(mismatches.is_empty(), "{} of {} cases differ:\n{}", mismatches.len(), cases.len(), mismatches.join("\n"));
    println!("{} cases, {findings} rule findings from the squawk CLI, all equal to lint's", cases.len());
    assert!(findings >= 80, "the CLI found {findings} rules over the corpus: too few to compare");
}

fn statements(cases: &[Case], engine: Engine) -> usize {
    cases
        .iter()
        .map(|c| {
            let script = Script {
                path: Path::new("corpus.sql").to_path_buf(),
                first_line: 1,
                text: c.up.clone(),
                no_transaction: false,
                backfill: None,
                timeouts: Timeouts::default(),
            };
            script.statements(ScriptKind::Sql, engine).expect("the corpus splits").len()
        })
        .sum()
}

/// The rules `lint --rules` lists that `keep` selects and no case expects.
async fn rules_without_a_case(cases: &[Case], keep: impl Fn(&Value) -> bool) -> Vec<String> {
    let rules = flotilla(&["lint", "--rules", "--json"]).await.json();
    let fired: BTreeSet<&str> = cases.iter().flat_map(|c| c.expect.iter().map(String::as_str)).collect();
    rules["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .filter(|r| keep(r))
        .filter_map(|r| r["rule"].as_str())
        .filter(|r| !fired.contains(r))
        .map(String::from)
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_statements_cover_every_squawk_rule() {
    let cases = sql_cases(&corpus("postgres.sql"));
    assert_corpus(Postgres, &cases, &[]).await;
    assert!(statements(&cases, Postgres) >= 150, "at least 150 statements: {}", statements(&cases, Postgres));
    // Every squawk rule that Flotilla runs has a case that fires it; require-lock-timeout is met by the executor.
    let missing =
        rules_without_a_case(&cases, |r| r["source"] == "squawk" && r["rule"] != "require-lock-timeout").await;
    assert!(missing.is_empty(), "squawk rules with no case: {missing:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn mysql_statements_know_innodb_online_ddl() {
    let cases = sql_cases(&corpus("mysql.sql"));
    assert_corpus(Mysql, &cases, &[]).await;
    let missing = rules_without_a_case(&cases, |r| r["rule"].as_str().is_some_and(|r| r.starts_with("mysql-"))).await;
    assert!(missing.is_empty(), "MySQL rules with no case: {missing:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn mongodb_commands_know_index_builds_and_validators() {
    let cases = mongo_cases(&corpus("mongodb.json"));
    assert_corpus(Mongodb, &cases, &["empty-down"]).await;
    let missing = rules_without_a_case(&cases, |r| r["rule"].as_str().is_some_and(|r| r.starts_with("mongo-"))).await;
    assert!(missing.is_empty(), "MongoDB rules with no case: {missing:?}");
}

/// How lint judges an ALTER, by the rules it gives: no finding (INSTANT, or in place without a rebuild), a rebuild
/// in place, or a copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    Instant,
    InPlace,
    Rebuild,
    Copy,
}

fn verdict(rules: &BTreeSet<String>) -> Option<Verdict> {
    const COPY: &[&str] = &[
        "mysql-table-copy",
        "mysql-column-type-change",
        "mysql-charset-conversion",
        "mysql-enum-change",
        "mysql-foreign-key",
    ];
    if rules.iter().any(|r| COPY.contains(&r.as_str())) {
        Some(Verdict::Copy)
    } else if rules.contains("mysql-table-rebuild") {
        Some(Verdict::Rebuild)
    } else {
        None
    }
}

/// The algorithm table of the MySQL rules, asked of the real MariaDB: each ALTER is linted in the set's order, and
/// the server is asked to run it with the algorithm lint says is the best it can have. INSTANT must be accepted
/// where lint says instant; a rebuild must refuse INSTANT and accept INPLACE; a copy must refuse INPLACE.
#[tokio::test(flavor = "multi_thread")]
async fn mysql_verdicts_are_what_mariadb_does() {
    use Verdict::*;
    let setup = [
        "CREATE TABLE customers (id BIGINT AUTO_INCREMENT PRIMARY KEY, email VARCHAR(190) NOT NULL) ENGINE=InnoDB",
        "CREATE TABLE orders (id BIGINT AUTO_INCREMENT PRIMARY KEY, customer_id BIGINT NOT NULL, status ENUM('new', 'paid', 'shipped') NOT NULL DEFAULT 'new', note VARCHAR(40), total DECIMAL(12, 2) NOT NULL DEFAULT 0, weight INT) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4",
        "CREATE TABLE backup (id BIGINT NOT NULL, x INT NOT NULL, PRIMARY KEY (id)) ENGINE=InnoDB",
        "CREATE TABLE plain (code VARCHAR(8) NOT NULL PRIMARY KEY) ENGINE=InnoDB",
        "CREATE TABLE prefs (id BIGINT PRIMARY KEY, flags SET('a', 'b', 'c', 'd', 'e', 'f', 'g')) ENGINE=InnoDB",
    ];
    let alters: &[(&str, Verdict)] = &[
        ("ALTER TABLE orders ADD COLUMN coupon VARCHAR(32) NULL", Instant),
        ("ALTER TABLE orders ADD COLUMN channel VARCHAR(16) NULL AFTER status", Instant),
        (
            "ALTER TABLE orders MODIFY COLUMN status ENUM('new', 'paid', 'shipped', 'refunded') NOT NULL DEFAULT 'new'",
            Instant,
        ),
        ("ALTER TABLE orders ALTER COLUMN note SET DEFAULT 'none'", Instant),
        ("ALTER TABLE orders DROP COLUMN coupon", Instant),
        ("ALTER TABLE orders RENAME COLUMN channel TO sales_channel", Instant),
        ("ALTER TABLE orders MODIFY COLUMN note VARCHAR(60)", InPlace),
        ("ALTER TABLE orders ADD INDEX orders_customer (customer_id)", InPlace),
        ("ALTER TABLE orders MODIFY COLUMN weight INT NOT NULL", Rebuild),
        ("ALTER TABLE orders MODIFY COLUMN weight INT NULL", Rebuild),
        ("ALTER TABLE orders ADD FULLTEXT INDEX orders_note_text (note)", Rebuild),
        ("ALTER TABLE backup DROP PRIMARY KEY, ADD PRIMARY KEY (id, x)", Rebuild),
        ("ALTER TABLE orders MODIFY COLUMN total DECIMAL(14, 2) NOT NULL DEFAULT 0", Copy),
        ("ALTER TABLE orders MODIFY COLUMN note VARCHAR(20)", Copy),
        (
            "ALTER TABLE orders MODIFY COLUMN status ENUM('paid', 'new', 'shipped', 'refunded') NOT NULL DEFAULT 'new'",
            Copy,
        ),
        ("ALTER TABLE orders MODIFY COLUMN sales_channel VARCHAR(16) CHARACTER SET latin1", Copy),
        ("ALTER TABLE orders ADD COLUMN total_cents BIGINT AS (total * 100) STORED", Copy),
        (
            "ALTER TABLE orders ADD CONSTRAINT orders_customer_fk FOREIGN KEY (customer_id) REFERENCES customers (id)",
            Copy,
        ),
        ("ALTER TABLE backup DROP PRIMARY KEY", Copy),
        ("ALTER TABLE plain ADD COLUMN seq BIGINT AUTO_INCREMENT UNIQUE", Rebuild),
        ("ALTER TABLE prefs MODIFY COLUMN flags SET('a', 'b', 'c', 'd', 'e', 'f', 'g', 'h')", Instant),
        ("ALTER TABLE prefs MODIFY COLUMN flags SET('a', 'b', 'c', 'd', 'e', 'f', 'g', 'h', 'i')", Copy),
        ("ALTER TABLE prefs ENGINE=InnoDB", Rebuild),
        ("ALTER TABLE prefs FORCE", Rebuild),
    ];
    // Lint's verdicts, in order, for MariaDB 10.11.
    let dir = Dir::new();
    dir.file("flotilla-lint.toml", "mysql_server = \"mariadb 10.11\"\n");
    dir.migration(Mysql, 1, "setup", &format!("-- Why: tables.\n{};", setup.join(";\n")), "");
    for (i, (alter, _)) in alters.iter().enumerate() {
        dir.migration(Mysql, i as i64 + 2, &format!("alter_{i}"), &format!("-- Why: case {i}.\n{alter};"), "");
    }
    let run = flotilla(&["lint", "--dir", dir.path().to_str().expect("utf-8"), "--engine", "mysql", "--json"]).await;
    let report = run.json();
    let db = TestDb::new(Mysql).await;
    for s in setup {
        db.exec(s).await;
    }
    let mut wrong = Vec::new();
    for (i, (alter, truth)) in alters.iter().enumerate() {
        let rules: BTreeSet<String> = report["migrations"][i + 1]["findings"]
            .as_array()
            .expect("findings")
            .iter()
            .filter_map(|f| f["rule"].as_str().map(String::from))
            .collect();
        let linted = verdict(&rules);
        let expected = match truth {
            Instant | InPlace => None,
            other => Some(*other),
        };
        if linted != expected {
            wrong.push(format!("lint: {alter}: {rules:?}, the server does it as {truth:?}"));
        }
        let server = server_agrees(&db, alter, *truth).await;
        if let Err(e) = server {
            wrong.push(format!("server: {alter} as {truth:?}: {e}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// Runs `alter` with the algorithms that tell `truth` apart: INSTANT accepted; INSTANT refused (for a rebuild) and
/// INPLACE accepted; INPLACE refused and COPY accepted.
async fn server_agrees(db: &TestDb, alter: &str, truth: Verdict) -> Result<(), String> {
    use Verdict::*;
    let try_with = |algorithm: &str| {
        let statement = format!("{alter}, ALGORITHM={algorithm}");
        async move {
            let mut conn = db.sql().await;
            let done =
                sqlx::Executor::execute(&mut conn, statement.as_str()).await.map(|_| ()).map_err(|e| e.to_string());
            let _ = sqlx::Connection::close(conn).await;
            done
        }
    };
    match truth {
        Instant => try_with("INSTANT").await,
        InPlace => try_with("INPLACE").await,
        Rebuild => match try_with("INSTANT").await {
            Ok(()) => Err("INSTANT was accepted".into()),
            Err(_) => try_with("INPLACE").await,
        },
        Copy => match try_with("INPLACE").await {
            Ok(()) => Err("INPLACE was accepted".into()),
            Err(_) => try_with("COPY").await,
        },
    }
}
