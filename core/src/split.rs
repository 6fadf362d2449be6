//! Splits a SQL script into statements, keeping each statement's original text and starting line.
//!
//! Written by hand rather than with a parser crate: it must keep the source text byte for byte, know the line each
//! statement starts on, and honour MySQL's client-side `DELIMITER` directive, which no SQL grammar includes.
//! It knows what hides a `;` per dialect: quotes, comments (nested in PostgreSQL), PostgreSQL dollar quotes, and the
//! `BEGIN … END` bodies of triggers and `BEGIN ATOMIC` functions.

/// The SQL dialect that decides quoting and comment rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Postgres,
    Mysql,
    Sqlite,
}

/// One statement of a script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqlStatement {
    pub text: String,
    /// 1-based line of the script where the statement's first significant character stands.
    pub line: usize,
}

/// Why a script could not be split.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {message}")]
pub struct SplitError {
    pub line: usize,
    pub message: String,
}

/// Splits `sql` into statements. Comment-only pieces are dropped; the delimiter is not part of the text.
pub fn split(sql: &str, dialect: Dialect) -> Result<Vec<SqlStatement>, SplitError> {
    Splitter { src: sql.as_bytes(), text: sql, pos: 0, line: 1, dialect }.run()
}

/// Whether a statement opens, ends or aborts a transaction (`BEGIN`, `START TRANSACTION`, `COMMIT`, `END`,
/// `ROLLBACK`), which the executor must know when it wraps a migration in its own transaction.
pub fn is_transaction_control(statement: &str) -> bool {
    let words: Vec<String> = statement
        .split(|c: char| c.is_whitespace() || c == ';')
        .filter(|w| !w.is_empty())
        .take(3)
        .map(str::to_ascii_uppercase)
        .collect();
    let first = words.first().map(String::as_str);
    let second = words.get(1).map(String::as_str);
    match first {
        Some("BEGIN") => matches!(
            second,
            None | Some("TRANSACTION" | "WORK" | "DEFERRED" | "IMMEDIATE" | "EXCLUSIVE" | "ISOLATION" | "READ")
        ),
        Some("START") => second == Some("TRANSACTION"),
        Some("COMMIT" | "ROLLBACK") => second != Some("TO"),
        Some("END") => matches!(second, None | Some("TRANSACTION" | "WORK")),
        _ => false,
    }
}

struct Splitter<'a> {
    src: &'a [u8],
    text: &'a str,
    pos: usize,
    line: usize,
    dialect: Dialect,
}

