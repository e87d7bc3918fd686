//! A throwaway PostgreSQL cluster for tests of the accounts store in Postgres: `initdb` in a
//! temporary directory, `postgres` on `127.0.0.1` and a free port with trust authentication,
//! and a database `tracker`; [`Postgres::add_password_role`] adds a role that must give its
//! password. Nothing here installs PostgreSQL: every test starts with
//! [`skip_without_postgres`], which skips it when the binaries are missing, except in CI,
//! where that fails it.
//!
//! `initdb` and `postgres` refuse to run as root, so when the tests run as root (as in CI's
//! containers) every server command runs as the `postgres` user through `runuser`, in a
//! directory handed to that user; otherwise they run as the current user.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tempfile::TempDir;

use crate::process::free_port;

/// The database every cluster gets, which the accounts store's tests use.
pub const DATABASE: &str = "tracker";

/// How long a start may take before the test fails: `pg_ctl -w` waits for the server to
/// accept connections, which takes well under a second on loopback.
const START_WITHIN: Duration = Duration::from_secs(30);

/// The directory holding `initdb`, `pg_ctl`, `postgres` and `psql`: `TRACKER_PG_BIN` when
/// set, else the newest `/usr/lib/postgresql/<version>/bin` (Debian's layout), else the
/// directory of an `initdb` on `PATH`; `None` when there is none.
pub fn bin_dir() -> Option<PathBuf> {
    let has_all = |dir: &Path| {
        ["initdb", "pg_ctl", "postgres", "psql"]
            .iter()
            .all(|name| dir.join(name).is_file())
    };
    if let Some(dir) = std::env::var_os("TRACKER_PG_BIN").filter(|v| !v.is_empty()) {
        let dir = PathBuf::from(dir);
        return has_all(&dir).then_some(dir);
    }
    let mut debian: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let version = entry.file_name().to_str()?.parse::<u32>().ok()?;
            Some((version, entry.path().join("bin")))
        })
        .filter(|(_, dir)| has_all(dir))
        .collect();
    debian.sort();
    if let Some((_, dir)) = debian.pop() {
        return Some(dir);
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .find(|dir| has_all(dir))
        .map(|dir| std::fs::canonicalize(&dir).unwrap_or(dir))
}

/// Whether a cluster can be started here: the binaries exist and, when running as root, so
/// does the `postgres` user to run them as. Tests call [`skip_without_postgres`] instead.
pub fn available() -> bool {
    missing().is_none()
}

/// What every PostgreSQL test calls first: `false` when a cluster can be started here (run
/// the test); `true`, after saying why on stderr, when it cannot (return: skipped). In CI
/// (`CI` set to anything but empty, `false` or `0`) a missing PostgreSQL fails the test
/// instead, so a CI machine without it cannot pass the PostgreSQL tests by skipping them all.
pub fn skip_without_postgres() -> bool {
    match verdict(missing(), std::env::var("CI").ok().as_deref()) {
        Ok(skip) => skip,
        Err(failure) => panic!("{failure}"),
    }
}

/// What [`skip_without_postgres`] does, given what is missing and the value of `CI`:
/// `Ok(false)` run, `Ok(true)` skip (said on stderr), `Err` fail with that message.
fn verdict(missing: Option<String>, ci: Option<&str>) -> Result<bool, String> {
    let Some(missing) = missing else {
        return Ok(false);
    };
    match ci.filter(|value| in_ci(value)) {
        Some(value) => Err(format!(
            "{missing}, and this is CI (CI={value}): the PostgreSQL tests must run here, not \
             be skipped; install PostgreSQL, or set TRACKER_PG_BIN to the directory of its \
             binaries"
        )),
        None => {
            eprintln!("skipped: {missing}");
            Ok(true)
        }
    }
}

/// Whether a value of the `CI` variable says this is CI: anything but empty, `false`, `0`.
pub(crate) fn in_ci(value: &str) -> bool {
    let value = value.trim();
    !value.is_empty() && value != "0" && !value.eq_ignore_ascii_case("false")
}

