//! Hosts of their own on one machine: Linux network namespaces joined by a private bridge, so a
//! test can run a cluster whose members have separate addresses, cut one off the network and
//! slow another down, as on real machines.
//!
//! [`Net::new`] makes a bridge and one namespace per host, each with a veth pair whose outer
//! end is a port of the bridge and whose inner end is the host's `eth0`, addressed on a
//! private /24 chosen not to overlap any address or route of the machine; each host's
//! loopback is up. The machine itself gets no address on the bridge and no route: nothing
//! outside the test can reach the hosts, and the hosts reach nothing but each other. Code
//! reaches a host by running a program in it ([`Host::command`], `ip netns exec`) or by
//! running on a thread that has joined its namespace ([`Host::enter`], [`Host::join`]).
//!
//! Everything is named from a prefix holding the process id (`tk<pid>-<n>`), so a net left by
//! a test process that died (SIGKILL, a crashed runner) is recognised and removed, with any
//! process still inside it, by the next [`Net::new`]. Dropping a [`Net`], during a panic
//! too, kills what still runs in its namespaces and removes them and the bridge.
//!
//! Needs root and iproute2 (`ip`, and `tc` with the netem qdisc for [`Host::netem`]);
//! [`available`] says whether this machine can, and [`skip_without_netns`] is what tests call
//! first.

use std::fmt;
use std::fs::File;
use std::net::Ipv4Addr;
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use nix::sched::{CloneFlags, setns};

/// The start of every name this module gives a namespace or a link: `tk<pid>-<n>`.
const PREFIX: &str = "tk";

/// Where `ip netns` keeps its namespaces' handles.
const NETNS_DIR: &str = "/run/netns";

/// The most hosts one net may have: link names must fit in 15 bytes.
pub const MAX_HOSTS: usize = 99;

/// Nets made by this process so far, for unique names.
static NETS: AtomicU32 = AtomicU32::new(0);

/// Whether this machine can make hosts: `Ok` when running as root, `ip` is there and a probe
/// namespace with a veth pair and a bridge could be made and removed; else why not. Worked
/// out once per process.
pub fn available() -> Result<(), String> {
    static VERDICT: OnceLock<Result<(), String>> = OnceLock::new();
    VERDICT.get_or_init(probe).clone()
}

/// What every test needing hosts calls first: `false` when it can run (go on); `true` after
/// saying why on stderr when it cannot (return: skipped). In CI (`CI` set to anything but
/// empty, `0` or `false`) on a machine where the tests run as root and `ip` is installed, a
/// failure to make namespaces fails the test instead: such a machine allows it, so a skip
/// would hide a broken set-up. Without root or `ip`, CI skips too, saying so.
pub fn skip_without_netns() -> bool {
    let prerequisites = is_root() && ip_installed();
    match verdict(
        available(),
        prerequisites,
        std::env::var("CI").ok().as_deref(),
    ) {
        Ok(skip) => skip,
        Err(failure) => panic!("{failure}"),
    }
}

/// [`skip_without_netns`]'s decision: `Ok(false)` run, `Ok(true)` skip (said on stderr), `Err`
/// fail with that message.
fn verdict(
    available: Result<(), String>,
    root_and_ip: bool,
    ci: Option<&str>,
) -> Result<bool, String> {
    let Err(why) = available else {
        return Ok(false);
    };
    match ci.filter(|value| in_ci(value)) {
        Some(value) if root_and_ip => Err(format!(
            "network namespaces cannot be made here ({why}), though this is CI (CI={value}) \
             running as root with iproute2: the multi-host tests must run on such a machine, \
             not be skipped"
        )),
        _ => {
            eprintln!("skipped: network namespaces are not available here: {why}");
            Ok(true)
        }
    }
}

/// Whether a value of the `CI` variable says this is CI: anything but empty, `false`, `0`.
fn in_ci(value: &str) -> bool {
    let value = value.trim();
    !value.is_empty() && value != "0" && !value.eq_ignore_ascii_case("false")
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find(|l| l.starts_with("Uid:"))?;
            // Real, effective, saved, filesystem: the effective one decides.
            line.split_whitespace().nth(2).map(|uid| uid == "0")
        })
        .unwrap_or(false)
}

