//! Route tests in-process: bad input gets a 400/413 JSON error, changes
//! nothing, and never panics. The node is not registered (no ZooKeeper), so
//! these reach only the checks that come before any work.

use crate::config::NodeArgs;
use crate::node::Node;
use actix_web::http::StatusCode;
use actix_web::test::{call_service, init_service, read_body_json, TestRequest};
use actix_web::web::ThinData;
use actix_web::App;

const SECRET: &str = "route-test-secret-0123456789";

fn node_with(extra: &[&str]) -> Node {
    // Never registered (no ZooKeeper): answer at once instead of holding
    // requests for a leader (--failover-wait).
    let mut argv = vec!["--zk", "127.0.0.1:1", "--max-value-bytes", "16", "--failover-wait", "0"];
    argv.extend(["--cluster-secret", SECRET]);
    argv.extend_from_slice(extra);
    Node::new(NodeArgs::try_parse_from(argv).expect("node flags")).expect("node")
}

fn node() -> Node {
    node_with(&[])
}

/// The app as `treecache node` builds it.
macro_rules! app {
    ($node:expr) => {
        init_service(
            App::new()
                .app_data(ThinData($node.clone()))
                .wrap(super::guard::Track::new($node.clone()))
                .configure(|cfg| super::routes(cfg, 16)),
        )
    };
}

/// Sends `req` as a peer would: with the cluster secret.
async fn call(node: &Node, req: TestRequest) -> (StatusCode, serde_json::Value) {
    call_raw(node, req.insert_header((crate::auth::SECRET_HEADER, SECRET))).await
}

/// Sends `req` with only the headers it has.
async fn call_raw(node: &Node, req: TestRequest) -> (StatusCode, serde_json::Value) {
    let app = app!(node).await;
    let resp = call_service(&app, req.to_request()).await;
    let status = resp.status();
    (status, read_body_json(resp).await)
}

async fn expect(req: TestRequest, status: StatusCode, code: &str) {
    let n = node();
    let (got, body) = call(&n, req).await;
    assert_eq!((got, body["code"].as_str()), (status, Some(code)), "{body}");
    assert!(body["error"].as_str().is_some_and(|e| !e.is_empty()));
    assert!(n.store().is_empty(), "nothing stored");
}

#[actix_web::test]
async fn bad_keys_are_refused() {
    let long = "k".repeat(251);
    expect(TestRequest::get().uri(&format!("/kv/{long}")), StatusCode::BAD_REQUEST, "bad_key").await;
    expect(TestRequest::put().uri(&format!("/kv/{long}")).set_payload("v"), StatusCode::BAD_REQUEST, "bad_key").await;
    expect(TestRequest::get().uri("/kv/a%0Ab"), StatusCode::BAD_REQUEST, "bad_key").await;
    expect(TestRequest::delete().uri("/kv/a%7Fb"), StatusCode::BAD_REQUEST, "bad_key").await;
    expect(TestRequest::get().uri("/kv/"), StatusCode::BAD_REQUEST, "bad_key").await;
    expect(TestRequest::get().uri("/kv/%FF%FE"), StatusCode::BAD_REQUEST, "bad_key").await;
    expect(
        TestRequest::default().method(actix_web::http::Method::HEAD).uri("/kv/a%0Ab"),
        StatusCode::BAD_REQUEST,
        "bad_key",
    )
    .await;
}

#[actix_web::test]
async fn bad_write_conditions_are_refused() {
    let put = |h: &[(&'static str, &'static str)]| {
        h.iter().fold(TestRequest::put().uri("/kv/k").set_payload("v"), |r, &(n, v)| r.append_header((n, v)))
    };
    for bad in [
        vec![("if-match", "abc")],
        vec![("if-match", "\"12")],
        vec![("if-match", "-1")],
        vec![("if-match", "W/\"3\"")],
        vec![("if-match", "1, 2")],
        vec![("if-none-match", "\"5\"")],
        vec![("if-match", "1"), ("if-match", "2")],
    ] {
        expect(put(&bad), StatusCode::BAD_REQUEST, "bad_parameter").await;
    }
    expect(put(&[("if-match", "*"), ("if-none-match", "*")]), StatusCode::BAD_REQUEST, "bad_request").await;
    expect(
        TestRequest::delete().uri("/kv/k").insert_header(("if-match", "x")),
        StatusCode::BAD_REQUEST,
        "bad_parameter",
    )
    .await;
    // Good ones pass every check and meet the unregistered node.
    for good in [("if-match", "*"), ("if-match", "7"), ("if-match", "\"7\""), ("if-none-match", "*")] {
        expect(put(&[good]), StatusCode::SERVICE_UNAVAILABLE, "not_registered").await;
    }
}

