//! Bounded fuzzing in the suite (proptest, fixed case counts, a few seconds
//! in all): key parsing, query parsing and every internal decoder. The
//! properties: nothing panics; decoding what was encoded gives it back;
//! bad input is an error (a 400 JSON answer over HTTP), and good input is
//! not refused.
//!
//! The HTTP properties run in-process against a node that is not
//! registered (no ZooKeeper): a request that passes every check then meets
//! `503 not_registered`, so the status alone tells "refused as bad input"
//! from "accepted". Failing cases proptest finds are kept small in
//! `tests/fuzz.proptest-regressions` and replayed first.

use actix_web::dev::{Service, ServiceResponse};
use actix_web::http::Method;
use actix_web::test::{call_service, init_service, read_body, TestRequest};
use actix_web::web::ThinData;
use actix_web::App;
use bytes::Bytes;
use proptest::prelude::*;
use proptest::test_runner::{Config, FileFailurePersistence, TestRunner};
use treecache::config::NodeArgs;
use treecache::node::Node;
use treecache::resp::frame::{encode_command, Decoder, Frame, Limits, Refused, MAX_BULK, MAX_INLINE};
use treecache::store::{check_key, Condition, Update, WriteId, MAX_KEY_BYTES};
use treecache::wire::{
    decode_pushes, decode_writes, encode_pushes, encode_updates, encode_writes, KeyList, Push, PushReply,
    RegisterRequest, Topology, Write, WriteResults,
};

const CASES: u32 = 512;
/// Large enough for the byte-flip property to reach the flags byte of
/// every update kind; still about a second.
const FLIP_CASES: u32 = 2048;
const MAX_VALUE: usize = 64;

/// Random seeds (each run explores new inputs); a failure is saved to
/// `tests/fuzz.proptest-regressions` and replayed first on later runs.
fn config() -> Config {
    Config {
        cases: CASES,
        source_file: Some(file!()),
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("proptest-regressions"))),
        ..Config::default()
    }
}

/// What the node's key check should say, written from DESIGN.md rather
/// than from the code: 1–250 bytes of UTF-8, no control characters.
fn key_is_valid(bytes: &[u8]) -> bool {
    match std::str::from_utf8(bytes) {
        Ok(s) => (1..=MAX_KEY_BYTES).contains(&s.len()) && !s.chars().any(char::is_control),
        Err(_) => false,
    }
}

/// Percent-encodes every byte: what a client that escapes all does.
fn escape_all(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("%{b:02X}")).collect()
}

fn any_update() -> impl Strategy<Value = Update> {
    (
        "\\PC{1,40}",
        any::<u64>(),
        proptest::option::of(proptest::collection::vec(any::<u8>(), 0..64)),
        proptest::option::of(any::<u64>()),
    )
        .prop_map(|(key, version, value, expires_at)| Update {
            key,
            version,
            value: value.map(Bytes::from),
            expires_at,
        })
}

/// A pushed update, with or without the root's commit time.
fn any_push() -> impl Strategy<Value = Push> {
    (any_update(), proptest::option::of(any::<u64>())).prop_map(|(update, committed_us)| Push { update, committed_us })
}

#[test]
fn check_key_accepts_exactly_the_keys_design_md_allows() {
    let keys = prop_oneof![
        "\\PC{0,260}",
        ".{0,260}",
        proptest::collection::vec(any::<char>(), 0..300).prop_map(String::from_iter),
    ];
    TestRunner::new(config())
        .run(&keys, |key| {
            prop_assert_eq!(check_key(&key).is_ok(), key_is_valid(key.as_bytes()), "{:?}", key);
            Ok(())
        })
        .unwrap();
}

#[test]
fn batches_round_trip() {
    TestRunner::new(config())
        .run(&proptest::collection::vec(any_push(), 0..20), |pushes| {
            let encoded = encode_pushes(&pushes);
            prop_assert_eq!(decode_pushes(&encoded).map_err(TestCaseError::fail)?, pushes);
            Ok(())
        })
        .unwrap();
}

fn any_condition() -> impl Strategy<Value = Condition> {
    prop_oneof![
        Just(Condition::Always),
        Just(Condition::IfAbsent),
        Just(Condition::IfPresent),
        any::<u64>().prop_map(Condition::IfVersion),
    ]
}

