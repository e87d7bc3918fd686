//! The subscriber: a filter's events from the bus, across any number of disconnects, each
//! event once, and every loss said out loud.
//!
//! It remembers the last position it handed out and, after any disconnect, reconnects with
//! backoff, subscribes again to resume after that position, and hands out only what is new.
//! A busd restart shows up as a new epoch. Nothing was missed only when the new busd's
//! `Welcome` says it directly follows the run we were reading and we had everything up to
//! that run's last seq (its `Goodbye`); a chain that does not reach back to our epoch (a
//! crash, or a restart slept through) is a gap of unknown size.
//!
//! Events also carry `(origin, id)`, with ids growing per origin. After a busd crash a
//! publisher resends the batches the dead busd had not acknowledged, and the new busd
//! numbers them afresh; the subscriber drops any event whose id is not above the last it
//! handed out from that origin, so such a copy is never seen twice.
//!
//! On a `nats://` bus the same subscriber reads a JetStream consumer instead
//! ([`crate::jetstream`]): the position is the stream's creation time (its "epoch") and
//! stream sequence, a sequence the stream no longer holds is a gap, and a stream deleted and
//! created again is a gap of unknown size.
//!
//! busd heartbeats an idle subscriber every second. Silence for [`QUIET_AFTER`] is "quiet":
//! the subscriber pings; silence for [`DEAD_AFTER`] more and the connection is taken for
//! dead, which a half-open TCP connection would otherwise hide forever.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use plumbing::backoff::Backoff;
use protocol::{
    ClientFrame, Event, Filter, OLDEST_VERSION, PROTOCOL_VERSION, Position, Role, ServerFrame,
    Start,
};
use serde::Serialize;
use tokio::time::Instant;

use crate::bus::Address;
use crate::jetstream::group::GroupPull;
use crate::jetstream::subscriber::{From, Item, Pull};
use crate::jetstream::{self, JetstreamError, Layout};
use crate::position::Resume;
use crate::reconnect::{Outage, Reconnect, Retry};
use crate::session::{self, Conn, SessionError, Welcome};

/// Silence after which the subscriber pings busd to find out whether it is still there.
pub const QUIET_AFTER: Duration = Duration::from_millis(2500);
/// Silence after the ping after which the connection is taken for dead.
pub const DEAD_AFTER: Duration = Duration::from_secs(5);

/// What to subscribe to, and where.
#[derive(Debug, Clone)]
pub struct Options {
    /// The bus's address: busd's `host:port`, or `nats://` URLs for JetStream.
    pub bus: String,
    /// The JetStream stream and subjects, when `bus` is JetStream.
    pub layout: Layout,
    /// The token busd asks for, if it asks.
    pub token: Option<String>,
    /// The name busd shows in its stats.
    pub name: String,
    /// The events wanted: busd filters them, so the others never cross the network.
    pub filter: Filter,
    /// How long the bus may stay unreachable before [`Subscriber::next`] gives up; `None`
    /// waits for ever.
    pub max_outage: Option<Duration>,
    /// Resume after this position (kept from an earlier subscriber) instead of starting live.
    pub resume: Option<Resume>,
    /// Join this consumer group instead of taking every matching event: each event goes to
    /// one member (see `busd`'s `group` module). A member does not resume; the group keeps
    /// the position, and losses are reported as gaps.
    pub group: Option<String>,
    /// Where the first subscription starts when there is no `resume`: `Start::Head` for
    /// new events only, or history (the last N, since a time, all the bus holds) first.
    /// busd serves it from its replay ring, JetStream from the stream; a start older than
    /// what the bus holds is a gap first.
    pub start: Start,
    /// Only events from these origins; empty means every origin. busd filters them; on
    /// JetStream the subscriber does.
    pub origins: BTreeSet<String>,
}

/// Events lost between two points, as the subscriber reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct GapReport {
    /// The first seq that may be missing.
    pub from_seq: u64,
    /// `None` when busd crashed and the end of the loss is unknown.
    pub to_seq: Option<u64>,
    /// `None` when unknown (after a crash).
    pub missed: Option<u64>,
    /// The epoch the sequence numbers belong to.
    pub epoch: u64,
}

/// What the subscriber hands out, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Delivery {
    /// Events of one busd epoch, in seq order, none seen before.
    Events {
        /// The busd run their seqs belong to.
        epoch: u64,
        /// `(seq, event)` pairs.
        events: Vec<(u64, Event)>,
    },
    /// Events were lost here.
    Gap(GapReport),
    /// A change in the connection worth telling a person about.
    Notice(Notice),
}

