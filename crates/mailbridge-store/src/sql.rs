//! [`Stmt`] and [`SqlConn`]: a statement with its arguments, run on a connection behind one
//! small interface. A sync batch's transaction (and the writes it shares with the rest of the
//! store: its emails, attachments and events) is written against it rather than against
//! sqlx's `Any` connection, so that a connection of another driver runs the same code: on
//! SQLite, sync batches are written through SQLite's C API ([`crate::native`]); on
//! PostgreSQL, through sqlx's own PostgreSQL driver, which binds arrays (see
//! [`SqlConn::arrays`]); everything else through sqlx's `Any`.

use std::future::Future;

use sqlx::any::{AnyArguments, AnyRow};
use sqlx::postgres::PgRow;
use sqlx::{AnyConnection, PgConnection};

use crate::Result;

/// The type of a NULL argument: PostgreSQL gives each parameter one, and a padding row's
/// NULLs must have their column's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Int,
    Text,
    Blob,
}

/// An argument of a statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Arg {
    Null(Kind),
    Int(i64),
    Text(String),
    Blob(Vec<u8>),
    /// A column of a multi-row INSERT as one array (PostgreSQL's driver only: see
    /// [`SqlConn::arrays`]).
    Array(Array),
}

/// A column's values as a PostgreSQL array, NULLs in place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Array {
    Int(Vec<Option<i64>>),
    Text(Vec<Option<String>>),
    Blob(Vec<Option<Vec<u8>>>),
}

impl Array {
    /// A column's arguments (each a value of `kind` or its NULL) as one array. A value of
    /// another type is a mistake in the statement's binding, not a NULL.
    pub(crate) fn of(kind: Kind, column: Vec<Arg>) -> Self {
        assert!(
            column
                .iter()
                .all(|a| a.kind() == kind && !matches!(a, Arg::Array(_))),
            "a column of {kind:?} values"
        );
        let args = column.into_iter();
        match kind {
            Kind::Int => Self::Int(args.map(Arg::into_int).collect()),
            Kind::Text => Self::Text(args.map(Arg::into_text).collect()),
            Kind::Blob => Self::Blob(args.map(Arg::into_blob).collect()),
        }
    }
}

impl Arg {
    fn into_int(self) -> Option<i64> {
        if let Self::Int(n) = self {
            Some(n)
        } else {
            None
        }
    }

    fn into_text(self) -> Option<String> {
        if let Self::Text(t) = self {
            Some(t)
        } else {
            None
        }
    }

    fn into_blob(self) -> Option<Vec<u8>> {
        if let Self::Blob(b) = self {
            Some(b)
        } else {
            None
        }
    }

    /// The type of its value (of its NULL's column); an array's, of its elements.
    pub(crate) fn kind(&self) -> Kind {
        match self {
            Arg::Null(kind) => *kind,
            Arg::Int(_) | Arg::Array(Array::Int(_)) => Kind::Int,
            Arg::Text(_) | Arg::Array(Array::Text(_)) => Kind::Text,
            Arg::Blob(_) | Arg::Array(Array::Blob(_)) => Kind::Blob,
        }
    }
}

/// What can be bound as an [`Arg`].
pub(crate) trait IntoArg {
    /// The type of its NULL, when it is an `Option`.
    const KIND: Kind;
    fn into_arg(self) -> Arg;
}

impl IntoArg for i64 {
    const KIND: Kind = Kind::Int;
    fn into_arg(self) -> Arg {
        Arg::Int(self)
    }
}

impl IntoArg for String {
    const KIND: Kind = Kind::Text;
    fn into_arg(self) -> Arg {
        Arg::Text(self)
    }
}

impl IntoArg for &str {
    const KIND: Kind = Kind::Text;
    fn into_arg(self) -> Arg {
        Arg::Text(self.to_owned())
    }
}

