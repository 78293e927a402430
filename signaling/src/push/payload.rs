//! What a push says (seed manual, "PUSH notification types"): the type, the calling
//! party's login and display name, the call-id, the time, audio or video for calls and
//! an excerpt of a text message's body.

use serde::{Deserialize, Serialize};

/// Length of the text excerpt in a `text_message` push, in characters.
pub const EXCERPT_CHARS: usize = 40;

/// Content type of system commands: MESSAGEs that the app processes without showing
/// them (contact updates, file announcements, ...). They are deferred like any other
/// message but never pushed. Configurable as `push.system_command_content_type`.
pub const DEFAULT_SYSTEM_COMMAND_TYPE: &str = "application/vnd.tandem.command+json";

/// Type of a push notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PushKind {
    IncomingCall,
    MissedCall,
    CallCancelled,
    TextMessage,
    Picture,
    Video,
    Audio,
    Voicemail,
}

impl PushKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PushKind::IncomingCall => "incoming_call",
            PushKind::MissedCall => "missed_call",
            PushKind::CallCancelled => "call_cancelled",
            PushKind::TextMessage => "text_message",
            PushKind::Picture => "picture",
            PushKind::Video => "video",
            PushKind::Audio => "audio",
            PushKind::Voicemail => "voicemail",
        }
    }

    /// Call events wake the app at once (APNs VoIP push, FCM high priority, short TTL).
    pub fn is_call(self) -> bool {
        matches!(
            self,
            PushKind::IncomingCall | PushKind::MissedCall | PushKind::CallCancelled
        )
    }

    /// The push a MESSAGE of this content type gives an offline device: text for
    /// `text/*`, the attachment's type for `image/*`, `video/*`, `audio/*`; `None` for
    /// system commands (`system_type`) and for anything else (typing indications,
    /// receipts, unknown application types), which are deferred but not pushed.
    pub fn for_message(content_type: &str, system_type: &str) -> Option<PushKind> {
        let essence = content_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        let system = system_type
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_ascii_lowercase();
        if essence.is_empty() || essence == system {
            return None;
        }
        let (top, _) = essence.split_once('/')?;
        match top {
            "text" => Some(PushKind::TextMessage),
            "image" => Some(PushKind::Picture),
            "video" => Some(PushKind::Video),
            "audio" => Some(PushKind::Audio),
            _ => None,
        }
    }
}

/// One notification. Built by the proxy; providers format it for their wire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PushPayload {
    #[serde(rename = "type")]
    pub kind: PushKind,
    /// SIP login of the calling party or sender.
    pub caller_login: String,
    /// Display name of the calling party (the From display name; empty when none).
    pub caller_display_name: String,
    /// Call-ID of the parked call (calls) or of the MESSAGE.
    pub call_id: String,
    /// Unix seconds of the event.
    pub timestamp: i64,
    /// Video call (`false`: audio). Ignored for messages.
    pub video: bool,
    /// Text excerpt for `text_message` (see [`excerpt`]).
    pub body: Option<String>,
}

impl PushPayload {
    /// Payload for a MESSAGE to an offline device, or `None` when this content type
    /// is not pushed (see [`PushKind::for_message`]). A text body is cut to
    /// [`EXCERPT_CHARS`] characters.
    pub fn for_message(
        content_type: &str,
        body: &[u8],
        system_type: &str,
        caller_login: &str,
        caller_display_name: &str,
        call_id: &str,
        timestamp: i64,
    ) -> Option<PushPayload> {
        let kind = PushKind::for_message(content_type, system_type)?;
        // The notification shows the text: surrounding blank lines and spaces of
        // the body are not part of it.
        let body = (kind == PushKind::TextMessage)
            .then(|| excerpt(String::from_utf8_lossy(body).trim(), EXCERPT_CHARS));
        Some(PushPayload {
            kind,
            caller_login: caller_login.to_owned(),
            caller_display_name: caller_display_name.to_owned(),
            call_id: call_id.to_owned(),
            timestamp,
            video: false,
            body,
        })
    }