/// The connection's story, for a status line.
#[derive(Debug, Clone, PartialEq)]
pub enum Notice {
    /// The first attempt to reach the bus.
    Connecting(String),
    /// Subscribed for the first time; events after `head_seq` follow.
    Live {
        /// The busd run.
        epoch: u64,
        /// The last seq busd had given out.
        head_seq: u64,
    },
    /// Subscribed again after a disconnect, resuming after this position.
    Resumed(Resume),
    /// The JetStream stream was deleted and created again: what the old one held after
    /// our position is a gap of unknown size, and reading starts at the new one's start.
    StreamRecreated {
        /// The old stream's creation time (its epoch).
        old: u64,
        /// The new one's.
        new: u64,
    },
    /// busd was restarted while we were away; the gap, if any, follows.
    Restarted {
        /// The run we were reading.
        old: u64,
        /// The run now serving.
        new: u64,
        /// The run `new` directly follows and that run's last seq, if it ended cleanly.
        follows: Option<Position>,
        /// Whether we had every event of `old`: nothing was missed.
        complete: bool,
    },
    /// busd said nothing for a while; a ping is on its way.
    Quiet {
        /// Time since the last frame.
        since: Duration,
    },
    /// busd spoke again after being quiet.
    Alive,
    /// busd is shutting down cleanly; the subscriber will resume on the next one.
    ShuttingDown {
        /// The run ending.
        epoch: u64,
        /// Its last seq.
        last_seq: u64,
    },
    /// The connection failed or was lost; the next attempt is coming.
    Reconnecting(Retry),
    /// JetStream sent events again that it had sent to a group member that did not
    /// acknowledge them in time: they may have been handled already.
    Redelivered(u64),
}

impl std::fmt::Display for Notice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Notice::Connecting(bus) => write!(f, "connecting to {bus}"),
            Notice::Live { epoch, head_seq } => {
                write!(f, "live (epoch {epoch}, head seq {head_seq})")
            }
            Notice::Resumed(at) => write!(f, "resumed after {at}"),
            Notice::Restarted {
                old,
                new,
                follows,
                complete,
            } => {
                write!(f, "busd restarted (epoch {old} -> {new})")?;
                match follows {
                    Some(_) if *complete => {
                        write!(
                            f,
                            " right after the run whose end we saw: nothing was missed"
                        )
                    }
                    Some(prev) if prev.epoch == *old => write!(
                        f,
                        "; epoch {old} ended at seq {} before we had it all",
                        prev.seq
                    ),
                    Some(prev) => {
                        write!(
                            f,
                            " after epoch {}, a run this watcher never saw",
                            prev.epoch
                        )
                    }
                    None => write!(f, " without a Goodbye"),
                }
            }
            Notice::StreamRecreated { old, new } => {
                write!(f, "the stream was created again (epoch {old} -> {new})")
            }
            Notice::Quiet { since } => {
                write!(f, "quiet (last heartbeat {}s ago)", since.as_secs())
            }
            Notice::Alive => write!(f, "live"),
            Notice::ShuttingDown { epoch, last_seq } => write!(
                f,
                "busd is shutting down (epoch {epoch}, last seq {last_seq}); will resume"
            ),
            Notice::Reconnecting(retry) => write!(f, "{retry}"),
            Notice::Redelivered(n) => write!(
                f,
                "{n} events sent again: a group member did not acknowledge them in time"
            ),
        }
    }
}

/// Why a subscriber stopped for good.
#[derive(Debug, thiserror::Error)]
pub enum SubscribeError {
    /// busd refused in a way retrying cannot fix (a wrong token or version, say).
    #[error(transparent)]
    Refused(SessionError),
    /// JetStream refused in a way retrying cannot fix (a server too old to filter, or
    /// without JetStream).
    #[error(transparent)]
    Jetstream(JetstreamError),
    /// The bus stayed unreachable past [`Options::max_outage`].
    #[error(transparent)]
    Outage(#[from] Outage),
}

/// A subscription that outlives connections: call [`Subscriber::next`] for ever.
pub struct Subscriber {
    options: Options,
    cursor: Cursor,
    reconnect: Reconnect,
    state: State,
    pending: VecDeque<Delivery>,
}

enum State {
    Connect,
    Sleep(Instant),
    Lost(String),
    Reading {
        conn: Box<Conn>,
        liveness: Liveness,
    },
    Pulling(Box<Pull>),
    /// A JetStream consumer group member's pull.
    Grouped(Box<GroupPull>),
}

/// When busd last spoke, and whether we have pinged it since.
struct Liveness {
    last_frame: Instant,
    quiet: bool,
}

/// How a connection ended.
enum End {
    Lost(String),
    Refused(SessionError),
}

impl Subscriber {
    /// A subscriber that connects on the first [`Subscriber::next`].
    pub fn new(options: Options) -> Self {
        let cursor = Cursor {
            position: options.resume.map(|r| r.0),
            member: options.group.is_some(),
            ..Cursor::default()
        };
        let reconnect = Reconnect::new(Backoff::default(), options.max_outage);
        let pending = VecDeque::from([Delivery::Notice(Notice::Connecting(options.bus.clone()))]);
        Subscriber {
            options,
            cursor,
            reconnect,
            state: State::Connect,
            pending,
        }
    }

    /// The next thing to hand out: events, a gap, or a notice. Reconnects as often as it
    /// takes; an error means the subscription is over.
    pub async fn next(&mut self) -> Result<Delivery, SubscribeError> {
        loop {
            if let Some(delivery) = self.pending.pop_front() {
                return Ok(delivery);
            }
            self.step().await?;
        }
    }

    /// Where to resume after what has been handed out, to give a later subscriber.
    pub fn position(&self) -> Option<Resume> {
        self.cursor.position.map(Resume)
    }

