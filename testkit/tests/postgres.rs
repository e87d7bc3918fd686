//! `testkit::postgres::Postgres` against the real PostgreSQL: a cluster starts with the
//! `tracker` database, answers psql and over TCP, tells when a change committed, keeps its
//! data across a restart and leaves nothing behind; a role added with a password must give it.

use std::net::TcpStream;
use std::process::Command;
use std::time::SystemTime;

use testkit::postgres::{Postgres, bin_dir, skip_without_postgres};

#[test]
fn starts_restarts_and_cleans_up() {
    if skip_without_postgres() {
        return;
    }
    let mut pg = Postgres::start();
    let url = pg.url();
    assert_eq!(
        url,
        format!("postgres://postgres@127.0.0.1:{}/tracker", pg.port())
    );
    assert_eq!(pg.psql("SELECT current_database()"), "tracker");
    pg.psql("CREATE TABLE t(x INT); INSERT INTO t VALUES (1), (2)");
    assert_eq!(pg.psql("SELECT x, x * 10 FROM t ORDER BY x"), "1|10\n2|20");
    let before = SystemTime::now();
    let committed = pg.commit("INSERT INTO t VALUES (3)");
    assert!(
        before <= committed && committed <= SystemTime::now(),
        "{committed:?}"
    );
    assert_eq!(pg.psql("SELECT count(*) FROM t"), "3", "committed");

    pg.stop();
    assert!(!pg.is_running());
    assert!(TcpStream::connect(("127.0.0.1", pg.port())).is_err());
    pg.restart();
    assert!(pg.is_running());
    assert_eq!(pg.psql("SELECT count(*) FROM t"), "3", "data kept");

    let port = pg.port();
    drop(pg);
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the server is gone after drop"
    );
}

/// A role added with a password gets in with it only, while the default user keeps trust.
#[test]
fn a_password_role_must_give_its_password() {
    if skip_without_postgres() {
        return;
    }
    let pg = Postgres::start();
    pg.add_password_role("ingest", "right-horse");
    assert_eq!(connect_as(&pg, "ingest", Some("right-horse")), Ok(()));
    let wrong = connect_as(&pg, "ingest", Some("wrong-horse")).unwrap_err();
    assert!(wrong.contains("password authentication failed"), "{wrong}");
    assert!(
        connect_as(&pg, "ingest", None).is_err(),
        "no password, no entry"
    );
    assert_eq!(connect_as(&pg, "postgres", None), Ok(()), "trust as before");
    assert_eq!(
        pg.url_as("ingest", "right-horse"),
        format!(
            "postgres://ingest:right-horse@127.0.0.1:{}/tracker",
            pg.port()
        )
    );
}

/// psql over TCP as `user`, with `password` if any; psql's complaint on failure.
fn connect_as(pg: &Postgres, user: &str, password: Option<&str>) -> Result<(), String> {
    let mut psql = Command::new(bin_dir().unwrap().join("psql"));
    psql.args([
        "-X",
        "-q",
        "-w",
        "-c",
        "CREATE TABLE IF NOT EXISTS t(x INT)",
    ])
    .args(["-h", "127.0.0.1", "-p", &pg.port().to_string()])
    .args(["-U", user, "-d", "tracker"])
    .env_remove("PGPASSWORD")
    .env("PGPASSFILE", "/dev/null");
    if let Some(password) = password {
        psql.env("PGPASSWORD", password);
    }
    let out = psql.output().expect("psql runs");
    match out.status.success() {
        true => Ok(()),
        false => Err(String::from_utf8_lossy(&out.stderr).into_owned()),
    }
}
