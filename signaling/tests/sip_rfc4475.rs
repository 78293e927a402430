//! RFC 4475 torture messages (fixtures in tests/fixtures/rfc4475, written from the RFC
//! text): the valid ones parse, the invalid ones are rejected by the parser or by
//! request validation; then every fixture is sent to a running server, which answers
//! with the right status or drops the message, and keeps serving.

mod sip_support;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use sip_support::*;
use tandem_signaling::registrar::RegistrarConfig;
use tandem_signaling::sip::grammar::{name_addr, SipUri};
use tandem_signaling::sip::message::{HeaderName, Message, ParseError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn fixtures() -> HashMap<String, Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/rfc4475");
    let mut out = HashMap::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "sip") {
            out.insert(
                p.file_stem().unwrap().to_string_lossy().into_owned(),
                std::fs::read(&p).unwrap(),
            );
        }
    }
    out
}

const VALID_REQUESTS: &[&str] = &[
    "intmeth",
    "esc01",
    "escnull",
    "esc02",
    "lwsdisp",
    "dblreq",
    "semiuri",
    "transports",
    "mpart01",
    "escruri",
    "baddate",
    "regbadct",
    "unkscm",
    "novelsc",
    "unksm2",
    "bext01",
    "invut",
    "regaut01",
    "zeromf",
    "cparam01",
    "cparam02",
    "regescrt",
    "sdp01",
];
/// Syntactically valid, but the top Via carries no RFC 3261 branch: we answer 400
/// rather than run RFC 2543 transaction matching.
const VALID_WITHOUT_BRANCH: &[&str] = &["wsinv", "longreq"];
const VALID_RESPONSES: &[&str] = &["unreason", "noreason", "bcast"];
const INVALID: &[&str] = &[
    "badinv01",
    "clerr",
    "ncl",
    "scalar02",
    "scalarlg",
    "quotbal",
    "ltgtruri",
    "lwsruri",
    "lwsstart",
    "trws",
    "badaspec",
    "baddn",
    "badvers",
    "mismatch01",
    "mismatch02",
    "bigcode",
    "badbranch",
    "insuf",
    "multi01",
    "mcl01",
    "inv2543",
];

#[test]
fn every_fixture_is_classified() {
    let all = fixtures();
    assert_eq!(all.len(), 49);
    for name in all.keys() {
        let n = name.as_str();
        assert!(
            VALID_REQUESTS.contains(&n)
                || VALID_WITHOUT_BRANCH.contains(&n)
                || VALID_RESPONSES.contains(&n)
                || INVALID.contains(&n),
            "{n} unclassified"
        );
    }
}

