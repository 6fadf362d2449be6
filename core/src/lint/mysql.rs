//! MySQL and MariaDB rules that know InnoDB's online DDL: for each `ALTER TABLE` operation on an existing table, the
//! algorithm the server must use (INSTANT, INPLACE with or without a rebuild, or COPY, which blocks writes for the
//! whole run), for the server version the project names (`mysql_server` in `flotilla-lint.toml`); the `ALGORITHM=`
//! and `LOCK=` clauses against it; foreign keys, ENUM/SET and charset changes; `lock_wait_timeout` discipline.
//!
//! A column's earlier definition comes from the set's earlier migrations ([`Columns`]), so an ENUM change or a type
//! change can be told from a change of nullability or default.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::str::FromStr;

use sqlparser::ast::{
    AlterTableAlgorithm, AlterTableLock, AlterTableOperation, CharacterLength, ColumnDef, ColumnOption, DataType,
    EnumMember, GeneratedExpressionMode, Statement as Ast, TableConstraint,
};

use super::catalogue::flotilla_severity;
use super::model::unquote;
use super::sql::{norm, Parsed};
use super::{Finding, Source};

/// The server the migrations run on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Server {
    pub mariadb: bool,
    pub version: (u32, u32, u32),
}

/// MySQL 8.4, the long-term release, unless the project says otherwise.
impl Default for Server {
    fn default() -> Server {
        Server { mariadb: false, version: (8, 4, 0) }
    }
}

impl FromStr for Server {
    type Err = String;
    fn from_str(s: &str) -> Result<Server, String> {
        let bad = || format!("mysql_server `{s}` is not `mysql X.Y[.Z]` or `mariadb X.Y[.Z]`");
        let (flavour, version) = s.trim().split_once(' ').ok_or_else(bad)?;
        let mariadb = match flavour.to_lowercase().as_str() {
            "mysql" => false,
            "mariadb" => true,
            _ => return Err(bad()),
        };
        let parts: Vec<u32> = version.split('.').map(|p| p.parse().map_err(|_| bad())).collect::<Result<_, _>>()?;
        match parts[..] {
            [a, b] => Ok(Server { mariadb, version: (a, b, 0) }),
            [a, b, c] => Ok(Server { mariadb, version: (a, b, c) }),
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (a, b, c) = self.version;
        let flavour = if self.mariadb { "MariaDB" } else { "MySQL" };
        if c == 0 {
            write!(f, "{flavour} {a}.{b}")
        } else {
            write!(f, "{flavour} {a}.{b}.{c}")
        }
    }
}

impl Server {
    fn at_least(&self, mysql: (u32, u32, u32), mariadb: (u32, u32, u32)) -> bool {
        self.version >= if self.mariadb { mariadb } else { mysql }
    }
    fn instant_add_column(&self, positioned: bool) -> bool {
        if positioned {
            self.at_least((8, 0, 29), (10, 4, 0))
        } else {
            self.at_least((8, 0, 12), (10, 3, 2))
        }
    }
    fn instant_drop_column(&self) -> bool {
        self.at_least((8, 0, 29), (10, 4, 0))
    }
    fn instant_rename_column(&self) -> bool {
        self.at_least((8, 0, 28), (10, 3, 0))
    }
}

/// How InnoDB runs an operation, cheapest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Algo {
    Instant,
    /// In place, without rebuilding the table.
    Inplace,
    /// In place, rebuilding the table: concurrent writes allowed, but it reads and writes every row.
    Rebuild,
    Copy,
}

/// Columns as the set's earlier migrations left them: (table, column) → definition.
#[derive(Debug, Default)]
pub(super) struct Columns(BTreeMap<(String, String), ColumnDef>);