fn any_write() -> impl Strategy<Value = Write> {
    (any_update(), any::<(u64, u64, u64)>(), any::<bool>(), any_condition()).prop_map(
        |(update, (origin, incarnation, seq), ack_root, cond)| Write {
            update,
            id: WriteId { origin, incarnation, seq },
            ack_root,
            cond,
        },
    )
}

#[test]
fn write_batches_round_trip_and_are_not_pushes() {
    TestRunner::new(config())
        .run(&proptest::collection::vec(any_write(), 1..12), |writes| {
            let encoded = encode_writes(&writes);
            prop_assert_eq!(decode_writes(&encoded).map_err(TestCaseError::fail)?, writes);
            prop_assert!(decode_pushes(&encoded).is_err(), "a write batch is no push");
            Ok(())
        })
        .unwrap();
}

#[test]
fn a_write_batch_with_one_byte_changed_decodes_to_what_it_says_or_is_an_error() {
    let cases = (proptest::collection::vec(any_write(), 1..4), any::<prop::sample::Index>(), 1u8..=255);
    TestRunner::new(Config { cases: FLIP_CASES, ..config() })
        .run(&cases, |(writes, at, flip)| {
            let mut bytes = encode_writes(&writes).to_vec();
            let i = at.index(bytes.len());
            bytes[i] ^= flip;
            if let Ok(decoded) = decode_writes(&Bytes::from(bytes.clone())) {
                prop_assert_eq!(&encode_writes(&decoded)[..], &bytes[..], "byte {} ^ {:#x}", i, flip);
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn a_cut_or_padded_batch_is_an_error() {
    let cases = (proptest::collection::vec(any_push(), 1..8), any::<prop::sample::Index>(), 1u8..=255);
    TestRunner::new(config())
        .run(&cases, |(pushes, cut, pad)| {
            let encoded = encode_pushes(&pushes);
            let at = cut.index(encoded.len());
            prop_assert!(decode_pushes(&encoded.slice(..at)).is_err(), "cut at {}", at);
            let mut padded = encoded.to_vec();
            padded.push(pad);
            prop_assert!(decode_pushes(&Bytes::from(padded)).is_err());
            Ok(())
        })
        .unwrap();
}

#[test]
fn decoding_arbitrary_bytes_never_panics() {
    let bytes = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..256),
        // A plausible header, then noise: reaches deeper into the decoder.
        (1u32..4, proptest::collection::vec(any::<u8>(), 0..128)).prop_map(|(n, rest)| {
            let mut b = n.to_be_bytes().to_vec();
            b.extend(rest);
            b
        }),
    ];
    TestRunner::new(config())
        .run(&bytes, |bytes| {
            if let Ok(pushes) = decode_pushes(&Bytes::from(bytes.clone())) {
                // Whatever decodes, encodes back to the same bytes.
                prop_assert_eq!(&encode_pushes(&pushes)[..], &bytes[..]);
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn json_messages_round_trip_and_garbage_is_an_error() {
    fn round_trip<T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug>(
        value: &T,
    ) -> Result<(), TestCaseError> {
        let text = serde_json::to_vec(value).map_err(|e| TestCaseError::fail(e.to_string()))?;
        let back: T = serde_json::from_slice(&text).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&back, value);
        Ok(())
    }
    let keys = proptest::collection::vec("\\PC{0,20}", 0..8);
    TestRunner::new(config())
        .run(&(keys, proptest::collection::vec(any::<u8>(), 0..64)), |(keys, garbage)| {
            round_trip(&KeyList { keys: keys.clone() })?;
            round_trip(&PushReply { not_held: keys })?;
            // Bytes that are not a JSON object never decode into a message.
            if serde_json::from_slice::<serde_json::Value>(&garbage).map_or(true, |v| !v.is_object()) {
                prop_assert!(serde_json::from_slice::<RegisterRequest>(&garbage).is_err());
                prop_assert!(serde_json::from_slice::<Topology>(&garbage).is_err());
                prop_assert!(serde_json::from_slice::<KeyList>(&garbage).is_err());
                prop_assert!(serde_json::from_slice::<PushReply>(&garbage).is_err());
                prop_assert!(serde_json::from_slice::<WriteResults>(&garbage).is_err());
            }
            Ok(())
        })
        .unwrap();
}

/// An unregistered node's routes, in-process, and a way to call them from
/// proptest's synchronous closures.
struct Harness<S> {
    system: actix_web::rt::SystemRunner,
    app: S,
    node: Node,
}

type Request = actix_http::Request;

const SECRET: &str = "fuzz-cluster-secret-0123456789";

impl Harness<()> {
    #[allow(clippy::new_ret_no_self)]
    fn new() -> Harness<impl Service<Request, Response = ServiceResponse, Error = actix_web::Error>> {
        let system = actix_web::rt::System::new();
        let (node, app) = system.block_on(async {
            let args = NodeArgs::try_parse_from([
                "--zk",
                "127.0.0.1:1",
                "--max-value-bytes",
                "64",
                // No ZooKeeper: the node never registers. Its answers are
                // what is checked here, not the wait for a leader.
                "--failover-wait",
                "0",
                "--cluster-secret",
                SECRET,
            ])
            .expect("node flags");
            let node = Node::new(args).expect("node");
            let app = init_service(
                App::new().app_data(ThinData(node.clone())).configure(|cfg| treecache::http::routes(cfg, MAX_VALUE)),
            )
            .await;
            (node, app)
        });
        Harness { system, app, node }
    }
}

impl<S: Service<Request, Response = ServiceResponse, Error = actix_web::Error>> Harness<S> {
    /// Status, and the error code when the answer is a JSON error. Sent as
    /// a member would (with the cluster secret): what is fuzzed here is the
    /// parsing behind the secret check (tests/security.rs has the check).
    fn call(&self, req: TestRequest) -> (u16, Option<String>) {
        let req = req.insert_header(("x-treecache-secret", SECRET));
        self.system.block_on(async {
            let resp = call_service(&self.app, req.to_request()).await;
            let status = resp.status().as_u16();
            let body = read_body(resp).await;
            let code = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["code"].as_str().map(str::to_string));
            (status, code)
        })
    }

    fn assert_unchanged(&self) {
        assert!(self.node.store().is_empty(), "bad input changed nothing, good input met not_registered");
    }
}

/// 400 with a JSON code when `valid` is false, `503 not_registered` when true.
fn expect(answer: (u16, Option<String>), valid: bool, what: &str) -> Result<(), TestCaseError> {
    let (status, code) = answer;
    if valid {
        prop_assert_eq!((status, code.as_deref()), (503, Some("not_registered")), "{} was refused", what);
    } else {
        prop_assert_eq!(status, 400, "{} was accepted ({:?})", what, code);
        prop_assert!(code.is_some(), "{}: a 400 without the JSON error shape", what);
    }
    Ok(())
}

#[test]
fn any_percent_encoded_key_is_checked_before_anything_else() {
    let h = Harness::new();
    let raw = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..300),
        "\\PC{0,120}".prop_map(String::into_bytes),
        proptest::collection::vec(prop_oneof![Just(b'/'), Just(b'%'), Just(b'a'), Just(0u8), Just(0xC3)], 0..20),
    ];
    TestRunner::new(config())
        .run(&(raw, 0..4usize), |(bytes, m)| {
            let method = [Method::GET, Method::HEAD, Method::PUT, Method::DELETE][m].clone();
            let uri = format!("/kv/{}", escape_all(&bytes));
            let req = TestRequest::default().method(method.clone()).uri(&uri).set_payload("v");
            let (status, code) = h.call(req);
            let valid = key_is_valid(&bytes);
            if method == Method::HEAD {
                // No body on HEAD: the status alone.
                prop_assert_eq!(status, if valid { 503 } else { 400 }, "HEAD {}", uri);
                Ok(())
            } else {
                expect((status, code), valid, &format!("{method} {uri}"))
            }
        })
        .unwrap();
    h.assert_unchanged();
}

/// One query parameter: a name the routes know or not, and a value that is
/// sometimes right for it.
fn query_pair() -> impl Strategy<Value = (String, String)> {
    let name = prop_oneof![
        Just("ttl"),
        Just("ack"),
        Just("consistent"),
        Just("use_cache"),
        Just("mode"),
        Just("TTL"),
        Just(""),
    ];
    let value = prop_oneof![
        Just("true".to_string()),
        Just("false".to_string()),
        Just("1".to_string()),
        Just("0".to_string()),
        Just("parent".to_string()),
        Just("root".to_string()),
        Just("315360000".to_string()),
        Just("315360001".to_string()),
        Just("18446744073709551616".to_string()),
        Just("-1".to_string()),
        (1u64..100_000).prop_map(|n| n.to_string()),
        "\\PC{0,6}",
    ];
    (name.prop_map(str::to_string), value)
}

/// Whether a GET (`write` false) or a PUT's query is valid, from DESIGN.md:
/// only known names; booleans true/false/1/0; consistent and use_cache
/// must not contradict; ttl 1 second to ten years; ack parent or root.
/// A repeated name counts its last value.
fn query_is_valid(pairs: &[(String, String)], write: bool) -> bool {
    let allowed: &[&str] = if write { &["ttl", "ack"] } else { &["consistent", "use_cache"] };
    if pairs.iter().any(|(n, _)| !allowed.contains(&n.as_str())) {
        return false;
    }
    let last = |name: &str| pairs.iter().rev().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
    let boolean = |v: Option<&str>| match v {
        None => Ok(None),
        Some("true" | "1") => Ok(Some(true)),
        Some("false" | "0") => Ok(Some(false)),
        Some(_) => Err(()),
    };
    if write {
        let ttl_ok = last("ttl").is_none_or(|v| v.parse::<u64>().is_ok_and(|t| (1..=315_360_000).contains(&t)));
        let ack_ok = last("ack").is_none_or(|v| v == "parent" || v == "root");
        ttl_ok && ack_ok
    } else {
        match (boolean(last("consistent")), boolean(last("use_cache"))) {
            (Ok(Some(c)), Ok(Some(u))) => c != u,
            (Ok(_), Ok(_)) => true,
            _ => false,
        }
    }
}

fn query_string(pairs: &[(String, String)]) -> String {
    let enc = |s: &str| escape_all(s.as_bytes());
    pairs.iter().map(|(n, v)| format!("{}={}", enc(n), enc(v))).collect::<Vec<_>>().join("&")
}

#[test]
fn read_and_write_queries_are_refused_exactly_when_bad() {
    let h = Harness::new();
    let cases = (proptest::collection::vec(query_pair(), 0..4), any::<bool>());
    TestRunner::new(config())
        .run(&cases, |(pairs, write)| {
            let uri = format!("/kv/k?{}", query_string(&pairs));
            let req = if write { TestRequest::put().uri(&uri).set_payload("v") } else { TestRequest::get().uri(&uri) };
            expect(h.call(req), query_is_valid(&pairs, write), &uri)
        })
        .unwrap();
    h.assert_unchanged();
}

#[test]
fn a_delete_takes_only_ack() {
    let h = Harness::new();
    TestRunner::new(config())
        .run(&proptest::collection::vec(query_pair(), 0..3), |pairs| {
            let valid =
                pairs.iter().all(|(n, _)| n == "ack") && pairs.last().is_none_or(|(_, v)| v == "parent" || v == "root");
            let uri = format!("/kv/k?{}", query_string(&pairs));
            expect(h.call(TestRequest::delete().uri(&uri)), valid, &uri)
        })
        .unwrap();
    h.assert_unchanged();
}

#[test]
fn internal_routes_refuse_garbage_bodies_without_panicking() {
    let h = Harness::new();
    let routes = prop_oneof![
        Just("/clients/register"),
        Just("/internal/push"),
        Just("/internal/write?child=2"),
        Just("/internal/topology"),
        Just("/internal/leave"),
    ];
    let body = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..200),
        "\\PC{0,80}".prop_map(String::into_bytes),
        Just(b"{}".to_vec()),
        Just(br#"{"url":"http://a"}"#.to_vec()),
        Just(br#"{"id":1}"#.to_vec()),
    ];
    TestRunner::new(config())
        .run(&(routes, body), |(route, body)| {
            let (status, code) = h.call(TestRequest::post().uri(route).set_payload(body.clone()));
            // Bad bodies are 400 (413 when over the limit); a well-formed
            // message meets the unregistered node (503). Never 5xx of our own.
            prop_assert!(matches!(status, 400 | 413 | 503), "{} {:?}: {} {:?}", route, body, status, code);
            prop_assert!(code.is_some(), "{}: not the JSON error shape", route);
            if status == 503 {
                prop_assert_eq!(code.as_deref(), Some("not_registered"));
            }
            Ok(())
        })
        .unwrap();
    h.assert_unchanged();
}

#[test]
fn fill_queries_are_checked() {
    let h = Harness::new();
    let value = prop_oneof![
        (0u64..1000).prop_map(|n| n.to_string()),
        Just("-1".to_string()),
        Just("x".to_string()),
        Just(String::new())
    ];
    let cases = (proptest::option::of(value.clone()), proptest::option::of(value));
    TestRunner::new(config())
        .run(&cases, |(child, have)| {
            let mut query = Vec::new();
            if let Some(c) = &child {
                query.push(format!("child={c}"));
            }
            if let Some(v) = &have {
                query.push(format!("have={v}"));
            }
            let num = |v: &Option<String>| v.as_ref().is_none_or(|s| s.parse::<u64>().is_ok());
            let valid = child.as_ref().is_some_and(|c| c.parse::<u64>().is_ok()) && num(&have);
            let uri = format!("/internal/fill/k?{}", query.join("&"));
            let (status, code) = h.call(TestRequest::get().uri(&uri));
            // Valid: the fill meets the unregistered node (not_registered);
            // the epoch check comes first and passes without a header.
            expect((status, code), valid, &uri)
        })
        .unwrap();
    h.assert_unchanged();
}

#[test]
fn a_batch_with_one_byte_changed_decodes_to_what_it_says_or_is_an_error() {
    let cases = (proptest::collection::vec(any_push(), 1..6), any::<prop::sample::Index>(), 1u8..=255);
    TestRunner::new(Config { cases: FLIP_CASES, ..config() })
        .run(&cases, |(pushes, at, flip)| {
            let mut bytes = encode_pushes(&pushes).to_vec();
            let i = at.index(bytes.len());
            bytes[i] ^= flip;
            if let Ok(decoded) = decode_pushes(&Bytes::from(bytes.clone())) {
                prop_assert_eq!(&encode_pushes(&decoded)[..], &bytes[..], "byte {} ^ {:#x}", i, flip);
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn unknown_flag_bits_are_refused() {
    let update = Update { key: "k".into(), version: 1, value: None, expires_at: None };
    let mut bytes = encode_updates(&[update]).to_vec();
    let flags = bytes.len() - 1;
    bytes[flags] |= 0x40;
    let err = decode_pushes(&Bytes::from(bytes.clone())).unwrap_err();
    assert!(err.contains("unknown flags 0x40"), "{err}");
    // 0x20 is a write's condition: no push carries one.
    bytes[flags] ^= 0x60;
    let err = decode_pushes(&Bytes::from(bytes)).unwrap_err();
    assert!(err.contains("without a write id"), "{err}");
}

#[test]
fn a_push_flagged_ack_root_without_a_write_id_is_refused() {
    let update = Update { key: "k".into(), version: 1, value: None, expires_at: None };
    let mut bytes = encode_updates(&[update]).to_vec();
    let flags = bytes.len() - 1;
    bytes[flags] |= 0x08;
    let err = decode_pushes(&Bytes::from(bytes)).unwrap_err();
    assert!(err.contains("without a write id"), "{err}");
}

// --- the RESP request decoder (src/resp/frame.rs) -----------------------------

const RESP_LIMITS: Limits = Limits { max_arg: 48, max_command: 600 };

/// Feeds `input` to a decoder in the pieces `cuts` makes, as reads would
/// bring them; returns the frames, or the error that ends the stream, and
/// checks the memory bound on the way: the buffer never holds more than
/// one argument (or an inline line) beyond the piece just read.
fn decode_in_pieces(input: &[u8], cuts: &[usize]) -> Result<Vec<Frame>, TestCaseError> {
    let mut decoder = Decoder::new(RESP_LIMITS);
    let mut buf = bytes::BytesMut::new();
    let mut frames = Vec::new();
    let mut at = 0;
    let mut ends: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
    ends.push(input.len());
    ends.sort_unstable();
    for end in ends {
        let piece = &input[at..end.max(at)];
        at = end.max(at);
        buf.extend_from_slice(piece);
        loop {
            match decoder.decode(&mut buf) {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(_) => return Ok(frames),
            }
        }
        prop_assert!(decoder.wants(&buf) <= RESP_LIMITS.max_arg + 2, "wants {}", decoder.wants(&buf));
        prop_assert!(
            buf.len() <= (RESP_LIMITS.max_arg + 2 + 64).max(MAX_INLINE) + piece.len(),
            "{} bytes held after a piece of {}",
            buf.len(),
            piece.len()
        );
    }
    Ok(frames)
}

fn any_command() -> impl Strategy<Value = Vec<Vec<u8>>> {
    proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..40), 1..6)
}

#[test]
fn resp_commands_round_trip_however_the_stream_is_cut() {
    let cases = (proptest::collection::vec(any_command(), 1..6), proptest::collection::vec(any::<usize>(), 0..8));
    TestRunner::new(config())
        .run(&cases, |(commands, cuts)| {
            let mut input = Vec::new();
            for c in &commands {
                let args: Vec<&[u8]> = c.iter().map(Vec::as_slice).collect();
                input.extend(encode_command(&args));
            }
            let frames = decode_in_pieces(&input, &cuts)?;
            let want: Vec<Frame> = commands
                .iter()
                .map(|c| Frame::Command(c.iter().map(|a| Bytes::copy_from_slice(a)).collect()))
                .collect();
            prop_assert_eq!(frames, want);
            Ok(())
        })
        .unwrap();
}

#[test]
fn a_resp_argument_over_the_limit_is_refused_and_the_next_command_still_decodes() {
    let cases = (49usize..400, any::<u8>(), proptest::collection::vec(any::<usize>(), 0..8));
    TestRunner::new(config())
        .run(&cases, |(size, fill, cuts)| {
            let big = vec![fill; size];
            let mut input = encode_command(&[b"SET", b"k", &big]);
            input.extend(encode_command(&[b"GET", b"k"]));
            let frames = decode_in_pieces(&input, &cuts)?;
            let refused = Refused::ArgTooLarge { index: 2, size, max: RESP_LIMITS.max_arg };
            let get = Frame::Command(vec![Bytes::from_static(b"GET"), Bytes::from_static(b"k")]);
            prop_assert_eq!(frames, vec![Frame::Refused(refused), get]);
            Ok(())
        })
        .unwrap();
}

#[test]
fn arbitrary_resp_bytes_never_panic_and_stay_bounded() {
    // Also the 1 GB length and the rest of tests/resp.rs's bad frames.
    let bytes = prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..300),
        // Plausible frames with noise: headers, lengths, CRLFs.
        proptest::collection::vec(
            prop_oneof![
                Just(b"*".to_vec()),
                Just(b"$".to_vec()),
                Just(b"\r\n".to_vec()),
                Just(b"-1".to_vec()),
                Just(MAX_BULK.to_string().into_bytes()),
                (0u32..70).prop_map(|n| n.to_string().into_bytes()),
                proptest::collection::vec(any::<u8>(), 0..8),
            ],
            0..40
        )
        .prop_map(|parts| parts.concat()),
    ];
    TestRunner::new(config())
        .run(&(bytes, proptest::collection::vec(any::<usize>(), 0..6)), |(bytes, cuts)| {
            for frame in decode_in_pieces(&bytes, &cuts)? {
                if let Frame::Command(args) = frame {
                    prop_assert!(!args.is_empty(), "a command has a name");
                    prop_assert!(args.iter().all(|a| a.len() <= RESP_LIMITS.max_arg.max(64 * 1024)));
                }
            }
            Ok(())
        })
        .unwrap();
}

#[test]
fn a_resp_stream_with_one_byte_changed_decodes_to_what_it_says_or_is_an_error() {
    let cases = (proptest::collection::vec(any_command(), 1..4), any::<prop::sample::Index>(), 1u8..=255);
    TestRunner::new(Config { cases: FLIP_CASES, ..config() })
        .run(&cases, |(commands, at, flip)| {
            let mut input = Vec::new();
            for c in &commands {
                let args: Vec<&[u8]> = c.iter().map(Vec::as_slice).collect();
                input.extend(encode_command(&args));
            }
            let i = at.index(input.len());
            input[i] ^= flip;
            // Whatever frames come out hold only bytes of the stream:
            // nothing invented, nothing read twice.
            let mut held = 0;
            for frame in decode_in_pieces(&input, &[])? {
                if let Frame::Command(args) = frame {
                    prop_assert!(!args.is_empty(), "a command has a name");
                    held += args.iter().map(Bytes::len).sum::<usize>();
                }
            }
            prop_assert!(held <= input.len(), "byte {} ^ {:#x}: {} bytes framed from {}", i, flip, held, input.len());
            Ok(())
        })
        .unwrap();
}