fn ip_installed() -> bool {
    Command::new("ip")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn probe() -> Result<(), String> {
    if !is_root() {
        return Err("the tests do not run as root".into());
    }
    if !ip_installed() {
        return Err("`ip` (iproute2) is not installed".into());
    }
    let stem = stem();
    let ns = format!("{stem}-probe");
    let bridge = format!("{stem}b");
    let link = format!("{stem}v0");
    let made = (|| {
        ip(&["netns", "add", &ns])?;
        ip(&["link", "add", &bridge, "type", "bridge"])?;
        ip(&[
            "link", "add", &link, "type", "veth", "peer", "name", "eth0", "netns", &ns,
        ])?;
        ip(&["link", "set", &link, "master", &bridge, "up"])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])
    })();
    remove(&[ns], &[bridge, link]);
    made
}

/// A new stem for one net's names: `tk<pid>-<n>`.
fn stem() -> String {
    let n = NETS.fetch_add(1, Ordering::Relaxed) % 100;
    format!("{PREFIX}{}-{n}", std::process::id())
}

/// Runs `ip` with `args`; `Err` with its stderr when it fails.
fn ip(args: &[&str]) -> Result<(), String> {
    run("ip", args).map(drop)
}

fn run(program: &str, args: &[&str]) -> Result<Output, String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(format!(
            "`{program} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn stdout_of(program: &str, args: &[&str]) -> String {
    run(program, args)
        .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
        .unwrap_or_default()
}

/// Kills every process in the namespaces `namespaces` (theirs are this module's, so nothing
/// else's), then removes them and the links `links`, ignoring what is already gone.
fn remove(namespaces: &[String], links: &[String]) {
    for ns in namespaces {
        kill_all_in(ns);
        let _ = ip(&["netns", "del", ns]);
    }
    for link in links {
        if link_exists(link) {
            let _ = ip(&["link", "del", link]);
        }
    }
}

/// SIGKILLs every process in namespace `ns` and waits (up to 5 s) until none is left, so
/// the namespace and its veth go when it is deleted, not when the last process exits.
fn kill_all_in(ns: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        // Never this process, whose main thread may have joined the namespace.
        let me = std::process::id().to_string();
        let pids: Vec<String> = stdout_of("ip", &["netns", "pids", ns])
            .split_whitespace()
            .filter(|pid| *pid != me)
            .map(str::to_owned)
            .collect();
        if pids.is_empty() || Instant::now() >= deadline {
            return;
        }
        let _ = Command::new("kill")
            .arg("-KILL")
            .args(&pids)
            .stderr(Stdio::null())
            .status();
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn link_exists(name: &str) -> bool {
    Command::new("ip")
        .args(["link", "show", "dev", name])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The process id in one of this module's names (`tk<pid>-...`), if it is one.
fn owner(name: &str) -> Option<u32> {
    let rest = name.strip_prefix(PREFIX)?;
    let (pid, _) = rest.split_once('-')?;
    if pid.is_empty() || !pid.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    pid.parse().ok()
}

/// Namespace names in `ip netns list` output (`name (id: 3)` or `name`).
fn netns_names(list: &str) -> Vec<String> {
    list.lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// Link names in `ip -o link show` output (`7: name@if2: <...> ...`).
fn link_names(list: &str) -> Vec<String> {
    list.lines()
        .filter_map(|line| line.split(": ").nth(1))
        .map(|name| name.split('@').next().unwrap_or(name).to_owned())
        .collect()
}

/// Names (namespaces or links) of this module's whose process is gone.
fn stale(names: Vec<String>) -> Vec<String> {
    names
        .into_iter()
        .filter(|name| owner(name).is_some_and(|pid| !pid_alive(pid)))
        .collect()
}

fn pid_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// Removes what nets of dead processes left: their namespaces (and what runs in them), then
/// their bridges and veths. Returns the names removed. [`Net::new`] calls it.
pub fn clean_leftovers() -> Vec<String> {
    let namespaces = stale(netns_names(&stdout_of("ip", &["netns", "list"])));
    // Links after the namespaces: deleting a namespace deletes its veths with it.
    remove(&namespaces, &[]);
    let links = stale(link_names(&stdout_of("ip", &["-o", "link", "show"])));
    remove(&[], &links);
    namespaces.into_iter().chain(links).collect()
}

/// Every address and route prefix of the machine's own namespace, as (network, prefix length).
fn machine_prefixes() -> Vec<(u32, u32)> {
    let text = stdout_of("ip", &["-4", "-o", "addr", "show"])
        + &stdout_of("ip", &["-4", "route", "show", "table", "all"]);
    text.split_whitespace()
        .filter_map(|token| {
            let (addr, len) = token.split_once('/').unwrap_or((token, "32"));
            let addr: Ipv4Addr = addr.parse().ok()?;
            let len: u32 = len.parse().ok().filter(|&l| l <= 32)?;
            Some((u32::from(addr), len))
        })
        .filter(|&(_, len)| len > 0)
        .collect()
}

/// Whether the /24 at `net` overlaps the prefix `(addr, len)`.
fn overlaps(net: u32, (addr, len): (u32, u32)) -> bool {
    let shorter = len.min(24);
    let mask = if shorter == 0 {
        0
    } else {
        u32::MAX << (32 - shorter)
    };
    net & mask == addr & mask
}

/// A /24 in 10.0.0.0/8 overlapping none of `taken`, picked from `seed` so concurrent nets
/// tend to differ.
fn pick_subnet(seed: u32, taken: &[(u32, u32)]) -> Option<[u8; 3]> {
    // 10.200.0.0 to 10.249.255.0: far from the 10.0.x and 10.1.x that networks favour.
    const COUNT: u32 = 50 * 256;
    (0..COUNT)
        .map(|i| (seed.wrapping_mul(2_654_435_761).wrapping_add(i)) % COUNT)
        .map(|k| [10, 200 + (k / 256) as u8, (k % 256) as u8])
        .find(|&[a, b, c]| {
            let net = u32::from(Ipv4Addr::new(a, b, c, 0));
            !taken.iter().any(|&prefix| overlaps(net, prefix))
        })
}

/// A bridge and hosts on it; see the module's documentation. Dropping it removes them.
pub struct Net {
    stem: String,
    bridge: String,
    subnet: [u8; 3],
    hosts: Vec<Host>,
}

/// One host of a [`Net`]: a namespace with loopback and `eth0` at [`Host::addr`]. A cheap
/// handle (clone it freely); its methods fail once its net has been dropped.
#[derive(Clone, Debug)]
pub struct Host {
    name: String,
    /// The namespace's name, as `ip netns` knows it.
    ns: String,
    /// The veth end on the machine's side, a port of the bridge: down is unplugged.
    link: String,
    addr: Ipv4Addr,
}

impl Net {
    /// Makes a bridge and one host per name (`[a-z0-9-]`, unique), with addresses `.2`, `.3`,
    /// ... in name order on a /24 of 10.200.0.0/13 that overlaps nothing of the machine's.
    /// Removes leftovers of dead test processes first. Panics when something cannot be made
    /// (after removing what was): tests call [`skip_without_netns`] first.
    pub fn new(names: &[&str]) -> Net {
        assert!(
            !names.is_empty() && names.len() <= MAX_HOSTS,
            "a net has 1 to {MAX_HOSTS} hosts"
        );
        for (i, name) in names.iter().enumerate() {
            assert!(
                !name.is_empty()
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-'),
                "host name {name:?}: use lower-case letters, digits and '-'"
            );
            assert!(!names[..i].contains(name), "host name {name:?} given twice");
        }
        let removed = clean_leftovers();
        if !removed.is_empty() {
            eprintln!(
                "netns: removed leftovers of dead test processes: {}",
                removed.join(" ")
            );
        }
        let stem = stem();
        let subnet = pick_subnet(
            std::process::id() ^ NETS.load(Ordering::Relaxed),
            &machine_prefixes(),
        )
        .expect("a free /24 in 10.200.0.0/13");
        let hosts = names
            .iter()
            .enumerate()
            .map(|(i, name)| Host {
                name: (*name).to_owned(),
                ns: format!("{stem}-{name}"),
                link: format!("{stem}v{i}"),
                addr: Ipv4Addr::new(subnet[0], subnet[1], subnet[2], i as u8 + 2),
            })
            .collect();
        let net = Net {
            bridge: format!("{stem}b"),
            stem,
            subnet,
            hosts,
        };
        // On failure `net` is dropped here, removing whatever was made.
        if let Err(why) = net.build() {
            panic!("cannot make the hosts {names:?}: {why}");
        }
        net
    }

    fn build(&self) -> Result<(), String> {
        let bridge = self.bridge.as_str();
        ip(&["link", "add", bridge, "type", "bridge"])?;
        // No spanning tree and no forwarding delay: a port plugged back in forwards at once.
        ip(&[
            "link",
            "set",
            bridge,
            "type",
            "bridge",
            "stp_state",
            "0",
            "forward_delay",
            "0",
        ])?;
        ip(&["link", "set", bridge, "up"])?;
        for host in &self.hosts {
            let ns = host.ns.as_str();
            ip(&["netns", "add", ns])?;
            ip(&[
                "link", "add", &host.link, "type", "veth", "peer", "name", "eth0", "netns", ns,
            ])?;
            ip(&["link", "set", &host.link, "master", bridge, "up"])?;
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            let cidr = format!("{}/24", host.addr);
            ip(&["-n", ns, "addr", "add", &cidr, "dev", "eth0"])?;
            ip(&["-n", ns, "link", "set", "eth0", "up"])?;
        }
        Ok(())
    }

    /// The host called `name`; panics if there is none.
    pub fn host(&self, name: &str) -> &Host {
        self.hosts
            .iter()
            .find(|h| h.name == name)
            .unwrap_or_else(|| panic!("no host {name:?} in this net"))
    }

    /// Every host, in the order they were named.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// The bridge's name on the machine.
    pub fn bridge(&self) -> &str {
        &self.bridge
    }

    /// The hosts' /24, as `10.x.y.0/24`.
    pub fn subnet(&self) -> String {
        let [a, b, c] = self.subnet;
        format!("{a}.{b}.{c}.0/24")
    }

    /// The prefix every name of this net starts with (`tk<pid>-<n>`): what a test checks is
    /// gone from `ip netns list` and `ip link` after the drop.
    pub fn stem(&self) -> &str {
        &self.stem
    }
}

impl Drop for Net {
    /// Kills whatever still runs in the hosts, removes their namespaces (and with them the
    /// veths), then the bridge. Runs during a panic too; a test process killed outright
    /// leaves them to the next [`Net::new`].
    fn drop(&mut self) {
        let namespaces: Vec<String> = self.hosts.iter().map(|h| h.ns.clone()).collect();
        let links: Vec<String> = self
            .hosts
            .iter()
            .map(|h| h.link.clone())
            .chain([self.bridge.clone()])
            .collect();
        remove(&namespaces, &links);
    }
}

/// Why [`Host::netem`] could not shape a host's traffic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetemError {
    /// The kernel has no netem qdisc (`sch_netem` not built or not loadable): the fault
    /// cannot be injected on this machine, which a test reports and goes on without.
    Unavailable(String),
    /// `tc` is missing or failed for another reason.
    Failed(String),
}

impl fmt::Display for NetemError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NetemError::Unavailable(why) => write!(f, "netem is not available here: {why}"),
            NetemError::Failed(why) => write!(f, "tc netem failed: {why}"),
        }
    }
}