impl IntoArg for &String {
    const KIND: Kind = Kind::Text;
    fn into_arg(self) -> Arg {
        Arg::Text(self.clone())
    }
}

impl IntoArg for Vec<u8> {
    const KIND: Kind = Kind::Blob;
    fn into_arg(self) -> Arg {
        Arg::Blob(self)
    }
}

impl<T: IntoArg> IntoArg for Option<T> {
    const KIND: Kind = T::KIND;
    fn into_arg(self) -> Arg {
        self.map_or(Arg::Null(T::KIND), IntoArg::into_arg)
    }
}

/// A statement's text: most are constants; some are made for their lengths (`IN` lists,
/// multi-row INSERTs).
#[derive(Debug, Clone)]
enum Text {
    Static(&'static str),
    Owned(String),
}

/// A statement and its arguments: its parameters are all numbered (`$1`, `$2` …, the n-th
/// taking the n-th argument wherever it stands) or all bare `?` (SQLite only, in order).
#[derive(Debug, Clone)]
pub(crate) struct Stmt {
    text: Text,
    args: Vec<Arg>,
}

impl Stmt {
    /// A statement whose text is a constant.
    pub(crate) fn new(sql: &'static str) -> Self {
        Self {
            text: Text::Static(sql),
            args: Vec::new(),
        }
    }

    /// A statement whose text was made for it (only ever from constants and numbers: no
    /// value a user gave goes into a statement's text).
    pub(crate) fn made(sql: String) -> Self {
        Self {
            text: Text::Owned(sql),
            args: Vec::new(),
        }
    }

    /// With room for `n` arguments.
    pub(crate) fn with_capacity(mut self, n: usize) -> Self {
        self.args.reserve(n);
        self
    }

    /// The next argument.
    pub(crate) fn bind(mut self, value: impl IntoArg) -> Self {
        self.args.push(value.into_arg());
        self
    }

    /// The next argument, as it is.
    pub(crate) fn bind_arg(mut self, arg: Arg) -> Self {
        self.args.push(arg);
        self
    }

    /// Its arguments, moved out.
    pub(crate) fn into_args(self) -> Vec<Arg> {
        self.args
    }

    /// Its text.
    pub(crate) fn sql(&self) -> &str {
        match &self.text {
            Text::Static(s) => s,
            Text::Owned(s) => s,
        }
    }

    /// Its arguments, in order.
    pub(crate) fn args(&self) -> &[Arg] {
        &self.args
    }

    /// As a query of sqlx's `Any` driver, its arguments moved into it.
    fn into_any(self) -> sqlx::query::Query<'static, sqlx::Any, AnyArguments> {
        self.args.into_iter().fold(query(self.text), bind_value)
    }

    /// As a query of sqlx's PostgreSQL driver, arrays and all.
    fn into_postgres(
        self,
    ) -> sqlx::query::Query<'static, sqlx::Postgres, sqlx::postgres::PgArguments> {
        self.args
            .into_iter()
            .fold(query(self.text), |q, arg| match arg {
                Arg::Array(Array::Int(v)) => q.bind(v),
                Arg::Array(Array::Text(v)) => q.bind(v),
                Arg::Array(Array::Blob(v)) => q.bind(v),
                value => bind_value(q, value),
            })
    }
}

/// sqlx's query of `text`, with no argument yet.
fn query<DB: sqlx::Database>(text: Text) -> sqlx::query::Query<'static, DB, DB::Arguments> {
    match text {
        Text::Static(s) => sqlx::query(s),
        Text::Owned(s) => sqlx::query(sqlx::AssertSqlSafe(s)),
    }
}