impl Splitter<'_> {
    fn run(mut self) -> Result<Vec<SqlStatement>, SplitError> {
        let mut out = Vec::new();
        let mut delimiter = ";".to_string();
        // Start of the current statement's significant text, and its line.
        let mut start: Option<(usize, usize)> = None;
        // Words seen at the top level of the current statement, for BEGIN … END tracking.
        let mut first_word: Option<String> = None;
        let mut block_depth = 0usize;

        while self.pos < self.src.len() {
            // MySQL's DELIMITER directive: only at the start of a line, between statements.
            if self.dialect == Dialect::Mysql && start.is_none() && self.at_line_start() {
                if let Some(new) = self.delimiter_directive()? {
                    delimiter = new;
                    continue;
                }
            }
            // Inside a BEGIN … END body a `;` ends an inner statement, not this one.
            if block_depth == 0 && self.src[self.pos..].starts_with(delimiter.as_bytes()) {
                if let Some((s, line)) = start.take() {
                    push(&mut out, &self.text[s..self.pos], line);
                }
                self.pos += delimiter.len();
                first_word = None;
                continue;
            }
            let (c, significant_start, line_here) = (self.src[self.pos], self.pos, self.line);
            if self.skip_insignificant(c)? {
                // MySQL's executable comments `/*! … */` are statements in their own right.
                if self.executable_comment_at(significant_start) && start.is_none() {
                    start = Some((significant_start, line_here));
                }
                continue;
            }
            if start.is_none() {
                start = Some((significant_start, line_here));
            }
            match c {
                b'\'' => {
                    let backslash = self.dialect == Dialect::Mysql || self.escape_string_prefix(significant_start);
                    self.skip_quoted(b'\'', backslash)?;
                }
                b'"' => self.skip_quoted(b'"', self.dialect == Dialect::Mysql)?,
                b'`' if self.dialect != Dialect::Postgres => self.skip_quoted(b'`', false)?,
                b'[' if self.dialect == Dialect::Sqlite => self.skip_quoted(b']', false)?,
                b'$' if self.dialect == Dialect::Postgres => self.skip_dollar_quote()?,
                c if c.is_ascii_alphabetic() || c == b'_' => self.word(&delimiter, &mut first_word, &mut block_depth),
                _ => self.pos += char_len(c),
            }
        }
        if let Some((s, line)) = start {
            push(&mut out, &self.text[s..], line);
        }
        Ok(out)
    }

    /// Skips whitespace or a comment at the current position; `false` when there is none.
    fn skip_insignificant(&mut self, c: u8) -> Result<bool, SplitError> {
        match c {
            b'\n' => {
                self.line += 1;
                self.pos += 1;
            }
            c if c.is_ascii_whitespace() => self.pos += 1,
            b'-' if self.peek(1) == Some(b'-') => self.skip_line_comment(),
            b'#' if self.dialect == Dialect::Mysql => self.skip_line_comment(),
            b'/' if self.peek(1) == Some(b'*') => self.skip_block_comment()?,
            _ => return Ok(false),
        }
        Ok(true)
    }

    fn executable_comment_at(&self, at: usize) -> bool {
        self.dialect == Dialect::Mysql && self.src[at..].starts_with(b"/*!")
    }

    /// Reads a word, tracking `BEGIN … END` bodies of `CREATE` statements (whose `;` end inner statements).
    fn word(&mut self, delimiter: &str, first_word: &mut Option<String>, block_depth: &mut usize) {
        let word = self.read_word(delimiter).to_ascii_uppercase();
        if first_word.is_none() {
            *first_word = Some(word.clone());
        }
        // With a custom DELIMITER the author marks statement ends; only `;` needs block tracking.
        if first_word.as_deref() != Some("CREATE") || delimiter != ";" {
            return;
        }
        match word.as_str() {
            "BEGIN" | "CASE" => *block_depth += 1,
            "END" => {
                let next = self.peek_word().to_ascii_uppercase();
                let closes_other = matches!(next.as_str(), "IF" | "LOOP" | "WHILE" | "REPEAT");
                if *block_depth > 0 && !closes_other {
                    *block_depth -= 1;
                }
            }
            _ => {}
        }
    }

    fn peek(&self, ahead: usize) -> Option<u8> {
        self.src.get(self.pos + ahead).copied()
    }

    fn at_line_start(&self) -> bool {
        self.text[..self.pos].rsplit('\n').next().is_none_or(|before| before.trim().is_empty())
    }

    /// Reads `DELIMITER x` if the current line is one, returning the new delimiter.
    fn delimiter_directive(&mut self) -> Result<Option<String>, SplitError> {
        let rest = &self.text[self.pos..];
        let trimmed = rest.trim_start_matches([' ', '\t']);
        let Some(keyword) = trimmed.get(..9) else { return Ok(None) };
        if !keyword.eq_ignore_ascii_case("DELIMITER") || !trimmed[9..].starts_with([' ', '\t']) {
            return Ok(None);
        }
        let line_end = rest.find('\n').unwrap_or(rest.len());
        let value = rest[..line_end].trim()[9..].trim();
        if value.is_empty() || value.contains(char::is_whitespace) {
            return Err(SplitError {
                line: self.line,
                message: format!("invalid DELIMITER directive `{}`", rest[..line_end].trim()),
            });
        }
        self.pos += line_end;
        Ok(Some(value.to_string()))
    }

    fn skip_line_comment(&mut self) {
        while self.pos < self.src.len() && self.src[self.pos] != b'\n' {
            self.pos += 1;
        }
    }

    fn skip_block_comment(&mut self) -> Result<(), SplitError> {
        let line = self.line;
        self.pos += 2;
        let mut depth = 1;
        while self.pos < self.src.len() {
            match (self.src[self.pos], self.peek(1)) {
                (b'*', Some(b'/')) => {
                    self.pos += 2;
                    depth -= 1;
                    if depth == 0 {
                        return Ok(());
                    }
                }
                (b'/', Some(b'*')) if self.dialect == Dialect::Postgres => {
                    self.pos += 2;
                    depth += 1;
                }
                (b'\n', _) => {
                    self.line += 1;
                    self.pos += 1;
                }
                _ => self.pos += 1,
            }
        }
        Err(SplitError { line, message: "unterminated block comment".into() })
    }

    /// PostgreSQL `E'…'` strings take backslash escapes.
    fn escape_string_prefix(&self, quote_at: usize) -> bool {
        self.dialect == Dialect::Postgres
            && quote_at > 0
            && matches!(self.src[quote_at - 1], b'E' | b'e')
            && (quote_at < 2 || !is_word_byte(self.src[quote_at - 2]))
    }

    fn skip_quoted(&mut self, close: u8, backslash_escapes: bool) -> Result<(), SplitError> {
        let line = self.line;
        let open = self.src[self.pos];
        self.pos += 1;
        while self.pos < self.src.len() {
            let c = self.src[self.pos];
            if c == b'\n' {
                self.line += 1;
            }
            if backslash_escapes && c == b'\\' {
                if self.peek(1) == Some(b'\n') {
                    self.line += 1;
                }
                self.pos += 2;
                continue;
            }
            if c == close {
                // A doubled quote is an escaped quote.
                if close == open && self.peek(1) == Some(close) {
                    self.pos += 2;
                    continue;
                }
                self.pos += 1;
                return Ok(());
            }
            self.pos += 1;
        }
        let what = match close {
            b'\'' => "string",
            b'"' => "quoted identifier",
            _ => "quoted name",
        };
        Err(SplitError { line, message: format!("unterminated {what}") })
    }

    fn skip_dollar_quote(&mut self) -> Result<(), SplitError> {
        let rest = &self.text[self.pos + 1..];
        let tag_len = rest.find(|c: char| !(c.is_alphanumeric() || c == '_')).unwrap_or(rest.len());
        // `$1` is a parameter, not a quote; a tag must be followed by `$`.
        if !rest[tag_len..].starts_with('$') || rest.starts_with(|c: char| c.is_ascii_digit()) {
            self.pos += 1;
            return Ok(());
        }
        let tag = &self.text[self.pos..self.pos + tag_len + 2];
        let line = self.line;
        let body_start = self.pos + tag.len();
        match self.text[body_start..].find(tag) {
            Some(offset) => {
                let end = body_start + offset + tag.len();
                self.line += self.text[self.pos..end].matches('\n').count();
                self.pos = end;
                Ok(())
            }
            None => Err(SplitError { line, message: format!("unterminated dollar-quoted string {tag}") }),
        }
    }

    /// Reads an identifier or keyword, stopping at the active delimiter (`END$$` with `DELIMITER $$`).
    fn read_word(&mut self, delimiter: &str) -> &str {
        let start = self.pos;
        while self.pos < self.src.len()
            && is_word_byte(self.src[self.pos])
            && !self.src[self.pos..].starts_with(delimiter.as_bytes())
        {
            self.pos += 1;
        }
        &self.text[start..self.pos]
    }

    fn peek_word(&self) -> &str {
        let rest = self.text[self.pos..].trim_start();
        let len = rest.bytes().take_while(|b| is_word_byte(*b)).count();
        &rest[..len]
    }
}