    /// Times the bus came back after being lost.
    pub fn reconnects(&self) -> u64 {
        self.reconnect.reconnects()
    }

    /// One step of the connection's life. Cancel-safe: dropped at any await, the state
    /// left behind is one the next call carries on from.
    async fn step(&mut self) -> Result<(), SubscribeError> {
        let end = match &mut self.state {
            State::Connect => return self.connect().await,
            State::Sleep(until) => {
                tokio::time::sleep_until(*until).await;
                self.state = State::Connect;
                return Ok(());
            }
            State::Lost(reason) => {
                let (retry, delay) = self.reconnect.retry(std::mem::take(reason))?;
                self.pending
                    .push_back(Delivery::Notice(Notice::Reconnecting(retry)));
                self.state = State::Sleep(Instant::now() + delay);
                return Ok(());
            }
            State::Reading { conn, liveness } => {
                match read(conn, liveness, &mut self.cursor, &mut self.pending).await {
                    None => return Ok(()),
                    Some(end) => end,
                }
            }
            State::Grouped(pull) => match pull.next().await {
                Ok(read) => {
                    if read.redelivered > 0 {
                        let notice = Notice::Redelivered(read.redelivered);
                        self.pending.push_back(Delivery::Notice(notice));
                    }
                    self.cursor.on_events(read.events, &mut self.pending);
                    return Ok(());
                }
                Err(reason) => End::Lost(reason),
            },
            State::Pulling(pull) => {
                let after = self.cursor.position.map_or(0, |p| p.seq);
                match pull.next(after).await {
                    Ok(items) => {
                        let origins = &self.options.origins;
                        self.cursor.on_items(items, origins, &mut self.pending);
                        return Ok(());
                    }
                    Err(reason) => End::Lost(reason),
                }
            }
        };
        match end {
            End::Lost(reason) => self.state = State::Lost(reason),
            End::Refused(err) => {
                self.state = State::Lost(err.to_string());
                return Err(SubscribeError::Refused(err));
            }
        }
        Ok(())
    }

    async fn connect(&mut self) -> Result<(), SubscribeError> {
        if let Ok(Address::Jetstream(servers)) = Address::parse(&self.options.bus) {
            return self.connect_jetstream(&servers).await;
        }
        // `SubscribeWith`, `Join` and `Ack` are protocol 3; a plain watch says 2, so an
        // older busd still serves it.
        let version = if self.needs_subscribe_with() || self.options.group.is_some() {
            PROTOCOL_VERSION
        } else {
            OLDEST_VERSION
        };
        let opened = session::open_speaking(
            &self.options.bus,
            Role::Subscriber,
            &self.options.name,
            self.options.token.as_deref(),
            session::HANDSHAKE_TIMEOUT,
            version,
        )
        .await;
        match opened {
            Ok((conn, welcome)) => self.subscribe(conn, welcome).await,
            Err(err) if err.is_fatal() => {
                self.state = State::Lost(err.to_string());
                return Err(SubscribeError::Refused(err));
            }
            Err(err) => self.state = State::Lost(err.to_string()),
        }
        Ok(())
    }

    /// Opens a consumer that resumes where the cursor stands.
    async fn connect_jetstream(&mut self, servers: &[String]) -> Result<(), SubscribeError> {
        let options = &self.options;
        let opened = jetstream::subscriber::open(
            servers,
            &options.name,
            options.token.as_deref(),
            &options.layout,
            &options.filter,
        )
        .await;
        let Some((_conn, stream, info)) = self.or_lost(opened)? else {
            return Ok(());
        };
        let first = self.cursor.position.is_none();
        let epoch = jetstream::stream::epoch(&info);
        if let Some(group) = &self.options.group {
            let (layout, filter) = (&self.options.layout, &self.options.filter);
            let joined = jetstream::group::join(stream, layout, filter, group).await;
            return self.joined(joined, epoch, info.state.last_sequence);
        }
        let held = (info.state.first_sequence, info.state.last_sequence);
        let from = if first && self.options.start != Start::Head {
            match self.history_start(&stream, &info).await {
                Ok(from) => from,
                Err(err) => {
                    self.state = State::Lost(err.to_string());
                    return Ok(());
                }
            }
        } else {
            From::Seq(self.cursor.resume_stream(epoch, held, &mut self.pending))
        };
        let (layout, filter) = (&self.options.layout, &self.options.filter);
        let pull = jetstream::subscriber::consume(stream, layout, filter, from).await;
        let pull = match pull {
            Ok(pull) => pull,
            Err(err) => {
                self.state = State::Lost(err.to_string());
                return Ok(());
            }
        };
        self.reconnect.connected();
        self.reconnect.progressed();
        let notice = match self.cursor.position {
            Some(at) if !first => Notice::Resumed(Resume(at)),
            _ => Notice::Live {
                epoch,
                head_seq: info.state.last_sequence,
            },
        };
        self.pending.push_back(Delivery::Notice(notice));
        self.state = State::Pulling(Box::new(pull));
        Ok(())
    }

