//! RFC 5769 test vectors: decode, check MESSAGE-INTEGRITY and FINGERPRINT in place,
//! read the addresses; and an independent decoder (`stun-rs`) reads what we encode.

use std::net::SocketAddr;

use tandem_relay::stun::integrity::{self, long_term_key_md5};
use tandem_relay::stun::{address, attr, message_type, method, Class, Message, MessageWriter};

fn hex(s: &str) -> Vec<u8> {
    let clean: String = s.split_whitespace().collect();
    ::hex::decode(clean).unwrap()
}

const REQUEST: &str = "
00 01 00 58 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
80 22 00 10 53 54 55 4e 20 74 65 73 74 20 63 6c 69 65 6e 74
00 24 00 04 6e 00 01 ff
80 29 00 08 93 2f f9 b1 51 26 3b 36
00 06 00 09 65 76 74 6a 3a 68 36 76 59 20 20 20
00 08 00 14 9a ea a7 0c bf d8 cb 56 78 1e f2 b5 b2 d3 f2 49 c1 b5 71 a2
80 28 00 04 e5 7a 3b cf";

const RESPONSE_V4: &str = "
01 01 00 3c 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
80 22 00 0b 74 65 73 74 20 76 65 63 74 6f 72 20
00 20 00 08 00 01 a1 47 e1 12 a6 43
00 08 00 14 2b 91 f5 99 fd 9e 90 c3 8c 74 89 f9 2a f9 ba 53 f0 6b e7 d7
80 28 00 04 c0 7d 4c 96";

const RESPONSE_V6: &str = "
01 01 00 48 21 12 a4 42 b7 e7 a7 01 bc 34 d6 86 fa 87 df ae
80 22 00 0b 74 65 73 74 20 76 65 63 74 6f 72 20
00 20 00 14 00 02 a1 47 01 13 a9 fa a5 d3 f1 79 bc 25 f4 b5 be d2 b9 d9
00 08 00 14 a3 82 95 4e 4b e6 7b f1 17 84 c9 7c 82 92 c2 75 bf e3 ed 41
80 28 00 04 c8 fb 0b 4c";

const LONG_TERM: &str = "
00 01 00 60 21 12 a4 42 78 ad 34 33 c6 ad 72 c0 29 da 41 2e
00 06 00 12 e3 83 9e e3 83 88 e3 83 aa e3 83 83 e3 82 af e3 82 b9 00 00
00 15 00 1c 66 2f 2f 34 39 39 6b 39 35 34 64 36 4f 4c 33 34 6f 4c 39 46 53 54 76 79 36 34 73 41
00 14 00 0b 65 78 61 6d 70 6c 65 2e 6f 72 67 00
00 08 00 14 f6 70 24 65 6d d6 4a 3e 02 b8 e0 71 2e 85 c9 a2 8c a8 96 66";

const SHORT_TERM_PASSWORD: &[u8] = b"VOkJxbRl1RmTxUk/WvJxBt";

fn check_integrity_and_fingerprint(m: &Message<'_>, key: &[u8]) {
    let mi = m.get(attr::MESSAGE_INTEGRITY).expect("MESSAGE-INTEGRITY");
    assert!(
        integrity::verify_sha1(m, &mi, key),
        "MESSAGE-INTEGRITY verifies"
    );
    assert!(!integrity::verify_sha1(m, &mi, b"wrong"), "wrong key fails");
    if let Some(fp) = m.get(attr::FINGERPRINT) {
        assert!(
            integrity::verify_fingerprint(m, &fp),
            "FINGERPRINT verifies"
        );
    }
}

