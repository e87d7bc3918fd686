//! Headless Chromium for tests of web pages, driven over the DevTools protocol: open a page,
//! evaluate JavaScript in it, wait for a condition, take a screenshot.
//!
//! The protocol runs over `--remote-debugging-pipe`: Chromium reads commands on its file
//! descriptor 3 and answers on 4, each message JSON ending in a NUL byte. A `sh` wrapper
//! hands it our pipes as 3 and 4, so no WebSocket client is needed. Flags keep it off the
//! network (no background fetches, updates or sync) and out of the real profile.
//!
//! Tests call [`skip_without_chromium`] first: it skips them when Chromium is missing,
//! except in CI, where that fails them (`.ci/run` installs Debian's `chromium`).

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tempfile::TempDir;

use crate::process::{spawn_group, stop_group};

/// How long one protocol command may take.
const ANSWER_WITHIN: Duration = Duration::from_secs(30);

/// The browser: `TRACKER_CHROMIUM` when set, else `chromium` or `chromium-browser` on PATH.
pub fn binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("TRACKER_CHROMIUM").filter(|v| !v.is_empty()) {
        let path = PathBuf::from(path);
        return path.is_file().then_some(path);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .flat_map(|dir| ["chromium", "chromium-browser"].map(|name| dir.join(name)))
        .find(|candidate| candidate.is_file())
}

/// What every browser test calls first: `false` when Chromium is here (run the test);
/// `true`, after saying why on stderr, when it is not (return: skipped). In CI (`CI` set to
/// anything but empty, `false` or `0`) a missing Chromium fails the test instead.
pub fn skip_without_chromium() -> bool {
    if binary().is_some() {
        return false;
    }
    let missing = match std::env::var_os("TRACKER_CHROMIUM").filter(|v| !v.is_empty()) {
        Some(path) => format!(
            "Chromium is not where TRACKER_CHROMIUM says ({})",
            path.to_string_lossy()
        ),
        None => "Chromium is not installed (no chromium or chromium-browser on PATH)".to_owned(),
    };
    match std::env::var("CI") {
        Ok(value) if crate::postgres::in_ci(&value) => {
            panic!("{missing}, and this is CI (CI={value}): apt-get install chromium")
        }
        _ => {
            eprintln!("skipped: {missing}");
            true
        }
    }
}

/// A headless Chromium with a throwaway profile; closed (with everything it started) when
/// dropped.
pub struct Browser {
    child: Child,
    commands: ChildStdin,
    answers: Receiver<Value>,
    next_id: u64,
    _profile: TempDir,
}

/// One open page (a target with its attached session).
pub struct Tab {
    target: String,
    session: String,
}