    /// What JetStream gave, or the connection lost: `Err` for a refusal retrying cannot
    /// fix, `Ok(None)` for a failure the next attempt may not meet.
    fn or_lost<T>(
        &mut self,
        result: Result<T, JetstreamError>,
    ) -> Result<Option<T>, SubscribeError> {
        match result {
            Ok(value) => Ok(Some(value)),
            Err(err) => {
                self.state = State::Lost(err.to_string());
                if err.is_refusal() {
                    return Err(SubscribeError::Jetstream(err));
                }
                Ok(None)
            }
        }
    }

    /// Goes on from a JetStream group join: the group's consumer keeps the position, so a
    /// member only tells the stream apart from its earlier ones by the cursor's epoch.
    fn joined(
        &mut self,
        joined: Result<GroupPull, JetstreamError>,
        epoch: u64,
        head_seq: u64,
    ) -> Result<(), SubscribeError> {
        let Some(pull) = self.or_lost(joined)? else {
            return Ok(());
        };
        self.reconnect.connected();
        self.reconnect.progressed();
        let at = self
            .cursor
            .position
            .get_or_insert(Position { epoch, seq: 0 });
        at.epoch = epoch;
        self.pending
            .push_back(Delivery::Notice(Notice::Live { epoch, head_seq }));
        self.state = State::Grouped(Box::new(pull));
        Ok(())
    }

    /// Whether busd must be asked with `SubscribeWith` (protocol 3): for history or
    /// origins. Anything else is a plain `Subscribe`, which every busd serves.
    fn needs_subscribe_with(&self) -> bool {
        self.options.start != Start::Head || !self.options.origins.is_empty()
    }

    /// Where a JetStream watch with history starts, the cursor placed just before it and
    /// any part of the history the stream no longer holds reported as a gap.
    async fn history_start(
        &mut self,
        stream: &async_nats::jetstream::stream::Stream,
        info: &async_nats::jetstream::stream::Info,
    ) -> Result<From, JetstreamError> {
        let epoch = jetstream::stream::epoch(info);
        let (first, last) = (info.state.first_sequence, info.state.last_sequence);
        let evicted = first > 1;
        let (before, from, short) = match self.options.start {
            Start::Last(n) => {
                let layout = &self.options.layout;
                let filter = &self.options.filter;
                let (start, short) =
                    jetstream::subscriber::last_start(stream, layout, filter, n, (first, last))
                        .await?;
                (start.saturating_sub(1), From::Seq(start), short)
            }
            Start::Since(us) => {
                let oldest =
                    u64::try_from(info.state.first_timestamp.unix_timestamp_nanos() / 1000)
                        .unwrap_or(0);
                (first.saturating_sub(1), From::Time(us), us < oldest)
            }
            Start::Beginning => (first.saturating_sub(1), From::Seq(first), true),
            Start::After(at) => (at.seq, From::Seq(at.seq + 1), false),
            Start::Head => (last, From::Seq(last + 1), false),
        };
        if short && evicted {
            self.pending.push_back(Delivery::Gap(GapReport {
                from_seq: 1,
                to_seq: Some(first - 1),
                missed: Some(first - 1),
                epoch,
            }));
        }
        self.cursor.position = Some(Position { epoch, seq: before });
        Ok(from)
    }

