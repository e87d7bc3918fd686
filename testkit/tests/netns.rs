//! testkit::netns on the real kernel: hosts reach each other and nothing else, a cut link stops
//! traffic and restoring it brings it back, netem is applied or said to be missing, and
//! nothing is left behind: after a drop, after a panic, or by a test process that died.
//! Each test skips (saying why) where namespaces cannot be made; see `skip_without_netns`.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use testkit::netns::{Host, Net, NetemError, skip_without_netns};

/// Connects from `from` to `to`'s `port` within `within`.
fn connect(from: &Host, to: &Host, port: u16, within: Duration) -> std::io::Result<TcpStream> {
    let addr = SocketAddr::from((to.addr(), port));
    from.enter(|| TcpStream::connect_timeout(&addr, within))
}

/// A listener on `host`, on a port the kernel picks.
fn listen(host: &Host) -> (TcpListener, u16) {
    let addr = SocketAddr::from((host.addr(), 0));
    let listener = host
        .enter(|| TcpListener::bind(addr))
        .expect("bind on the host");
    let port = listener.local_addr().expect("its address").port();
    (listener, port)
}

/// One byte there and back over an accepted connection.
fn echo_once(listener: &TcpListener, client: &mut TcpStream) {
    let (mut server, _) = listener.accept().expect("accept");
    client.write_all(b"x").expect("write");
    let mut byte = [0u8];
    server.read_exact(&mut byte).expect("the server reads");
    server.write_all(b"y").expect("the server writes");
    client.read_exact(&mut byte).expect("the client reads");
    assert_eq!(&byte, b"y");
}

fn listing() -> String {
    let out = |args: &[&str]| {
        String::from_utf8_lossy(
            &Command::new("ip")
                .args(args)
                .output()
                .expect("ip runs")
                .stdout,
        )
        .into_owned()
    };
    out(&["netns", "list"]) + &out(&["-o", "link", "show"])
}

#[test]
fn hosts_reach_each_other_over_tcp_and_nothing_else() {
    if skip_without_netns() {
        return;
    }
    let net = Net::new(&["a", "b"]);
    let (a, b) = (net.host("a"), net.host("b"));
    assert_ne!(a.addr(), b.addr());
    eprintln!("hosts on {}: a {} b {}", net.subnet(), a.addr(), b.addr());

    let (listener, port) = listen(a);
    let mut client = connect(b, a, port, Duration::from_secs(2)).expect("b reaches a");
    echo_once(&listener, &mut client);
    let (listener, port) = listen(b);
    let mut client = connect(a, b, port, Duration::from_secs(2)).expect("a reaches b");
    echo_once(&listener, &mut client);

    // The machine itself has no route to the hosts, and a host none to the world.
    let addr = SocketAddr::from((b.addr(), port));
    assert!(TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_err());
    let outside = SocketAddr::from(([192, 0, 2, 1], 80));
    let err = a
        .enter(|| TcpStream::connect_timeout(&outside, Duration::from_millis(300)))
        .expect_err("a host has no route out");
    eprintln!("a host reaching out: {err}");

    // A program run on a host sees its own address and loopback only.
    let out = a
        .command("ip")
        .args(["-4", "-o", "addr", "show"])
        .output()
        .expect("ip runs in the host");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&format!("{}/24", a.addr())), "{text}");
    assert!(text.contains("127.0.0.1"), "{text}");
    assert!(!text.contains(&b.addr().to_string()), "{text}");
}

#[test]
fn a_cut_link_stops_traffic_and_restoring_it_brings_it_back() {
    if skip_without_netns() {
        return;
    }
    let net = Net::new(&["a", "b"]);
    let (a, b) = (net.host("a"), net.host("b"));
    let (listener, port) = listen(a);
    let mut kept = connect(b, a, port, Duration::from_secs(2)).expect("b reaches a");
    let (mut server, _) = listener.accept().expect("accept");

    a.cut();
    assert!(!a.carrier(), "a's eth0 lost its carrier");
    assert!(
        connect(b, a, port, Duration::from_millis(500)).is_err(),
        "no new connection reaches a cut host"
    );
    // A connection made before the cut is not told; what it sends waits for the link.
    kept.write_all(b"during the cut")
        .expect("the write is buffered");
    server
        .set_read_timeout(Some(Duration::from_millis(700)))
        .expect("a read timeout");
    let mut buf = [0u8; 64];
    assert!(server.read(&mut buf).is_err(), "nothing arrives while cut");

    a.restore();
    assert!(a.carrier());
    server
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("a read timeout");
    let began = Instant::now();
    let n = server
        .read(&mut buf)
        .expect("TCP delivers it after the restore");
    eprintln!("held data arrived {:?} after the restore", began.elapsed());
    assert_eq!(&buf[..n], b"during the cut");
    let mut fresh = connect(b, a, port, Duration::from_secs(2)).expect("new connections work");
    echo_once(&listener, &mut fresh);
}

