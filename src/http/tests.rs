//! Route tests in-process: bad input gets a 400/413 JSON error, changes
//! nothing, and never panics. The node is not registered (no ZooKeeper), so
//! these reach only the checks that come before any work.

use actix_web::http::StatusCode;
use actix_web::test::{call_service, init_service, read_body_json, TestRequest};
use actix_web::web::ThinData;
use actix_web::App;
use clap::Parser;

use crate::config::{Cli, Command};
use crate::node::Node;

fn node() -> Node {
    let cli = Cli::parse_from(["treecache", "node", "--zk", "127.0.0.1:1", "--max-value-bytes", "16"]);
    match cli.command {
        Command::Node(args) => Node::new(args).expect("node"),
        _ => unreachable!(),
    }
}

async fn call(node: &Node, req: TestRequest) -> (StatusCode, serde_json::Value) {
    let app = init_service(App::new().app_data(ThinData(node.clone())).configure(|cfg| super::routes(cfg, 16))).await;
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
    let app = init_service(App::new().app_data(ThinData(n.clone())).configure(|cfg| super::routes(cfg, 16))).await;
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
    let app = init_service(App::new().app_data(ThinData(n.clone())).configure(|cfg| super::routes(cfg, 16))).await;
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
    let app = init_service(App::new().app_data(ThinData(n.clone())).configure(|cfg| super::routes(cfg, 16))).await;
    let all = ["GET", "HEAD", "PUT", "POST", "DELETE", "PATCH", "OPTIONS", "TRACE"];
    for route in super::ROUTES {
        let path = sample_path(route);
        for method in all {
            let req = TestRequest::default().method(Method::from_bytes(method.as_bytes()).unwrap()).uri(&path);
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
    let app = init_service(App::new().app_data(ThinData(n.clone())).configure(|cfg| super::routes(cfg, 16))).await;
    let resp = call_service(&app, TestRequest::get().uri("/metrics").to_request()).await;
    let text = String::from_utf8_lossy(&actix_web::test::read_body(resp).await).into_owned();
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/operations.md")).expect("operations.md");
    let names: Vec<&str> = text.lines().filter_map(|l| l.strip_prefix("# TYPE ")?.split_whitespace().next()).collect();
    assert!(names.len() > 10, "{text}");
    let missing: Vec<_> = names.iter().filter(|n| !doc.contains(&format!("`{n}`"))).collect();
    assert!(missing.is_empty(), "docs/operations.md does not list {missing:?}");
}
