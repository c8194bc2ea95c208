//! The MariaDB/MySQL source's dump format: how a logical backup of a server is laid out in a
//! backup's data stream, and how table rows are encoded. The database I/O (sqlx) lives in
//! backup-engine; this module is the pure part both directions share.
//!
//! A dump is a set of entries (files in the manifest, under the label [`LABEL`]):
//!
//! - `mysql/DB/schema.sql`: `CREATE TABLE` statements of the database's base tables, each
//!   followed by a line holding only [`STATEMENT_END`];
//! - `mysql/DB/views.sql`, `mysql/DB/routines.sql`, `mysql/DB/triggers.sql`: the same for
//!   views, procedures and functions, and triggers (applied after the data);
//! - `mysql/DB/tables/TABLE.rows`: the table's rows, in the row encoding below;
//! - `mysql/backupd-mysql.json` (last): a [`DumpSummary`] with the server version, and each
//!   table's row count and `CHECKSUM TABLE` value taken inside the dump's snapshot.
//!
//! Database and table names are stored hex-encoded in entry paths, so any name MariaDB allows
//! is a safe path.
//!
//! Row encoding (version 1): the file starts with the magic `BKMYROW1`, then a `u32`
//! (little-endian) column count, then each column name as a length-prefixed byte string.
//! Each row is one byte `R` followed by one value per column; the file ends with one byte
//! `E` and the row count as a `u64`. A value is `0x00` for NULL or `0x01`, a `u64`
//! length, and the bytes of `CAST(column AS BINARY)`: the server's own text form of numbers,
//! dates and times, and the raw bytes of strings, BLOBs, BIT and spatial values, which the
//! server converts back on insert. Generated columns are not stored (the server recomputes
//! them).

use std::io::{self, Read, Write};

/// The label (first path component) of a MySQL dump's entries.
pub const LABEL: &str = "mysql";
/// The summary entry's path.
pub const SUMMARY_PATH: &str = "mysql/backupd-mysql.json";
/// Ends each statement in the `.sql` entries (statements may contain `;` and newlines).
pub const STATEMENT_END: &str = "-- backupd:end-of-statement";
const MAGIC: &[u8; 8] = b"BKMYROW1";

#[derive(Debug, thiserror::Error)]
pub enum DumpFormatError {
    #[error("table data {what}: {source}")]
    Io { what: String, source: io::Error },
    #[error("table data {what} is not in backupd's row format ({detail}); the backup is corrupt")]
    Corrupt { what: String, detail: String },
}

/// What a dump records about one table.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TableSummary {
    pub database: String,
    pub table: String,
    /// Rows dumped (read inside the snapshot).
    pub rows: u64,
    /// `CHECKSUM TABLE` inside the snapshot; `None` when the engine gives none.
    pub checksum: Option<u64>,
    /// The table's storage engine (e.g. InnoDB).
    pub engine: Option<String>,
}

/// The last entry of a dump: what restore checks against.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DumpSummary {
    pub format: u32,
    pub server_version: String,
    /// `@@gtid_current_pos` (MariaDB) or `@@gtid_executed` (MySQL) at the snapshot, if any.
    pub gtid_position: Option<String>,
    pub databases: Vec<String>,
    pub tables: Vec<TableSummary>,
}

pub const DUMP_FORMAT: u32 = 1;

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<String> {
    if s.len() & 1 == 1 {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect();
    String::from_utf8(bytes?).ok()
}

/// Entry path of one of a database's `.sql` files (`what` = schema, views, routines, triggers).
pub fn sql_path(database: &str, what: &str) -> String {
    format!("{LABEL}/{}/{what}.sql", hex(database.as_bytes()))
}

/// Entry path of a table's rows.
pub fn rows_path(database: &str, table: &str) -> String {
    format!(
        "{LABEL}/{}/tables/{}.rows",
        hex(database.as_bytes()),
        hex(table.as_bytes())
    )
}

/// What an entry path of a dump holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DumpEntry {
    Sql { database: String, what: String },
    Rows { database: String, table: String },
    Summary,
}

/// Parses an entry path written by [`sql_path`], [`rows_path`] or [`SUMMARY_PATH`].
pub fn parse_path(path: &str) -> Option<DumpEntry> {
    if path == SUMMARY_PATH {
        return Some(DumpEntry::Summary);
    }
    let rest = path.strip_prefix(LABEL)?.strip_prefix('/')?;
    let parts: Vec<&str> = rest.split('/').collect();
    match parts.as_slice() {
        [db, file] => {
            let what = file.strip_suffix(".sql")?;
            Some(DumpEntry::Sql {
                database: unhex(db)?,
                what: what.to_owned(),
            })
        }
        [db, "tables", file] => Some(DumpEntry::Rows {
            database: unhex(db)?,
            table: unhex(file.strip_suffix(".rows")?)?,
        }),
        _ => None,
    }
}