impl Browser {
    /// Starts Chromium; panics when it cannot (call [`skip_without_chromium`] first).
    pub fn start() -> Browser {
        let chromium = binary().expect("Chromium (call skip_without_chromium() first)");
        let profile = tempfile::tempdir().expect("a profile directory");
        let mut command = Command::new("sh");
        command
            .args(["-c", r#"exec "$@" 3<&0 4>&1 0</dev/null 1>/dev/null"#, "sh"])
            .arg(chromium)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--remote-debugging-pipe",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut child = spawn_group(&mut command).expect("chromium starts");
        let commands = child.stdin.take().expect("chromium's command pipe");
        let answers = messages(child.stdout.take().expect("chromium's answer pipe"));
        Browser {
            child,
            commands,
            answers,
            next_id: 0,
            _profile: profile,
        }
    }

    /// Opens `url` in a new page of `width` x `height` CSS pixels, once it has loaded.
    pub fn open(&mut self, url: &str, width: u32, height: u32) -> Tab {
        let created = self.call("Target.createTarget", json!({ "url": "about:blank" }), None);
        let target = created["targetId"]
            .as_str()
            .expect("a target id")
            .to_owned();
        let attached = self.call(
            "Target.attachToTarget",
            json!({ "targetId": target, "flatten": true }),
            None,
        );
        let session = attached["sessionId"]
            .as_str()
            .expect("a session")
            .to_owned();
        let tab = Tab { target, session };
        let metrics =
            json!({ "width": width, "height": height, "deviceScaleFactor": 1, "mobile": false });
        self.call(
            "Emulation.setDeviceMetricsOverride",
            metrics,
            Some(&tab.session),
        );
        self.call("Page.navigate", json!({ "url": url }), Some(&tab.session));
        let loaded = "location.href !== 'about:blank' && document.readyState === 'complete'";
        self.wait_for(&tab, loaded, ANSWER_WITHIN, |v| v == true);
        tab
    }

    /// Closes `tab`: its page and connections go away as when a person closes it.
    pub fn close(&mut self, tab: Tab) {
        self.call(
            "Target.closeTarget",
            json!({ "targetId": tab.target }),
            None,
        );
    }

    /// The value of the JavaScript `expression` in `tab` (awaited if it is a promise).
    pub fn eval(&mut self, tab: &Tab, expression: &str) -> Value {
        let params =
            json!({ "expression": expression, "returnByValue": true, "awaitPromise": true });
        let result = self.call("Runtime.evaluate", params, Some(&tab.session));
        if let Some(exception) = result.get("exceptionDetails") {
            panic!("{expression} threw: {exception}");
        }
        result["result"]["value"].clone()
    }

    /// Evaluates `expression` until `done` accepts its value, and returns that value; panics
    /// with the last value after `within`.
    pub fn wait_for(
        &mut self,
        tab: &Tab,
        expression: &str,
        within: Duration,
        done: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + within;
        loop {
            let value = self.eval(tab, expression);
            if done(&value) {
                return value;
            }
            assert!(
                Instant::now() < deadline,
                "after {within:?}, {expression} is still {value}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Saves what `tab` shows as a PNG at `path`.
    pub fn screenshot(&mut self, tab: &Tab, path: &Path) {
        let shot = self.call(
            "Page.captureScreenshot",
            json!({ "format": "png" }),
            Some(&tab.session),
        );
        let data = shot["data"].as_str().expect("screenshot data");
        let png = base64_decode(data).expect("base64 from chromium");
        std::fs::write(path, png).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    }

    /// Sends one command and waits for its answer's `result`; panics on an error answer.
    fn call(&mut self, method: &str, params: Value, session: Option<&str>) -> Value {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({ "id": id, "method": method, "params": params });
        if let Some(session) = session {
            message["sessionId"] = json!(session);
        }
        let mut bytes = message.to_string().into_bytes();
        bytes.push(0);
        self.commands
            .write_all(&bytes)
            .and_then(|()| self.commands.flush())
            .unwrap_or_else(|e| panic!("chromium took no {method}: {e}"));
        let deadline = Instant::now() + ANSWER_WITHIN;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let answer = self
                .answers
                .recv_timeout(left)
                .unwrap_or_else(|e| panic!("no answer from chromium to {method}: {e}"));
            if answer["id"] != id {
                continue;
            }
            if let Some(error) = answer.get("error") {
                panic!("chromium refused {method}: {error}");
            }
            return answer["result"].clone();
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        // Ask first, so the browser closes its pages' connections itself; then make sure.
        let _ = self
            .commands
            .write_all(b"{\"id\":0,\"method\":\"Browser.close\",\"params\":{}}\0");
        let deadline = Instant::now() + Duration::from_secs(3);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        stop_group(&mut self.child);
    }
}

/// The NUL-separated JSON messages read from `pipe`, on a channel.
fn messages(mut pipe: impl Read + Send + 'static) -> Receiver<Value> {
    let (tx, rx) = channel();
    std::thread::spawn(move || {
        let mut pending = Vec::new();
        let mut chunk = [0u8; 64 * 1024];
        loop {
            let n = match pipe.read(&mut chunk) {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            pending.extend_from_slice(&chunk[..n]);
            while let Some(end) = pending.iter().position(|&b| b == 0) {
                let message: Vec<u8> = pending.drain(..=end).collect();
                if let Ok(value) = serde_json::from_slice(&message[..end]) {
                    if tx.send(value).is_err() {
                        return;
                    }
                }
            }
        }
    });
    rx
}

/// Standard base64 (with padding) to bytes; `None` on a character outside the alphabet.
fn base64_decode(text: &str) -> Option<Vec<u8>> {
    let value = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let mut out = Vec::with_capacity(text.len() / 4 * 3);
    let (mut bits, mut held) = (0u32, 0u32);
    for c in text.bytes().filter(|&c| c != b'=') {
        bits = (bits << 6) | u32::from(value(c)?);
        held += 6;
        if held >= 8 {
            held -= 8;
            out.push((bits >> held) as u8);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::base64_decode;

    #[test]
    fn base64_decodes_every_padding() {
        assert_eq!(base64_decode("TWFu").unwrap(), b"Man");
        assert_eq!(base64_decode("TWE=").unwrap(), b"Ma");
        assert_eq!(base64_decode("TQ==").unwrap(), b"M");
        assert_eq!(base64_decode("iVBORw0KGgo=").unwrap(), b"\x89PNG\r\n\x1a\n");
        assert!(base64_decode("T!==").is_none());
    }
}
