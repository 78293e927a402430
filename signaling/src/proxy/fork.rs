//! Sans-IO response context of a forked request (RFC 3261 16.7, 16.10): which branch
//! responses go upstream, which branches get CANCEL and when the request is over.
//!
//! Calling contract: create with the number of branches and the time; feed every
//! response a branch's client transaction reports (`handle_response`, with a
//! synthesized 408 for a transaction timeout and 503 for a transport failure, as
//! RFC 3261 16.7 says), the caller's CANCEL (`handle_cancel`) and the timer
//! (`handle_timeout` at `poll_timeout`); then drain `poll_action`. The core sees only
//! status codes: the glue keeps the response bytes per branch and acts on
//! [`Action`]s. No clock, socket or sleep here.
//!
//! Calls to devices that may be woken by a push notification ([`ForkOptions`]):
//! - **park**: while pushed devices may still register and join as new branches,
//!   the call does not end when every branch has failed (a 2xx, a 6xx or the
//!   caller's CANCEL still end it); with no branch at all it simply waits.
//! - **push after silence**: when no branch has sent any response by then
//!   ([`Action::PushAll`]), the glue pushes every device with a token and parks.
//! - **no-answer rule**: when the call would end unanswered (408 or 480), it is
//!   forwarded once instead ([`Action::NoAnswer`]); the forward target's branch
//!   alone then decides the final response.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::offline::{CallPush, PushTo};

/// Why a branch is cancelled; the glue turns it into a `Reason` header (RFC 3326).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelReason {
    /// Another branch answered with 2xx: `SIP;cause=200;text="Call completed elsewhere"`.
    CompletedElsewhere,
    /// A branch declined for everyone with this 6xx code.
    GlobalFailure(u16),
    /// The caller sent CANCEL.
    CallerCancelled,
    /// The ring timeout ended the call.
    RingTimeout,
    /// The branch's device was revoked while it rang.
    DeviceRevoked,
    /// The server is shutting down (drain).
    ServerShutdown,
}

/// The final response the caller gets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Final {
    /// The final response received on this branch, forwarded. `auth_from` lists the
    /// other branches whose 401/407 challenges must be added to it (RFC 3261 16.7
    /// step 7); `as_code` is the code to put on the status line when it differs
    /// (503 becomes 500, RFC 3261 16.7 step 6).
    Branch {
        branch: usize,
        code: u16,
        as_code: u16,
        auth_from: Vec<usize>,
    },
    /// A response generated here.
    Generated { code: u16, reason: &'static str },
}

/// What the glue must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Forward this branch's latest response upstream now (provisional responses,
    /// the winning 2xx and later 2xx responses of other branches, the 6xx).
    Forward { branch: usize, code: u16 },
    /// Send CANCEL on this branch.
    Cancel { branch: usize, reason: CancelReason },
    /// Send the final response upstream (once).
    Respond(Final),
    /// No branch sent any response within the push delay: push every device with
    /// a token (then [`Fork::park`] if any was pushed).
    PushAll,
    /// Nobody answered: start the no-answer rule's branch with
    /// [`Fork::add_forward_branch`], or call [`Fork::forward_failed`].
    NoAnswer,
}

/// How a forked INVITE waits for devices woken by push notifications.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ForkOptions {
    /// Park until then (see [`Fork::park`]).
    pub park_until: Option<Instant>,
    /// [`Action::PushAll`] at this time unless a branch responded before.
    pub push_at: Option<Instant>,
    /// Forward an unanswered call once ([`Action::NoAnswer`]) instead of ending it.
    pub forward_on_no_answer: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BranchState {
    /// Request sent, nothing back yet (RFC 3261 9.1: a CANCEL must wait for a
    /// provisional response).
    Calling { cancel: Option<CancelReason> },
    /// A provisional response arrived.
    Proceeding,
    /// CANCEL sent, final response awaited.
    Cancelling,
    /// Final response received (or synthesized).
    Done(u16),
}