fn push(out: &mut Vec<SqlStatement>, text: &str, line: usize) {
    let text = text.trim_end();
    if !text.is_empty() {
        out.push(SqlStatement { text: text.to_string(), line });
    }
}

fn is_word_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_' || b == b'$'
}

fn char_len(first_byte: u8) -> usize {
    match first_byte {
        b if b < 0x80 => 1,
        b if b >= 0xF0 => 4,
        b if b >= 0xE0 => 3,
        _ => 2,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(sql: &str, d: Dialect) -> Vec<String> {
        split(sql, d).unwrap().into_iter().map(|s| s.text).collect()
    }

    #[test]
    fn splits_simple_statements_with_lines() {
        let s = split("-- why\nCREATE TABLE a (id int);\n\nINSERT INTO a VALUES (1);\n", Dialect::Postgres).unwrap();
        assert_eq!(s.len(), 2);
        assert_eq!(s[0], SqlStatement { text: "CREATE TABLE a (id int)".into(), line: 2 });
        assert_eq!(s[1].line, 4);
    }

    #[test]
    fn semicolons_in_strings_comments_and_identifiers_do_not_split() {
        let sql =
            "INSERT INTO t VALUES ('a;b', 'it''s; ok'); /* x; y */ SELECT \"we;ird\" FROM t; -- trailing; comment\n";
        assert_eq!(
            texts(sql, Dialect::Postgres),
            vec!["INSERT INTO t VALUES ('a;b', 'it''s; ok')", "SELECT \"we;ird\" FROM t"]
        );
    }

    #[test]
    fn postgres_dollar_quotes_and_nested_comments() {
        let sql = "CREATE FUNCTION f() RETURNS int AS $body$ BEGIN RETURN 1; END; $body$ LANGUAGE plpgsql;\n/* outer /* inner; */ still; */\nSELECT $1, $$a;b$$;";
        let s = texts(sql, Dialect::Postgres);
        assert_eq!(s.len(), 2, "{s:?}");
        assert!(s[0].ends_with("LANGUAGE plpgsql"));
        assert_eq!(s[1], "SELECT $1, $$a;b$$");
    }

    #[test]
    fn postgres_escape_strings() {
        assert_eq!(
            texts(r"SELECT E'a\';b'; SELECT 'c\'; SELECT 2;", Dialect::Postgres),
            vec![r"SELECT E'a\';b'", r"SELECT 'c\'", "SELECT 2"]
        );
    }

    #[test]
    fn mysql_backslashes_hash_comments_and_delimiter() {
        let sql = "# comment; here\nINSERT INTO t VALUES ('a\\';b');\nDELIMITER //\nCREATE PROCEDURE p() BEGIN SELECT 1; SELECT 2; END//\nDELIMITER ;\nSELECT `a;b` FROM t;";
        let s = split(sql, Dialect::Mysql).unwrap();
        assert_eq!(s.len(), 3, "{s:?}");
        assert_eq!(s[0].line, 2);
        assert_eq!(s[1].text, "CREATE PROCEDURE p() BEGIN SELECT 1; SELECT 2; END");
        assert_eq!(s[1].line, 4);
        assert_eq!(s[2].text, "SELECT `a;b` FROM t");
        assert_eq!(s[2].line, 6);
    }

    #[test]
    fn mysql_delimiter_glued_to_end() {
        let sql = "DELIMITER $$\nCREATE TRIGGER t AFTER UPDATE ON p FOR EACH ROW\nBEGIN\n  IF 1 THEN SET @a = 1; END IF;\nEND$$\nDELIMITER ;\nSELECT 1;";
        let s = split(sql, Dialect::Mysql).unwrap();
        assert_eq!(s.len(), 2, "{s:?}");
        assert!(s[0].text.ends_with("END"));
        assert_eq!((s[1].text.as_str(), s[1].line), ("SELECT 1", 7));
    }

    #[test]
    fn mysql_executable_comment_is_a_statement() {
        assert_eq!(
            texts("/*!40101 SET NAMES utf8 */;\nSELECT 1;", Dialect::Mysql),
            vec!["/*!40101 SET NAMES utf8 */", "SELECT 1"]
        );
    }

    #[test]
    fn trigger_bodies_stay_whole() {
        let sql = "CREATE TRIGGER tr AFTER INSERT ON a BEGIN UPDATE b SET n = CASE WHEN n > 0 THEN n + 1 ELSE 1 END; INSERT INTO c VALUES (1); END;\nSELECT 1;";
        let s = texts(sql, Dialect::Sqlite);
        assert_eq!(s.len(), 2, "{s:?}");
        assert!(s[0].ends_with("END"));
        // A plain transaction BEGIN is not a block.
        assert_eq!(texts("BEGIN; CREATE TABLE a (x int); COMMIT;", Dialect::Sqlite).len(), 3);
    }

    #[test]
    fn mysql_procedure_without_delimiter_keeps_end_if() {
        let sql = "CREATE PROCEDURE p() BEGIN IF 1 THEN SELECT 1; END IF; SELECT 2; END;\nSELECT 3;";
        assert_eq!(texts(sql, Dialect::Mysql).len(), 2);
    }

    #[test]
    fn comment_only_script_is_empty_and_last_statement_needs_no_delimiter() {
        assert!(texts("-- nothing\n/* here */\n", Dialect::Postgres).is_empty());
        assert_eq!(texts("SELECT 1; SELECT 2", Dialect::Sqlite), vec!["SELECT 1", "SELECT 2"]);
    }

    #[test]
    fn unterminated_quote_names_its_line() {
        let err = split("SELECT 1;\n\nSELECT 'oops;\n", Dialect::Postgres).unwrap_err();
        assert_eq!(err.line, 3);
        assert!(err.message.contains("unterminated string"));
        assert_eq!(split("SELECT $x$ never", Dialect::Postgres).unwrap_err().line, 1);
        assert!(split("DELIMITER\n", Dialect::Mysql).is_ok(), "a bare word is a statement, not a directive");
    }

    #[test]
    fn lines_count_inside_multiline_strings() {
        let s = split("INSERT INTO t VALUES ('a\nb\nc');\nSELECT 1;", Dialect::Mysql).unwrap();
        assert_eq!(s[1].line, 4);
    }

    #[test]
    fn transaction_control_is_recognised() {
        for t in ["BEGIN", "begin transaction", "START TRANSACTION", "COMMIT", "END", "ROLLBACK", "BEGIN IMMEDIATE"] {
            assert!(is_transaction_control(t), "{t}");
        }
        for t in ["BEGIN ATOMIC", "ROLLBACK TO SAVEPOINT a", "SELECT 1", "ENDING", "CREATE TABLE commit (x int)"] {
            assert!(!is_transaction_control(t), "{t}");
        }
    }
}
