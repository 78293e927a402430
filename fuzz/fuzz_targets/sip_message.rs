#![no_main]
//! SIP message parser, stream framer, header grammar (Via, name-addr, SIP URI, CSeq,
//! digest credentials), the registrar's digest verification on whatever parses, and
//! the STUN keep-alive answer of the SIP UDP port.

use libfuzzer_sys::fuzz_target;
use tandem_signaling::model::AccountCredentials;
use tandem_signaling::registrar::core::Registrar;
use tandem_signaling::registrar::RegistrarConfig;
use tandem_signaling::sip::grammar::{cseq, name_addr, AuthParams, SipUri, Via};
use tandem_signaling::sip::message::{frame_stream, HeaderName, Message};

fuzz_target!(|data: &[u8]| {
    let mut out = [0u8; tandem_signaling::sip::stun::MAX_ANSWER];
    let from = std::net::SocketAddr::from(([192, 0, 2, 1], 5060));
    let _ = tandem_signaling::sip::stun::answer_binding(data, from, &mut out);
    let _ = frame_stream(data, 16 * 1024);
    let Ok(m) = Message::parse(data) else { return };
    let _ = m.validate_request();
    let _ = m.validate_response();
    let _ = m.vias();
    if let Some(to) = m.to() {
        if let Some(u) = SipUri::parse(to.uri) {
            let _ = u.user_decoded();
        }
    }
    if let Ok(contacts) = m.list(HeaderName::Contact) {
        for c in contacts {
            if let Some(na) = name_addr(c) {
                let _ = na.params.value("+sip.instance");
                let _ = SipUri::parse(na.uri);
            }
        }
    }
    let mut auths = Vec::new();
    for h in &m.headers {
        let _ = Via::parse(&h.value);
        let _ = cseq(&h.value);
        if let Some(a) = AuthParams::parse(&h.value) {
            auths.push(a);
        }
    }
    if !auths.is_empty() {
        let mut r = Registrar::new(RegistrarConfig::default(), "tandem.local".into(), vec![7; 32]);
        let creds = AccountCredentials {
            id: 1,
            login: "alice".into(),
            ha1_md5: "0".repeat(32),
            ha1_sha256: "0".repeat(64),
            country_code: "1".into(),
            no_answer_forward: None,
            media: Default::default(),
        };
        let ip = std::net::IpAddr::from([192, 0, 2, 1]);
        let _ = r.authenticate(&auths, "REGISTER", Some(&creds), ip, 1_700_000_000);
    }
});