#[test]
fn sample_request() {
    let p = hex(REQUEST);
    let m = Message::decode(&p).unwrap();
    assert_eq!(m.class(), Class::Request);
    assert_eq!(m.method(), method::BINDING);
    assert_eq!(m.get(attr::USERNAME).unwrap().value, b"evtj:h6vY");
    assert_eq!(m.get(attr::SOFTWARE).unwrap().value, b"STUN test client");
    assert_eq!(m.get(attr::PRIORITY).unwrap().value, [0x6e, 0, 1, 0xff]);
    check_integrity_and_fingerprint(&m, SHORT_TERM_PASSWORD);
    // Any flipped bit before the FINGERPRINT breaks it.
    for i in 0..p.len() - 4 {
        let mut q = p.clone();
        q[i] ^= 0x01;
        if let Ok(m) = Message::decode(&q) {
            if let Some(fp) = m.get(attr::FINGERPRINT) {
                assert!(!integrity::verify_fingerprint(&m, &fp), "bit {i}");
            }
        }
    }
}

#[test]
fn sample_ipv4_response() {
    let p = hex(RESPONSE_V4);
    let m = Message::decode(&p).unwrap();
    assert_eq!(m.class(), Class::SuccessResponse);
    let a = m.get(attr::XOR_MAPPED_ADDRESS).unwrap();
    let want: SocketAddr = "192.0.2.1:32853".parse().unwrap();
    assert_eq!(address::decode_xor(a.value, m.transaction_id()), Some(want));
    assert_eq!(m.get(attr::SOFTWARE).unwrap().value, b"test vector");
    check_integrity_and_fingerprint(&m, SHORT_TERM_PASSWORD);
}

#[test]
fn sample_ipv6_response() {
    let p = hex(RESPONSE_V6);
    let m = Message::decode(&p).unwrap();
    let a = m.get(attr::XOR_MAPPED_ADDRESS).unwrap();
    let want: SocketAddr = "[2001:db8:1234:5678:11:2233:4455:6677]:32853"
        .parse()
        .unwrap();
    assert_eq!(address::decode_xor(a.value, m.transaction_id()), Some(want));
    check_integrity_and_fingerprint(&m, SHORT_TERM_PASSWORD);
}

#[test]
fn sample_request_with_long_term_authentication() {
    let p = hex(LONG_TERM);
    let m = Message::decode(&p).unwrap();
    let user = m.get(attr::USERNAME).unwrap().value;
    assert_eq!(user, "マトリックス".as_bytes());
    assert_eq!(
        m.get(attr::NONCE).unwrap().value,
        b"f//499k954d6OL34oL9FSTvy64sA"
    );
    let realm = m.get(attr::REALM).unwrap().value;
    assert_eq!(realm, b"example.org");
    // The password after SASLprep is "TheMatrIX".
    let key = long_term_key_md5(user, realm, b"TheMatrIX");
    check_integrity_and_fingerprint(&m, &key);
}

#[test]
fn writer_output_is_read_by_an_independent_decoder() {
    use stun_rs::attributes::stun::{MessageIntegrity, XorMappedAddress};
    use stun_rs::{DecoderContextBuilder, HMACKey, MessageDecoderBuilder};

    let tid = [0x11u8; 12];
    let mut buf = [0u8; 256];
    let mut w = MessageWriter::new(
        &mut buf,
        message_type(method::BINDING, Class::SuccessResponse),
        &tid,
    )
    .unwrap();
    let mapped: SocketAddr = "[2001:db8::7]:40000".parse().unwrap();
    w.xor_address(attr::XOR_MAPPED_ADDRESS, &mapped).unwrap();
    w.integrity_sha1(b"short-term-key").unwrap();
    w.fingerprint().unwrap();
    let n = w.finish();

    let key = HMACKey::new_short_term("short-term-key").unwrap();
    let ctx = DecoderContextBuilder::default()
        .with_key(key)
        .with_validation()
        .build();
    let decoder = MessageDecoderBuilder::default().with_context(ctx).build();
    let (msg, size) = decoder
        .decode(&buf[..n])
        .expect("stun-rs decodes and validates");
    assert_eq!(size, n);
    let xma = msg
        .get::<XorMappedAddress>()
        .unwrap()
        .as_xor_mapped_address()
        .unwrap();
    assert_eq!(*xma.socket_address(), mapped);
    assert!(msg.get::<MessageIntegrity>().is_some());
}