/// Appends `statement` to a `.sql` entry.
pub fn write_statement(out: &mut Vec<u8>, statement: &str) {
    out.extend_from_slice(statement.trim_end().as_bytes());
    out.push(b'\n');
    out.extend_from_slice(STATEMENT_END.as_bytes());
    out.push(b'\n');
}

/// The statements of a `.sql` entry.
pub fn statements(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.split_inclusive('\n') {
        if line.trim_end_matches(['\n', '\r']) == STATEMENT_END {
            out.push(current.trim_end().to_owned());
            current.clear();
        } else {
            current.push_str(line);
        }
    }
    out
}

/// The header of a `.rows` entry.
pub fn rows_header(columns: &[String]) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&(columns.len() as u32).to_le_bytes());
    for c in columns {
        out.extend_from_slice(&(c.len() as u64).to_le_bytes());
        out.extend_from_slice(c.as_bytes());
    }
    out
}

/// Appends one row (one value per column) to `out`.
pub fn encode_row<'a>(out: &mut Vec<u8>, values: impl IntoIterator<Item = Option<&'a [u8]>>) {
    out.push(b'R');
    for v in values {
        match v {
            None => out.push(0),
            Some(bytes) => {
                out.push(1);
                out.extend_from_slice(&(bytes.len() as u64).to_le_bytes());
                out.extend_from_slice(bytes);
            }
        }
    }
}

/// The end of a `.rows` entry.
pub fn rows_trailer(rows: u64) -> Vec<u8> {
    let mut out = vec![b'E'];
    out.extend_from_slice(&rows.to_le_bytes());
    out
}

/// Values of one row, NULL as `None`.
pub type Row = Vec<Option<Vec<u8>>>;

/// Reads a `.rows` entry row by row.
pub struct RowReader<R: Read> {
    input: R,
    what: String,
    columns: Vec<String>,
    rows: u64,
    done: bool,
}

/// Longest value accepted (MariaDB's LONGBLOB maximum).
const MAX_VALUE: u64 = 4 << 30;

impl<R: Read> RowReader<R> {
    /// Reads the header; `what` names the entry in errors.
    pub fn open(input: R, what: &str) -> Result<Self, DumpFormatError> {
        let mut r = RowReader {
            input,
            what: what.to_owned(),
            columns: Vec::new(),
            rows: 0,
            done: false,
        };
        let mut magic = [0u8; 8];
        r.read_exact(&mut magic)?;
        if &magic != MAGIC {
            return Err(r.corrupt("bad magic"));
        }
        let count = r.read_u32()?;
        if count == 0 || count > 4096 {
            return Err(r.corrupt(&format!("{count} columns")));
        }
        for _ in 0..count {
            let bytes = r.read_bytes()?;
            let name = String::from_utf8(bytes).map_err(|_| r.corrupt("column name"))?;
            r.columns.push(name);
        }
        Ok(r)
    }

    pub fn columns(&self) -> &[String] {
        &self.columns
    }

    /// The next row, or `None` after the last one (the trailer's count is checked).
    pub fn next_row(&mut self) -> Result<Option<Row>, DumpFormatError> {
        if self.done {
            return Ok(None);
        }
        let mut tag = [0u8; 1];
        self.read_exact(&mut tag)?;
        match tag[0] {
            b'R' => {
                let mut row = Vec::with_capacity(self.columns.len());
                for _ in 0..self.columns.len() {
                    let mut flag = [0u8; 1];
                    self.read_exact(&mut flag)?;
                    row.push(match flag[0] {
                        0 => None,
                        1 => Some(self.read_bytes()?),
                        other => return Err(self.corrupt(&format!("value flag {other}"))),
                    });
                }
                self.rows += 1;
                Ok(Some(row))
            }
            b'E' => {
                let count = self.read_u64()?;
                if count != self.rows {
                    return Err(self.corrupt(&format!(
                        "trailer says {count} rows, {} were read",
                        self.rows
                    )));
                }
                let mut extra = [0u8; 1];
                match self.input.read(&mut extra) {
                    Ok(0) => {}
                    Ok(_) => return Err(self.corrupt("data after the trailer")),
                    Err(source) => return Err(self.io(source)),
                }
                self.done = true;
                Ok(None)
            }
            other => Err(self.corrupt(&format!("row tag {other}"))),
        }
    }

