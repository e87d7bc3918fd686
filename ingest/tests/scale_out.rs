//! Scale-out: three ingest instances share one busd behind nginx on loopback. Needs nginx
//! (`.ci/run` installs it); without it the test says so and passes only outside CI.

mod support;

use std::collections::{HashMap, HashSet};
use std::process::Command;
use std::time::Duration;

use support::*;
use testkit::bus::Busd;
use testkit::{Proc, binary, free_port};

fn nginx() -> Option<String> {
    ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .iter()
        .find(|p| std::path::Path::new(p).exists())
        .map(|p| (*p).to_owned())
}

fn nginx_conf(dir: &std::path::Path, port: u16, upstreams: &[std::net::SocketAddr]) -> String {
    let servers: String = upstreams
        .iter()
        .map(|a| format!("server {a} max_fails=1 fail_timeout=5s;\n"))
        .collect();
    let d = dir.display();
    format!(
        "worker_processes 1; daemon off; pid {d}/nginx.pid; error_log {d}/error.log;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;
  upstream ingest {{ {servers} keepalive 16; }}
  server {{
    listen 127.0.0.1:{port};
    location / {{
      proxy_pass http://ingest;
      proxy_http_version 1.1;
      proxy_set_header Connection \"\";
      proxy_next_upstream error timeout http_503;
    }}
  }}
}}
"
    )
}

/// Reads `n` JSON event lines from a watcher: data -> origin.
fn events(watcher: &Proc, n: usize) -> HashMap<String, String> {
    let mut seen = HashMap::new();
    for line in watcher.stdout_lines(n, WAIT) {
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        let data = v["data"].as_str().unwrap().to_owned();
        assert!(
            seen.insert(data, v["origin"].as_str().unwrap().to_owned())
                .is_none(),
            "delivered twice: {line}"
        );
    }
    seen
}

#[tokio::test]
async fn three_ingests_behind_nginx_share_one_busd() {
    let Some(nginx) = nginx() else {
        assert!(
            std::env::var_os("CI").is_none(),
            "nginx is required in CI (apt-get install nginx-light)"
        );
        eprintln!("SKIPPED: nginx is not installed");
        return;
    };
    let busd = Busd::start(&[]);
    let bus = busd.addr.to_string();
    let shared = tempfile::tempdir().unwrap();
    let db = shared.path().join("accounts.db");
    let db = db.to_str().unwrap();
    let mut ingests: Vec<Ingest> = (1..=3)
        .map(|i| {
            Ingest::start(&[
                "--bus",
                &bus,
                "--db",
                db,
                "--origin",
                &format!("ingest-{i}"),
            ])
        })
        .collect();
    let port = free_port();
    let conf = shared.path().join("nginx.conf");
    let upstreams: Vec<_> = ingests.iter().map(|i| i.http).collect();
    std::fs::write(&conf, nginx_conf(shared.path(), port, &upstreams)).unwrap();
    let nginx = Proc::spawn(
        "nginx",
        Command::new(nginx)
            .arg("-c")
            .arg(&conf)
            .arg("-e")
            .arg(shared.path().join("error.log")),
    );
    let front: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = std::time::Instant::now() + WAIT;
    while tokio::net::TcpStream::connect(front).await.is_err() {
        assert!(std::time::Instant::now() < deadline, "nginx did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let first = 3000;
    let mut watcher = Proc::spawn(
        "busctl",
        Command::new(binary("client", "busctl")).args([
            "watch", "--bus", &bus, "--format", "json", "--count", "3300",
        ]),
    );
    watcher.wait_stderr("live (epoch", WAIT);
    let accepted = send(front, "a", first).await;
    assert_eq!(
        accepted.len(),
        first,
        "every request through nginx accepted"
    );
    let seen = events(&watcher, first);
    assert_eq!(
        seen.keys().collect::<HashSet<_>>(),
        accepted.iter().collect::<HashSet<_>>(),
        "each event exactly once"
    );
    let origins: HashSet<&str> = seen.values().map(String::as_str).collect();
    assert_eq!(origins, HashSet::from(["ingest-1", "ingest-2", "ingest-3"]));

    // One instance goes away; the others keep serving through nginx.
    let mut gone = ingests.remove(1);
    gone.proc.signal("TERM");
    assert!(gone.proc.wait_exit(WAIT).success());
    let accepted = send(front, "b", 300).await;
    assert_eq!(
        accepted.len(),
        300,
        "the remaining instances accept everything"
    );
    let seen = events(&watcher, 300);
    assert_eq!(
        seen.keys().collect::<HashSet<_>>(),
        accepted.iter().collect::<HashSet<_>>()
    );
    assert!(seen.values().all(|o| o != "ingest-2"));
    assert!(watcher.wait_exit(WAIT).success(), "--count 3300 reached");
    drop(nginx);
}