/// Why no cluster can be started here, or `None` when one can.
fn missing() -> Option<String> {
    if bin_dir().is_none() {
        return Some(
            match std::env::var_os("TRACKER_PG_BIN").filter(|v| !v.is_empty()) {
                Some(dir) => format!(
                    "PostgreSQL is not where TRACKER_PG_BIN says: {} lacks initdb, pg_ctl, \
                 postgres or psql",
                    dir.to_string_lossy()
                ),
                None => "PostgreSQL (initdb, pg_ctl, postgres, psql) is not installed: not in \
                     /usr/lib/postgresql/*/bin nor on PATH"
                    .to_owned(),
            },
        );
    }
    (is_root() && !user_exists("postgres")).then(|| {
        "PostgreSQL cannot run here: the tests run as root and there is no `postgres` user \
         to run the server as"
            .to_owned()
    })
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).trim() == "0")
        .unwrap_or(false)
}

fn user_exists(name: &str) -> bool {
    Command::new("id")
        .arg(name)
        .output()
        .map(|out| out.status.success())
        .unwrap_or(false)
}

/// A running (or stopped, between [`Postgres::stop`] and [`Postgres::restart`]) cluster.
/// Dropping it stops the server at once and removes its directory.
pub struct Postgres {
    bin: PathBuf,
    /// Run the server commands as `postgres` (we are root).
    as_postgres: bool,
    port: u16,
    /// The cluster's files (`data/`), its socket directory (`sock/`) and server log (`log`).
    dir: TempDir,
    /// The server process (`runuser` when we are root, which waits for `postgres`); `None`
    /// while stopped.
    server: Option<Child>,
}

impl Postgres {
    /// Creates and starts a cluster with a database `tracker`. Panics when it cannot: tests
    /// call [`skip_without_postgres`] first.
    pub fn start() -> Postgres {
        let bin =
            bin_dir().expect("PostgreSQL is not installed (call skip_without_postgres() first)");
        let as_postgres = is_root();
        let dir = tempfile::Builder::new()
            .prefix("tracker-pg-")
            .tempdir()
            .expect("a temporary directory");
        std::fs::create_dir(dir.path().join("sock")).expect("the socket directory");
        if as_postgres {
            let chown = Command::new("chown")
                .args(["-R", "postgres:"])
                .arg(dir.path())
                .status()
                .expect("chown runs");
            assert!(chown.success(), "cannot hand {:?} to postgres", dir.path());
        }
        let mut pg = Postgres {
            bin,
            as_postgres,
            port: 0,
            dir,
            server: None,
        };
        let data = pg.data_dir();
        pg.server_command(
            "initdb",
            &[
                "-D",
                path_str(&data),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ],
        );
        // A port free a moment ago can be taken before the server binds it; try a few.
        for attempt in 1..=3 {
            pg.port = free_port();
            match pg.try_start() {
                Ok(()) => break,
                Err(log) if attempt == 3 => panic!("postgres did not start:\n{log}"),
                Err(_) => continue,
            }
        }
        pg.psql_db("postgres", &format!("CREATE DATABASE {DATABASE}"));
        pg
    }