/// Response context of one forked request.
#[derive(Debug)]
pub struct Fork {
    invite: bool,
    branches: Vec<BranchState>,
    /// Set once the final response went upstream.
    answered: bool,
    /// The caller sent CANCEL: branches that never answered count as 487.
    caller_cancelled: bool,
    /// When the ring timeout ends the request (INVITE only).
    deadline: Option<Instant>,
    ring_timeout: Duration,
    /// Pushed devices may still join until then: the request is not over when
    /// every branch has failed.
    park_until: Option<Instant>,
    /// When to ask for pushes if no branch has sent any response.
    push_at: Option<Instant>,
    /// Some branch sent a response (any, 100 included).
    heard: bool,
    /// The no-answer rule applies (once).
    forward_on_no_answer: bool,
    /// [`Action::NoAnswer`] went out: the final response it replaced, until the
    /// forward branch exists or the glue gives up on it.
    held: Option<Final>,
    /// Branches from this index on choose the final response (the forward
    /// branch, once the no-answer rule applied).
    first: usize,
    forwarding: bool,
    actions: VecDeque<Action>,
}

impl Fork {
    /// `branches` client transactions were started at `now`. With none at all the
    /// request is answered 480 at once. `ring_timeout` applies to INVITE (RFC 3261
    /// 16.6 step 11, Timer C, here the configured ring time).
    pub fn new(now: Instant, branches: usize, invite: bool, ring_timeout: Duration) -> Fork {
        Fork::with_options(now, branches, invite, ring_timeout, ForkOptions::default())
    }

    /// [`Fork::new`] with push handling for an INVITE. With no branch and no park
    /// the request ends at once (480, or the no-answer rule).
    pub fn with_options(
        now: Instant,
        branches: usize,
        invite: bool,
        ring_timeout: Duration,
        opts: ForkOptions,
    ) -> Fork {
        let mut f = Fork {
            invite,
            branches: vec![BranchState::Calling { cancel: None }; branches],
            answered: false,
            caller_cancelled: false,
            deadline: invite.then(|| now + ring_timeout),
            ring_timeout,
            park_until: opts.park_until.filter(|_| invite),
            push_at: opts.push_at.filter(|_| invite && branches > 0),
            heard: false,
            forward_on_no_answer: opts.forward_on_no_answer && invite,
            held: None,
            first: 0,
            forwarding: false,
            actions: VecDeque::new(),
        };
        if branches == 0 && f.park_until.is_none() {
            f.finish(Final::Generated {
                code: 480,
                reason: "Temporarily Unavailable",
            });
        }
        f
    }

    /// Adds a branch to a request still in progress (a device that registered while
    /// the call rings, for example after a push). Returns its index, or `None` once
    /// the request is answered or cancelled, or went to the no-answer rule.
    pub fn add_branch(&mut self) -> Option<usize> {
        if self.answered || self.caller_cancelled || self.forwarding {
            return None;
        }
        self.branches.push(BranchState::Calling { cancel: None });
        Some(self.branches.len() - 1)
    }

    /// Whether the forked request is an INVITE.
    pub fn is_invite(&self) -> bool {
        self.invite
    }

    /// Keeps the request open for pushed devices until `until` (extends, never
    /// shortens a park). No effect once the request is answered or forwarded.
    pub fn park(&mut self, until: Instant) {
        if self.answered || self.forwarding || !self.invite {
            return;
        }
        self.park_until = Some(self.park_until.map_or(until, |p| p.max(until)));
    }

    /// Ends a park early (nobody could be pushed): the request ends now if every
    /// branch is done.
    pub fn unpark(&mut self, _now: Instant) {
        if self.park_until.take().is_some() && !self.answered {
            self.finish_if_settled();
        }
    }

    /// Whether the request waits for pushed devices.
    pub fn is_parked(&self) -> bool {
        self.park_until.is_some() && !self.answered
    }

