//! HTTP load: concurrent keep-alive clients, each pipelining a few requests at a time, as
//! fast as the machine allows (or at `CHAOS_RATE`), recording every request's outcome.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::checker::{At, Outcome, Request};
use super::ident::{ID_LEN, Key, long_data, short_data};

/// A request unanswered this long counts as a stall: ingest must answer (202 or 503) even
/// while busd is away, so this is a failure, not an unknown outcome to shrug off.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);

/// Largest data ingest accepts (`--max-data`).
pub const MAX_DATA: usize = 4096;

/// What the load does.
#[derive(Clone)]
pub struct Plan {
    pub clients: usize,
    /// Each write carries 1..=this many requests.
    pub pipeline: usize,
    /// Requests per second over all clients; `None` for as fast as possible.
    pub rate: Option<f64>,
    /// Accounts drawn most of the time (the watched ones).
    pub hot: Vec<u32>,
    /// Every active account.
    pub active: Vec<u32>,
    pub seed: u64,
}

/// A connection that failed, or closed with requests unanswered.
#[derive(Debug, Clone)]
pub struct ConnError {
    /// When the connection was opened: a restart of ingest after this explains the error.
    pub opened: At,
    pub at: At,
    pub what: String,
}

/// Everything the load saw.
#[derive(Default)]
pub struct Outcomes {
    pub requests: Vec<Request>,
    /// Statuses other than 202 and 503, with their time and body.
    pub bad_statuses: Vec<(At, u16, String)>,
    pub conn_errors: Vec<ConnError>,
    /// Requests left unanswered for [`ANSWER_TIMEOUT`].
    pub stalls: usize,
    /// Data bytes of accepted requests.
    pub accepted_bytes: u64,
}

/// Runs `plan` against `http` until `stop`.
pub async fn run(http: SocketAddr, plan: Plan, start: Instant, stop: Arc<AtomicBool>) -> Outcomes {
    let ids = Arc::new(AtomicU64::new(1));
    let tasks: Vec<_> = (0..plan.clients)
        .map(|i| {
            let client = Client {
                http,
                plan: plan.clone(),
                rng: fastrand::Rng::with_seed(plan.seed ^ (0x9e37_79b9 * (i as u64 + 1))),
                ids: ids.clone(),
                start,
                out: Outcomes::default(),
            };
            tokio::spawn(client.run(stop.clone()))
        })
        .collect();
    let mut outs = Vec::with_capacity(tasks.len());
    for task in tasks {
        outs.push(task.await.expect("a load client does not panic"));
    }
    let mut all = Outcomes::default();
    all.requests
        .reserve_exact(outs.iter().map(|o| o.requests.len()).sum());
    for out in outs {
        all.requests.extend(out.requests);
        all.bad_statuses.extend(out.bad_statuses);
        all.conn_errors.extend(out.conn_errors);
        all.stalls += out.stalls;
        all.accepted_bytes += out.accepted_bytes;
    }
    all.requests.sort_by_key(|r| r.sent);
    all
}

struct Client {
    http: SocketAddr,
    plan: Plan,
    rng: fastrand::Rng,
    ids: Arc<AtomicU64>,
    start: Instant,
    out: Outcomes,
}

/// A request on its way: what the checker needs, and the bytes to send.
struct Pending {
    request: Request,
    wire: String,
}

impl Client {
    async fn run(mut self, stop: Arc<AtomicBool>) -> Outcomes {
        let pace = self
            .plan
            .rate
            .map(|rate| Duration::from_secs_f64(self.plan.clients as f64 / rate.max(0.001)));
        let mut next = tokio::time::Instant::now();
        while !stop.load(Ordering::Relaxed) {
            let Ok(stream) = TcpStream::connect(self.http).await else {
                // ingest is restarting: try again shortly.
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            };
            let _ = stream.set_nodelay(true);
            let mut conn = Conn {
                stream,
                buf: Vec::with_capacity(4096),
                opened: self.now(),
            };
            while !stop.load(Ordering::Relaxed) {
                let depth = self.rng.usize(1..=self.plan.pipeline.max(1));
                if let Some(pace) = pace {
                    next = next.max(tokio::time::Instant::now() - pace) + pace * depth as u32;
                    tokio::time::sleep_until(next).await;
                }
                if !self.exchange(&mut conn, depth).await {
                    break;
                }
            }
        }
        self.out
    }

    fn now(&self) -> At {
        At::from_duration(self.start.elapsed())
    }