impl std::error::Error for NetemError {}

impl Host {
    /// The name it was given.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its address on the bridge.
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// Its namespace's name, for `ip netns exec` by hand.
    pub fn netns(&self) -> &str {
        &self.ns
    }

    /// A command that runs `program` in this host: `ip netns exec <ns> <program>`. `ip` execs
    /// the program in place, so the child's pid is the program's and signals reach it.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.ns]).arg(program);
        command
    }

    /// Runs `f` on a thread of its own that has joined this host's namespace, and returns
    /// what it returns: sockets it opens belong to the host (and keep belonging to it when
    /// handed back). Panics as `f` does.
    pub fn enter<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        std::thread::scope(|scope| {
            std::thread::Builder::new()
                .name(format!("netns-{}", self.name))
                .spawn_scoped(scope, || {
                    self.join();
                    f()
                })
                .expect("a thread starts")
                .join()
                .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    /// Moves the calling thread into this host's namespace for good: for the threads of a
    /// runtime that should live on the host (tokio's `on_thread_start`). Other threads of the
    /// process stay where they are.
    pub fn join(&self) {
        let path = format!("{NETNS_DIR}/{}", self.ns);
        let handle = File::open(&path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
        setns(&handle, CloneFlags::CLONE_NEWNET)
            .unwrap_or_else(|e| panic!("joining the namespace of host {}: {e}", self.name));
    }

    /// Unplugs the host: its port on the bridge goes down, so `eth0` loses its carrier and
    /// nothing passes either way until [`Host::restore`]. Connections are not told: as with a
    /// pulled cable, they find out by timing out. Loopback keeps working.
    pub fn cut(&self) {
        ip(&["link", "set", &self.link, "down"])
            .unwrap_or_else(|e| panic!("cutting host {}: {e}", self.name));
    }

    /// Plugs the host back in and returns once its `eth0` has its carrier again.
    pub fn restore(&self) {
        ip(&["link", "set", &self.link, "up"])
            .unwrap_or_else(|e| panic!("restoring host {}: {e}", self.name));
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.carrier() {
            assert!(
                Instant::now() < deadline,
                "host {}: eth0 has no carrier 5 s after its port came up",
                self.name
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Whether its `eth0` has a carrier (its port is up).
    pub fn carrier(&self) -> bool {
        stdout_of("ip", &["-n", &self.ns, "-o", "link", "show", "dev", "eth0"]).contains("LOWER_UP")
    }

    /// Delays every packet the host sends by `delay` and drops `loss_percent` of them (netem
    /// on `eth0`'s egress; replies to it pass unharmed, so a round trip gets `delay` once).
    /// Replaces any earlier netem. [`NetemError::Unavailable`] when the kernel has no netem.
    pub fn netem(&self, delay: Duration, loss_percent: f64) -> Result<(), NetemError> {
        let delay = format!("{}us", delay.as_micros());
        let loss = format!("{loss_percent}%");
        let args = [
            "-n", &self.ns, "qdisc", "replace", "dev", "eth0", "root", "netem", "delay", &delay,
            "loss", &loss,
        ];
        run("tc", &args).map(drop).map_err(|why| {
            // iproute2 says so when the qdisc module is missing.
            if why.contains("Specified qdisc kind is unknown")
                || why.contains("No such file or directory")
            {
                NetemError::Unavailable(why)
            } else {
                NetemError::Failed(why)
            }
        })
    }

    /// Removes the netem of [`Host::netem`]; nothing happens if there is none.
    pub fn clear_netem(&self) {
        let _ = run(
            "tc",
            &["-n", &self.ns, "qdisc", "del", "dev", "eth0", "root"],
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_their_owner() {
        assert_eq!(owner("tk123-0-app1"), Some(123));
        assert_eq!(owner("tk123-4b"), Some(123));
        assert_eq!(owner("tk-1"), None);
        assert_eq!(owner("tkx1-1"), None);
        assert_eq!(owner("eth0"), None);
        assert_eq!(owner("tk77"), None);
    }

    #[test]
    fn reads_ip_listings() {
        assert_eq!(
            netns_names("tk1-0-a (id: 3)\ntk1-0-b\n"),
            vec!["tk1-0-a", "tk1-0-b"]
        );
        let links = "1: lo: <LOOPBACK,UP> mtu 65536\n7: tk9-1v0@if2: <BROADCAST> mtu 1500\n\
                     8: tk9-1b: <BROADCAST> mtu 1500";
        assert_eq!(link_names(links), vec!["lo", "tk9-1v0", "tk9-1b"]);
    }

    #[test]
    fn a_subnet_avoids_the_machines_prefixes() {
        let net = |s: &str| u32::from(s.parse::<Ipv4Addr>().expect("an address"));
        assert!(overlaps(net("10.200.3.0"), (net("10.0.0.0"), 8)));
        assert!(overlaps(net("10.200.3.0"), (net("10.200.3.7"), 32)));
        assert!(!overlaps(net("10.200.3.0"), (net("10.200.4.0"), 24)));
        assert!(!overlaps(net("10.200.3.0"), (net("192.168.0.0"), 16)));
        let taken = [(net("10.200.0.0"), 16), (net("10.201.0.0"), 24)];
        for seed in 0..50 {
            let [a, b, c] = pick_subnet(seed, &taken).expect("a subnet");
            let picked = net(&format!("{a}.{b}.{c}.0"));
            assert!(taken.iter().all(|&t| !overlaps(picked, t)), "{a}.{b}.{c}");
            assert!((200..250).contains(&b));
        }
        assert_eq!(pick_subnet(1, &[(net("10.0.0.0"), 8)]), None);
    }

    #[test]
    fn a_missing_netns_skips_except_in_ci_on_a_capable_machine() {
        let gone = || Err("no".to_owned());
        assert_eq!(verdict(Ok(()), true, Some("true")), Ok(false));
        assert_eq!(verdict(gone(), true, None), Ok(true));
        assert_eq!(verdict(gone(), true, Some("false")), Ok(true));
        assert_eq!(verdict(gone(), false, Some("true")), Ok(true));
        assert!(verdict(gone(), true, Some("1")).is_err());
    }
}
