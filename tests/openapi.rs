//! `docs/openapi.yaml` kept true: its paths and methods are exactly the
//! routes the server registers (`treecache::http::ROUTES`, the list
//! `routes()` itself walks), and schemathesis (installed by
//! scripts/install-test-deps.sh in `.venv-tests/`) runs the public part
//! against a live three-node tree: no 5xx, no response outside the schema,
//! no status the schema does not list, JSON 405s with `Allow`.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::Cluster;
use treecache::http::ROUTES;
use yaml_rust2::{Yaml, YamlLoader};

const METHODS: [&str; 8] = ["get", "head", "put", "post", "delete", "patch", "options", "trace"];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn spec() -> Yaml {
    let path = repo().join("docs/openapi.yaml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut docs = YamlLoader::load_from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(docs.len(), 1, "one YAML document");
    docs.remove(0)
}

/// `(path, METHOD, internal)` for every operation in the document.
fn operations(spec: &Yaml) -> BTreeSet<(String, String, bool)> {
    let paths = spec["paths"].as_hash().expect("paths");
    let mut out = BTreeSet::new();
    for (path, item) in paths {
        let path = path.as_str().expect("path is a string");
        for method in METHODS {
            let op = &item[method];
            if op.is_badvalue() {
                continue;
            }
            let tagged = op["tags"].as_vec().is_some_and(|t| t.iter().any(|t| t.as_str() == Some("internal")));
            let marked = op["x-internal"].as_bool() == Some(true);
            assert_eq!(tagged, marked, "{method} {path}: tag internal and x-internal: true go together");
            out.insert((path.to_string(), method.to_uppercase(), marked));
        }
    }
    out
}

#[test]
fn the_document_lists_exactly_the_routes_the_server_registers() {
    let documented = operations(&spec());
    let served: BTreeSet<(String, String, bool)> =
        ROUTES.iter().flat_map(|r| r.methods().map(move |m| (r.path.to_string(), m.to_string(), r.internal))).collect();
    let missing: Vec<_> = served.difference(&documented).collect();
    let extra: Vec<_> = documented.difference(&served).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "served, not documented: {missing:?}\ndocumented, not served: {extra:?}"
    );
}

#[test]
fn every_error_response_is_the_json_error_shape() {
    let spec = spec();
    let responses = &spec["components"]["responses"];
    for (path, item) in spec["paths"].as_hash().expect("paths") {
        for method in METHODS {
            let Some(answers) = item[method]["responses"].as_hash() else { continue };
            for (status, answer) in answers {
                let status = status.as_str().expect("quoted status");
                if !(status.starts_with('4') || status.starts_with('5')) || method == "head" {
                    continue;
                }
                let answer = match answer["$ref"].as_str() {
                    Some(r) => &responses[r.trim_start_matches("#/components/responses/")],
                    None => answer,
                };
                let schema = &answer["content"]["application/json"]["schema"]["$ref"];
                assert_eq!(
                    schema.as_str(),
                    Some("#/components/schemas/Error"),
                    "{method} {} {status} is not the error shape",
                    path.as_str().unwrap_or("?")
                );
            }
        }
    }
}

#[test]
fn every_error_code_the_server_has_is_in_the_error_schema() {
    let spec = spec();
    let documented: BTreeSet<&str> = spec["components"]["schemas"]["Error"]["properties"]["code"]["enum"]
        .as_vec()
        .expect("Error.code is an enum")
        .iter()
        .filter_map(Yaml::as_str)
        .collect();
    // The codes are the string literals of Error::code() in src/error.rs.
    let source = std::fs::read_to_string(repo().join("src/error.rs")).expect("src/error.rs");
    let body = source.split("pub fn code(&self)").nth(1).and_then(|rest| rest.split("\n    }\n").next()).unwrap_or("");
    let codes: BTreeSet<&str> = body.lines().filter_map(|l| l.split("=> \"").nth(1)?.split('"').next()).collect();
    assert!(codes.len() > 10, "found the codes in src/error.rs: {codes:?}");
    let missing: Vec<_> = codes.difference(&documented).collect();
    let extra: Vec<_> = documented.difference(&codes).collect();
    assert!(missing.is_empty() && extra.is_empty(), "codes not in the spec: {missing:?}; in the spec only: {extra:?}");
}

fn schemathesis() -> PathBuf {
    let bin = repo().join(".venv-tests/bin/schemathesis");
    assert!(bin.exists(), "{} is missing: run scripts/install-test-deps.sh", bin.display());
    bin
}

/// Runs schemathesis on `spec` against `url`; panics with its output on any failure.
fn run_schemathesis(spec: &Path, url: &str, extra: &[&str]) {
    let report = tempfile::tempdir().expect("temp dir");
    let out = Command::new(schemathesis())
        .arg("run")
        .arg(spec)
        .args(["--url", url])
        .args(["--checks", "all"])
        // positive_data_acceptance would have every schema-valid request
        // answered 2xx; a schema-valid GET of a key nobody wrote is a 404.
        .args(["--exclude-checks", "positive_data_acceptance"])
        .args(["--max-examples", "50", "--seed", "1", "--workers", "2", "--request-timeout", "10"])
        .args(["--report-dir", report.path().to_str().expect("utf-8 temp path")])
        .args(extra)
        .env("NO_COLOR", "1")
        .current_dir(report.path())
        .stdin(Stdio::null())
        .output()
        .expect("run schemathesis");
    let text = format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "schemathesis failed against {url}:\n{text}");
}

#[tokio::test(flavor = "multi_thread")]
async fn schemathesis_finds_nothing_on_a_live_three_node_tree() {
    let cluster = Cluster::start(3, &[]).await;
    let spec = repo().join("docs/openapi.yaml");
    // A leaf (misses go up two hops) and the root. The internal routes are
    // left out: registration from a fuzzer would hang fake nodes in the tree.
    for i in [2, 0] {
        run_schemathesis(&spec, &cluster.url(i), &["--exclude-tag", "internal"]);
    }
    for i in 0..3 {
        assert_eq!(cluster.health(i).await["status"], "ok", "node {i} still healthy");
    }
}