    /// Subscribes on a fresh connection, resuming where the cursor stands (or, the first
    /// time, starting where the options say).
    async fn subscribe(&mut self, mut conn: Conn, welcome: Welcome) {
        let first = self.cursor.position.is_none();
        // A group member starts live: the group holds the position, not the member.
        let history = first && self.options.start != Start::Head && self.options.group.is_none();
        let (resume, start) = if history {
            let resume = Position {
                epoch: welcome.epoch,
                seq: 0,
            };
            self.cursor.position = Some(resume);
            (resume, self.options.start)
        } else {
            let resume = self.cursor.resume_point(welcome, &mut self.pending);
            (resume, Start::After(resume))
        };
        let filter = self.options.filter.clone();
        let subscribe = if let Some(group) = &self.options.group {
            ClientFrame::Join {
                group: group.clone(),
                filter,
            }
        } else if self.needs_subscribe_with() {
            ClientFrame::SubscribeWith {
                filter,
                origins: self.options.origins.clone(),
                start,
            }
        } else {
            ClientFrame::Subscribe {
                filter,
                resume_after: Some(resume),
            }
        };
        if let Err(err) = conn.send(subscribe).await {
            self.state = State::Lost(err.to_string());
            return;
        }
        self.reconnect.connected();
        self.reconnect.progressed();
        let notice = if first {
            Notice::Live {
                epoch: welcome.epoch,
                head_seq: welcome.head_seq,
            }
        } else {
            Notice::Resumed(Resume(resume))
        };
        self.pending.push_back(Delivery::Notice(notice));
        self.state = State::Reading {
            conn: Box::new(conn),
            liveness: Liveness {
                last_frame: Instant::now(),
                quiet: false,
            },
        };
    }
}

/// Reads one frame (or notices the silence) and acts on it.
async fn read(
    conn: &mut Conn,
    liveness: &mut Liveness,
    cursor: &mut Cursor,
    pending: &mut VecDeque<Delivery>,
) -> Option<End> {
    // Everything handed out so far has been taken by the application: a group member
    // acknowledges it before waiting for more.
    if let Some(seq) = cursor.to_ack.take() {
        if let Err(err) = conn.send(ClientFrame::Ack { seq }).await {
            return Some(End::Lost(err.to_string()));
        }
    }
    let wait = if liveness.quiet {
        DEAD_AFTER
    } else {
        QUIET_AFTER
    };
    let frame = match tokio::time::timeout_at(liveness.last_frame + wait, conn.next()).await {
        Err(_) if !liveness.quiet => {
            liveness.quiet = true;
            let since = liveness.last_frame.elapsed();
            pending.push_back(Delivery::Notice(Notice::Quiet { since }));
            let _ = conn.send(ClientFrame::Ping).await;
            return None;
        }
        Err(_) => {
            let secs = liveness.last_frame.elapsed().as_secs();
            return Some(End::Lost(format!("no heartbeat for {secs}s")));
        }
        Ok(None) => return Some(End::Lost("busd closed the connection".into())),
        Ok(Some(Err(err))) => return Some(End::Lost(err.to_string())),
        Ok(Some(Ok(frame))) => frame,
    };
    liveness.last_frame = Instant::now();
    if liveness.quiet {
        liveness.quiet = false;
        pending.push_back(Delivery::Notice(Notice::Alive));
    }
    cursor.on_frame(frame, pending)
}

/// Runs a subscriber's decisions over `sessions`, each a connection's `Welcome` and the
/// frames read on it, without sockets: resume points, restart gaps, copies dropped by
/// `(origin, id)`, seqs that go backwards. What tests and fuzz targets run in place of a busd.
pub fn replay(sessions: Vec<(Welcome, Vec<ServerFrame>)>) -> Vec<Delivery> {
    let mut cursor = Cursor::default();
    let mut out = VecDeque::new();
    'sessions: for (welcome, frames) in sessions {
        cursor.resume_point(welcome, &mut out);
        for frame in frames {
            match cursor.on_frame(frame, &mut out) {
                Some(End::Refused(_)) => break 'sessions,
                Some(End::Lost(_)) => continue 'sessions,
                None => {}
            }
        }
    }
    out.into()
}

/// The subscriber's memory, apart from any socket: the last position handed out, and per
/// origin the highest event id handed out.
#[derive(Debug, Default)]
struct Cursor {
    /// The last seq handed out (or, before any, where reading started), in busd's epoch.
    position: Option<Position>,
    /// Per origin, the highest event id handed out: anything at or below it is a copy.
    seen: HashMap<String, u64>,
    /// Per epoch left behind, the last seq handed out in it: a busd whose epoch comes back
    /// (two of them answering at one address, one after the other) is resumed where we
    /// were in it, so nothing of it is handed out twice or out of order.
    left: HashMap<u64, u64>,
    /// A consumer group member: busd hands over events of other members' accounts, whose
    /// seqs and ids may be below what this member has seen, so neither is compared.
    member: bool,
    /// A member's last event handed out and not yet acknowledged.
    to_ack: Option<u64>,
}

/// How many epochs left behind [`Cursor::left`] remembers: epochs change at busd restarts,
/// and only the last few can come back.
const EPOCHS_REMEMBERED: usize = 16;

impl Cursor {
    /// Where to resume on a connection to a busd with `welcome`, reporting any loss to `out`;
    /// the cursor stands there from now on.
    fn resume_point(&mut self, welcome: Welcome, out: &mut VecDeque<Delivery>) -> Position {
        let resume = self.resume_from(welcome, out);
        self.position = Some(resume);
        resume
    }

    fn resume_from(&mut self, welcome: Welcome, out: &mut VecDeque<Delivery>) -> Position {
        if self.member {
            return self.rejoin(welcome, out);
        }
        let Some(position) = self.position else {
            return Position {
                epoch: welcome.epoch,
                seq: welcome.head_seq,
            };
        };
        if position.epoch == welcome.epoch {
            return position;
        }
        let (notice, gap) = restart(position, welcome);
        out.push_back(Delivery::Notice(notice));
        out.extend(gap.map(Delivery::Gap));
        self.leave(position);
        Position {
            epoch: welcome.epoch,
            seq: self.left.get(&welcome.epoch).copied().unwrap_or(0),
        }
    }

    /// A member (re)joins at busd's head: after a busd restart, the group starts afresh in
    /// the new run, so besides the restart's own gap, what the new run published before
    /// this join may have reached no member, and is reported as a gap too.
    fn rejoin(&mut self, welcome: Welcome, out: &mut VecDeque<Delivery>) -> Position {
        let head = Position {
            epoch: welcome.epoch,
            seq: welcome.head_seq,
        };
        self.to_ack = None;
        let Some(position) = self.position.filter(|p| p.epoch != welcome.epoch) else {
            return head;
        };
        let (notice, gap) = restart(position, welcome);
        out.push_back(Delivery::Notice(notice));
        out.extend(gap.map(Delivery::Gap));
        if welcome.head_seq > 0 {
            out.push_back(Delivery::Gap(GapReport {
                from_seq: 1,
                to_seq: Some(welcome.head_seq),
                missed: Some(welcome.head_seq),
                epoch: welcome.epoch,
            }));
        }
        head
    }