#[actix_web::test]
async fn bad_parameters_are_refused() {
    expect(TestRequest::put().uri("/kv/k?ttl=abc").set_payload("v"), StatusCode::BAD_REQUEST, "bad_parameter").await;
    expect(TestRequest::put().uri("/kv/k?ttl=0").set_payload("v"), StatusCode::BAD_REQUEST, "bad_parameter").await;
    expect(TestRequest::put().uri("/kv/k?ttl=-5").set_payload("v"), StatusCode::BAD_REQUEST, "bad_parameter").await;
    expect(TestRequest::put().uri("/kv/k?ack=maybe").set_payload("v"), StatusCode::BAD_REQUEST, "bad_parameter").await;
    expect(TestRequest::delete().uri("/kv/k?ack=nobody"), StatusCode::BAD_REQUEST, "bad_parameter").await;
    expect(TestRequest::put().uri("/kv/k?mode=ttl").set_payload("v"), StatusCode::BAD_REQUEST, "bad_request").await;
    expect(TestRequest::get().uri("/kv/k?consistent=perhaps"), StatusCode::BAD_REQUEST, "bad_parameter").await;
    expect(TestRequest::get().uri("/kv/k?consistent=true&use_cache=true"), StatusCode::BAD_REQUEST, "bad_request")
        .await;
    expect(TestRequest::get().uri("/dump?limit=0"), StatusCode::BAD_REQUEST, "bad_parameter").await;
    expect(TestRequest::get().uri("/dump?limit=many"), StatusCode::BAD_REQUEST, "bad_parameter").await;
    expect(TestRequest::get().uri("/dump?colour=red"), StatusCode::BAD_REQUEST, "bad_request").await;
}

#[actix_web::test]
async fn a_value_over_the_limit_is_413() {
    expect(
        TestRequest::put().uri("/kv/k").set_payload("x".repeat(17)),
        StatusCode::PAYLOAD_TOO_LARGE,
        "value_too_large",
    )
    .await;
    expect(
        TestRequest::post().uri("/kv/k").set_payload("x".repeat(100)),
        StatusCode::PAYLOAD_TOO_LARGE,
        "value_too_large",
    )
    .await;
}

