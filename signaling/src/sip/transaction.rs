//! Sans-IO SIP transactions (RFC 3261 section 17): INVITE and non-INVITE, client and
//! server, timers A-K.
//!
//! Calling contract (same for all four kinds): feed input with the current time
//! (`handle_response`, `handle_request_retransmission`, `send_response`,
//! `handle_timeout`), then drain `poll_transmit` (bytes to send to the peer, in order)
//! and `poll_event` (what the transaction user must learn), and arm a timer for
//! `poll_timeout`. Nothing here reads a clock, sleeps or touches a socket. Message
//! bytes are owned copies because a transaction must be able to retransmit them after
//! the receive buffer is gone.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// RFC 3261 timer base values (section 17.1.1.1, table 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimerConfig {
    pub t1: Duration,
    pub t2: Duration,
    pub t4: Duration,
}

impl Default for TimerConfig {
    fn default() -> Self {
        TimerConfig {
            t1: Duration::from_millis(500),
            t2: Duration::from_secs(4),
            t4: Duration::from_secs(5),
        }
    }
}

impl TimerConfig {
    fn t1x64(&self) -> Duration {
        self.t1 * 64
    }
}

/// Transaction state (the union of the four RFC 3261 state machines).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Calling,
    Trying,
    Proceeding,
    Completed,
    Confirmed,
    Terminated,
}

/// What the transaction user learns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A provisional (1xx) response arrived (client).
    Provisional(u16),
    /// A final response arrived (client); retransmissions of it are absorbed.
    Final(u16),
    /// Timer B, F (client: no final response) or H (server INVITE: no ACK) fired.
    Timeout,
    /// The transaction is over and can be dropped.
    Terminated,
}

/// Named timers, for tests and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timer {
    A,
    B,
    D,
    E,
    F,
    G,
    H,
    I,
    J,
    K,
}

#[derive(Debug, Default)]
struct Timers {
    armed: Vec<(Timer, Instant)>,
}

impl Timers {
    fn set(&mut self, t: Timer, at: Instant) {
        self.cancel(t);
        self.armed.push((t, at));
    }
    fn cancel(&mut self, t: Timer) {
        self.armed.retain(|(x, _)| *x != t);
    }
    fn next(&self) -> Option<Instant> {
        self.armed.iter().map(|(_, at)| *at).min()
    }
    /// Removes and returns the timers due at `now`, earliest first.
    fn due(&mut self, now: Instant) -> Vec<Timer> {
        let mut due: Vec<(Timer, Instant)> = self
            .armed
            .iter()
            .filter(|(_, at)| *at <= now)
            .copied()
            .collect();
        due.sort_by_key(|(_, at)| *at);
        self.armed.retain(|(_, at)| *at > now);
        due.into_iter().map(|(t, _)| t).collect()
    }
    fn clear(&mut self) {
        self.armed.clear();
    }
}

#[derive(Debug)]
struct Io {
    transmit: VecDeque<Vec<u8>>,
    events: VecDeque<Event>,
}

impl Io {
    fn new() -> Io {
        Io {
            transmit: VecDeque::new(),
            events: VecDeque::new(),
        }
    }
}

macro_rules! io_methods {
    () => {
        /// Next bytes to send to the peer.
        pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
            self.io.transmit.pop_front()
        }
        /// Next event for the transaction user.
        pub fn poll_event(&mut self) -> Option<Event> {
            self.io.events.pop_front()
        }
        /// When `handle_timeout` must be called next.
        pub fn poll_timeout(&self) -> Option<Instant> {
            self.timers.next()
        }
        pub fn state(&self) -> State {
            self.state
        }
        fn terminate(&mut self) {
            self.state = State::Terminated;
            self.timers.clear();
            self.io.events.push_back(Event::Terminated);
        }
    };
}

/// Client non-INVITE transaction (RFC 3261 17.1.2, figure 6).
#[derive(Debug)]
pub struct ClientNonInvite {
    cfg: TimerConfig,
    reliable: bool,
    state: State,
    request: Vec<u8>,
    interval: Duration,
    timers: Timers,
    io: Io,
}

