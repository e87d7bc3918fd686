//! The hosts and what runs on them: three app hosts each with a JetStream node and an ingest,
//! PostgreSQL on `db`, nginx on `lb` balancing over the three ingest, the watchers on `watch`
//! and `agg`, and the test's load on `client`. Every server listens on its host's address
//! with the same port on every host, as on real machines, so a restarted process is found
//! where it was.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use testkit::Proc;
use testkit::http::get_blocking;
use testkit::netns::{Host, Net};

/// Every host, in address order (`.2` onwards).
pub const HOSTS: [&str; 8] = ["app1", "app2", "app3", "db", "lb", "watch", "agg", "client"];
/// The hosts running a JetStream node and an ingest.
pub const APPS: [&str; 3] = ["app1", "app2", "app3"];

pub const NATS_PORT: u16 = 4222;
pub const ROUTE_PORT: u16 = 6222;
pub const MONITOR_PORT: u16 = 8222;
pub const INGEST_PORT: u16 = 8080;
pub const NGINX_PORT: u16 = 80;
pub const PG_PORT: u16 = 5432;

/// The stream ingest creates (its default name).
pub const STREAM: &str = "TRACKER";

/// How long a process may take to come up, and a cluster to agree.
const START: Duration = Duration::from_secs(60);

/// `--ack-timeout`: longer than any fault here keeps the bus from acknowledging, and shorter
/// than nginx's `proxy_read_timeout`, so every request still gets ingest's own answer.
const ACK_TIMEOUT: &str = "45s";

/// What ingest logs after draining on SIGTERM: all acknowledged, or some lost.
const DRAINED: &str = "every accepted event was acknowledged";
const UNDRAINED: &str = "did not acknowledge";

/// The running topology. Field order is drop order: processes go before the net that holds
/// them (whose drop would kill them anyway), and the directory last of all.
pub struct Topology {
    pub nats: Vec<Option<Proc>>,
    pub ingests: Vec<Option<Proc>>,
    pub nginx: Option<Proc>,
    pub pg: Postgres,
    pub net: Net,
    pub dir: tempfile::TempDir,
    /// Findings about the processes themselves (exit codes, undrained events).
    pub failures: Vec<String>,
}

impl Topology {
    /// Makes the hosts and starts everything but the watchers; returns once nginx answers
    /// and every ingest is ready (accounts loaded from PostgreSQL, JetStream acknowledging).
    pub fn start(nats_server: &Path, nginx: &Path) -> Topology {
        let net = Net::new(&HOSTS);
        let dir = tempfile::Builder::new()
            .prefix("tracker-cluster-")
            .tempdir()
            .expect("a temporary directory");
        eprintln!(
            "cluster: hosts on {} ({}), files in {}",
            net.subnet(),
            net.hosts()
                .iter()
                .map(|h| format!("{} {}", h.name(), h.addr()))
                .collect::<Vec<_>>()
                .join(", "),
            dir.path().display()
        );
        let pg = Postgres::start(net.host("db").clone(), dir.path(), &net.subnet());
        let mut topology = Topology {
            nats: Vec::new(),
            ingests: Vec::new(),
            nginx: None,
            pg,
            net,
            dir,
            failures: Vec::new(),
        };
        for i in 0..APPS.len() {
            topology.write_nats_config(i);
            let proc = topology.spawn_nats(nats_server, i);
            topology.nats.push(Some(proc));
        }
        topology.wait_nats_meta_leader();
        // The first ingest creates the table, the seed and the stream; the others find them.
        for i in 0..APPS.len() {
            let proc = topology.spawn_ingest(i);
            topology.ingests.push(Some(proc));
            if i == 0 {
                topology.wait_ingest_ready(0);
            }
        }
        for i in 1..APPS.len() {
            topology.wait_ingest_ready(i);
        }
        topology.nginx = Some(topology.spawn_nginx(nginx));
        topology
    }

    pub fn host(&self, name: &str) -> &Host {
        self.net.host(name)
    }

    pub fn app(&self, i: usize) -> &Host {
        self.net.host(APPS[i])
    }