    /// The media of a call event: `"video"` or `"audio"`; `None` for messages.
    pub fn media(&self) -> Option<&'static str> {
        self.kind
            .is_call()
            .then_some(if self.video { "video" } else { "audio" })
    }

    /// The provider-neutral JSON object every provider carries (as its data).
    pub fn to_json(&self) -> serde_json::Value {
        let mut v = serde_json::json!({
            "type": self.kind.as_str(),
            "caller_login": self.caller_login,
            "call_id": self.call_id,
            "timestamp": self.timestamp,
        });
        if let Some(obj) = v.as_object_mut() {
            obj.insert(
                "caller_display_name".into(),
                self.caller_display_name.clone().into(),
            );
            if let Some(m) = self.media() {
                obj.insert("media".into(), m.into());
            }
            if let Some(b) = &self.body {
                obj.insert("body".into(), b.clone().into());
            }
        }
        v
    }

    /// The same fields as string pairs (FCM `data` values must be strings).
    pub fn to_string_map(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut m = serde_json::Map::new();
        if let serde_json::Value::Object(obj) = self.to_json() {
            for (k, v) in obj {
                let s = match v {
                    serde_json::Value::String(s) => s,
                    other => other.to_string(),
                };
                m.insert(k, s.into());
            }
        }
        m
    }

    /// A short human text for alert pushes (iOS shows it without waking the app).
    pub fn alert_text(&self) -> String {
        let who = if self.caller_display_name.is_empty() {
            &self.caller_login
        } else {
            &self.caller_display_name
        };
        match self.kind {
            PushKind::IncomingCall if self.video => format!("Incoming video call from {who}"),
            PushKind::IncomingCall => format!("Incoming call from {who}"),
            PushKind::MissedCall => format!("Missed call from {who}"),
            PushKind::CallCancelled => format!("Call from {who} answered elsewhere"),
            PushKind::TextMessage => self.body.clone().unwrap_or_default(),
            PushKind::Picture => format!("{who} sent a picture"),
            PushKind::Video => format!("{who} sent a video"),
            PushKind::Audio => format!("{who} sent an audio message"),
            PushKind::Voicemail => format!("New voicemail from {who}"),
        }
    }
}

/// `text` cut to `max` characters (Unicode scalar values, so never inside a UTF-8
/// sequence) followed by an ellipsis when it was longer; unchanged otherwise.
pub fn excerpt(text: &str, max: usize) -> String {
    match text.char_indices().nth(max) {
        Some((cut, _)) => {
            let mut s = String::with_capacity(cut + 3);
            s.push_str(&text[..cut]);
            s.push('\u{2026}');
            s
        }
        None => text.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_text_is_trimmed_before_the_excerpt() {
        let p = PushPayload::for_message(
            "text/plain",
            b"\r\n  on my way\r\n",
            "application/x-system",
            "bob",
            "Bob",
            "c1",
            1,
        )
        .unwrap();
        assert_eq!(p.body.as_deref(), Some("on my way"));
    }

    #[test]
    fn excerpt_cuts_on_char_boundaries() {
        assert_eq!(excerpt("short", 40), "short");
        let forty = "a".repeat(40);
        assert_eq!(excerpt(&forty, 40), forty);
        let long = format!("{forty}b");
        assert_eq!(excerpt(&long, 40), format!("{forty}\u{2026}"));
        // Multi-byte characters: 41 of them, each 4 bytes.
        let emoji = "\u{1F600}".repeat(41);
        let e = excerpt(&emoji, 40);
        assert_eq!(e.chars().count(), 41);
        assert!(e.ends_with('\u{2026}'));
        assert_eq!(e.chars().filter(|c| *c == '\u{1F600}').count(), 40);
    }

    #[test]
    fn excerpt_of_random_text_is_a_char_prefix() {
        use rand::Rng;
        let mut rng = rand::rng();
        for _ in 0..2000 {
            let len = rng.random_range(0..120);
            let text: String = (0..len)
                .map(|_| match rng.random_range(0..4) {
                    0 => rng.random_range('a'..='z'),
                    1 => rng.random_range('\u{80}'..='\u{7ff}'),
                    2 => rng.random_range('\u{800}'..='\u{d7ff}'),
                    _ => rng.random_range('\u{10000}'..='\u{10ffff}'),
                })
                .collect();
            let e = excerpt(&text, EXCERPT_CHARS);
            let n = text.chars().count();
            if n <= EXCERPT_CHARS {
                assert_eq!(e, text);
            } else {
                assert_eq!(e.chars().count(), EXCERPT_CHARS + 1);
                let kept = e.strip_suffix('\u{2026}').unwrap();
                assert!(text.starts_with(kept));
            }
            // Arbitrary bytes as a body never panic either.
            let bytes: Vec<u8> = (0..len).map(|_| rng.random()).collect();
            let _ = PushPayload::for_message(
                "text/plain",
                &bytes,
                DEFAULT_SYSTEM_COMMAND_TYPE,
                "a",
                "",
                "c",
                0,
            );
            let _ = PushKind::for_message(&text, DEFAULT_SYSTEM_COMMAND_TYPE);
        }
    }

    #[test]
    fn kinds_by_content_type() {
        let sys = DEFAULT_SYSTEM_COMMAND_TYPE;
        assert_eq!(
            PushKind::for_message("text/plain;charset=UTF-8", sys),
            Some(PushKind::TextMessage)
        );
        assert_eq!(
            PushKind::for_message("IMAGE/JPEG", sys),
            Some(PushKind::Picture)
        );
        assert_eq!(
            PushKind::for_message("video/mp4", sys),
            Some(PushKind::Video)
        );
        assert_eq!(
            PushKind::for_message("audio/amr", sys),
            Some(PushKind::Audio)
        );
        assert_eq!(
            PushKind::for_message("application/vnd.tandem.command+json; v=1", sys),
            None
        );
        assert_eq!(
            PushKind::for_message("application/im-iscomposing+xml", sys),
            None
        );
        assert_eq!(PushKind::for_message("", sys), None);
        assert_eq!(PushKind::for_message("garbage", sys), None);
    }
}