impl ClientNonInvite {
    /// Starts the transaction: the request is queued for transmission.
    pub fn new(now: Instant, request: Vec<u8>, reliable: bool, cfg: TimerConfig) -> Self {
        let mut t = ClientNonInvite {
            cfg,
            reliable,
            state: State::Trying,
            request,
            interval: cfg.t1,
            timers: Timers::default(),
            io: Io::new(),
        };
        t.io.transmit.push_back(t.request.clone());
        if !reliable {
            t.timers.set(Timer::E, now + cfg.t1);
        }
        t.timers.set(Timer::F, now + cfg.t1x64());
        t
    }

    io_methods!();

    pub fn handle_response(&mut self, now: Instant, code: u16) {
        match (self.state, code) {
            (State::Trying | State::Proceeding, 100..=199) => {
                self.state = State::Proceeding;
                self.io.events.push_back(Event::Provisional(code));
            }
            (State::Trying | State::Proceeding, 200..=699) => {
                self.state = State::Completed;
                self.timers.cancel(Timer::E);
                self.timers.cancel(Timer::F);
                self.io.events.push_back(Event::Final(code));
                if self.reliable {
                    self.terminate();
                } else {
                    self.timers.set(Timer::K, now + self.cfg.t4);
                }
            }
            // Completed: retransmitted finals are absorbed.
            _ => {}
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        for t in self.timers.due(now) {
            match t {
                Timer::E if matches!(self.state, State::Trying | State::Proceeding) => {
                    self.io.transmit.push_back(self.request.clone());
                    self.interval = if self.state == State::Trying {
                        (self.interval * 2).min(self.cfg.t2)
                    } else {
                        self.cfg.t2
                    };
                    self.timers.set(Timer::E, now + self.interval);
                }
                Timer::F if matches!(self.state, State::Trying | State::Proceeding) => {
                    self.io.events.push_back(Event::Timeout);
                    self.terminate();
                }
                Timer::K if self.state == State::Completed => self.terminate(),
                _ => {}
            }
        }
    }
}

/// Client INVITE transaction (RFC 3261 17.1.1, figure 5).
#[derive(Debug)]
pub struct ClientInvite {
    cfg: TimerConfig,
    reliable: bool,
    state: State,
    request: Vec<u8>,
    ack: Option<Vec<u8>>,
    interval: Duration,
    timers: Timers,
    io: Io,
}

impl ClientInvite {
    pub fn new(now: Instant, request: Vec<u8>, reliable: bool, cfg: TimerConfig) -> Self {
        let mut t = ClientInvite {
            cfg,
            reliable,
            state: State::Calling,
            request,
            ack: None,
            interval: cfg.t1,
            timers: Timers::default(),
            io: Io::new(),
        };
        t.io.transmit.push_back(t.request.clone());
        if !reliable {
            t.timers.set(Timer::A, now + cfg.t1);
        }
        t.timers.set(Timer::B, now + cfg.t1x64());
        t
    }

    io_methods!();

    /// A response arrived. For 300-699 the caller passes the ACK it built (RFC 3261
    /// 17.1.1.3: same Request-URI, Call-ID, From, top Via and CSeq number, To with the
    /// response's tag); it is sent now and again for every retransmitted final.
    pub fn handle_response(&mut self, now: Instant, code: u16, ack: Option<Vec<u8>>) {
        match (self.state, code) {
            (State::Calling | State::Proceeding, 100..=199) => {
                self.state = State::Proceeding;
                self.timers.cancel(Timer::A);
                self.io.events.push_back(Event::Provisional(code));
            }
            (State::Calling | State::Proceeding, 200..=299) => {
                // The TU (core) handles 2xx and its ACK end to end.
                self.io.events.push_back(Event::Final(code));
                self.terminate();
            }
            (State::Calling | State::Proceeding, 300..=699) => {
                self.state = State::Completed;
                self.timers.cancel(Timer::A);
                self.timers.cancel(Timer::B);
                self.ack = ack;
                if let Some(a) = &self.ack {
                    self.io.transmit.push_back(a.clone());
                }
                self.io.events.push_back(Event::Final(code));
                if self.reliable {
                    self.terminate();
                } else {
                    self.timers.set(
                        Timer::D,
                        now + Duration::from_secs(32).max(self.cfg.t1x64()),
                    );
                }
            }
            (State::Completed, 300..=699) => {
                if let Some(a) = &self.ack {
                    self.io.transmit.push_back(a.clone());
                }
            }
            _ => {}
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        for t in self.timers.due(now) {
            match t {
                Timer::A if self.state == State::Calling => {
                    self.io.transmit.push_back(self.request.clone());
                    self.interval *= 2;
                    self.timers.set(Timer::A, now + self.interval);
                }
                Timer::B if matches!(self.state, State::Calling | State::Proceeding) => {
                    self.io.events.push_back(Event::Timeout);
                    self.terminate();
                }
                Timer::D if self.state == State::Completed => self.terminate(),
                _ => {}
            }
        }
    }
}

/// Server non-INVITE transaction (RFC 3261 17.2.2, figure 8).
#[derive(Debug)]
pub struct ServerNonInvite {
    cfg: TimerConfig,
    reliable: bool,
    state: State,
    last_response: Option<Vec<u8>>,
    timers: Timers,
    io: Io,
}

impl ServerNonInvite {
    pub fn new(reliable: bool, cfg: TimerConfig) -> Self {
        ServerNonInvite {
            cfg,
            reliable,
            state: State::Trying,
            last_response: None,
            timers: Timers::default(),
            io: Io::new(),
        }
    }

