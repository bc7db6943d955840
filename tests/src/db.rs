//! Databases for tests: a private SQLite file, or a private database on the test
//! PostgreSQL server (from `DATABASE_URL`, else 127.0.0.1:5432), or a whole throwaway
//! PostgreSQL cluster for tests that crash the database itself.
//!
//! `scripts/test` makes sure a server answers (starting a throwaway one when none does)
//! and exports its URL; run `cargo test` alone and the Postgres tests use 127.0.0.1:5432.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use sqlx::ConnectOptions;
use sqlx::postgres::{PgConnectOptions, PgConnection};
use tempfile::TempDir;

/// Which store a test runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StoreKind {
    Sqlite,
    Postgres,
}

/// The admin URL of the PostgreSQL server tests create their databases on.
pub fn postgres_admin_url() -> String {
    std::env::var("DATABASE_URL")
        .ok()
        .filter(|u| u.starts_with("postgres://") || u.starts_with("postgresql://"))
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// `url` with its database name replaced (query parameters kept).
pub fn with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (url, None),
    };
    let authority_start = base.find("://").map(|i| i + 3).unwrap_or(0);
    let path_start = base[authority_start..]
        .find('/')
        .map(|i| authority_start + i)
        .unwrap_or(base.len());
    let mut out = format!("{}/{database}", &base[..path_start]);
    if let Some(query) = query {
        out.push('?');
        out.push_str(query);
    }
    out
}

/// A database of one test's own, removed when dropped.
pub struct TestDb {
    url: String,
    kind: StoreKind,
    /// Holds the SQLite file; also scratch space for the test.
    dir: TempDir,
    /// The Postgres server it lives on and its name, to drop it afterwards.
    postgres: Option<(String, String)>,
}

impl TestDb {
    pub async fn new(kind: StoreKind) -> Self {
        match kind {
            StoreKind::Sqlite => Self::sqlite(),
            StoreKind::Postgres => Self::postgres_on(&postgres_admin_url()).await,
        }
    }

    fn sqlite() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        TestDb {
            url: format!("sqlite://{}", dir.path().join("chat.db").display()),
            kind: StoreKind::Sqlite,
            dir,
            postgres: None,
        }
    }

    /// A fresh, empty database on the server at `admin_url` (the server applies the
    /// migrations when it starts).
    pub async fn postgres_on(admin_url: &str) -> Self {
        let name = format!("chat_test_{}", uuid::Uuid::new_v4().simple());
        let mut admin = admin_connection(admin_url).await;
        // A locale collation, as production databases often have, so that nothing
        // depends on the byte order of a C-locale test server. Servers built without
        // ICU get the template's locale.
        let icu = sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "CREATE DATABASE {name} TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US'"
        )))
        .execute(&mut admin)
        .await;
        if icu.is_err() {
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                .execute(&mut admin)
                .await
                .expect("create the test database");
        }
        TestDb {
            url: with_database(admin_url, &name),
            kind: StoreKind::Postgres,
            dir: tempfile::tempdir().expect("temp dir"),
            postgres: Some((admin_url.to_owned(), name)),
        }
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn kind(&self) -> StoreKind {
        self.kind
    }

    /// Scratch space that lives as long as the database.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// A direct connection to this Postgres database, for assertions on the schema
    /// and on query plans.
    pub async fn connect_postgres(&self) -> PgConnection {
        assert_eq!(self.kind, StoreKind::Postgres, "not a Postgres database");
        admin_connection(&self.url).await
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let Some((admin_url, name)) = self.postgres.take() else {
            return;
        };
        // Drop runs inside the test's runtime, which cannot be blocked on: use a
        // runtime of its own on a thread of its own. FORCE ends a server's connections.
        let dropped = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            runtime.block_on(async {
                let mut admin = PgConnectOptions::from_str(&admin_url)
                    .map_err(std::io::Error::other)?
                    .connect()
                    .await
                    .map_err(std::io::Error::other)?;
                sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
                    "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                )))
                .execute(&mut admin)
                .await
                .map_err(std::io::Error::other)?;
                Ok::<_, std::io::Error>(())
            })
        })
        .join();
        if let Ok(Err(e)) = dropped {
            eprintln!("could not drop a test database: {e}");
        }
    }
}

async fn admin_connection(url: &str) -> PgConnection {
    PgConnectOptions::from_str(url)
        .expect("a valid Postgres URL")
        .connect()
        .await
        .unwrap_or_else(|e| {
            panic!(
                "cannot reach PostgreSQL at {url}: {e}. Run scripts/test (it starts one), \
                 or set DATABASE_URL to a server where this user may create databases"
            )
        })
}

/// A PostgreSQL cluster of one test's own (initdb in a temporary directory, on a free
/// port), for tests that stop the database server. Stopped when dropped.
pub struct PgCluster {
    dir: TempDir,
    port: u16,
}

impl PgCluster {
    pub async fn start() -> Self {
        // A port found free may be taken before Postgres binds it: try a few.
        for _ in 0..3 {
            let dir = tempfile::tempdir().expect("temp dir");
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
                .port();
            let cluster = PgCluster { dir, port };
            if cluster.try_control(&["start", &port.to_string()]).await {
                return cluster;
            }
        }
        panic!("could not start a PostgreSQL cluster (see the log above)");
    }

    /// The URL of the cluster's `postgres` database, as its superuser.
    pub fn admin_url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// `pg_ctl stop -m immediate`: the server dies without a checkpoint, like a crash.
    pub async fn stop_immediately(&self) {
        self.control(&["stop", "immediate"]).await;
    }

    /// Starts the cluster again (running crash recovery after an immediate stop).
    pub async fn restart(&self) {
        self.control(&["start", &self.port.to_string()]).await;
    }

    async fn control(&self, args: &[&str]) {
        assert!(
            self.try_control(args).await,
            "scripts/pg-cluster {args:?} failed"
        );
    }

    async fn try_control(&self, args: &[&str]) -> bool {
        tokio::process::Command::new(cluster_script())
            .arg(args[0])
            .arg(self.dir.path())
            .args(&args[1..])
            .status()
            .await
            .expect("run scripts/pg-cluster")
            .success()
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let _ = std::process::Command::new(cluster_script())
            .arg("stop")
            .arg(self.dir.path())
            .arg("immediate")
            .status();
    }
}

fn cluster_script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/pg-cluster")
}

#[cfg(test)]
mod tests {
    use super::with_database;

    #[test]
    fn replaces_the_database_name() {
        assert_eq!(
            with_database("postgres://u@h:5432/postgres", "x"),
            "postgres://u@h:5432/x"
        );
        assert_eq!(
            with_database("postgres://u:p@h/postgres?sslmode=disable", "x"),
            "postgres://u:p@h/x?sslmode=disable"
        );
        assert_eq!(with_database("postgres://h", "x"), "postgres://h/x");
    }
}