    /// Remembers where we were in an epoch we are leaving, forgetting the oldest epoch
    /// (the lowest: an epoch is its busd's start time) beyond [`EPOCHS_REMEMBERED`].
    fn leave(&mut self, position: Position) {
        let seq = self.left.entry(position.epoch).or_default();
        *seq = (*seq).max(position.seq);
        if self.left.len() > EPOCHS_REMEMBERED {
            if let Some(oldest) = self.left.keys().min().copied() {
                self.left.remove(&oldest);
            }
        }
    }

    /// Where to start reading a JetStream stream of `epoch` that holds the sequences
    /// `first..=last`, reporting any loss to `out`; the cursor stands just before it from
    /// now on.
    fn resume_stream(
        &mut self,
        epoch: u64,
        (first, last): (u64, u64),
        out: &mut VecDeque<Delivery>,
    ) -> u64 {
        let position = match self.position {
            None => Position { epoch, seq: last },
            // A stream that holds less than we read is another stream, even if made in
            // the same second.
            Some(at) if at.epoch != epoch || last < at.seq => {
                out.push_back(Delivery::Notice(Notice::StreamRecreated {
                    old: at.epoch,
                    new: epoch,
                }));
                out.push_back(Delivery::Gap(GapReport {
                    from_seq: at.seq.saturating_add(1),
                    to_seq: None,
                    missed: None,
                    epoch: at.epoch,
                }));
                Position { epoch, seq: 0 }
            }
            Some(at) if first > at.seq.saturating_add(1) => {
                let to_seq = first - 1;
                out.push_back(Delivery::Gap(GapReport {
                    from_seq: at.seq + 1,
                    to_seq: Some(to_seq),
                    missed: Some(to_seq - at.seq),
                    epoch,
                }));
                Position { epoch, seq: to_seq }
            }
            Some(at) => at,
        };
        self.position = Some(position);
        position.seq.saturating_add(1)
    }

    /// Hands out what a JetStream consumer read. The stream drops copies by message id,
    /// and a resent event may be stored after a later one of its origin (a leader change
    /// between them), so ids are not compared here: that would drop the late one.
    /// Events of other `origins` (when it names any) are passed over.
    fn on_items(
        &mut self,
        items: Vec<Item>,
        origins: &BTreeSet<String>,
        out: &mut VecDeque<Delivery>,
    ) {
        let Some(position) = self.position.as_mut() else {
            return;
        };
        let mut events = Vec::new();
        for item in items {
            match item {
                Item::Event(seq, event) => {
                    position.seq = seq;
                    if origins.is_empty() || origins.contains(&event.origin) {
                        events.push((seq, event));
                    }
                }
                Item::Evicted { from, to } => {
                    if !events.is_empty() {
                        out.push_back(Delivery::Events {
                            epoch: position.epoch,
                            events: std::mem::take(&mut events),
                        });
                    }
                    position.seq = to;
                    out.push_back(Delivery::Gap(GapReport {
                        from_seq: from,
                        to_seq: Some(to),
                        missed: Some(to - from + 1),
                        epoch: position.epoch,
                    }));
                }
            }
        }
        if !events.is_empty() {
            out.push_back(Delivery::Events {
                epoch: position.epoch,
                events,
            });
        }
    }

    fn on_frame(&mut self, frame: ServerFrame, out: &mut VecDeque<Delivery>) -> Option<End> {
        let position = self.position.as_mut()?;
        match frame {
            ServerFrame::Events(events) => {
                self.on_events(events, out);
                None
            }
            ServerFrame::Gap {
                from_seq,
                to_seq,
                missed,
            } => {
                position.seq = position.seq.max(to_seq);
                out.push_back(Delivery::Gap(GapReport {
                    from_seq,
                    to_seq: Some(to_seq),
                    missed: Some(missed),
                    epoch: position.epoch,
                }));
                None
            }
            ServerFrame::Goodbye { epoch, last_seq } => {
                // busd flushes our queue before Goodbye: we have all of ours up to last_seq.
                if position.epoch == epoch {
                    position.seq = position.seq.max(last_seq);
                }
                let notice = Notice::ShuttingDown { epoch, last_seq };
                out.push_back(Delivery::Notice(notice));
                Some(End::Lost("busd said goodbye".into()))
            }
            ServerFrame::Error { code, message } => {
                let err = SessionError::Refused { code, message };
                Some(if err.is_fatal() {
                    End::Refused(err)
                } else {
                    End::Lost(err.to_string())
                })
            }
            ServerFrame::Heartbeat { .. }
            | ServerFrame::Pong
            | ServerFrame::Welcome { .. }
            | ServerFrame::PubAck { .. }
            | ServerFrame::Stats(_)
            | ServerFrame::PublisherStats(_) => None,
        }
    }