    /// Sends a pipelined group and reads its answers; `false` when the connection is done.
    async fn exchange(&mut self, conn: &mut Conn, depth: usize) -> bool {
        let mut group: Vec<Pending> = (0..depth).map(|_| self.next_request()).collect();
        let wire: String = group.iter().map(|p| p.wire.as_str()).collect();
        let sent = self.now();
        for p in &mut group {
            p.request.sent = sent;
        }
        if let Err(err) = conn.stream.write_all(wire.as_bytes()).await {
            self.fail_rest(conn, group, format!("write: {err}"));
            return false;
        }
        let mut answers = group.into_iter();
        while let Some(mut p) = answers.next() {
            match tokio::time::timeout(ANSWER_TIMEOUT, conn.read_reply()).await {
                Ok(Ok(reply)) => {
                    p.request.answered = self.now();
                    self.record(p.request, reply.status, &reply.body);
                    if reply.close {
                        self.unanswered(conn, answers, "closed after a response".into(), false);
                        return false;
                    }
                }
                Ok(Err(err)) => {
                    self.fail_rest(conn, std::iter::once(p).chain(answers), err);
                    return false;
                }
                Err(_) => {
                    self.out.stalls += 1;
                    self.fail_rest(conn, std::iter::once(p).chain(answers), "stalled".into());
                    return false;
                }
            }
        }
        true
    }

    fn record(&mut self, mut request: Request, status: u16, body: &str) {
        request.outcome = match status {
            202 => {
                self.out.accepted_bytes += u64::from(request.len);
                Outcome::Accepted
            }
            // `--durable`'s answer when the bus did not acknowledge in time: the event is
            // still in ingest's outbox and may arrive, like a request with no answer.
            503 if body.contains("\"ack_timeout\"") => Outcome::Unknown,
            503 => Outcome::Refused,
            other => {
                self.out
                    .bad_statuses
                    .push((request.answered, other, body.to_owned()));
                Outcome::Refused
            }
        };
        self.out.requests.push(request);
    }

    /// The connection failed: every request without an answer has an unknown outcome.
    fn fail_rest(&mut self, conn: &Conn, rest: impl IntoIterator<Item = Pending>, what: String) {
        self.unanswered(conn, rest, what, true);
    }

    fn unanswered(
        &mut self,
        conn: &Conn,
        rest: impl IntoIterator<Item = Pending>,
        what: String,
        error: bool,
    ) {
        let at = self.now();
        let mut any = false;
        for mut p in rest {
            p.request.answered = at;
            p.request.outcome = Outcome::Unknown;
            self.out.requests.push(p.request);
            any = true;
        }
        if error || any {
            self.out.conn_errors.push(ConnError {
                opened: conn.opened,
                at,
                what,
            });
        }
    }

    fn next_request(&mut self) -> Pending {
        let account = self.account();
        let len = self.data_len();
        let (key, data) = if len >= ID_LEN {
            let id = self.ids.fetch_add(1, Ordering::Relaxed);
            (Key::id(id), long_data(id, len))
        } else {
            let data = short_data(len, |n| self.rng.usize(..n));
            (Key::short(&data).expect("short data of its alphabet"), data)
        };
        let wire = format!("GET /{account}?data={data} HTTP/1.1\r\nHost: chaos\r\n\r\n");
        Pending {
            request: Request {
                account,
                key,
                len: len as u16,
                sent: At::default(),
                answered: At::default(),
                outcome: Outcome::Unknown,
            },
            wire,
        }
    }

    /// Mostly watched accounts, so the watchers get lots; sometimes any active one.
    fn account(&mut self) -> u32 {
        let pool = if self.rng.u8(..10) < 8 {
            &self.plan.hot
        } else {
            &self.plan.active
        };
        pool[self.rng.usize(..pool.len())]
    }

    /// Log-uniform over 1..=MAX_DATA: every size occurs, small ones most (median ~64
    /// bytes), so the rate stays high and about a third of the data is short.
    fn data_len(&mut self) -> usize {
        let max = (MAX_DATA as f64 + 1.0).ln();
        ((self.rng.f64() * max).exp() as usize).clamp(1, MAX_DATA)
    }
}

/// One response as far as the load cares.
struct Reply {
    status: u16,
    body: String,
    close: bool,
}

struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
    opened: At,
}

impl Conn {
    async fn read_reply(&mut self) -> Result<Reply, String> {
        loop {
            if let Some((reply, used)) = parse(&self.buf)? {
                self.buf.drain(..used);
                return Ok(reply);
            }
            let mut chunk = [0u8; 16 * 1024];
            match self.stream.read(&mut chunk).await {
                Ok(0) => return Err("closed by ingest".into()),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(err) => return Err(format!("read: {err}")),
            }
        }
    }
}

/// One complete response at the front of `buf`, and its length.
fn parse(buf: &[u8]) -> Result<Option<(Reply, usize)>, String> {
    let mut headers = [httparse::EMPTY_HEADER; 16];
    let mut response = httparse::Response::new(&mut headers);
    let head = match response.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(err) => return Err(format!("unparseable response: {err}")),
    };
    let header = |name: &str| {
        response
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| String::from_utf8_lossy(h.value).into_owned())
    };
    let length: usize = header("content-length")
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    let close = header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"));
    if buf.len() < head + length {
        return Ok(None);
    }
    let reply = Reply {
        status: response.code.unwrap_or(0),
        body: String::from_utf8_lossy(&buf[head..head + length]).into_owned(),
        close,
    };
    Ok(Some((reply, head + length)))
}