    /// The branch of the no-answer rule's target, after [`Action::NoAnswer`]. It
    /// rings for the ring timeout and alone decides the final response.
    pub fn add_forward_branch(&mut self, now: Instant) -> Option<usize> {
        if self.answered || self.held.is_none() {
            return None;
        }
        self.held = None;
        self.branches.push(BranchState::Calling { cancel: None });
        self.first = self.branches.len() - 1;
        self.deadline = Some(now + self.ring_timeout);
        Some(self.first)
    }

    /// The no-answer rule's target could not be reached: the caller gets the
    /// response the rule replaced.
    pub fn forward_failed(&mut self) {
        if let Some(f) = self.held.take() {
            if !self.answered {
                self.answered = true;
                self.actions.push_back(Action::Respond(f));
            }
        }
    }

    /// Whether the call went to the no-answer rule's target.
    pub fn is_forwarded(&self) -> bool {
        self.forwarding
    }

    /// Next action for the glue.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When `handle_timeout` must be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.answered {
            return None;
        }
        [self.deadline, self.park_until, self.push_at]
            .into_iter()
            .flatten()
            .min()
    }

    /// Whether the final response went upstream.
    pub fn is_answered(&self) -> bool {
        self.answered
    }

    /// Whether every branch has its final response (the context can be dropped once
    /// the request is also answered).
    pub fn all_done(&self) -> bool {
        self.branches
            .iter()
            .all(|b| matches!(b, BranchState::Done(_)))
    }

    fn finish(&mut self, f: Final) {
        if self.answered || self.held.is_some() {
            return;
        }
        let unanswered = match &f {
            Final::Generated { code, .. } | Final::Branch { code, .. } => {
                matches!(code, 408 | 480)
            }
        };
        if self.forward_on_no_answer && unanswered && !self.caller_cancelled {
            self.forward_on_no_answer = false;
            self.forwarding = true;
            self.held = Some(f);
            self.park_until = None;
            self.push_at = None;
            self.deadline = None;
            self.actions.push_back(Action::NoAnswer);
            return;
        }
        self.answered = true;
        self.actions.push_back(Action::Respond(f));
    }

    /// Cancels every branch still pending (deferring those that have not sent a
    /// provisional response yet).
    fn cancel_pending(&mut self, except: Option<usize>, reason: CancelReason) {
        if !self.invite {
            // CANCEL has no effect on a non-INVITE request (RFC 3261 9.1).
            return;
        }
        for (i, b) in self.branches.iter_mut().enumerate() {
            if Some(i) == except {
                continue;
            }
            match b {
                BranchState::Proceeding => {
                    *b = BranchState::Cancelling;
                    self.actions.push_back(Action::Cancel { branch: i, reason });
                }
                BranchState::Calling { cancel } if cancel.is_none() => {
                    *cancel = Some(reason);
                }
                _ => {}
            }
        }
    }

    /// A response (or a synthesized 408/503) arrived on `branch`.
    pub fn handle_response(&mut self, _now: Instant, branch: usize, code: u16) {
        let Some(state) = self.branches.get(branch).copied() else {
            return;
        };
        self.heard = true;
        match code {
            100..=199 => {
                if let BranchState::Calling { cancel } = state {
                    if let Some(reason) = cancel {
                        self.set(branch, BranchState::Cancelling);
                        self.actions.push_back(Action::Cancel { branch, reason });
                    } else {
                        self.set(branch, BranchState::Proceeding);
                    }
                }
                // 100 Trying is hop by hop (RFC 3261 16.7 step 5).
                if code > 100 && !self.answered && self.invite {
                    self.actions.push_back(Action::Forward { branch, code });
                }
            }
            200..=299 => {
                if matches!(state, BranchState::Done(c) if (200..300).contains(&c)) {
                    // A retransmitted 2xx: forwarded again, the ACK is end to end.
                    if self.invite {
                        self.actions.push_back(Action::Forward { branch, code });
                    }
                    return;
                }
                self.set(branch, BranchState::Done(code));
                if !self.answered {
                    self.answered = true;
                    self.actions.push_back(Action::Forward { branch, code });
                    self.cancel_pending(Some(branch), CancelReason::CompletedElsewhere);
                } else if self.invite {
                    // RFC 3261 16.7 step 5: every 2xx to an INVITE goes upstream.
                    self.actions.push_back(Action::Forward { branch, code });
                }
            }
            300..=699 => {
                if matches!(state, BranchState::Done(_)) {
                    return;
                }
                self.set(branch, BranchState::Done(code));
                if self.answered {
                    return;
                }
                if code >= 600 && branch >= self.first {
                    self.answered = true;
                    self.held = None;
                    self.actions.push_back(Action::Forward { branch, code });
                    self.cancel_pending(Some(branch), CancelReason::GlobalFailure(code));
                    return;
                }
                self.finish_if_settled();
            }
            _ => {}
        }
    }

    /// The device of `branch` is gone (revoked): its branch is cancelled (once it has
    /// sent a provisional response, RFC 3261 9.1); its final response then counts
    /// like any other.
    pub fn cancel_branch(&mut self, _now: Instant, branch: usize) {
        if !self.invite || self.answered {
            return;
        }
        match self.branches.get(branch).copied() {
            Some(BranchState::Proceeding) => {
                self.set(branch, BranchState::Cancelling);
                self.actions.push_back(Action::Cancel {
                    branch,
                    reason: CancelReason::DeviceRevoked,
                });
            }
            Some(BranchState::Calling { cancel: None }) => {
                self.set(
                    branch,
                    BranchState::Calling {
                        cancel: Some(CancelReason::DeviceRevoked),
                    },
                );
            }
            _ => {}
        }
    }

    /// The caller's CANCEL matched this request (RFC 3261 16.10): every pending
    /// branch is cancelled; their 487s end the request through best-response selection.
    pub fn handle_cancel(&mut self, _now: Instant) {
        if self.answered {
            return;
        }
        self.caller_cancelled = true;
        self.park_until = None;
        self.push_at = None;
        self.cancel_pending(None, CancelReason::CallerCancelled);
        if self.held.take().is_some() {
            // The no-answer rule was about to start: the caller is gone.
            self.answered = true;
            self.actions.push_back(Action::Respond(Final::Generated {
                code: 487,
                reason: "Request Terminated",
            }));
            return;
        }
        self.finish_if_settled();
    }

    /// The server is draining before it stops: unless the request was answered, every
    /// branch still pending is cancelled and the caller gets 503 at once (the glue adds
    /// `Retry-After`), so it can try another server instead of ringing into a process
    /// that is going away. A parked call or a pending no-answer forward ends too.
    pub fn handle_shutdown(&mut self, _now: Instant) {
        if self.answered {
            return;
        }
        self.deadline = None;
        self.park_until = None;
        self.push_at = None;
        self.forward_on_no_answer = false;
        self.held = None;
        self.cancel_pending(None, CancelReason::ServerShutdown);
        self.finish(Final::Generated {
            code: 503,
            reason: "Service Unavailable",
        });
    }

    /// Answers upstream once every branch has its final response, or (after the
    /// caller's CANCEL) has never answered at all: nothing rings there, and waiting for
    /// Timer B would hold the caller. Such a branch keeps its deferred CANCEL, sent
    /// if it answers later.
    fn finish_if_settled(&mut self) {
        let deciding = self.branches.get(self.first..).unwrap_or_default();
        let open = deciding
            .iter()
            .filter(|b| !matches!(b, BranchState::Done(_)))
            .count();
        let silent = deciding
            .iter()
            .filter(|b| matches!(b, BranchState::Calling { .. }))
            .count();
        if self.caller_cancelled && open == silent {
            // Nothing rings (or nothing is left): 487 unless a branch gave a better
            // final response.
            let best = self.best_with_open_as(487);
            self.finish(best);
        } else if open == 0 && self.park_until.is_none() && self.held.is_none() {
            let best = self.best();
            self.finish(best);
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        if self.answered {
            return;
        }
        if self.push_at.is_some_and(|p| now >= p) {
            self.push_at = None;
            if !self.heard {
                self.actions.push_back(Action::PushAll);
            }
        }
        if self.park_until.is_some_and(|p| now >= p) {
            self.park_until = None;
            self.finish_if_settled();
        }
        let Some(d) = self.deadline else { return };
        if now < d || self.answered {
            return;
        }
        self.deadline = None;
        self.park_until = None;
        self.push_at = None;
        self.cancel_pending(None, CancelReason::RingTimeout);
        // Every branch still open counts as 408 (RFC 3261 16.7 step 2, Timer C) and the
        // best response is chosen now; their late 487s are absorbed.
        let best = self.best_with_open_as(408);
        self.finish(best);
    }

    fn set(&mut self, branch: usize, s: BranchState) {
        if let Some(b) = self.branches.get_mut(branch) {
            *b = s;
        }
    }

    fn best(&self) -> Final {
        self.best_with_open_as(0)
    }

    /// Best final response (RFC 3261 16.7 step 6): 6xx was handled when it arrived;
    /// otherwise the lowest class, 4xx preferred over 5xx; within 4xx, 401/407
    /// first (their challenges are aggregated), then 415, 420, 484, then the lowest
    /// code. Open branches count as `open_code` (0: none open).
    fn best_with_open_as(&self, open_code: u16) -> Final {
        let finals: Vec<(usize, u16)> = self
            .branches
            .iter()
            .enumerate()
            .skip(self.first)
            .filter_map(|(i, b)| match b {
                BranchState::Done(c) => Some((i, *c)),
                _ => None,
            })
            .collect();
        let rank = |c: u16| -> (u16, u16, u16) {
            let class = c / 100;
            let pref = match c {
                401 | 407 => 0,
                415 | 420 | 484 => 1,
                _ => 2,
            };
            (class, pref, c)
        };
        let open = match open_code {
            487 => Final::Generated {
                code: 487,
                reason: "Request Terminated",
            },
            0 => Final::Generated {
                code: 480,
                reason: "Temporarily Unavailable",
            },
            _ => Final::Generated {
                code: 408,
                reason: "Request Timeout",
            },
        };
        let Some(&(branch, code)) = finals.iter().min_by_key(|(_, c)| rank(*c)) else {
            return open;
        };
        if open_code != 0 && rank(open_code) < rank(code) {
            return open;
        }
        let auth_from = if code == 401 || code == 407 {
            finals
                .iter()
                .filter(|(i, c)| *i != branch && (*c == 401 || *c == 407))
                .map(|(i, _)| *i)
                .collect()
        } else {
            Vec::new()
        };
        Final::Branch {
            branch,
            code,
            as_code: if code == 503 { 500 } else { code },
            auth_from,
        }
    }
}

