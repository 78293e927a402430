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

use std::collections::VecDeque;
use std::time::{Duration, Instant};

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
    actions: VecDeque<Action>,
}

impl Fork {
    /// `branches` client transactions were started at `now`. With none at all the
    /// request is answered 480 at once. `ring_timeout` applies to INVITE (RFC 3261
    /// 16.6 step 11, Timer C, here the configured ring time).
    pub fn new(now: Instant, branches: usize, invite: bool, ring_timeout: Duration) -> Fork {
        let mut f = Fork {
            invite,
            branches: vec![BranchState::Calling { cancel: None }; branches],
            answered: false,
            caller_cancelled: false,
            deadline: invite.then(|| now + ring_timeout),
            actions: VecDeque::new(),
        };
        if branches == 0 {
            f.finish(Final::Generated {
                code: 480,
                reason: "Temporarily Unavailable",
            });
        }
        f
    }

    /// Adds a branch to a request still in progress (a device that registered while
    /// the call rings, for example after a push). Returns its index, or `None` once
    /// the request is answered or cancelled.
    pub fn add_branch(&mut self) -> Option<usize> {
        if self.answered || self.caller_cancelled {
            return None;
        }
        self.branches.push(BranchState::Calling { cancel: None });
        Some(self.branches.len() - 1)
    }

    /// Next action for the glue.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// When `handle_timeout` must be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.answered {
            None
        } else {
            self.deadline
        }
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
        if !self.answered {
            self.answered = true;
            self.actions.push_back(Action::Respond(f));
        }
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
                if code >= 600 {
                    self.answered = true;
                    self.actions.push_back(Action::Forward { branch, code });
                    self.cancel_pending(Some(branch), CancelReason::GlobalFailure(code));
                    return;
                }
                self.finish_if_settled();
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
        self.cancel_pending(None, CancelReason::CallerCancelled);
        self.finish_if_settled();
    }

    /// Answers upstream once every branch has its final response, or (after the
    /// caller's CANCEL) has never answered at all: nothing rings there, and waiting for
    /// Timer B would hold the caller. Such a branch keeps its deferred CANCEL, sent
    /// if it answers later.
    fn finish_if_settled(&mut self) {
        let open = self
            .branches
            .iter()
            .filter(|b| !matches!(b, BranchState::Done(_)))
            .count();
        let silent = self
            .branches
            .iter()
            .filter(|b| matches!(b, BranchState::Calling { .. }))
            .count();
        if open == 0 {
            let best = self.best();
            self.finish(best);
        } else if self.caller_cancelled && open == silent {
            let best = self.best_with_open_as(487);
            self.finish(best);
        }
    }

    pub fn handle_timeout(&mut self, now: Instant) {
        let Some(d) = self.deadline else { return };
        if now < d || self.answered {
            return;
        }
        self.deadline = None;
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
