//! Prefix dial plan for requests that are not for an account of ours (ONNET versus
//! OFFNET, seed "Routing"): longest prefix match over the dialled digits; a leading
//! `int` marks the call OFFNET (it is never looked up as an account) and is stripped
//! before matching. Pure data and matching; the proxy sends the request.

use serde::{Deserialize, Serialize};

/// `[dialplan]` section.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DialPlanConfig {
    /// The prefix that marks a dialled number OFFNET (seed: `int`).
    pub offnet_prefix: String,
    /// Routes, matched by longest prefix.
    pub routes: Vec<DialRoute>,
}

impl Default for DialPlanConfig {
    fn default() -> Self {
        DialPlanConfig {
            offnet_prefix: "int".to_owned(),
            routes: Vec::new(),
        }
    }
}

/// One `[[dialplan.routes]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DialRoute {
    /// Digits (and `*`, `#`) the dialled number starts with; empty matches everything.
    pub prefix: String,
    /// Where to send: `sip:host:port` or `host:port` of a gateway or another SIP server
    /// (UDP).
    pub target: String,
    /// How many leading characters to remove from the dialled number.
    #[serde(default)]
    pub strip: usize,
    /// What to put in front of the number after stripping.
    #[serde(default)]
    pub prepend: String,
    /// Optional human-readable name, shown to clients.
    #[serde(default)]
    pub name: Option<String>,
}

impl DialRoute {
    /// `host:port` of the target (port 5060 when absent).
    pub fn host_port(&self) -> Option<(String, u16)> {
        let t = self.target.trim();
        let t = crate::sip::grammar::strip_prefix_ci(t, "sip:").unwrap_or(t);
        let t = t.split(';').next().unwrap_or(t);
        let (h, p) = crate::sip::grammar::host_port(t)?;
        if h.contains('@') {
            return None;
        }
        Some((h.trim_matches(['[', ']']).to_owned(), p.unwrap_or(5060)))
    }
}

fn dial_chars_ok(s: &str) -> bool {
    s.bytes()
        .all(|b| b.is_ascii_digit() || b == b'*' || b == b'#')
}

impl DialPlanConfig {
    /// Checks the plan; the error names the key.
    pub fn validate(&self) -> Result<(), String> {
        if self.offnet_prefix.is_empty()
            || !self
                .offnet_prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric())
        {
            return Err("dialplan.offnet_prefix: must be letters or digits".into());
        }
        for (i, r) in self.routes.iter().enumerate() {
            if !dial_chars_ok(&r.prefix) {
                return Err(format!("dialplan.routes[{i}].prefix: digits, * and # only"));
            }
            if !dial_chars_ok(&r.prepend) {
                return Err(format!(
                    "dialplan.routes[{i}].prepend: digits, * and # only"
                ));
            }
            if r.host_port().is_none() {
                return Err(format!(
                    "dialplan.routes[{i}].target: expected sip:host:port or host:port"
                ));
            }
            if self.routes[..i].iter().any(|o| o.prefix == r.prefix) {
                return Err(format!("dialplan.routes[{i}].prefix: duplicate prefix"));
            }
        }
        Ok(())
    }
}

/// The result of routing a dialled number.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Routed<'a> {
    pub route: &'a DialRoute,
    /// The number to put in the Request-URI's user part.
    pub number: String,
    /// The caller marked the call OFFNET with the prefix.
    pub offnet: bool,
}

/// Splits the OFFNET mark off a dialled user part: (`true`, rest) when it starts with
/// the prefix (case-insensitive).
pub fn split_offnet<'a>(plan: &DialPlanConfig, user: &'a str) -> (bool, &'a str) {
    match crate::sip::grammar::strip_prefix_ci(user, &plan.offnet_prefix) {
        Some(rest) if !rest.is_empty() => (true, rest),
        _ => (false, user),
    }
}

/// Longest-prefix route for a dialled user part (a leading `+` and visual separators
/// are ignored for matching and dropped from the number sent on).
pub fn route<'a>(plan: &'a DialPlanConfig, user: &str) -> Option<Routed<'a>> {
    let (offnet, rest) = split_offnet(plan, user);
    let digits: String = rest
        .chars()
        .filter(|c| !matches!(c, ' ' | '-' | '.' | '(' | ')'))
        .collect();
    let digits = digits.strip_prefix('+').unwrap_or(&digits).to_owned();
    if digits.is_empty() || !dial_chars_ok(&digits) {
        return None;
    }
    let route = plan
        .routes
        .iter()
        .filter(|r| digits.starts_with(&r.prefix))
        .max_by_key(|r| r.prefix.len())?;
    let kept = digits.get(route.strip.min(digits.len())..).unwrap_or("");
    Some(Routed {
        route,
        number: format!("{}{kept}", route.prepend),
        offnet,
    })
}