/// Which call push to send and to whom (the glue queues it through the offline
/// hooks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushOrder {
    pub kind: CallPush,
    pub to: PushTo,
}

/// The push side of a forked INVITE to one of our accounts, sans-IO: who got
/// `incoming_call`, whether the call waits (parked) for them, and who hears how it
/// ended (`call_cancelled` or `missed_call`). It drives the [`Fork`]'s park; the glue
/// only queues the [`PushOrder`]s it returns and reports back with
/// [`PushPolicy::pushed`].
///
/// Rules: devices that are not registered hear of the call when the registered ones
/// get the INVITE; the call is parked while a push is on its way and for
/// `park_for` after any device was pushed, and stops waiting at once when a push
/// reached nobody and nobody was pushed before; answered or declined on a device,
/// the pushed ones get `call_cancelled` (except the one that answered); answered by
/// the no-answer target, or ended unanswered, they get `missed_call`; a device pushed
/// after the end (its push was still being queued) hears of the end too.
#[derive(Debug, Clone)]
pub struct PushPolicy {
    park_for: Duration,
    /// Instances that got `incoming_call`.
    pushed: Vec<String>,
    /// `incoming_call` pushes queued but not reported yet.
    pending: usize,
    /// How the call ended, once decided.
    ended: Option<CallPush>,
}

