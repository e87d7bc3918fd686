//! `testkit::postgres::Postgres` against the real PostgreSQL: a cluster starts with the
//! `tracker` database, answers psql and over TCP, keeps its data across a restart and leaves
//! nothing behind.

use std::net::TcpStream;

use testkit::postgres::{Postgres, skip_without_postgres};

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

    pg.stop();
    assert!(!pg.is_running());
    assert!(TcpStream::connect(("127.0.0.1", pg.port())).is_err());
    pg.restart();
    assert!(pg.is_running());
    assert_eq!(pg.psql("SELECT count(*) FROM t"), "2", "data kept");

    let port = pg.port();
    drop(pg);
    assert!(
        TcpStream::connect(("127.0.0.1", port)).is_err(),
        "the server is gone after drop"
    );
}