#[actix_web::test]
async fn malformed_registrations_and_internal_messages_are_refused() {
    let reg = |body: &str| TestRequest::post().uri("/clients/register").set_payload(body.to_string());
    expect(reg("not json"), StatusCode::BAD_REQUEST, "bad_request").await;
    expect(reg(r#"{"id": 3}"#), StatusCode::BAD_REQUEST, "bad_request").await;
    expect(reg(r#"{"url": "http://a", "id": -1}"#), StatusCode::BAD_REQUEST, "bad_request").await;
    expect(reg(r#"{"url": "http://a", "extra": 1}"#), StatusCode::BAD_REQUEST, "bad_request").await;
    expect(reg(r#"{"url": "gopher://a"}"#), StatusCode::BAD_REQUEST, "bad_parameter").await;
    expect(reg(r#"{"url": "http://a", "id": 0}"#), StatusCode::BAD_REQUEST, "bad_parameter").await;
    let push = TestRequest::post().uri("/internal/push").set_payload(vec![0u8, 0, 0, 9, 1]);
    expect(push, StatusCode::BAD_REQUEST, "bad_request").await;
    let write = TestRequest::post().uri("/internal/write?ack=root").set_payload(vec![0u8, 0, 0, 0]);
    expect(write, StatusCode::BAD_REQUEST, "bad_request").await;
    let write = TestRequest::post().uri("/internal/write").set_payload(vec![0u8, 0, 0, 0]);
    expect(write, StatusCode::BAD_REQUEST, "bad_parameter").await;
    // A write batch whose writes carry no id (a push batch) is refused.
    let update = crate::store::Update { key: "k".into(), version: 0, value: None, expires_at: None };
    let no_ids = crate::wire::encode_updates(&[update]);
    let write = TestRequest::post().uri("/internal/write?child=2").set_payload(no_ids);
    expect(write, StatusCode::BAD_REQUEST, "bad_request").await;
    // A push must say who sends it.
    let push = TestRequest::post().uri("/internal/push").set_payload(vec![0u8, 0, 0, 0]);
    expect(push, StatusCode::BAD_REQUEST, "bad_parameter").await;
    let push = TestRequest::post().uri("/internal/push").insert_header((crate::node::FROM_HEADER, "me"));
    expect(push.set_payload(vec![0u8, 0, 0, 0]), StatusCode::BAD_REQUEST, "bad_parameter").await;
    let push = TestRequest::post().uri("/internal/push").insert_header((crate::node::FROM_HEADER, "4"));
    expect(push.set_payload(vec![0u8, 0, 0, 0]), StatusCode::BAD_REQUEST, "bad_parameter").await;
    expect(TestRequest::post().uri("/internal/clear"), StatusCode::BAD_REQUEST, "bad_parameter").await;
    // Ids out of range and URLs that are not a node's base URL.
    expect(
        reg(r#"{"url": "http://127.0.0.1:9", "id": 18446744073709551615}"#),
        StatusCode::BAD_REQUEST,
        "bad_parameter",
    )
    .await;
    for url in ["http://", "http:///x", "http://h/path", "http://h?q=1", "http://u:p@h", "http://h#f", "ftp://h"] {
        expect(reg(&format!(r#"{{"url": "{url}"}}"#)), StatusCode::BAD_REQUEST, "bad_parameter").await;
    }
    let epoch = TestRequest::post().uri("/internal/clear").insert_header((crate::node::EPOCH_HEADER, "x"));
    expect(epoch, StatusCode::BAD_REQUEST, "bad_parameter").await;
    expect(TestRequest::post().uri("/internal/topology").set_payload("{}"), StatusCode::BAD_REQUEST, "bad_request")
        .await;
}

#[actix_web::test]
async fn before_registration_reads_are_503_with_retry_after() {
    let n = node();
    let app = app!(n).await;
    for uri in ["/health", "/kv/k", "/tree"] {
        let resp = call_service(&app, TestRequest::get().uri(uri).to_request()).await;
        assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE, "{uri}");
        assert!(resp.headers().contains_key("retry-after"));
    }
    let resp = call_service(&app, TestRequest::get().uri("/metrics").to_request()).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = call_service(&app, TestRequest::get().uri("/no/such/route").to_request()).await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
}

#[actix_web::test]
async fn other_methods_are_405_with_allow_and_other_paths_are_not_kv() {
    expect(TestRequest::patch().uri("/kv/k").set_payload("v"), StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
        .await;
    expect(TestRequest::post().uri("/internal/fill/k?child=2"), StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
        .await;
    let n = node();
    let app = app!(n).await;
    let resp = call_service(&app, TestRequest::patch().uri("/kv/k").to_request()).await;
    assert_eq!(resp.headers().get("allow").and_then(|v| v.to_str().ok()), Some("GET, HEAD, PUT, POST, DELETE"));
    // The /kv scope is a path segment, not a string prefix.
    expect(TestRequest::get().uri("/kvx"), StatusCode::NOT_FOUND, "no_route").await;
    expect(TestRequest::get().uri("/kv"), StatusCode::BAD_REQUEST, "bad_key").await;
    expect(TestRequest::get().uri("/internal/fill/?child=2"), StatusCode::BAD_REQUEST, "bad_key").await;
    expect(TestRequest::get().uri("/internal/fillx?child=2"), StatusCode::NOT_FOUND, "no_route").await;
}

/// A concrete path for a route pattern.
fn sample_path(route: &super::Route) -> String {
    route.path.replace("{key}", "k")
}

#[actix_web::test]
async fn every_route_answers_a_wrong_method_with_a_json_405_and_allow() {
    use actix_web::http::Method;
    let n = node();
    let app = app!(n).await;
    let all = ["GET", "HEAD", "PUT", "POST", "DELETE", "PATCH", "OPTIONS", "TRACE"];
    for route in super::ROUTES {
        let path = sample_path(route);
        for method in all {
            let req = TestRequest::default().method(Method::from_bytes(method.as_bytes()).unwrap()).uri(&path);
            let req = req.insert_header((crate::auth::SECRET_HEADER, SECRET));
            let resp = call_service(&app, req.to_request()).await;
            let status = resp.status();
            let allow = resp.headers().get("allow").and_then(|v| v.to_str().ok()).map(str::to_string);
            let bytes = actix_web::test::read_body(resp).await;
            let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
            if route.methods().any(|m| m == method) {
                assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}: {body}");
                assert_ne!(body["code"], "no_route", "{method} {path} is not registered");
            } else {
                assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
                assert_eq!(allow.as_deref(), Some(route.methods), "{method} {path}");
                if method != "HEAD" {
                    assert_eq!(body["code"], "method_not_allowed", "{method} {path}: {body}");
                    assert!(body["error"].as_str().is_some_and(|e| e.contains(route.methods)), "{body}");
                }
            }
        }
    }
    assert!(n.store().is_empty(), "nothing stored");
}

#[actix_web::test]
async fn docs_operations_md_lists_every_metric_the_node_renders() {
    let n = node();
    let app = app!(n).await;
    let resp = call_service(&app, TestRequest::get().uri("/metrics").to_request()).await;
    let text = String::from_utf8_lossy(&actix_web::test::read_body(resp).await).into_owned();
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/operations.md")).expect("operations.md");
    let names: Vec<String> = crate::metrics::families(&text).into_iter().map(|(name, _, _)| name).collect();
    assert!(names.len() > 10, "{text}");
    let missing: Vec<_> = names.iter().filter(|n| !doc.contains(&format!("`{n}`"))).collect();
    assert!(missing.is_empty(), "docs/operations.md does not list {missing:?}");
}

#[actix_web::test]
async fn metrics_give_the_process_cpu_time_and_resident_memory() {
    // CPU time counts in clock ticks (10 ms at 100 Hz): a test run alone
    // may not have spent one yet. Reading /proc spends some.
    let spin = std::time::Instant::now();
    while crate::process::own_cpu_seconds().unwrap_or(0.0) == 0.0 && spin.elapsed().as_secs() < 5 {}
    let n = node();
    let app = app!(n).await;
    let resp = call_service(&app, TestRequest::get().uri("/metrics").to_request()).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let text = String::from_utf8_lossy(&actix_web::test::read_body(resp).await).into_owned();
    for name in ["process_cpu_seconds_total", "process_resident_memory_bytes"] {
        let value = text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok());
        assert!(value.is_some_and(|v| v > 0.0), "{name}: {value:?} in\n{text}");
    }
    assert!(text.contains("# HELP process_cpu_seconds "), "{text}");
    assert!(text.contains("# TYPE process_resident_memory_bytes gauge\n"), "{text}");
}

/// Every internal route, as a peer would call it (with a well-formed body).
fn internal_requests() -> Vec<TestRequest> {
    let batch = crate::wire::encode_updates(&[crate::store::Update {
        key: "k".into(),
        version: 7,
        value: Some(bytes::Bytes::from_static(b"v")),
        expires_at: None,
    }]);
    vec![
        TestRequest::post().uri("/clients/register").set_payload(r#"{"url": "http://10.9.9.9:8080"}"#),
        TestRequest::get().uri("/internal/fill/k?child=2"),
        TestRequest::post().uri("/internal/write?child=2&ack=root").set_payload(batch.clone()),
        TestRequest::post().uri("/internal/push").set_payload(batch),
        TestRequest::post().uri("/internal/topology").set_payload("{}"),
        TestRequest::post().uri("/internal/clear"),
        TestRequest::post().uri("/internal/leave").set_payload(r#"{"id": 2}"#),
    ]
}

#[actix_web::test]
async fn internal_routes_without_the_secret_are_401_and_change_nothing() {
    let wrong = "route-test-secret-0123456780";
    let bearer = format!("Bearer {SECRET}");
    for (what, header) in [
        ("no secret", None),
        ("a wrong secret", Some(("x-treecache-secret", wrong))),
        ("a short secret", Some(("x-treecache-secret", &SECRET[..10]))),
        ("the secret as a bearer token", Some(("authorization", bearer.as_str()))),
    ] {
        for req in internal_requests() {
            let n = node();
            let req = match header {
                Some(h) => req.insert_header(h),
                None => req,
            };
            let req = req.to_request();
            let uri = req.uri().to_string();
            let app = app!(n).await;
            let resp = call_service(&app, req).await;
            assert_eq!(resp.status(), StatusCode::UNAUTHORIZED, "{what}: {uri}");
            assert!(resp.headers().contains_key("www-authenticate"), "{what}: {uri}");
            let body: serde_json::Value = read_body_json(resp).await;
            assert_eq!(body["code"], "unauthorized", "{what}: {uri}: {body}");
            assert!(body["error"].as_str().is_some_and(|e| e.contains("cluster secret")), "{body}");
            assert!(n.store().is_empty(), "{what}: {uri} changed nothing");
            assert!(n.topology().is_none(), "{what}: {uri} changed nothing");
        }
    }
}

#[actix_web::test]
async fn internal_routes_with_the_secret_reach_their_handlers() {
    // Not registered (no ZooKeeper): a handler that got the request
    // answers its own error, never 401.
    for req in internal_requests() {
        let n = node();
        let (status, body) = call(&n, req).await;
        assert_ne!(status, StatusCode::UNAUTHORIZED, "{body}");
        assert!(body["code"].is_string(), "{body}");
    }
}

#[actix_web::test]
async fn the_api_token_guards_kv_metrics_and_dump_but_not_health() {
    let n = node_with(&["--api-token", "tok-123"]);
    for uri in ["/kv/k", "/metrics", "/dump"] {
        for auth in [None, Some("Bearer tok-12"), Some("Bearer tok-1234"), Some("tok-123"), Some("Basic tok-123")] {
            let req = TestRequest::get().uri(uri);
            let req = match auth {
                Some(a) => req.insert_header(("authorization", a)),
                None => req,
            };
            let (status, body) = call_raw(&n, req).await;
            assert_eq!(
                (status, body["code"].as_str()),
                (StatusCode::UNAUTHORIZED, Some("unauthorized")),
                "{uri} {auth:?}"
            );
        }
    }
    let (status, body) = call_raw(&n, TestRequest::put().uri("/kv/k").set_payload("v")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    assert!(n.store().is_empty());
    // With the token: past the check (503, the node is not registered).
    let (status, body) =
        call_raw(&n, TestRequest::get().uri("/kv/k").insert_header(("authorization", "Bearer tok-123"))).await;
    assert_eq!((status, body["code"].as_str()), (StatusCode::SERVICE_UNAVAILABLE, Some("not_registered")));
    let app = app!(n).await;
    let req = TestRequest::get().uri("/metrics").insert_header(("authorization", "Bearer tok-123"));
    assert_eq!(call_service(&app, req.to_request()).await.status(), StatusCode::OK);
    // /health stays open (503 only because the node is not registered).
    let (status, body) = call_raw(&n, TestRequest::get().uri("/health")).await;
    assert_eq!((status, body["code"].as_str()), (StatusCode::SERVICE_UNAVAILABLE, Some("not_registered")));
    // The token is not the cluster secret, nor the other way round.
    let (status, _) = call_raw(
        &n,
        TestRequest::get().uri("/internal/fill/k?child=2").insert_header(("authorization", "Bearer tok-123")),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = call(&n, TestRequest::get().uri("/kv/k")).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[actix_web::test]
async fn without_a_token_kv_is_open() {
    let (status, body) = call_raw(&node(), TestRequest::get().uri("/kv/k")).await;
    assert_eq!((status, body["code"].as_str()), (StatusCode::SERVICE_UNAVAILABLE, Some("not_registered")));
}

#[actix_web::test]
async fn the_clients_request_id_is_answered_when_sane_and_none_is_made_for_nothing() {
    let n = node();
    let app = app!(n).await;
    fn id_of<B>(resp: &actix_web::dev::ServiceResponse<B>) -> Option<String> {
        resp.headers().get("x-request-id").and_then(|v| v.to_str().ok()).map(str::to_string)
    }
    let resp =
        call_service(&app, TestRequest::get().uri("/kv/k").insert_header(("x-request-id", "abc-1")).to_request()).await;
    assert_eq!(id_of(&resp).as_deref(), Some("abc-1"));
    // Nothing here goes upstream or logs: no id is made (trace.rs makes one
    // when a hop or a log line needs it; tests/security.rs follows one).
    let resp = call_service(&app, TestRequest::get().uri("/metrics").to_request()).await;
    assert_eq!(id_of(&resp), None);
    let resp =
        call_service(&app, TestRequest::get().uri("/tree").insert_header(("x-request-id", "a b")).to_request()).await;
    assert_eq!(id_of(&resp), None, "an id that is not sane is not repeated");
}

#[test]
fn each_route_has_its_own_label_and_no_path_becomes_one() {
    use actix_web::http::Method;
    let label = |m: Method, path: &str| crate::metrics::ROUTE_LABELS[super::route_label(&m, path)];
    assert_eq!(label(Method::GET, "/kv/a%2Fb"), "kv_read");
    assert_eq!(label(Method::HEAD, "/kv/k"), "kv_read");
    assert_eq!(label(Method::PUT, "/kv/k"), "kv_write");
    assert_eq!(label(Method::POST, "/kv/k"), "kv_write");
    assert_eq!(label(Method::DELETE, "/kv/k"), "kv_delete");
    assert_eq!(label(Method::PATCH, "/kv/k"), "other");
    assert_eq!(label(Method::GET, "/kv"), "kv_read", "the scope takes it: a bad key");
    assert_eq!(label(Method::GET, "/kvx"), "other");
    assert_eq!(label(Method::GET, "/internal/fill/k"), "fill");
    assert_eq!(label(Method::GET, "/nowhere/at/all"), "other");
    assert_eq!(label(Method::POST, "/health/x"), "other");
    let mut seen = std::collections::BTreeSet::new();
    for route in super::ROUTES {
        let method = route.methods().next().and_then(|m| Method::from_bytes(m.as_bytes()).ok()).expect("a method");
        let l = label(method, &route.path.replace("{key}", "k"));
        assert_ne!(l, "other", "{}", route.path);
        if route.path != super::KV.path {
            let name = route.path.trim_end_matches("/{key}").rsplit('/').next();
            assert_eq!(Some(l), name, "a route's label is its last path segment");
        }
        assert!(seen.insert(l), "{} shares its label {l}", route.path);
    }
}

#[actix_web::test]
async fn a_body_that_never_arrives_is_408_and_stores_nothing() {
    // Paused time: the runtime jumps to the body timeout once all is idle.
    tokio::time::pause();
    let n = node();
    let app = app!(n).await;
    let never: std::pin::Pin<Box<dyn futures::Stream<Item = Result<bytes::Bytes, actix_web::error::PayloadError>>>> =
        Box::pin(futures::stream::pending());
    let req = TestRequest::put().uri("/kv/k").insert_header(("content-length", "5")).to_request();
    let (req, _) = req.replace_payload(actix_web::dev::Payload::Stream { payload: never });
    let resp = call_service(&app, req).await;
    assert_eq!(resp.status(), StatusCode::REQUEST_TIMEOUT);
    let body: serde_json::Value = read_body_json(resp).await;
    assert_eq!(body["code"], "request_timeout", "{body}");
    assert!(n.store().is_empty());
}

#[actix_web::test]
async fn a_guard_without_a_node_refuses_rather_than_lets_through() {
    let app = init_service(App::new().configure(|cfg| super::routes(cfg, 16))).await;
    let req = TestRequest::post().uri("/internal/clear").insert_header((crate::auth::SECRET_HEADER, SECRET));
    let resp = call_service(&app, req.to_request()).await;
    assert_eq!(resp.status(), StatusCode::INTERNAL_SERVER_ERROR);
}