#[test]
fn valid_messages_parse() {
    let all = fixtures();
    for name in VALID_REQUESTS {
        let m = Message::parse(&all[*name]).unwrap_or_else(|e| panic!("{name}: {e}"));
        m.validate_request()
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    for name in VALID_WITHOUT_BRANCH {
        let m = Message::parse(&all[*name]).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(m.validate_request(), Err(ParseError::Branch), "{name}");
    }
    for name in VALID_RESPONSES {
        let m = Message::parse(&all[*name]).unwrap_or_else(|e| panic!("{name}: {e}"));
        m.validate_response()
            .unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

#[test]
fn invalid_messages_are_rejected() {
    let all = fixtures();
    for name in INVALID {
        let rejected = match Message::parse(&all[*name]) {
            Err(_) => true,
            Ok(m) if m.is_request() => m.validate_request().is_err(),
            Ok(m) => m.validate_response().is_err(),
        };
        assert!(rejected, "{name} accepted");
    }
    let err = |n: &str| {
        Message::parse(&all[n])
            .and_then(|m| m.validate_request().map(|_| m.headers.len()))
            .err()
    };
    assert_eq!(err("badvers"), Some(ParseError::Version));
    assert_eq!(err("mismatch01"), Some(ParseError::CSeqMethod));
    assert_eq!(err("mismatch02"), Some(ParseError::CSeqMethod));
    assert_eq!(err("badbranch"), Some(ParseError::Branch));
    assert_eq!(err("inv2543"), Some(ParseError::Branch));
    assert_eq!(err("clerr"), Some(ParseError::Truncated));
    assert_eq!(err("ncl"), Some(ParseError::ContentLength));
    assert_eq!(err("mcl01"), Some(ParseError::ContentLength));
    assert_eq!(err("scalar02"), Some(ParseError::Malformed("CSeq")));
    assert_eq!(err("quotbal"), Some(ParseError::Malformed("To")));
    assert_eq!(err("baddn"), Some(ParseError::Malformed("To")));
    assert_eq!(err("badaspec"), Some(ParseError::Malformed("To")));
    assert!(matches!(err("insuf"), Some(ParseError::Missing(_))));
    for n in ["ltgtruri", "lwsruri", "lwsstart", "trws", "bigcode"] {
        assert_eq!(err(n), Some(ParseError::StartLine), "{n}");
    }
}

#[test]
fn torture_details() {
    let all = fixtures();
    let m = Message::parse(&all["wsinv"]).unwrap();
    let vias = m.vias().unwrap();
    let v: Vec<(&str, &str, Option<&str>)> = vias
        .iter()
        .map(|v| (v.transport, v.host, v.branch()))
        .collect();
    assert_eq!(
        v,
        vec![
            ("UDP", "192.0.2.2", Some("390skdjuw")),
            ("TCP", "spindle.example.com", Some("z9hG4bK9ikj8")),
            ("UDP", "192.168.255.111", Some("z9hG4bK30239"))
        ]
    );
    let from = m.from().unwrap();
    assert_eq!(from.display_name.as_deref(), Some("J Rosenberg \\\""));
    assert_eq!(from.params.value("tag"), Some("98asjd8"));
    assert_eq!(m.to().unwrap().params.value("tag"), Some("1918181833n"));
    assert_eq!(m.cseq(), Some((9, "INVITE")));
    assert_eq!(m.header(HeaderName::MaxForwards), Some("0068"));
    assert_eq!(m.header(HeaderName::Subject), Some(""));
    assert_eq!(
        m.header(HeaderName::Other("newfangledheader")),
        Some("newfangled value continued newfangled value")
    );
    assert_eq!(
        m.header(HeaderName::Other("UnknownHeaderWithUnusualValue")),
        Some(";;,,;;,;")
    );
    let c = m.list(HeaderName::Contact).unwrap();
    let c = name_addr(c[0]).unwrap();
    assert_eq!(c.display_name.as_deref(), Some("Quoted string \"\""));
    assert_eq!(c.params.value("newparam"), Some("newvalue"));
    assert_eq!(c.params.get("secondparam"), Some(None));
    assert_eq!(c.params.value("q"), Some("0.33"));
    assert_eq!(m.body.len(), 150);

    let m = Message::parse(&all["intmeth"]).unwrap();
    assert_eq!(
        m.method(),
        Some("!interesting-Method0123456789_*+`.%indeed'~")
    );
    assert_eq!(
        m.to().unwrap().display_name.as_deref(),
        Some("BEL:\x07 NUL:\0 DEL:\x7f")
    );
    assert_eq!(
        m.from().unwrap().params.value("fromParam''~+*_!.-%"),
        Some("работающий")
    );
    assert_eq!(
        m.header(HeaderName::Other("extensionHeader-!.%*+_`'~")),
        Some("\u{feff}大停電")
    );
    assert_eq!(
        m.call_id(),
        Some("intmeth.word%ZK-!.*_+'@word`~)(><:\\/\"][?}{")
    );

    let m = Message::parse(&all["esc01"]).unwrap();
    let ruri = SipUri::parse(m.request_uri().unwrap()).unwrap();
    assert_eq!(ruri.user_decoded().unwrap(), "sips:user@example.com");
    assert_eq!(
        SipUri::parse(m.to().unwrap().uri)
            .unwrap()
            .user_decoded()
            .unwrap(),
        "user"
    );
    let m = Message::parse(&all["escnull"]).unwrap();
    assert_eq!(
        SipUri::parse(m.to().unwrap().uri)
            .unwrap()
            .user_decoded()
            .unwrap(),
        "null-\0-null"
    );
    assert_eq!(m.list(HeaderName::Contact).unwrap().len(), 2);
    let m = Message::parse(&all["esc02"]).unwrap();
    assert_eq!(
        m.list(HeaderName::Contact).unwrap().len(),
        2,
        "C%6Fntact is not Contact"
    );
    let m = Message::parse(&all["dblreq"]).unwrap();
    assert!(
        m.body.is_empty(),
        "trailing octets after Content-Length are ignored"
    );
    let m = Message::parse(&all["semiuri"]).unwrap();
    let u = SipUri::parse(m.request_uri().unwrap()).unwrap();
    assert_eq!(
        (u.user, u.host),
        (Some("user;par=u%40example.net"), "example.com")
    );
    let m = Message::parse(&all["noreason"]).unwrap();
    assert_eq!(
        m.start,
        tandem_signaling::sip::message::StartLine::Response {
            code: 100,
            reason: ""
        }
    );
    let m = Message::parse(&all["mpart01"]).unwrap();
    assert!(m.body.ends_with(b"--7a9cbec02ceef655--\r\n"));
}

async fn status_over_tcp(addr: std::net::SocketAddr, bytes: Vec<u8>) -> Option<u16> {
    let mut s = TcpStream::connect(addr).await.ok()?;
    s.write_all(&bytes).await.ok()?;
    let mut buf = Vec::new();
    loop {
        let mut chunk = [0u8; 4096];
        let n = match tokio::time::timeout(Duration::from_millis(600), s.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => n,
            _ => return None,
        };
        buf.extend_from_slice(&chunk[..n]);
        if let tandem_signaling::sip::message::Framing::Message(len) =
            tandem_signaling::sip::message::frame_stream(&buf, 65536)
        {
            return Message::parse(&buf[..len]).ok()?.status();
        }
    }
}

#[tokio::test]
async fn server_answers_or_drops_every_torture_message() {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = store_with_account(&sqlite_url(&dir), &[]).await;
    let (server, shutdown) = start(store, sip_config(), RegistrarConfig::default()).await;
    let tcp = server.local_addrs().tcp.unwrap();
    let expected: &[(&str, Option<u16>)] = &[
        ("intmeth", Some(501)),
        ("esc02", Some(501)),
        // INVITE/MESSAGE for domains that are not ours: the proxy has no route (404).
        ("esc01", Some(404)),
        ("mpart01", Some(404)),
        ("escruri", Some(404)),
        ("baddate", Some(404)),
        ("invut", Some(404)),
        ("sdp01", Some(404)),
        ("lwsdisp", Some(200)),
        ("semiuri", Some(200)),
        ("transports", Some(200)),
        ("zeromf", Some(200)),
        ("escnull", Some(401)),
        ("dblreq", Some(401)),
        ("regbadct", Some(401)),
        ("regaut01", Some(401)),
        ("cparam01", Some(401)),
        ("cparam02", Some(401)),
        ("regescrt", Some(401)),
        ("unkscm", Some(416)),
        ("novelsc", Some(416)),
        ("unksm2", Some(416)),
        ("bext01", Some(420)),
        ("wsinv", Some(400)),
        ("longreq", Some(400)),
        ("scalar02", Some(400)),
        ("quotbal", Some(400)),
        ("badaspec", Some(400)),
        ("baddn", Some(400)),
        ("mismatch01", Some(400)),
        ("mismatch02", Some(400)),
        ("badbranch", Some(400)),
        ("insuf", Some(400)),
        // Unframeable on a stream (Content-Length missing, negative or repeated;
        // RFC 3261 18.3): 400, then the connection closes.
        ("inv2543", Some(400)),
        ("ncl", Some(400)),
        ("mcl01", Some(400)),
        // RFC 4475 3.3.15 / RFC 3261 21.5.6: 505 Version Not Supported.
        ("badvers", Some(505)),
        // Dropped: unroutable Via, a Content-Length past the data (the stream waits
        // for the rest), or an unparseable start line.
        ("badinv01", None),
        ("clerr", None),
        ("multi01", None),
        ("ltgtruri", None),
        ("lwsruri", None),
        ("lwsstart", None),
        ("trws", None),
        // Responses with no matching client transaction are dropped.
        ("unreason", None),
        ("noreason", None),
        ("bcast", None),
        ("scalarlg", None),
        ("bigcode", None),
    ];
    let all = fixtures();
    assert_eq!(expected.len(), all.len());
    let mut tasks = Vec::new();
    for (name, want) in expected {
        let bytes = all[*name].clone();
        tasks.push((*name, *want, tokio::spawn(status_over_tcp(tcp, bytes))));
    }
    let mut wrong = Vec::new();
    for (name, want, t) in tasks {
        let got = t.await.unwrap();
        if got != want {
            wrong.push(format!("{name}: got {got:?}, want {want:?}"));
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // Still serving.
    let ok = status_over_tcp(tcp, all["lwsdisp"].clone()).await;
    assert_eq!(ok, Some(200));
    shutdown.cancel();
    server.wait().await.unwrap();
}
