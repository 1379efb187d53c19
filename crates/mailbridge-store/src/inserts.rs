//! [`BatchInsert`]: multi-row INSERTs in statements of a few fixed lengths, whose texts are
//! made once per process: a sync batch's emails, their attachments and its events (the same
//! serve queued sends and every other write's events), and the webhook worker's deliveries and
//! attempts (their `IN (…)` lists: `emails::in_list_size`). On a connection of sqlx's own
//! PostgreSQL driver (a sync batch's writer), a table's rows go in one statement whatever
//! their number, one array a column (`UNNEST`).

use std::sync::OnceLock;

use crate::sql::{Arg, Array, Columns, Kind, SqlConn, Stmt};
use crate::{Backend, Result};

/// Rows per multi-row INSERT of a sync batch's emails, its attachments and its events: a full
/// batch (the sync's `BATCH_SIZE`, 1,000) in four statements. Each statement costs a round
/// trip (to PostgreSQL's server; through sqlx, to SQLite's own thread) and its binding: at 32
/// emails and 64 events a statement the corpus's first sync took a fifth longer
/// (`bench/first-sync`, 0.46 against 0.38 s, when SQLite's were sqlx's too). A statement's parameters must stay within
/// [`MAX_PARAMETERS`] ([`BatchInsert::new`] checks it as the program compiles).
pub const ROWS_PER_INSERT: usize = 250;

/// The most parameters one statement may bind on both backends: SQLite's limit in the bundled
/// build (PostgreSQL's is 65,535).
const MAX_PARAMETERS: usize = 32_766;

/// How many lengths [`insert_rows`] gives: the powers of two below [`ROWS_PER_INSERT`] (1, 2,
/// 4 … 128) and itself — nine.
const LENGTHS: usize =
    ROWS_PER_INSERT.ilog2() as usize + 1 + (!ROWS_PER_INSERT.is_power_of_two()) as usize;

/// The rows a multi-row INSERT of `rows` rows is written with: the next power of two, at most
/// [`ROWS_PER_INSERT`]; those past `rows` are padding, all NULL, which the statement leaves
/// out (on `Any` and SQLite; PostgreSQL's batch writers bind arrays instead, see
/// [`BatchInsert::returning_as_arrays`]). So nine statements a table (1, 2, 4 … 128 and 250
/// rows) serve every length, each
/// prepared once on a connection and kept in its statement cache (sqlx's, or the native
/// writer's). Batches bounded by bytes
/// come in every length (the corpus's first sync: 11 batches of 35 to 998 emails, the last
/// INSERT of most a remainder; with batches of 250, 13 of 25 were short of it), and a
/// statement of each length was parsed — on PostgreSQL also planned — anew for its one use:
/// kept, they would have filled the cache's 100 places (a prepared
/// statement of 250 emails holds 0.7 MB of SQLite's memory, by the sqlite3 shell's `.stats`).
/// The nine lengths of the three tables sync batches write (emails, attachments, events) hold
/// about 2 MB at most on each connection that writes batches (the few rows of other writes'
/// events and of the webhook worker's statements take the short lengths, little more).
fn insert_rows(rows: usize) -> usize {
    rows.next_power_of_two().min(ROWS_PER_INSERT)
}

/// The place of an [`insert_rows`] length among the nine.
fn length_index(padded: usize) -> usize {
    if padded == ROWS_PER_INSERT {
        LENGTHS - 1
    } else {
        padded.trailing_zeros() as usize
    }
}

/// A table's multi-row INSERT. Its statements' texts — nine lengths on each
/// backend — are made the first time each is used and kept: a full emails statement is
/// 24 KB of text on SQLite and 53 KB on PostgreSQL, which was formatted anew for every batch.
pub(crate) struct BatchInsert {
    /// The table and its columns: `emails (id, mailbox_id, …)`.
    into: &'static str,
    columns: usize,
    /// What follows the rows: `ON CONFLICT`, `RETURNING`.
    tail: &'static str,
    /// By backend (SQLite, PostgreSQL), then by [`length_index`].
    texts: [[OnceLock<String>; LENGTHS]; 2],
    /// PostgreSQL's driver: the statement that takes every row at once, a column an array,
    /// with the types of its columns.
    unnest: OnceLock<(Vec<Kind>, String)>,
}