impl PushPolicy {
    /// A call that pushes devices and parks for `park_for` after each push.
    pub fn new(park_for: Duration) -> PushPolicy {
        PushPolicy {
            park_for,
            pushed: Vec::new(),
            pending: 0,
            ended: None,
        }
    }

    /// The call starts: every device but the `live` ones (which get the INVITE) is
    /// pushed `incoming_call`.
    pub fn start(&mut self, live: Vec<String>) -> PushOrder {
        self.incoming(PushTo::AllExcept(live))
    }

    /// [`Action::PushAll`]: nobody responded in time, every device not pushed yet
    /// is pushed (registrations whose flow went stale).
    pub fn push_all(&mut self) -> PushOrder {
        self.incoming(PushTo::AllExcept(self.pushed.clone()))
    }

    fn incoming(&mut self, to: PushTo) -> PushOrder {
        self.pending += 1;
        PushOrder {
            kind: CallPush::Incoming,
            to,
        }
    }

    /// An `incoming_call` push was queued for `list`: the call waits for them to
    /// register (or, when nobody at all could be pushed, stops waiting). After the
    /// end, they hear of it.
    pub fn pushed(
        &mut self,
        now: Instant,
        list: Vec<String>,
        fork: &mut Fork,
    ) -> Option<PushOrder> {
        self.pending = self.pending.saturating_sub(1);
        let new: Vec<String> = list
            .into_iter()
            .filter(|i| !self.pushed.iter().any(|p| p.eq_ignore_ascii_case(i)))
            .collect();
        let mut order = None;
        if let Some(kind) = self.ended {
            if !new.is_empty() {
                order = Some(PushOrder {
                    kind,
                    to: PushTo::Only(new.clone()),
                });
            }
        } else if !new.is_empty() {
            fork.park(now + self.park_for);
        } else if self.pushed.is_empty() && self.pending == 0 {
            fork.unpark(now);
        }
        self.pushed.extend(new);
        order
    }