    /// Hands out the events not seen before.
    fn on_events(&mut self, events: Vec<(u64, Event)>, out: &mut VecDeque<Delivery>) {
        let Some(position) = self.position.as_mut() else {
            return;
        };
        if self.member && !events.is_empty() {
            position.seq = events.iter().map(|e| e.0).fold(position.seq, u64::max);
            self.to_ack = events.last().map(|e| e.0).or(self.to_ack);
            out.push_back(Delivery::Events {
                epoch: position.epoch,
                events,
            });
            return;
        }
        let mut fresh = Vec::with_capacity(events.len());
        for (seq, event) in events {
            // Seqs only go forward: a frame out of order (from no busd of ours) hands out
            // nothing twice and nothing backwards.
            if seq <= position.seq {
                continue;
            }
            // Past copies too, so a resume does not ask for them again.
            position.seq = seq;
            if is_new(&mut self.seen, &event) {
                fresh.push((seq, event));
            }
        }
        if !fresh.is_empty() {
            out.push_back(Delivery::Events {
                epoch: position.epoch,
                events: fresh,
            });
        }
    }
}

/// What a restart into `welcome`'s epoch cost a subscriber at `position` of an older epoch:
/// the notice, and the gap to report unless busd's chain proves nothing was missed.
fn restart(position: Position, welcome: Welcome) -> (Notice, Option<GapReport>) {
    let old = position.epoch;
    // busd's numbers are a peer's: saturate rather than trust them not to overflow.
    let gap = |to_seq: Option<u64>| GapReport {
        from_seq: position.seq.saturating_add(1),
        to_seq,
        missed: to_seq.map(|to| to.saturating_sub(position.seq)),
        epoch: old,
    };
    let complete = welcome
        .follows
        .is_some_and(|prev| prev.epoch == old && position.seq >= prev.seq);
    let lost = match welcome.follows {
        _ if complete => None,
        Some(prev) if prev.epoch == old => Some(gap(Some(prev.seq))),
        _ => Some(gap(None)),
    };
    let notice = Notice::Restarted {
        old,
        new: welcome.epoch,
        follows: welcome.follows,
        complete,
    };
    (notice, lost)
}