    /// `postgres://postgres@127.0.0.1:PORT/tracker`: what ingest's `--db` takes.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{DATABASE}", self.port)
    }

    /// `postgres://USER:PASSWORD@127.0.0.1:PORT/tracker`: a role's URL, password included.
    pub fn url_as(&self, user: &str, password: &str) -> String {
        format!(
            "postgres://{user}:{password}@127.0.0.1:{}/{DATABASE}",
            self.port
        )
    }

    /// Adds a login role `user` with `password`, which may create tables in the `tracker`
    /// database, and makes the server require that password from it over TCP
    /// (`scram-sha-256`, in a pg_hba.conf line ahead of the trust every other user keeps).
    /// Returns once the server asks `user` for the password. Both must be plain words
    /// (letters, digits, `-`, `_`), so they need no quoting in SQL or URLs.
    pub fn add_password_role(&self, user: &str, password: &str) {
        let plain = |word: &str| {
            !word.is_empty()
                && word
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        assert!(
            plain(user) && plain(password),
            "{user:?} and the password must be plain words"
        );
        self.psql(&format!(
            "SET password_encryption = 'scram-sha-256';
             CREATE ROLE \"{user}\" LOGIN PASSWORD '{password}';
             GRANT ALL ON SCHEMA public TO \"{user}\""
        ));
        let hba = self.data_dir().join("pg_hba.conf");
        let rules = std::fs::read_to_string(&hba).expect("pg_hba.conf is readable");
        let ours = format!(
            "host all \"{user}\" 127.0.0.1/32 scram-sha-256\nhost all \"{user}\" ::1/128 scram-sha-256\n"
        );
        std::fs::write(&hba, ours + &rules).expect("pg_hba.conf is writable");
        let errors = self.psql(
            "SELECT line_number, error FROM pg_hba_file_rules WHERE error IS NOT NULL;
             SELECT pg_reload_conf()",
        );
        assert_eq!(errors, "t", "pg_hba.conf has errors:\n{errors}");
        // The postmaster rereads pg_hba.conf when signalled: wait until it asks for the password.
        let started = Instant::now();
        while self.connects_as(user) {
            assert!(
                started.elapsed() < START_WITHIN,
                "{user} still gets in without a password after {START_WITHIN:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The port the server listens on, the same across restarts.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Whether the server is running (not between [`Postgres::stop`] and a restart).
    pub fn is_running(&self) -> bool {
        self.server.is_some()
    }

    /// Stops the server (fast shutdown: clients are disconnected at once), keeping its data.
    pub fn stop(&mut self) {
        self.shut_down("fast");
    }

    /// Starts the server again on the same port with the same data, stopping it first when
    /// it runs.
    pub fn restart(&mut self) {
        self.stop();
        if let Err(log) = self.try_start() {
            panic!("postgres did not start again on port {}:\n{log}", self.port);
        }
    }

    /// Runs `sql` with psql in the `tracker` database and returns what it printed: rows one a
    /// line, columns separated by `|`, no headers. Panics, with psql's message, on an error.
    pub fn psql(&self, sql: &str) -> String {
        self.psql_db(DATABASE, sql)
    }

    /// Runs `sql` (statements that return no rows) in a transaction of its own and returns
    /// when it committed, by the server's clock, which is this machine's: the moment from
    /// which to time how soon a follower sees the change.
    pub fn commit(&self, sql: &str) -> SystemTime {
        let out = self.psql(&format!(
            "BEGIN; {sql}; COMMIT; SELECT extract(epoch FROM clock_timestamp())"
        ));
        let epoch = out.lines().last().unwrap_or_default();
        let (secs, fraction) = epoch.split_once('.').unwrap_or((epoch, "0"));
        let micros = format!("{fraction:0<6}");
        let parse = |digits: &str| -> u64 {
            digits
                .parse()
                .unwrap_or_else(|_| panic!("no timestamp in {out:?}"))
        };
        UNIX_EPOCH + Duration::from_secs(parse(secs)) + Duration::from_micros(parse(&micros[..6]))
    }

    /// The server's log so far, for a failing test's message.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("log")).unwrap_or_default()
    }

    fn psql_db(&self, db: &str, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", "postgres", "-d", db, "-c", sql])
            .output()
            .expect("psql runs");
        assert!(
            out.status.success(),
            "psql failed on {sql:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim_end().to_owned()
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Runs `postgres` as this cluster's child and waits until it accepts connections; on
    /// failure returns the server's log. The server is our child, not started by `pg_ctl
    /// start`, which would leave it to be reaped by PID 1: in a container whose PID 1 does not
    /// reap, every stopped test cluster would stay behind as a zombie.
    fn try_start(&mut self) -> Result<(), String> {
        let data = self.data_dir();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("log"))
            .map_err(|e| format!("cannot open the server log: {e}"))?;
        let sock = self.dir.path().join("sock");
        let port = self.port.to_string();
        let mut command = self.server(
            "postgres",
            &[
                "-D",
                path_str(&data),
                "-k",
                path_str(&sock),
                "-p",
                &port,
                "-h",
                "127.0.0.1",
                // No fsync: a test cluster need not survive a power cut, and tests go faster.
                "-c",
                "fsync=off",
                "-c",
                "synchronous_commit=off",
                "-c",
                "full_page_writes=off",
            ],
        );
        let stderr = log.try_clone().map_err(|e| e.to_string())?;
        let mut child = command
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(stderr)
            .spawn()
            .map_err(|e| format!("cannot run postgres: {e}"))?;
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("postgres exited ({status}):\n{}", self.log()));
            }
            if self.answers() {
                self.server = Some(child);
                return Ok(());
            }
            if started.elapsed() > START_WITHIN {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "postgres did not answer within {START_WITHIN:?}:\n{}",
                    self.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether the server accepts connections to the `postgres` database.
    fn answers(&self) -> bool {
        Command::new(self.bin.join("psql"))
            .args(["-X", "-q", "-A", "-t", "-c", "SELECT 1"])
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", "postgres", "-d", "postgres"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    }

    /// Whether `user` gets in over TCP without giving a password.
    fn connects_as(&self, user: &str) -> bool {
        Command::new(self.bin.join("psql"))
            .args(["-X", "-q", "-w", "-c", "SELECT 1"])
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(["-U", user, "-d", DATABASE])
            .env_remove("PGPASSWORD")
            .env("PGPASSFILE", "/dev/null")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|status| status.success())
    }

    /// `pg_ctl stop` in `mode`, then waits for the server process to be gone.
    fn shut_down(&mut self, mode: &str) {
        let Some(mut child) = self.server.take() else {
            return;
        };
        let data = self.data_dir();
        let out = self
            .server("pg_ctl", &["stop", "-D", path_str(&data), "-m", mode, "-w"])
            .output();
        if !out.is_ok_and(|out| out.status.success()) {
            let _ = child.kill();
        }
        let _ = child.wait();
    }

    fn server_command(&self, program: &str, args: &[&str]) {
        let out = self
            .server(program, args)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
        assert!(
            out.status.success(),
            "{program} {args:?} failed: {}{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.log()
        );
    }

    /// One of the server's programs, run as `postgres` when we are root.
    fn server(&self, program: &str, args: &[&str]) -> Command {
        let program = self.bin.join(program);
        let mut command = if self.as_postgres {
            let mut command = Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        } else {
            Command::new(program)
        };
        command.args(args).current_dir(self.dir.path());
        command
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // Immediate: nothing in a throwaway cluster is worth a checkpoint.
        self.shut_down("immediate");
    }
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 temporary path")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ci_is_any_value_but_empty_false_or_zero() {
        for value in ["true", "1", "yes", "github", "TRUE"] {
            assert!(in_ci(value), "{value}");
        }
        for value in ["", " ", "0", "false", "False", "FALSE"] {
            assert!(!in_ci(value), "{value:?}");
        }
    }

    #[test]
    fn a_missing_postgres_skips_outside_ci_and_fails_in_ci() {
        let gone = || Some("PostgreSQL is not installed".to_owned());
        assert_eq!(verdict(None, Some("true")), Ok(false), "present: run");
        assert_eq!(verdict(None, None), Ok(false), "present: run");
        assert_eq!(
            verdict(gone(), None),
            Ok(true),
            "skip on a developer's machine"
        );
        assert_eq!(verdict(gone(), Some("false")), Ok(true));
        assert_eq!(verdict(gone(), Some("0")), Ok(true));
        assert_eq!(verdict(gone(), Some("")), Ok(true));
        let failure = verdict(gone(), Some("true")).unwrap_err();
        assert!(failure.contains("PostgreSQL is not installed"), "{failure}");
        assert!(failure.contains("CI=true"), "{failure}");
        assert!(failure.contains("must run here"), "{failure}");
    }
}