/// `q` with one more argument: a value or a typed NULL.
fn bind_value<DB>(
    q: sqlx::query::Query<'static, DB, DB::Arguments>,
    arg: Arg,
) -> sqlx::query::Query<'static, DB, DB::Arguments>
where
    DB: sqlx::Database,
    i64: sqlx::Encode<'static, DB> + sqlx::Type<DB>,
    String: sqlx::Encode<'static, DB> + sqlx::Type<DB>,
    Vec<u8>: sqlx::Encode<'static, DB> + sqlx::Type<DB>,
    Option<i64>: sqlx::Encode<'static, DB>,
    Option<String>: sqlx::Encode<'static, DB>,
    Option<Vec<u8>>: sqlx::Encode<'static, DB>,
{
    match arg {
        Arg::Null(Kind::Int) => q.bind(None::<i64>),
        Arg::Null(Kind::Text) => q.bind(None::<String>),
        Arg::Null(Kind::Blob) => q.bind(None::<Vec<u8>>),
        Arg::Int(n) => q.bind(n),
        Arg::Text(s) => q.bind(s),
        Arg::Blob(b) => q.bind(b),
        Arg::Array(_) => unreachable!("arrays are bound by PostgreSQL's driver alone"),
    }
}

/// A row read as a tuple of its columns, in order.
pub(crate) trait Columns: Sized {
    fn from_any(row: &AnyRow) -> std::result::Result<Self, sqlx::Error>;
    fn from_sqlite(row: &rusqlite::Row<'_>) -> rusqlite::Result<Self>;
    fn from_postgres(row: &PgRow) -> std::result::Result<Self, sqlx::Error>;
}

macro_rules! columns {
    ($($t:ident $i:tt),+) => {
        impl<$($t),+> Columns for ($($t,)+)
        where
            $($t: for<'r> sqlx::Decode<'r, sqlx::Any>
                + sqlx::Type<sqlx::Any>
                + rusqlite::types::FromSql
                + for<'r> sqlx::Decode<'r, sqlx::Postgres>
                + sqlx::Type<sqlx::Postgres>),+
        {
            fn from_any(row: &AnyRow) -> std::result::Result<Self, sqlx::Error> {
                Ok(($(sqlx::Row::try_get::<$t, _>(row, $i)?,)+))
            }

            fn from_sqlite(row: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
                Ok(($(row.get::<_, $t>($i)?,)+))
            }

            fn from_postgres(row: &PgRow) -> std::result::Result<Self, sqlx::Error> {
                Ok(($(sqlx::Row::try_get::<$t, _>(row, $i)?,)+))
            }
        }
    };
}

columns!(A 0);
columns!(A 0, B 1);
columns!(A 0, B 1, C 2);
columns!(A 0, B 1, C 2, D 3);
columns!(A 0, B 1, C 2, D 3, E 4);
columns!(A 0, B 1, C 2, D 3, E 4, F 5);
columns!(A 0, B 1, C 2, D 3, E 4, F 5, G 6);
columns!(A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7);
columns!(A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7, I 8);
columns!(A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7, I 8, J 9);
columns!(A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7, I 8, J 9, K 10);
columns!(A 0, B 1, C 2, D 3, E 4, F 5, G 6, H 7, I 8, J 9, K 10, L 11);

/// A statement's rows read for nothing (an INSERT without `RETURNING`).
impl Columns for () {
    fn from_any(_: &AnyRow) -> std::result::Result<Self, sqlx::Error> {
        Ok(())
    }

    fn from_sqlite(_: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Ok(())
    }

    fn from_postgres(_: &PgRow) -> std::result::Result<Self, sqlx::Error> {
        Ok(())
    }
}

/// A connection (in a transaction) that runs [`Stmt`]s.
pub(crate) trait SqlConn {
    /// Whether it binds [`Arg::Array`]s: a multi-row INSERT then binds one array a column
    /// (`INSERT … SELECT * FROM UNNEST($1::text[], …)`, see `inserts`) rather than a
    /// parameter a value. True only of sqlx's PostgreSQL driver.
    fn arrays(&self) -> bool {
        false
    }