    /// Rows read so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    fn corrupt(&self, detail: &str) -> DumpFormatError {
        DumpFormatError::Corrupt {
            what: self.what.clone(),
            detail: detail.to_owned(),
        }
    }

    fn io(&self, source: io::Error) -> DumpFormatError {
        if source.kind() == io::ErrorKind::UnexpectedEof {
            return self.corrupt("truncated");
        }
        DumpFormatError::Io {
            what: self.what.clone(),
            source,
        }
    }

    fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), DumpFormatError> {
        self.input.read_exact(buf).map_err(|e| self.io(e))
    }

    fn read_u32(&mut self) -> Result<u32, DumpFormatError> {
        let mut b = [0u8; 4];
        self.read_exact(&mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    fn read_u64(&mut self) -> Result<u64, DumpFormatError> {
        let mut b = [0u8; 8];
        self.read_exact(&mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    fn read_bytes(&mut self) -> Result<Vec<u8>, DumpFormatError> {
        let len = self.read_u64()?;
        if len > MAX_VALUE {
            return Err(self.corrupt(&format!("value of {len} bytes")));
        }
        let mut out = Vec::new();
        (&mut self.input)
            .take(len)
            .read_to_end(&mut out)
            .map_err(|e| self.io(e))?;
        if out.len() as u64 != len {
            return Err(self.corrupt("truncated"));
        }
        Ok(out)
    }
}

/// Writes a whole `.rows` entry (for tests and small tables).
pub fn write_rows(out: &mut impl Write, columns: &[String], rows: &[Row]) -> io::Result<()> {
    let mut buf = rows_header(columns);
    for row in rows {
        encode_row(&mut buf, row.iter().map(|v| v.as_deref()));
    }
    buf.extend_from_slice(&rows_trailer(rows.len() as u64));
    out.write_all(&buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn paths_round_trip_any_name() {
        for (db, table) in [("shop", "orders"), ("we/ird db", "t.a/b\\c ü"), ("a", "..")] {
            assert_eq!(
                parse_path(&rows_path(db, table)),
                Some(DumpEntry::Rows {
                    database: db.into(),
                    table: table.into()
                })
            );
            assert_eq!(
                parse_path(&sql_path(db, "views")),
                Some(DumpEntry::Sql {
                    database: db.into(),
                    what: "views".into()
                })
            );
        }
        assert_eq!(parse_path(SUMMARY_PATH), Some(DumpEntry::Summary));
        assert_eq!(parse_path("mysql/zz/x.sql"), None);
        assert_eq!(parse_path("pgdata/base"), None);
    }

    #[test]
    fn statements_may_hold_semicolons_and_newlines() {
        let mut buf = Vec::new();
        let body = "CREATE PROCEDURE p()\nBEGIN\n  SELECT 1;\n  SELECT 2;\nEND";
        write_statement(&mut buf, body);
        write_statement(&mut buf, "CREATE TABLE t (a int)");
        let parsed = statements(std::str::from_utf8(&buf).unwrap());
        assert_eq!(
            parsed,
            vec![body.to_owned(), "CREATE TABLE t (a int)".into()]
        );
    }

    #[test]
    fn truncation_and_tampering_are_named() {
        let columns = vec!["a".to_string(), "b".to_string()];
        let rows = vec![vec![Some(b"1".to_vec()), None]; 3];
        let mut buf = Vec::new();
        write_rows(&mut buf, &columns, &rows).unwrap();
        for cut in [4, 20, buf.len() - 3] {
            let mut r = RowReader::open(&buf[..cut], "t").map(Some).unwrap_or(None);
            let err = loop {
                let Some(reader) = r.as_mut() else {
                    break "header".to_string();
                };
                match reader.next_row() {
                    Ok(Some(_)) => continue,
                    Ok(None) => panic!("truncated at {cut} read as complete"),
                    Err(e) => break e.to_string(),
                }
            };
            assert!(err.contains("truncated") || err == "header", "{cut}: {err}");
        }
        let mut wrong = buf.clone();
        let n = wrong.len();
        wrong[n - 8] = 9; // trailer row count
        let mut r = RowReader::open(&wrong[..], "t").unwrap();
        let err = loop {
            match r.next_row() {
                Ok(Some(_)) => {}
                Ok(None) => panic!("accepted a wrong trailer"),
                Err(e) => break e.to_string(),
            }
        };
        assert!(err.contains("trailer says 9 rows"), "{err}");
    }

    proptest! {
        #[test]
        fn rows_round_trip(
            columns in proptest::collection::vec("[a-z_]{1,12}", 1..6),
            seed in proptest::collection::vec(proptest::option::of(proptest::collection::vec(any::<u8>(), 0..40)), 0..60),
        ) {
            let width = columns.len();
            let rows: Vec<Row> = seed.chunks(width).filter(|c| c.len() == width).map(|c| c.to_vec()).collect();
            let mut buf = Vec::new();
            write_rows(&mut buf, &columns, &rows).unwrap();
            let mut reader = RowReader::open(&buf[..], "t").unwrap();
            prop_assert_eq!(reader.columns(), &columns[..]);
            let mut back = Vec::new();
            while let Some(row) = reader.next_row().unwrap() {
                back.push(row);
            }
            prop_assert_eq!(back, rows);
        }
    }
}