    /// `--bus` for every client: the three nodes' client URLs.
    pub fn bus(&self) -> String {
        (0..APPS.len())
            .map(|i| format!("nats://{}:{NATS_PORT}", self.app(i).addr()))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Where the load goes: nginx on `lb`.
    pub fn front(&self) -> SocketAddr {
        SocketAddr::from((self.host("lb").addr(), NGINX_PORT))
    }

    fn nats_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("n{}", i + 1))
    }

    fn write_nats_config(&self, i: usize) {
        let addr = self.app(i).addr();
        let store = self.nats_dir(i);
        std::fs::create_dir_all(&store).expect("a store directory");
        let routes: Vec<String> = (0..APPS.len())
            .map(|j| format!("nats-route://{}:{ROUTE_PORT}", self.app(j).addr()))
            .collect();
        let text = format!(
            "server_name: n{n}\nlisten: {addr}:{NATS_PORT}\nhttp: {addr}:{MONITOR_PORT}\n\
             jetstream {{\n  store_dir: \"{store}\"\n  max_mem: 256MB\n  max_file: 2GB\n}}\n\
             cluster {{\n  name: tracker\n  listen: {addr}:{ROUTE_PORT}\n  routes: [{routes}]\n}}\n",
            n = i + 1,
            store = store.display(),
            routes = routes.join(", "),
        );
        std::fs::write(self.nats_dir(i).with_extension("conf"), text).expect("a nats config");
    }

    fn spawn_nats(&self, program: &Path, i: usize) -> Proc {
        let config = self.nats_dir(i).with_extension("conf");
        Proc::spawn(
            &format!("n{}", i + 1),
            self.app(i).command(program).arg("-c").arg(config),
        )
    }

    /// Node `i`'s `/jsz` document, asked from its own host.
    fn jsz(&self, i: usize, query: &str) -> Result<Value, String> {
        let addr = SocketAddr::from((self.app(i).addr(), MONITOR_PORT));
        let (status, body) = self
            .app(i)
            .enter(|| get_blocking(addr, &format!("/jsz{query}")))?;
        if status != 200 {
            return Err(format!("/jsz on n{}: {status}", i + 1));
        }
        serde_json::from_str(&body).map_err(|e| format!("/jsz on n{}: {e}", i + 1))
    }

    /// Waits until every running node names the same meta leader.
    pub fn wait_nats_meta_leader(&self) {
        let deadline = Instant::now() + START;
        loop {
            let leaders: Vec<Option<String>> = (0..APPS.len())
                .filter(|&i| self.nats[i].is_some())
                .map(|i| {
                    self.jsz(i, "")
                        .ok()
                        .and_then(|jsz| jsz["meta_cluster"]["leader"].as_str().map(str::to_owned))
                        .filter(|l| !l.is_empty())
                })
                .collect();
            if leaders.iter().all(Option::is_some) && leaders.windows(2).all(|w| w[0] == w[1]) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the JetStream nodes do not agree on a meta leader: {leaders:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The index of the node leading the stream, as the running nodes agree; `None` while
    /// they do not.
    pub fn stream_leader(&self) -> Option<usize> {
        let mut leader = None;
        for i in (0..APPS.len()).filter(|&i| self.nats[i].is_some()) {
            let jsz = self.jsz(i, "?accounts=true&streams=true").ok()?;
            let named = jsz["account_details"]
                .as_array()?
                .iter()
                .filter_map(|a| a["stream_detail"].as_array())
                .flatten()
                .find(|d| d["name"] == STREAM)?["cluster"]["leader"]
                .as_str()?
                .to_owned();
            let index = named
                .strip_prefix('n')?
                .parse::<usize>()
                .ok()?
                .checked_sub(1)?;
            if leader.is_some_and(|l| l != index) {
                return None;
            }
            leader = Some(index);
        }
        leader
    }

    /// SIGKILL of node `i`: a crash. Returns once it has exited.
    pub fn kill_nats(&mut self, i: usize) {
        if let Some(mut proc) = self.nats[i].take() {
            proc.signal("KILL");
            let _ = proc.try_wait_exit(Duration::from_secs(10));
        }
    }

    /// Starts node `i` again from its store and waits until the nodes agree on a meta leader.
    pub fn restart_nats(&mut self, program: &Path, i: usize) {
        assert!(self.nats[i].is_none(), "n{} is running", i + 1);
        self.nats[i] = Some(self.spawn_nats(program, i));
        self.wait_nats_meta_leader();
    }

    fn spawn_ingest(&self, i: usize) -> Proc {
        let dir = self.dir.path().join(format!("ingest-{}", i + 1));
        std::fs::create_dir_all(&dir).expect("ingest's directory");
        let listen = SocketAddr::from((self.app(i).addr(), INGEST_PORT));
        let mut command = self.app(i).command(env!("CARGO_BIN_EXE_ingest"));
        command
            .current_dir(dir)
            .args(["--listen", &listen.to_string(), "--bus", &self.bus()])
            .args(["--db", &self.pg.url()])
            .args(["--origin", &format!("ingest-{}", i + 1)])
            .args(["--replicas", "3", "--drain-timeout", "60s"])
            // A 202 only once the stream has the event, which is what orders an account's
            // events across instances; the ack timeout outlasts every fault of the schedule.
            .args(["--durable", "--ack-timeout", ACK_TIMEOUT])
            .args(["--max-data", "4096"])
            .env("RUST_LOG", "info");
        let proc = Proc::spawn(&format!("ingest-{}", i + 1), &mut command);
        proc.wait_stderr("listening on ", START);
        proc
    }

    /// Waits for ingest `i`'s `/readyz` (accounts loaded, bus acknowledging), asked from
    /// `client`.
    pub fn wait_ingest_ready(&self, i: usize) {
        let addr = SocketAddr::from((self.app(i).addr(), INGEST_PORT));
        let client = self.host("client");
        let deadline = Instant::now() + START;
        loop {
            match client.enter(|| get_blocking(addr, "/readyz")) {
                Ok((200, _)) => return,
                other => assert!(
                    Instant::now() < deadline,
                    "ingest-{} not ready within {START:?}: {other:?}",
                    i + 1
                ),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// SIGTERM to ingest `i`: it must drain everything it accepted and exit 0.
    pub fn stop_ingest(&mut self, i: usize) {
        let Some(mut ingest) = self.ingests[i].take() else {
            return;
        };
        let started = Instant::now();
        ingest.signal("TERM");
        let exit = ingest.try_wait_exit(Duration::from_secs(75));
        let log = drain_report(&ingest);
        let name = format!("ingest-{}", i + 1);
        match exit {
            Some(status) if status.success() => {}
            Some(status) => self.fail(format!("{name} exited with {status} on SIGTERM")),
            None => self.fail(format!(
                "{name} did not exit within {:?} of SIGTERM",
                started.elapsed()
            )),
        }
        if let Some(line) = log.lines().find(|l| l.contains(UNDRAINED)) {
            self.fail(format!("{name} lost accepted events on SIGTERM: {line}"));
        } else if exit.is_some() && !log.contains(DRAINED) {
            self.fail(format!(
                "{name} exited without saying every accepted event was acknowledged"
            ));
        }
    }

    /// Starts ingest `i` again after [`Topology::stop_ingest`] and waits until it is ready.
    pub fn restart_ingest(&mut self, i: usize) {
        assert!(self.ingests[i].is_none(), "ingest-{} is running", i + 1);
        self.ingests[i] = Some(self.spawn_ingest(i));
        self.wait_ingest_ready(i);
    }

    fn spawn_nginx(&self, program: &Path) -> Proc {
        let dir = self.dir.path().join("nginx");
        std::fs::create_dir_all(&dir).expect("nginx's directory");
        let upstreams: Vec<SocketAddr> = (0..APPS.len())
            .map(|i| SocketAddr::from((self.app(i).addr(), INGEST_PORT)))
            .collect();
        let conf = dir.join("nginx.conf");
        std::fs::write(&conf, nginx_conf(&dir, self.front(), &upstreams)).expect("nginx.conf");
        let proc = Proc::spawn(
            "nginx",
            self.host("lb")
                .command(program)
                .arg("-c")
                .arg(&conf)
                .arg("-e")
                .arg(dir.join("error.log")),
        );
        let front = self.front();
        let client = self.host("client");
        let deadline = Instant::now() + START;
        while !matches!(
            client.enter(|| get_blocking(front, "/readyz")),
            Ok((200, _))
        ) {
            assert!(
                Instant::now() < deadline,
                "nginx did not answer within {START:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        proc
    }

    /// Stops everything at the end: every ingest gracefully (each must drain), then the rest
    /// as the drop does. Returns the failures found.
    pub fn stop(mut self) -> Vec<String> {
        for i in 0..APPS.len() {
            self.stop_ingest(i);
        }
        std::mem::take(&mut self.failures)
    }

    fn fail(&mut self, message: String) {
        eprintln!("cluster: FAILURE {message}");
        self.failures.push(message);
    }
}

/// nginx over the three ingest. A request is tried on another instance only when it cannot
/// have been accepted by the first: the connection could not be made within a second, or
/// the instance answered 503 (not accepted). A request sent to an instance that then goes
/// quiet waits for its answer (`proxy_read_timeout`, longer than any fault here) rather than
/// being sent again elsewhere, which could deliver its event twice.
fn nginx_conf(dir: &Path, listen: SocketAddr, upstreams: &[SocketAddr]) -> String {
    let servers: String = upstreams
        .iter()
        .map(|a| format!("    server {a} max_fails=1 fail_timeout=2s;\n"))
        .collect();
    let d = dir.display();
    format!(
        "worker_processes 1;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
  upstream ingest {{
{servers}    keepalive 32;
  }}
  server {{
    listen {listen};
    keepalive_requests 1000000;
    location / {{
      proxy_pass http://ingest;
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
      proxy_connect_timeout 1s;
      proxy_read_timeout 60s;
      proxy_next_upstream error timeout http_503;
    }}
  }}
}}
"
    )
}

/// ingest's log once its drain report has been read.
fn drain_report(ingest: &Proc) -> String {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let log = ingest.stderr_log();
        if log.contains(DRAINED) || log.contains(UNDRAINED) || Instant::now() >= deadline {
            return log;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// PostgreSQL on its host: a throwaway cluster (testkit::postgres's settings: trust, no
/// fsync) listening on the host's address, reachable from the subnet.
pub struct Postgres {
    host: Host,
    bin: PathBuf,
    dir: PathBuf,
    server: Option<Proc>,
}

impl Postgres {
    fn start(host: Host, parent: &Path, subnet: &str) -> Postgres {
        let bin = testkit::postgres::bin_dir().expect("PostgreSQL is installed (checked first)");
        let dir = parent.join("pg");
        std::fs::create_dir_all(dir.join("sock")).expect("the PostgreSQL directory");
        let chown = Command::new("chown")
            .args(["-R", "postgres:"])
            .arg(&dir)
            .status()
            .expect("chown runs");
        assert!(chown.success(), "cannot hand {} to postgres", dir.display());
        // The parent must let postgres through to its directory.
        let _ = Command::new("chmod").arg("a+x").arg(parent).status();
        let mut pg = Postgres {
            host,
            bin,
            dir,
            server: None,
        };
        let data = pg.dir.join("data");
        let out = pg
            .as_postgres(&pg.bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .output()
            .expect("initdb runs");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let hba = data.join("pg_hba.conf");
        let mut rules = std::fs::read_to_string(&hba).expect("pg_hba.conf");
        rules += &format!("host all all {subnet} trust\n");
        std::fs::write(&hba, rules).expect("pg_hba.conf is writable");
        pg.spawn();
        pg.psql("postgres", "CREATE DATABASE tracker");
        pg
    }

    /// `runuser -u postgres -- program`, outside any host (for files, not the network).
    fn as_postgres(&self, program: &Path) -> Command {
        let mut command = Command::new("runuser");
        command.args(["-u", "postgres", "--"]).arg(program);
        command
    }

    pub fn addr(&self) -> Ipv4Addr {
        self.host.addr()
    }

    pub fn url(&self) -> String {
        format!("postgres://postgres@{}:{PG_PORT}/tracker", self.addr())
    }

    fn spawn(&mut self) {
        let mut command = self.host.command("runuser");
        command
            .args(["-u", "postgres", "--"])
            .arg(self.bin.join("postgres"))
            .arg("-D")
            .arg(self.dir.join("data"))
            .arg("-k")
            .arg(self.dir.join("sock"))
            .args(["-p", &PG_PORT.to_string(), "-h", &self.addr().to_string()])
            .args(["-c", "fsync=off", "-c", "synchronous_commit=off"])
            .args(["-c", "full_page_writes=off"]);
        let proc = Proc::spawn("postgres", &mut command);
        let deadline = Instant::now() + START;
        while !self.answers() {
            assert!(
                Instant::now() < deadline,
                "postgres did not answer within {START:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        self.server = Some(proc);
    }

    fn answers(&self) -> bool {
        self.host
            .command(self.bin.join("psql"))
            .args(["-X", "-q", "-A", "-t", "-c", "SELECT 1"])
            .args(["-h", &self.addr().to_string(), "-p", &PG_PORT.to_string()])
            .args(["-U", "postgres", "-d", "postgres"])
            .output()
            .is_ok_and(|out| out.status.success())
    }

    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = self
            .host
            .command(self.bin.join("psql"))
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
            .args(["-h", &self.addr().to_string(), "-p", &PG_PORT.to_string()])
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

    /// Fast shutdown (clients disconnected at once), then a new server on the same data.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    pub fn stop(&mut self) {
        let Some(mut server) = self.server.take() else {
            return;
        };
        let _ = self
            .as_postgres(&self.bin.join("pg_ctl"))
            .arg("stop")
            .arg("-D")
            .arg(self.dir.join("data"))
            .args(["-m", "fast", "-w"])
            .output();
        let _ = server.try_wait_exit(Duration::from_secs(30));
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            let _ = self
                .as_postgres(&self.bin.join("pg_ctl"))
                .arg("stop")
                .arg("-D")
                .arg(self.dir.join("data"))
                .args(["-m", "immediate", "-w"])
                .output();
            drop(server);
        }
    }
}