    /// Runs `stmt`; how many rows it changed.
    fn execute(&mut self, stmt: Stmt) -> impl Future<Output = Result<u64>> + Send;

    /// The rows `stmt` returns.
    fn fetch_all<R: Columns + Send>(
        &mut self,
        stmt: Stmt,
    ) -> impl Future<Output = Result<Vec<R>>> + Send;

    /// The first row `stmt` returns, if any.
    fn fetch_optional<R: Columns + Send>(
        &mut self,
        stmt: Stmt,
    ) -> impl Future<Output = Result<Option<R>>> + Send;
}

/// A connection of one of sqlx's drivers: its query, how it reads a row, whether it binds
/// arrays.
macro_rules! sql_conn_of_sqlx {
    ($conn:ty, $query:ident, $read:ident, $arrays:expr) => {
        impl SqlConn for $conn {
            fn arrays(&self) -> bool {
                $arrays
            }

            async fn execute(&mut self, stmt: Stmt) -> Result<u64> {
                Ok(stmt.$query().execute(&mut *self).await?.rows_affected())
            }

            async fn fetch_all<R: Columns + Send>(&mut self, stmt: Stmt) -> Result<Vec<R>> {
                let rows = stmt.$query().fetch_all(&mut *self).await?;
                Ok(rows
                    .iter()
                    .map(R::$read)
                    .collect::<std::result::Result<_, _>>()?)
            }

            async fn fetch_optional<R: Columns + Send>(&mut self, stmt: Stmt) -> Result<Option<R>> {
                let row = stmt.$query().fetch_optional(&mut *self).await?;
                Ok(row.as_ref().map(R::$read).transpose()?)
            }
        }
    };
}

sql_conn_of_sqlx!(AnyConnection, into_any, from_any, false);
sql_conn_of_sqlx!(PgConnection, into_postgres, from_postgres, true);

/// A connection that derefs to sqlx's `Any` connection (a transaction of it) runs statements
/// on it.
macro_rules! sql_conn_through_deref {
    ($($t:ty),+) => {$(
        impl SqlConn for $t {
            fn execute(&mut self, stmt: Stmt) -> impl Future<Output = Result<u64>> + Send {
                SqlConn::execute(&mut **self, stmt)
            }

            fn fetch_all<R: Columns + Send>(
                &mut self,
                stmt: Stmt,
            ) -> impl Future<Output = Result<Vec<R>>> + Send {
                SqlConn::fetch_all(&mut **self, stmt)
            }

            fn fetch_optional<R: Columns + Send>(
                &mut self,
                stmt: Stmt,
            ) -> impl Future<Output = Result<Option<R>>> + Send {
                SqlConn::fetch_optional(&mut **self, stmt)
            }
        }
    )+};
}

sql_conn_through_deref!(crate::WriteTx);

/// A sync batch's transaction runs on whichever connection it was given.
impl SqlConn for crate::BatchTx {
    fn arrays(&self) -> bool {
        matches!(self, Self::Postgres(_))
    }

    async fn execute(&mut self, stmt: Stmt) -> Result<u64> {
        match self {
            Self::Pooled(tx) => SqlConn::execute(tx, stmt).await,
            Self::Postgres(tx) => SqlConn::execute(&mut **tx, stmt).await,
        }
    }

    async fn fetch_all<R: Columns + Send>(&mut self, stmt: Stmt) -> Result<Vec<R>> {
        match self {
            Self::Pooled(tx) => SqlConn::fetch_all(tx, stmt).await,
            Self::Postgres(tx) => SqlConn::fetch_all(&mut **tx, stmt).await,
        }
    }

    async fn fetch_optional<R: Columns + Send>(&mut self, stmt: Stmt) -> Result<Option<R>> {
        match self {
            Self::Pooled(tx) => SqlConn::fetch_optional(tx, stmt).await,
            Self::Postgres(tx) => SqlConn::fetch_optional(&mut **tx, stmt).await,
        }
    }
}