/// Whether `event` is above the last id seen from its origin; if so it becomes the mark.
fn is_new(seen: &mut HashMap<String, u64>, event: &Event) -> bool {
    match seen.get_mut(&event.origin) {
        Some(last) if event.id <= *last => false,
        Some(last) => {
            *last = event.id;
            true
        }
        None => {
            seen.insert(event.origin.clone(), event.id);
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn welcome(epoch: u64, follows: Option<(u64, u64)>) -> Welcome {
        Welcome {
            epoch,
            head_seq: 0,
            max_frame: 1 << 20,
            follows: follows.map(|(epoch, seq)| Position { epoch, seq }),
        }
    }

    #[test]
    fn only_an_unbroken_chain_means_nothing_was_missed() {
        let at = Position { epoch: 10, seq: 50 };
        let (notice, gap) = restart(at, welcome(20, Some((10, 50))));
        assert_eq!(gap, None);
        assert!(
            notice.to_string().contains("nothing was missed"),
            "{notice}"
        );
        let short = restart(at, welcome(20, Some((10, 80)))).1.unwrap();
        assert_eq!(
            (short.from_seq, short.to_seq, short.missed),
            (51, Some(80), Some(30))
        );
        // Two restarts while we were away: the chain names epoch 15, not ours.
        let (notice, skipped) = restart(at, welcome(20, Some((15, 7))));
        let skipped = skipped.unwrap();
        assert_eq!(
            (skipped.from_seq, skipped.to_seq, skipped.missed),
            (51, None, None)
        );
        assert!(notice.to_string().contains("never saw"), "{notice}");
        let crashed = restart(at, welcome(20, None)).1.unwrap();
        assert_eq!((crashed.to_seq, crashed.epoch), (None, 10));
    }

    fn event(origin: &str, id: u64) -> Event {
        Event {
            account_id: 1,
            timestamp_us: 0,
            data: format!("{origin}-{id}"),
            origin: origin.into(),
            id,
        }
    }

    #[test]
    fn copies_are_dropped_per_origin() {
        let mut seen = HashMap::new();
        assert!(is_new(&mut seen, &event("a", 5)));
        assert!(is_new(&mut seen, &event("b", 1)));
        assert!(!is_new(&mut seen, &event("a", 5)));
        assert!(!is_new(&mut seen, &event("a", 4)));
        assert!(is_new(&mut seen, &event("a", 6)));
    }

    fn stream_cursor(epoch: u64, seq: u64) -> Cursor {
        Cursor {
            position: Some(Position { epoch, seq }),
            ..Cursor::default()
        }
    }

    #[test]
    fn a_stream_resume_reports_what_retention_dropped() {
        let mut out = VecDeque::new();
        let mut fresh = Cursor::default();
        assert_eq!(fresh.resume_stream(7, (1, 40), &mut out), 41);
        let mut held = stream_cursor(7, 40);
        assert_eq!(held.resume_stream(7, (3, 90), &mut out), 41);
        assert!(out.is_empty(), "{out:?}");
        let mut behind = stream_cursor(7, 40);
        assert_eq!(behind.resume_stream(7, (61, 90), &mut out), 61);
        let gap = GapReport {
            from_seq: 41,
            to_seq: Some(60),
            missed: Some(20),
            epoch: 7,
        };
        assert_eq!(out.pop_front(), Some(Delivery::Gap(gap)));
    }

    #[test]
    fn an_epoch_that_comes_back_resumes_where_it_was_left() {
        let mut out = VecDeque::new();
        let mut cursor = Cursor::default();
        cursor.resume_point(welcome(10, None), &mut out);
        cursor.on_events(vec![(42, event("a", 1)), (45, event("b", 1))], &mut out);
        cursor.resume_point(welcome(20, None), &mut out);
        let back = cursor.resume_point(welcome(10, None), &mut out);
        assert_eq!(
            back,
            Position { epoch: 10, seq: 45 },
            "resumed after 45, not 0"
        );
        out.clear();
        cursor.on_events(vec![(42, event("c", 1)), (46, event("d", 1))], &mut out);
        assert_eq!(
            handed_out(out.make_contiguous()),
            [(10, 46, "d-1".to_owned())]
        );
        for epoch in 100..100 + 2 * EPOCHS_REMEMBERED as u64 {
            cursor.resume_point(welcome(epoch, None), &mut out);
        }
        assert!(cursor.left.len() <= EPOCHS_REMEMBERED);
        assert!(!cursor.left.contains_key(&10), "the oldest are forgotten");
    }

    #[test]
    fn a_recreated_stream_is_a_gap_of_unknown_size() {
        for (epoch, held) in [(8, (1, 90)), (7, (1, 12))] {
            let mut out = VecDeque::new();
            let mut cursor = stream_cursor(7, 40);
            assert_eq!(cursor.resume_stream(epoch, held, &mut out), 1);
            let gap = GapReport {
                from_seq: 41,
                to_seq: None,
                missed: None,
                epoch: 7,
            };
            assert!(matches!(
                out.pop_front(),
                Some(Delivery::Notice(Notice::StreamRecreated { old: 7, .. }))
            ));
            assert_eq!(out.pop_front(), Some(Delivery::Gap(gap)));
        }
    }

    #[test]
    fn stream_items_keep_their_order_around_an_eviction() {
        let mut out = VecDeque::new();
        let mut cursor = stream_cursor(7, 10);
        let items = vec![
            Item::Event(11, event("a", 1)),
            Item::Evicted { from: 12, to: 19 },
            Item::Event(20, event("a", 1)),
        ];
        cursor.on_items(items, &BTreeSet::new(), &mut out);
        let shapes: Vec<String> = out
            .iter()
            .map(|d| match d {
                Delivery::Events { events, .. } => format!("events {}", events.len()),
                Delivery::Gap(gap) => {
                    format!("gap {}..{:?} {:?}", gap.from_seq, gap.to_seq, gap.missed)
                }
                Delivery::Notice(n) => n.to_string(),
            })
            .collect();
        // The same id twice is handed out twice: the stream, not the cursor, drops copies.
        assert_eq!(shapes, ["events 1", "gap 12..Some(19) Some(8)", "events 1"]);
        assert_eq!(cursor.position, Some(Position { epoch: 7, seq: 20 }));
    }

    fn handed_out(deliveries: &[Delivery]) -> Vec<(u64, u64, String)> {
        deliveries
            .iter()
            .flat_map(|d| match d {
                Delivery::Events { epoch, events } => events
                    .iter()
                    .map(|(seq, e)| (*epoch, *seq, e.data.clone()))
                    .collect(),
                _ => vec![],
            })
            .collect()
    }

    #[test]
    fn a_crash_reports_a_gap_and_drops_the_resent_copies() {
        let first = vec![ServerFrame::Events(vec![
            (1, event("o", 1)),
            (2, event("o", 2)),
        ])];
        // busd crashed before acknowledging id 2: the publisher sent it again to the next.
        let again = vec![ServerFrame::Events(vec![
            (1, event("o", 2)),
            (2, event("o", 3)),
        ])];
        let out = replay(vec![(welcome(10, None), first), (welcome(20, None), again)]);
        let gaps: Vec<&GapReport> = out
            .iter()
            .filter_map(|d| match d {
                Delivery::Gap(gap) => Some(gap),
                _ => None,
            })
            .collect();
        assert_eq!(gaps.len(), 1);
        assert_eq!((gaps[0].epoch, gaps[0].to_seq), (10, None));
        assert_eq!(
            handed_out(&out),
            [
                (10, 1, "o-1".into()),
                (10, 2, "o-2".into()),
                (20, 2, "o-3".into())
            ]
        );
    }

    #[test]
    fn seqs_never_go_back_within_a_frame() {
        let frames = vec![ServerFrame::Events(vec![
            (5, event("o", 5)),
            (3, event("o", 9)),
        ])];
        let out = replay(vec![(welcome(10, None), frames)]);
        assert_eq!(handed_out(&out), [(10, 5, "o-5".into())]);
    }

    #[test]
    fn a_goodbye_then_the_next_run_is_no_gap() {
        let first = vec![
            ServerFrame::Events(vec![(1, event("o", 1))]),
            ServerFrame::Goodbye {
                epoch: 10,
                last_seq: 3,
            },
        ];
        let out = replay(vec![
            (welcome(10, None), first),
            (welcome(20, Some((10, 3))), vec![]),
        ]);
        assert!(
            out.iter().all(|d| !matches!(d, Delivery::Gap(_))),
            "{out:?}"
        );
    }
}