impl Columns {
    fn learn(&mut self, ast: &Ast) {
        match ast {
            Ast::CreateTable(ct) => {
                for c in &ct.columns {
                    self.0.insert((norm(&ct.name), unquote(&c.name.to_string())), c.clone());
                }
            }
            Ast::AlterTable { name, operations, .. } => {
                let t = norm(name);
                for op in operations {
                    match op {
                        AlterTableOperation::AddColumn { column_def, .. } => {
                            self.0.insert((t.clone(), unquote(&column_def.name.to_string())), column_def.clone());
                        }
                        AlterTableOperation::ModifyColumn { col_name, data_type, options, .. } => {
                            let def = column(col_name.clone(), data_type, options);
                            self.0.insert((t.clone(), unquote(&col_name.to_string())), def);
                        }
                        AlterTableOperation::ChangeColumn { old_name, new_name, data_type, options, .. } => {
                            self.0.remove(&(t.clone(), unquote(&old_name.to_string())));
                            let def = column(new_name.clone(), data_type, options);
                            self.0.insert((t.clone(), unquote(&new_name.to_string())), def);
                        }
                        AlterTableOperation::DropColumn { column_names, .. } => {
                            for c in column_names {
                                self.0.remove(&(t.clone(), unquote(&c.to_string())));
                            }
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
}

fn column(name: sqlparser::ast::Ident, data_type: &DataType, options: &[ColumnOption]) -> ColumnDef {
    let options = options.iter().map(|o| sqlparser::ast::ColumnOptionDef { name: None, option: o.clone() }).collect();
    ColumnDef { name, data_type: data_type.clone(), options }
}

/// One operation's verdict: the algorithm it needs, and the rule that names it when that is costly.
struct Need {
    algo: Algo,
    rule: &'static str,
    what: String,
    /// A type change (or a charset conversion, or ENUM values removed): the column's data may not survive it.
    loses_data: bool,
}

impl Need {
    fn new(algo: Algo, rule: &'static str, what: impl Into<String>) -> Need {
        Need { algo, rule, what: what.into(), loses_data: false }
    }

    fn losing(mut self) -> Need {
        self.loses_data = true;
        self
    }
}

/// The MySQL rules over one UP, in order; `columns` carries definitions from migration to migration. Columns that a
/// MODIFY or CHANGE redefines without changing their type go into `kept`: no data is lost there.
pub(super) fn check(
    up: &[Parsed],
    server: Server,
    columns: &mut Columns,
    kept: &mut BTreeSet<(String, String)>,
) -> Vec<Finding> {
    let mut findings = Vec::new();
    let mut add = |rule: &'static str, line: usize, message: String, help: &str| {
        let help = (!help.is_empty()).then(|| help.to_string());
        findings.push(Finding {
            source: Source::Flotilla,
            rule: rule.to_string(),
            severity: flotilla_severity(rule),
            line: Some(line),
            message,
            help,
        })
    };
    let created: BTreeSet<String> = up
        .iter()
        .filter_map(|p| match &p.ast {
            Some(Ast::CreateTable(ct)) => Some(norm(&ct.name)),
            _ => None,
        })
        .collect();
    let mut fk_checks_off = false;
    for p in up {
        let line = p.stmt.line;
        let Some(ast) = &p.ast else {
            unparsed(&p.text, line, &mut add);
            continue;
        };
        match ast {
            Ast::Set(_) => {
                let text = ast.to_string().to_lowercase();
                for (global, name, value) in assignments(&text) {
                    if name == "foreign_key_checks" {
                        fk_checks_off = value == "0" || value == "off";
                    }
                    if name == "lock_wait_timeout" || name == "innodb_lock_wait_timeout" {
                        let long = value.parse::<f64>().map_or(true, |v| v > 60.0);
                        if global || long {
                            add("mysql-lock-wait-timeout", line, format!("SET {}{name} = {value}: {}", if global { "GLOBAL " } else { "" }, if global { "this changes every session of the server, not this migration's" } else { "a DDL waiting this long for its metadata lock queues every query on the table behind it" }), "leave lock_wait_timeout to Flotilla: it sets a short one (--statement-lock-timeout, default 5 s) and retries");
                        }
                    }
                }
            }
            Ast::AlterTable { name, operations, .. } if !created.contains(&norm(name)) => {
                let session = Session { server, columns, fk_checks_off };
                alter(&norm(name), operations, &session, line, &mut add, kept);
            }
            Ast::OptimizeTable { name, .. } if !created.contains(&norm(name)) => {
                add("mysql-table-rebuild", line, format!("OPTIMIZE TABLE {name} rebuilds it on InnoDB (as ALTER TABLE … FORCE): every row is rewritten, with brief exclusive locks at the start and end and free disk the size of the table"), "run it outside a migration, in a quiet hour, or not at all: InnoDB reuses freed pages by itself");
            }
            _ => {}
        }
        columns.learn(ast);
    }
    for (line, column) in inline_references(up, server) {
        add(
            "mysql-inline-references",
            line,
            format!("REFERENCES on column {column} is parsed and ignored by MySQL: no foreign key is created"),
            "declare it as a table constraint: FOREIGN KEY (column) REFERENCES other (id)",
        );
    }
    findings
}

type Add<'a> = dyn FnMut(&'static str, usize, String, &str) + 'a;

/// What sqlparser does not read but a text match can still tell.
fn unparsed(text: &str, line: usize, add: &mut Add) {
    let t = text.to_lowercase();
    if t.starts_with("create fulltext") || t.starts_with("create spatial") {
        add("mysql-table-rebuild", line, "a FULLTEXT or SPATIAL index blocks writes while it builds (LOCK=SHARED), and the first FULLTEXT index rebuilds the table".into(), "");
    }
    let alter_words: Vec<&str> = t.split(|c: char| c.is_whitespace() || c == '=' || c == ',').collect();
    if t.starts_with("alter table") && alter_words.iter().any(|w| *w == "engine" || *w == "force") {
        add("mysql-table-rebuild", line, "ALTER TABLE … ENGINE= or FORCE rebuilds the table: every row is rewritten (in place on InnoDB, copied with writes blocked when the engine changes)".into(), "leave rebuilds out of migrations; change an engine with an online schema change tool (gh-ost, pt-online-schema-change)");
    }
    if t.starts_with("alter table") && (t.contains("convert to character set") || t.contains("convert to charset")) {
        add("mysql-charset-conversion", line, "CONVERT TO CHARACTER SET rewrites every text column: the table is copied with writes blocked".into(), "convert a copy of the table with an online schema change tool (gh-ost, pt-online-schema-change) and swap it in");
    }
}

/// `SET [GLOBAL|SESSION] name = value, …` → (global, name, value).
fn assignments(text: &str) -> Vec<(bool, String, String)> {
    let body = text.trim().trim_start_matches("set").trim();
    body.split(',')
        .filter_map(|a| {
            let (name, value) = a.split_once('=')?;
            let name = name.trim();
            let global = name.starts_with("global ") || name.starts_with("@@global.");
            let name = name.rsplit(['.', ' ']).next().unwrap_or(name).trim_start_matches("@@").to_string();
            Some((global, name, value.trim().trim_matches('\'').to_string()))
        })
        .collect()
}

/// What the script has set up before a statement.
struct Session<'a> {
    server: Server,
    columns: &'a Columns,
    fk_checks_off: bool,
}

fn alter(
    table: &str,
    operations: &[AlterTableOperation],
    session: &Session,
    line: usize,
    add: &mut Add,
    kept: &mut BTreeSet<(String, String)>,
) {
    let Session { server, columns, fk_checks_off } = *session;
    let requested = operations.iter().find_map(|op| match op {
        AlterTableOperation::Algorithm { algorithm, .. } => Some(algorithm.clone()),
        _ => None,
    });
    for op in operations {
        if let AlterTableOperation::Lock { lock: lock @ (AlterTableLock::Shared | AlterTableLock::Exclusive), .. } = op
        {
            let blocks = if *lock == AlterTableLock::Shared { "writes" } else { "reads and writes" };
            add(
                "mysql-lock-clause",
                line,
                format!("LOCK={lock} on {table} blocks {blocks} for the whole ALTER"),
                "say LOCK=NONE so MySQL refuses rather than block, or leave LOCK out",
            );
        }
    }
    let adds_pk = operations.iter().any(|op| {
        matches!(op, AlterTableOperation::AddConstraint { constraint: TableConstraint::PrimaryKey { .. }, .. })
    });
    let mut needs: Vec<Need> = Vec::new();
    for op in operations {
        let Some(n) = need(table, op, server, columns, fk_checks_off, adds_pk) else { continue };
        if let AlterTableOperation::ModifyColumn { col_name: c, .. }
        | AlterTableOperation::ChangeColumn { old_name: c, .. } = op
        {
            if !n.loses_data {
                kept.insert((table.to_string(), unquote(&c.to_string())));
            }
        }
        needs.push(n);
    }
    let Some(worst) = needs.iter().map(|n| n.algo).max() else { return };
    let refused = match requested {
        Some(AlterTableAlgorithm::Instant) => worst > Algo::Instant,
        Some(AlterTableAlgorithm::Inplace) => worst > Algo::Rebuild,
        _ => false,
    };
    if refused {
        let what: Vec<&str> = needs.iter().filter(|n| n.algo > Algo::Instant).map(|n| n.what.as_str()).collect();
        let algorithm = requested.map(|a| a.to_string()).unwrap_or_default();
        add("mysql-algorithm-unsupported", line, format!("ALGORITHM={algorithm} cannot {} on {server}: the statement fails", what.join(", ")), "drop the ALGORITHM clause only if a copy is acceptable; otherwise split the change (expand, migrate, contract)");
        return;
    }
    for n in needs.iter().filter(|n| n.algo >= Algo::Rebuild) {
        let (cost, help) = if n.algo == Algo::Copy {
            ("copies the table (ALGORITHM=COPY): writes are blocked until it ends", "on a big table use an online schema change tool (gh-ost, pt-online-schema-change), or split the change (expand, migrate, contract)")
        } else {
            ("rebuilds the table in place: every row is rewritten and replicas lag", "run it off-peak or with an online schema change tool; ALGORITHM=INPLACE, LOCK=NONE makes sure it never falls back to a copy")
        };
        add(n.rule, line, format!("{} on {table} {cost} on {server}", n.what), help);
    }
}

fn need(
    table: &str,
    op: &AlterTableOperation,
    server: Server,
    columns: &Columns,
    fk_checks_off: bool,
    adds_pk: bool,
) -> Option<Need> {
    use AlterTableOperation as Op;
    Some(match op {
        Op::AddColumn { column_def, column_position, .. } => {
            let c = &column_def.name;
            if is_stored_generated(&column_def.options) {
                Need::new(Algo::Copy, "mysql-table-copy", format!("adding stored generated column {c}"))
            } else if is_auto_increment(&column_def.options) {
                // In place, but without concurrent writes (checked on MariaDB 10.11: INPLACE is accepted).
                let what = format!("adding AUTO_INCREMENT column {c} (writes are blocked while it fills)");
                Need::new(Algo::Rebuild, "mysql-table-rebuild", what)
            } else if server.instant_add_column(column_position.is_some()) {
                Need::new(Algo::Instant, "", "")
            } else {
                let at = if column_position.is_some() { " with FIRST/AFTER" } else { "" };
                Need::new(Algo::Rebuild, "mysql-table-rebuild", format!("adding column {c}{at}"))
            }
        }
        Op::DropColumn { column_names, .. } if !server.instant_drop_column() => {
            let names: Vec<String> = column_names.iter().map(ToString::to_string).collect();
            Need::new(Algo::Rebuild, "mysql-table-rebuild", format!("dropping column {}", names.join(", ")))
        }
        Op::RenameColumn { .. } if server.instant_rename_column() => Need::new(Algo::Instant, "", ""),
        Op::RenameColumn { old_column_name, .. } => {
            Need::new(Algo::Inplace, "", format!("renaming column {old_column_name}"))
        }
        Op::ModifyColumn { col_name, data_type, options, .. } => {
            let before = columns.0.get(&(table.to_string(), unquote(&col_name.to_string())));
            change(&col_name.to_string(), before, data_type, options)
        }
        Op::ChangeColumn { old_name, new_name, data_type, options, .. } => {
            let before = columns.0.get(&(table.to_string(), unquote(&old_name.to_string())));
            let mut n = change(&old_name.to_string(), before, data_type, options);
            if n.algo == Algo::Instant && old_name != new_name && !server.instant_rename_column() {
                n = Need::new(Algo::Inplace, "", format!("renaming column {old_name}"));
            }
            n
        }
        Op::AddConstraint { constraint: TableConstraint::ForeignKey { name, .. }, .. } if !fk_checks_off => {
            let name = name.as_ref().map(|n| format!(" {n}")).unwrap_or_default();
            Need::new(Algo::Copy, "mysql-foreign-key", format!("adding foreign key{name} with foreign_key_checks on"))
        }
        Op::AddConstraint { constraint: TableConstraint::PrimaryKey { .. }, .. } => {
            Need::new(Algo::Rebuild, "mysql-table-rebuild", "adding a primary key")
        }
        Op::AddConstraint { constraint: TableConstraint::FulltextOrSpatial { fulltext, .. }, .. } => {
            let kind = if *fulltext { "FULLTEXT" } else { "SPATIAL" };
            Need::new(
                Algo::Rebuild,
                "mysql-table-rebuild",
                format!("adding a {kind} index (LOCK=SHARED: writes blocked)"),
            )
        }
        Op::DropPrimaryKey { .. } if !adds_pk => {
            Need::new(Algo::Copy, "mysql-table-copy", "dropping the primary key without adding another")
        }
        Op::DropPrimaryKey { .. } => Need::new(Algo::Rebuild, "mysql-table-rebuild", "replacing the primary key"),
        Op::Algorithm { algorithm: AlterTableAlgorithm::Copy, .. } => {
            Need::new(Algo::Copy, "mysql-table-copy", "ALGORITHM=COPY")
        }
        _ => return None,
    })
}

/// A MODIFY or CHANGE of a column: what differs from its earlier definition decides the algorithm.
fn change(column: &str, before: Option<&ColumnDef>, after: &DataType, options: &[ColumnOption]) -> Need {
    let Some(before) = before else {
        return Need::new(
            Algo::Copy,
            "mysql-column-type-change",
            format!(
                "redefining column {column} (its earlier definition is not in this set, so a type change is assumed)"
            ),
        )
        .losing();
    };
    let charset = |opts: Vec<&ColumnOption>| {
        opts.into_iter()
            .filter_map(|o| match o {
                ColumnOption::CharacterSet(n) | ColumnOption::Collation(n) => Some(n.to_string().to_lowercase()),
                _ => None,
            })
            .collect::<Vec<_>>()
    };
    let new_charset = charset(options.iter().collect());
    if !new_charset.is_empty() && new_charset != charset(before.options.iter().map(|o| &o.option).collect()) {
        return Need::new(
            Algo::Copy,
            "mysql-charset-conversion",
            format!("converting column {column}'s character set or collation"),
        )
        .losing();
    }
    match (&before.data_type, after) {
        (DataType::Enum(old, _), DataType::Enum(new, _)) => members(column, &enum_names(old), &enum_names(new), 255),
        (DataType::Set(old), DataType::Set(new)) => members(column, old, new, 64),
        (old, new) if old == new => {
            let was_not_null = before.options.iter().any(|o| matches!(o.option, ColumnOption::NotNull));
            let not_null = options.iter().any(|o| matches!(o, ColumnOption::NotNull));
            match (was_not_null, not_null) {
                (false, true) => {
                    Need::new(Algo::Rebuild, "mysql-table-rebuild", format!("making column {column} NOT NULL"))
                }
                // Checked on MariaDB 10.11: ALGORITHM=INSTANT is refused for it, as on MySQL.
                (true, false) => {
                    Need::new(Algo::Rebuild, "mysql-table-rebuild", format!("making column {column} nullable"))
                }
                _ => Need::new(Algo::Instant, "", ""),
            }
        }
        (old, new) if varchar_len(old).zip(varchar_len(new)).is_some_and(|(a, b)| b >= a && (a < 64) == (b < 64)) => {
            // Widening a VARCHAR within the same length-prefix size is done in place.
            Need::new(Algo::Inplace, "", "")
        }
        (old, new) => {
            Need::new(Algo::Copy, "mysql-column-type-change", format!("changing column {column} from {old} to {new}"))
                .losing()
        }
    }
}

fn enum_names(members: &[EnumMember]) -> Vec<String> {
    members
        .iter()
        .map(|m| match m {
            EnumMember::Name(n) | EnumMember::NamedValue(n, _) => n.clone(),
        })
        .collect()
}

/// ENUM/SET members: appending (within the storage size) is instant; anything else copies, and removing loses data.
fn members(column: &str, old: &[String], new: &[String], most: usize) -> Need {
    let appended = new.len() >= old.len() && new[..old.len()] == *old;
    // ENUM: 1 byte up to 255 values, else 2. SET: 1, 2, 3, 4 or 8 bytes, a bit per member.
    let storage = |n: usize| match most {
        255 => 1 + usize::from(n > 255),
        _ => match n.div_ceil(8) {
            b @ 0..=4 => b,
            _ => 8,
        },
    };
    if appended && storage(old.len()) == storage(new.len()) {
        return Need::new(Algo::Instant, "", "");
    }
    let removed: Vec<&String> = old.iter().filter(|m| !new.contains(m)).collect();
    let why = if !removed.is_empty() {
        let names: Vec<String> = removed.iter().map(|m| format!("'{m}'")).collect();
        format!("removing {} from column {column} (rows holding them become '' or fail)", names.join(", "))
    } else if appended {
        format!("growing column {column} past a storage size")
    } else {
        format!("reordering or inserting values in column {column} (not appending at the end)")
    };
    let need = Need::new(Algo::Copy, "mysql-enum-change", why);
    if removed.is_empty() {
        need
    } else {
        need.losing()
    }
}

fn varchar_len(t: &DataType) -> Option<u64> {
    match t {
        DataType::Varchar(Some(CharacterLength::IntegerLength { length, .. }))
        | DataType::CharacterVarying(Some(CharacterLength::IntegerLength { length, .. })) => Some(*length),
        _ => None,
    }
}

fn is_stored_generated(options: &[sqlparser::ast::ColumnOptionDef]) -> bool {
    options.iter().any(|o| {
        matches!(o.option, ColumnOption::Generated { generation_expr_mode: Some(GeneratedExpressionMode::Stored), .. })
    })
}

fn is_auto_increment(options: &[sqlparser::ast::ColumnOptionDef]) -> bool {
    options.iter().any(|o| match &o.option {
        ColumnOption::DialectSpecific(tokens) => {
            tokens.iter().any(|t| t.to_string().eq_ignore_ascii_case("AUTO_INCREMENT"))
        }
        _ => false,
    })
}

/// Column-level `REFERENCES` in a column definition: MySQL parses it and creates nothing.
fn inline_references(up: &[Parsed], server: Server) -> Vec<(usize, String)> {
    if server.mariadb {
        return Vec::new();
    }
    let refs = |c: &ColumnDef| c.options.iter().any(|o| matches!(o.option, ColumnOption::ForeignKey { .. }));
    let mut out = Vec::new();
    for p in up {
        let line = p.stmt.line;
        match &p.ast {
            Some(Ast::CreateTable(ct)) => {
                out.extend(ct.columns.iter().filter(|c| refs(c)).map(|c| (line, c.name.to_string())));
            }
            Some(Ast::AlterTable { operations, .. }) => {
                for op in operations {
                    if let AlterTableOperation::AddColumn { column_def, .. } = op {
                        if refs(column_def) {
                            out.push((line, column_def.name.to_string()));
                        }
                    }
                }
            }
            _ => {}
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_parse_and_know_their_online_ddl() {
        let maria: Server = "mariadb 10.11".parse().expect("parses");
        assert!(maria.mariadb && maria.instant_drop_column() && maria.instant_add_column(true));
        let old: Server = "mysql 8.0.20".parse().expect("parses");
        assert!(old.instant_add_column(false) && !old.instant_add_column(true) && !old.instant_drop_column());
        assert!("postgres 15".parse::<Server>().is_err());
        assert!("mysql eight".parse::<Server>().is_err());
    }

    #[test]
    fn set_assignments_are_read_with_their_scope() {
        let a = assignments("set global lock_wait_timeout = 100, session foreign_key_checks = 0");
        assert_eq!(a[0], (true, "lock_wait_timeout".into(), "100".into()));
        assert_eq!(a[1], (false, "foreign_key_checks".into(), "0".into()));
    }
}