#[test]
fn netem_delays_a_host_or_says_it_is_unavailable() {
    if skip_without_netns() {
        return;
    }
    let net = Net::new(&["a", "b"]);
    let (a, b) = (net.host("a"), net.host("b"));
    let (listener, port) = listen(b);
    let round_trip = |stream: &mut TcpStream, server: &mut TcpStream| {
        let began = Instant::now();
        stream.write_all(b"p").expect("write");
        let mut byte = [0u8];
        server.read_exact(&mut byte).expect("read");
        server.write_all(b"q").expect("write back");
        stream.read_exact(&mut byte).expect("read back");
        began.elapsed()
    };
    let mut client = connect(a, b, port, Duration::from_secs(2)).expect("a reaches b");
    client.set_nodelay(true).expect("nodelay");
    let (mut server, _) = listener.accept().expect("accept");
    server.set_nodelay(true).expect("nodelay");
    match a.netem(Duration::from_millis(50), 0.0) {
        Ok(()) => {
            let slow = round_trip(&mut client, &mut server);
            assert!(slow >= Duration::from_millis(45), "{slow:?}");
            a.clear_netem();
            let fast = round_trip(&mut client, &mut server);
            assert!(fast < Duration::from_millis(45), "{fast:?}");
            eprintln!("netem: {slow:?} with 50 ms delay, {fast:?} without");
        }
        Err(NetemError::Unavailable(why)) => {
            eprintln!("netem is not available on this machine, as reported: {why}");
            a.clear_netem();
            round_trip(&mut client, &mut server);
        }
        Err(other) => panic!("{other}"),
    }
}

#[test]
fn nothing_is_left_after_a_drop_or_a_panic() {
    if skip_without_netns() {
        return;
    }
    let net = Net::new(&["a", "b", "c"]);
    let stem = net.stem().to_owned();
    // A process still running in a host when the net goes is killed with it.
    let mut sleeper = net
        .host("c")
        .command("sleep")
        .arg("600")
        .stdout(Stdio::null())
        .spawn()
        .expect("sleep runs in c");
    assert!(listing().contains(&stem));
    drop(net);
    let status = sleeper.wait().expect("sleep is reaped");
    assert!(!status.success(), "sleep was killed: {status}");
    let left = listing();
    assert!(!left.contains(&stem), "left behind:\n{left}");

    let caught = std::panic::catch_unwind(|| {
        let net = Net::new(&["x"]);
        let stem = net.stem().to_owned();
        if !stem.is_empty() {
            panic!("{stem}");
        }
    });
    let stem = *caught
        .expect_err("the closure panicked")
        .downcast::<String>()
        .expect("the stem");
    let left = listing();
    assert!(!left.contains(&stem), "left behind after a panic:\n{left}");
}

#[test]
fn leftovers_of_a_dead_test_process_are_removed() {
    if skip_without_netns() {
        return;
    }
    // A pid above the kernel's maximum (4194304) belongs to no process.
    let dead = "tk4194999-7";
    let ns = format!("{dead}-app");
    let bridge = format!("{dead}b");
    let ip = |args: &[&str]| {
        let status = Command::new("ip").args(args).status().expect("ip runs");
        assert!(status.success(), "ip {args:?}");
    };
    ip(&["netns", "add", &ns]);
    ip(&["link", "add", &bridge, "type", "bridge"]);
    let mut orphan = Command::new("ip")
        .args(["netns", "exec", &ns, "sleep", "600"])
        .spawn()
        .expect("sleep runs in the stale namespace");
    let net = Net::new(&["a"]);
    let status = orphan.wait().expect("sleep is reaped");
    assert!(!status.success(), "the orphan was killed: {status}");
    let left = listing();
    assert!(!left.contains(dead), "stale names remain:\n{left}");
    assert!(left.contains(net.stem()), "the new net exists");
}