    /// The fork forwarded a final response upstream from a branch (`answered_by`:
    /// its device, `None` for the no-answer target); `forwarded`: the no-answer rule
    /// applied.
    pub fn forwarded(
        &mut self,
        code: u16,
        answered_by: Option<&str>,
        forwarded: bool,
    ) -> Option<PushOrder> {
        if !((200..300).contains(&code) || code >= 600) {
            return None;
        }
        let kind = if answered_by.is_none() && forwarded && code < 300 {
            CallPush::Missed
        } else {
            CallPush::Cancelled
        };
        self.end(kind, answered_by)
    }

    /// The call ended unanswered ([`Action::Respond`]).
    pub fn responded(&mut self) -> Option<PushOrder> {
        self.end(CallPush::Missed, None)
    }

    fn end(&mut self, kind: CallPush, answered_by: Option<&str>) -> Option<PushOrder> {
        if self.ended.is_some() {
            return None;
        }
        self.ended = Some(kind);
        let to: Vec<String> = self
            .pushed
            .iter()
            .filter(|i| answered_by.is_none_or(|a| !a.eq_ignore_ascii_case(i)))
            .cloned()
            .collect();
        (!to.is_empty()).then_some(PushOrder {
            kind,
            to: PushTo::Only(to),
        })
    }

    /// No `incoming_call` push is still being queued (the call's place under
    /// `max_transactions` can go once it is also answered).
    pub fn settled(&self) -> bool {
        self.pending == 0
    }
}