impl BatchInsert {
    /// The INSERT into `into` (`table (column, …)`); the first column is never NULL but in
    /// padding. Fails to compile if a full statement would bind more than [`MAX_PARAMETERS`].
    pub(crate) const fn new(into: &'static str, tail: &'static str) -> Self {
        let columns = columns_of(into);
        assert!(ROWS_PER_INSERT * columns <= MAX_PARAMETERS);
        Self {
            into,
            columns,
            tail,
            texts: [const { [const { OnceLock::new() }; LENGTHS] }; 2],
            unnest: OnceLock::new(),
        }
    }

    /// `table (column, …)`, and the statement of each of the nine lengths on `backend`, by
    /// its rows (for a benchmark that replays them through another driver).
    pub(crate) fn statements(
        &'static self,
        backend: Backend,
    ) -> (&'static str, Vec<(usize, &'static str)>) {
        let lengths = (0..LENGTHS).map(|k| insert_rows(1 << k));
        (
            self.into,
            lengths.map(|n| (n, self.sql(backend, n))).collect(),
        )
    }

    /// The statement for `padded` rows ([`insert_rows`]'s lengths): padding rows are left out
    /// by its `WHERE`, which also tells SQLite's parser that an `ON CONFLICT` after it is not
    /// a join's `ON`.
    fn sql(&'static self, backend: Backend, padded: usize) -> &'static str {
        let by_backend = match backend {
            Backend::Sqlite => &self.texts[0],
            Backend::Postgres => &self.texts[1],
        };
        by_backend[length_index(padded)].get_or_init(|| {
            format!(
                "INSERT INTO {} SELECT * FROM (VALUES {}) AS v WHERE column1 IS NOT NULL{}",
                self.into,
                values_list(backend, padded, self.columns),
                self.tail
            )
        })
    }

    /// The statement that takes any number of rows as one array a column, of these types
    /// (`INSERT INTO t (a, b) SELECT * FROM UNNEST($1::text[], $2::int8[])`): PostgreSQL gives
    /// each column of the result its element type, and the INSERT casts as it would a value.
    /// The function scan hands the rows out in the arrays' order, so the events' `seq`
    /// follows the batch (the store's large-batch test reads them back in order); an
    /// `ORDER BY` over `WITH ORDINALITY` would sort the whole batch, raw messages and all, in
    /// `work_mem`, spilling to disk past 4 MB. Made the first time, from the first rows'
    /// types: a column's values and NULLs are bound as one type (see [`BatchInsert::run`]),
    /// so they are the same every time — checked.
    fn unnest_sql(&'static self, kinds: &[Kind]) -> &'static str {
        let (made_for, sql) = self.unnest.get_or_init(|| {
            let arrays: Vec<String> = kinds
                .iter()
                .enumerate()
                .map(|(i, kind)| {
                    let element = match kind {
                        Kind::Int => "int8",
                        Kind::Text => "text",
                        Kind::Blob => "bytea",
                    };
                    format!("${}::{element}[]", i + 1)
                })
                .collect();
            let sql = format!(
                "INSERT INTO {} SELECT * FROM UNNEST({}){}",
                self.into,
                arrays.join(", "),
                self.tail
            );
            (kinds.to_vec(), sql)
        });
        assert_eq!(made_for, kinds, "the column types of {}", self.into);
        sql
    }

    /// Inserts `rows` in statements of [`insert_rows`]'s lengths — or, on a connection that
    /// binds arrays ([`SqlConn::arrays`]), in one statement of a parameter a column. `bind` binds one row's
    /// values, or, for `None`, a padding row's: NULLs of the same types (PostgreSQL gives each
    /// column of the VALUES one type), so each of its binds should be one `Option` expression
    /// of the row.
    pub(crate) async fn run<T: Sync>(
        &'static self,
        tx: &mut impl SqlConn,
        backend: Backend,
        rows: &[T],
        bind: impl FnMut(Stmt, Option<&T>) -> Stmt + Send,
    ) -> Result<()> {
        self.returning::<T, ()>(tx, backend, rows, bind).await?;
        Ok(())
    }

    /// [`BatchInsert::run`] for an INSERT with a `RETURNING` tail: what its statements
    /// return, in order.
    pub(crate) async fn returning<T: Sync, R: Columns + Send>(
        &'static self,
        tx: &mut impl SqlConn,
        backend: Backend,
        rows: &[T],
        mut bind: impl FnMut(Stmt, Option<&T>) -> Stmt + Send,
    ) -> Result<Vec<R>> {
        if tx.arrays() {
            return self.returning_as_arrays(tx, rows, bind).await;
        }
        let mut returned = Vec::new();
        for chunk in rows.chunks(ROWS_PER_INSERT) {
            let padded = insert_rows(chunk.len());
            let statement =
                Stmt::new(self.sql(backend, padded)).with_capacity(padded * self.columns);
            let statement = (0..padded).fold(statement, |q, k| bind(q, chunk.get(k)));
            returned.extend(tx.fetch_all::<R>(statement).await?);
        }
        Ok(returned)
    }

    /// [`BatchInsert::returning`] in one statement: the rows bound as they would be in
    /// VALUES, then each column's values moved into one array. A full batch's emails were 4
    /// statements of up to 7,750 parameters; now one of 31, whatever its rows (no padding,
    /// one prepared statement a table). The store stage alone of the first-sync benchmark's
    /// corpus into PostgreSQL (a scratch loop, 4 alternated runs of 4 each): 0.42 → 0.40 s,
    /// the store's own CPU 0.11 → 0.09 s, the server's unchanged (0.29 s).
    async fn returning_as_arrays<T: Sync, R: Columns + Send>(
        &'static self,
        tx: &mut impl SqlConn,
        rows: &[T],
        mut bind: impl FnMut(Stmt, Option<&T>) -> Stmt + Send,
    ) -> Result<Vec<R>> {
        if rows.is_empty() {
            return Ok(Vec::new());
        }
        let bound = rows
            .iter()
            .fold(
                Stmt::new("").with_capacity(rows.len() * self.columns),
                |q, row| bind(q, Some(row)),
            )
            .into_args();
        // A row short of a value would shift every later one into the wrong column.
        assert_eq!(
            bound.len(),
            rows.len() * self.columns,
            "values a row of {}",
            self.into
        );
        let kinds: Vec<Kind> = bound[..self.columns].iter().map(Arg::kind).collect();
        let mut columns: Vec<Vec<Arg>> = (0..self.columns)
            .map(|_| Vec::with_capacity(rows.len()))
            .collect();
        for (i, arg) in bound.into_iter().enumerate() {
            columns[i % self.columns].push(arg);
        }
        let statement = columns.into_iter().zip(&kinds).fold(
            Stmt::new(self.unnest_sql(&kinds)).with_capacity(self.columns),
            |q, (column, kind)| q.bind_arg(Arg::Array(Array::of(*kind, column))),
        );
        tx.fetch_all::<R>(statement).await
    }
}

/// The columns named in `table (a, b, c)`: its commas and one.
const fn columns_of(into: &str) -> usize {
    let bytes = into.as_bytes();
    let (mut i, mut columns) = (0, 1);
    while i < bytes.len() {
        if bytes[i] == b',' {
            columns += 1;
        }
        i += 1;
    }
    columns
}

/// `(…), (…)`: the VALUES of a multi-row INSERT of `rows` rows of `columns` parameters.
/// SQLite looks a numbered parameter's name up in a list, once per parameter: quadratic in the
/// thousands of a full emails statement (a quarter of the store's time in the first-sync
/// benchmark at 900). Anonymous `?`s bind in order with no look-up; PostgreSQL needs `$n`.
fn values_list(backend: Backend, rows: usize, columns: usize) -> String {
    use std::fmt::Write;
    let mut list = String::with_capacity(rows * columns * 6);
    for r in 0..rows {
        list.push_str(if r == 0 { "(" } else { ", (" });
        for c in 1..=columns {
            if c > 1 {
                list.push_str(", ");
            }
            match backend {
                Backend::Sqlite => list.push('?'),
                Backend::Postgres => {
                    let _ = write!(list, "${}", r * columns + c); // writing to a String cannot fail
                }
            }
        }
        list.push(')');
    }
    list
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn every_insert_of_a_batch_takes_one_of_nine_lengths_with_room_for_its_rows() {
        let lengths: std::collections::BTreeSet<usize> =
            (1..=ROWS_PER_INSERT).map(insert_rows).collect();
        assert_eq!(
            lengths.iter().copied().collect::<Vec<_>>(),
            [1, 2, 4, 8, 16, 32, 64, 128, ROWS_PER_INSERT]
        );
        assert!((1..=ROWS_PER_INSERT).all(|rows| insert_rows(rows) >= rows));
        // Each length its own place among the kept texts.
        let places: Vec<usize> = lengths.into_iter().map(length_index).collect();
        assert_eq!(places, (0..LENGTHS).collect::<Vec<_>>());
    }

    #[test]
    fn a_kept_statement_is_made_for_its_backend_and_length() {
        static INSERT: BatchInsert = BatchInsert::new("t (a, b)", " RETURNING a");
        assert_eq!(INSERT.columns, 2);
        assert_eq!(
            INSERT.sql(Backend::Postgres, 2),
            "INSERT INTO t (a, b) SELECT * FROM (VALUES ($1, $2), ($3, $4)) AS v \
             WHERE column1 IS NOT NULL RETURNING a"
        );
        assert_eq!(
            INSERT.sql(Backend::Sqlite, 1),
            "INSERT INTO t (a, b) SELECT * FROM (VALUES (?, ?)) AS v \
             WHERE column1 IS NOT NULL RETURNING a"
        );
        // Asked again, the same text, not made anew.
        assert!(std::ptr::eq(
            INSERT.sql(Backend::Postgres, 2),
            INSERT.sql(Backend::Postgres, 2)
        ));
        assert!(
            INSERT
                .sql(Backend::Sqlite, ROWS_PER_INSERT)
                .ends_with("(?, ?)) AS v WHERE column1 IS NOT NULL RETURNING a")
        );
        assert_eq!(
            INSERT
                .sql(Backend::Sqlite, ROWS_PER_INSERT)
                .matches('?')
                .count(),
            2 * ROWS_PER_INSERT
        );
    }

    #[test]
    fn the_array_statement_takes_a_parameter_a_column_typed_by_its_values() {
        static INSERT: BatchInsert = BatchInsert::new("t (a, b, c)", " ON CONFLICT DO NOTHING");
        let sql = INSERT.unnest_sql(&[Kind::Text, Kind::Int, Kind::Blob]);
        assert_eq!(
            sql,
            "INSERT INTO t (a, b, c) SELECT * FROM UNNEST($1::text[], $2::int8[], \
             $3::bytea[]) ON CONFLICT DO NOTHING"
        );
        // Made once: asked again, the same text.
        assert!(std::ptr::eq(
            sql,
            INSERT.unnest_sql(&[Kind::Text, Kind::Int, Kind::Blob])
        ));
    }

    #[test]
    fn a_column_becomes_one_array_with_its_nulls_in_place() {
        let column = vec![
            Arg::Null(Kind::Text),
            Arg::Text("x".into()),
            Arg::Null(Kind::Text),
        ];
        assert_eq!(
            Array::of(Kind::Text, column),
            Array::Text(vec![None, Some("x".into()), None])
        );
        assert_eq!(
            Array::of(Kind::Int, vec![Arg::Int(7), Arg::Null(Kind::Int)]),
            Array::Int(vec![Some(7), None])
        );
        assert_eq!(
            Array::of(Kind::Blob, vec![Arg::Blob(vec![1, 2])]),
            Array::Blob(vec![Some(vec![1, 2])])
        );
        assert_eq!(Arg::Array(Array::Int(Vec::new())).kind(), Kind::Int);
        assert_eq!(Arg::Null(Kind::Blob).kind(), Kind::Blob);
    }

    #[test]
    fn the_statements_handed_out_are_the_nine_kept_ones() {
        static INSERT: BatchInsert = BatchInsert::new("t (a)", "");
        let (into, statements) = INSERT.statements(Backend::Sqlite);
        assert_eq!(into, "t (a)");
        let lengths: Vec<usize> = statements.iter().map(|(n, _)| *n).collect();
        assert_eq!(lengths, [1, 2, 4, 8, 16, 32, 64, 128, ROWS_PER_INSERT]);
        for (n, sql) in statements {
            assert!(std::ptr::eq(sql, INSERT.sql(Backend::Sqlite, n)), "{n}");
        }
    }

    #[test]
    #[should_panic(expected = "a column of Int values")]
    fn a_value_of_another_type_in_a_column_is_a_mistake_not_a_null() {
        let _ = Array::of(Kind::Int, vec![Arg::Int(1), Arg::Text("1".into())]);
    }

    #[test]
    fn a_values_list_numbers_each_backends_parameters_row_by_row() {
        assert_eq!(
            values_list(Backend::Postgres, 2, 3),
            "($1, $2, $3), ($4, $5, $6)"
        );
        assert_eq!(values_list(Backend::Sqlite, 2, 2), "(?, ?), (?, ?)");
        assert_eq!(values_list(Backend::Postgres, 1, 1), "($1)");
    }
}