    io_methods!();

    /// The TU sends a response through the transaction.
    pub fn send_response(&mut self, now: Instant, code: u16, bytes: Vec<u8>) {
        if matches!(self.state, State::Completed | State::Terminated) {
            return;
        }
        self.io.transmit.push_back(bytes.clone());
        self.last_response = Some(bytes);
        if code < 200 {
            self.state = State::Proceeding;
        } else {
            self.state = State::Completed;
            if self.reliable {
                self.terminate();
            } else {
                self.timers.set(Timer::J, now + self.cfg.t1x64());
            }
        }
    }

    /// A retransmission of the request arrived: absorbed (Trying) or answered with the
    /// last response (Proceeding, Completed).
    pub fn handle_request_retransmission(&mut self) {
        if matches!(self.state, State::Proceeding | State::Completed) {
            if let Some(r) = &self.last_response {
                self.io.transmit.push_back(r.clone());
            }
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        for t in self.timers.due(now) {
            if t == Timer::J && self.state == State::Completed {
                self.terminate();
            }
        }
    }
}

/// Server INVITE transaction (RFC 3261 17.2.1, figure 7).
#[derive(Debug)]
pub struct ServerInvite {
    cfg: TimerConfig,
    reliable: bool,
    state: State,
    last_response: Option<Vec<u8>>,
    interval: Duration,
    timers: Timers,
    io: Io,
}

impl ServerInvite {
    pub fn new(reliable: bool, cfg: TimerConfig) -> Self {
        ServerInvite {
            cfg,
            reliable,
            state: State::Proceeding,
            last_response: None,
            interval: cfg.t1,
            timers: Timers::default(),
            io: Io::new(),
        }
    }

    io_methods!();

    pub fn send_response(&mut self, now: Instant, code: u16, bytes: Vec<u8>) {
        if self.state != State::Proceeding {
            return;
        }
        self.io.transmit.push_back(bytes.clone());
        self.last_response = Some(bytes);
        match code {
            100..=199 => {}
            200..=299 => self.terminate(),
            _ => {
                self.state = State::Completed;
                if !self.reliable {
                    self.timers.set(Timer::G, now + self.cfg.t1);
                }
                self.timers.set(Timer::H, now + self.cfg.t1x64());
            }
        }
    }

    pub fn handle_request_retransmission(&mut self) {
        if matches!(self.state, State::Proceeding | State::Completed) {
            if let Some(r) = &self.last_response {
                self.io.transmit.push_back(r.clone());
            }
        }
    }

    /// The ACK for a 300-699 final arrived.
    pub fn handle_ack(&mut self, now: Instant) {
        if self.state == State::Completed {
            self.state = State::Confirmed;
            self.timers.cancel(Timer::G);
            self.timers.cancel(Timer::H);
            if self.reliable {
                self.terminate();
            } else {
                self.timers.set(Timer::I, now + self.cfg.t4);
            }
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        for t in self.timers.due(now) {
            match t {
                Timer::G if self.state == State::Completed => {
                    if let Some(r) = &self.last_response {
                        self.io.transmit.push_back(r.clone());
                    }
                    self.interval = (self.interval * 2).min(self.cfg.t2);
                    self.timers.set(Timer::G, now + self.interval);
                }
                Timer::H if self.state == State::Completed => {
                    self.io.events.push_back(Event::Timeout);
                    self.terminate();
                }
                Timer::I if self.state == State::Confirmed => self.terminate(),
                _ => {}
            }
        }
    }
}
