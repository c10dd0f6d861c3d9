//! The CLI as scripts use it: the real binary against real nodes. Each
//! documented exit code (`treecache --help`: 0 ok, 1 other, 2 bad input,
//! 3 not found, 4 unavailable), what `put`/`del` print, `-o json`,
//! durations for `--ttl`, environment variables for flags, completions and
//! the man page.

mod common;

use std::process::{Command, Output, Stdio};

use common::{Cluster, Zk, BIN};
use treecache::zkserver::free_port;

fn run(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args(args).stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run treecache")
}

/// `treecache put --node NODE KEY` with the value on stdin.
fn put_stdin(node: &str, key: &str, value: &[u8]) -> Output {
    use std::io::Write;
    let mut child = Command::new(BIN)
        .args(["put", "--node", node, key])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run treecache put");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(value).expect("write the value");
    drop(stdin);
    child.wait_with_output().expect("treecache put")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Asserts the exit code, showing what the command said otherwise.
#[track_caller]
fn assert_exit(out: &Output, code: i32) {
    assert_eq!(out.status.code(), Some(code), "stdout: {}\nstderr: {}", stdout(out), stderr(out));
}

#[tokio::test(flavor = "multi_thread")]
async fn exit_codes_tell_not_found_from_bad_input_from_unreachable() {
    let cluster = Cluster::start(2, &[]).await;
    let leaf = cluster.url(1);

    // 0, and put prints the version the write got, nothing else.
    let put = run(&["put", "--node", &leaf, "--ack", "root", "k1", "v1"], &[]);
    assert_exit(&put, 0);
    let version: u64 = stdout(&put).trim().parse().unwrap_or_else(|_| panic!("not a version: {:?}", stdout(&put)));
    let read = cluster.get(0, "k1", "").await;
    assert_eq!((read.version, read.text()), (Some(version), "v1".to_string()));

    // 3: no such key.
    let get = run(&["get", "--node", &leaf, "missing"], &[]);
    assert_exit(&get, 3);
    assert!(stderr(&get).contains("404"), "{}", stderr(&get));
    assert_exit(&run(&["del", "--node", &leaf, "--ack", "root", "missing"], &[]), 3);
    // With -o json the failure is an object on stdout too.
    let get = run(&["get", "--node", &leaf, "-o", "json", "missing"], &[]);
    assert_exit(&get, 3);
    let answer: serde_json::Value = serde_json::from_str(&stdout(&get)).expect("a JSON object on stdout");
    assert_eq!(
        (answer["key"].as_str(), answer["status"].as_u64(), answer["exit"].as_u64()),
        (Some("missing"), Some(404), Some(3))
    );
    assert_eq!(answer["code"], "not_found", "{answer}");
    assert!(answer["error"].as_str().is_some_and(|e| e.contains("404")), "{answer}");
    // A fractional ttl is rounded up to whole seconds, never refused.
    let now_ms = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let before = now_ms();
    assert_exit(&run(&["put", "--node", &leaf, "--ack", "root", "--ttl", "1500ms", "t", "v"], &[]), 0);
    let after = now_ms();
    let expires = cluster.get(0, "t", "").await.headers["x-expires-at"].to_str().unwrap().parse::<u64>().unwrap();
    assert!((before + 2_000..=after + 2_000).contains(&expires), "a 2 s ttl: {before} {expires} {after}");

    // 2: a key the node refuses, a value over the limit, a bad flag.
    let bad_key = run(&["get", "--node", &leaf, "a\tb"], &[]);
    assert_exit(&bad_key, 2);
    assert!(stderr(&bad_key).contains("control character"), "{}", stderr(&bad_key));
    assert_exit(&put_stdin(&leaf, "big", &vec![b'x'; (1 << 20) + 1]), 2);
    assert_exit(&run(&["put", "--node", &leaf, "--ack", "maybe", "k", "v"], &[]), 2);
    assert_exit(&run(&["put", "--node", &leaf, "--ttl", "0s", "k", "v"], &[]), 2);
    assert_exit(&run(&["get"], &[]), 2);
    assert_eq!(cluster.get(0, "big", "").await.status, 404, "a refused write changed nothing");

    // 4: nobody listens; the cause is in the message.
    let nowhere = format!("http://127.0.0.1:{}", free_port().unwrap());
    let refused = run(&["get", "--node", &nowhere, "k1"], &[]);
    assert_exit(&refused, 4);
    assert!(stderr(&refused).to_lowercase().contains("connection refused"), "{}", stderr(&refused));
    assert_exit(&run(&["put", "--node", &nowhere, "k1", "v"], &[]), 4);
    let refused = run(&["put", "--node", &nowhere, "-o", "json", "k1", "v"], &[]);
    let answer: serde_json::Value = serde_json::from_str(&stdout(&refused)).expect("a JSON object on stdout");
    assert_eq!((answer["code"].as_str(), answer["exit"].as_u64()), (Some("unreachable"), Some(4)), "{answer}");

    // 1: anything else, e.g. a node that cannot bind its port.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let listen = taken.local_addr().unwrap().to_string();
    let secret = cluster.secret_file.to_str().expect("utf-8 path").to_string();
    let node = run(&["node", "--zk", &cluster.zk.addr(), "--listen", &listen, "--cluster-secret-file", &secret], &[]);
    assert_exit(&node, 1);
    assert!(stderr(&node).contains("cannot listen"), "{}", stderr(&node));
}

#[tokio::test(flavor = "multi_thread")]
async fn put_and_del_print_versions_and_json_answers() {
    let cluster = Cluster::start(2, &[]).await;
    let leaf = cluster.url(1);

    let put = run(&["put", "--node", &leaf, "--ack", "root", "-o", "json", "--ttl", "2m", "k", "v"], &[]);
    assert_exit(&put, 0);
    let answer: serde_json::Value = serde_json::from_str(&stdout(&put)).expect("one JSON object");
    assert_eq!((answer["key"].as_str(), answer["status"].as_u64()), (Some("k"), Some(201)), "{answer}");
    assert!(answer["version"].as_u64().is_some() && answer["node"].as_u64().is_some(), "{answer}");
    let read = cluster.get(0, "k", "").await;
    let expires = read.headers.get("x-expires-at").and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    assert!(expires.is_some(), "--ttl 2m set an expiry: {:?}", read.headers);

    let get = run(&["get", "--node", &leaf, "-o", "json", "k"], &[]);
    assert_exit(&get, 0);
    let got: serde_json::Value = serde_json::from_str(&stdout(&get)).expect("one JSON object");
    assert_eq!((got["value"].as_str(), got["version"].as_u64()), (Some("v"), answer["version"].as_u64()), "{got}");

    let del = run(&["del", "--node", &leaf, "--ack", "root", "k"], &[]);
    assert_exit(&del, 0);
    let deleted: u64 = stdout(&del).trim().parse().unwrap_or_else(|_| panic!("not a version: {:?}", stdout(&del)));
    assert!(deleted > answer["version"].as_u64().unwrap_or(u64::MAX), "the delete's version comes later");
    assert_exit(&run(&["get", "--node", &leaf, "--consistent", "k"], &[]), 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn flags_come_from_the_environment_too() {
    let cluster = Cluster::start(2, &[]).await;
    let env = [
        ("TREECACHE_NODE", cluster.url(1)),
        ("TREECACHE_ACK", "root".into()),
        ("TREECACHE_TTL", "1h".into()),
        ("TREECACHE_OUTPUT", "json".into()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let put = run(&["put", "k", "v"], &env);
    assert_exit(&put, 0);
    let answer: serde_json::Value = serde_json::from_str(&stdout(&put)).expect("json, from TREECACHE_OUTPUT");
    // ack=root answers carry the version and no "ack" field.
    assert!(answer["version"].as_u64().is_some() && answer.get("ack").is_none(), "{answer}");
    assert!(cluster.get(0, "k", "").await.headers.contains_key("x-expires-at"), "TREECACHE_TTL applied");
    let bad = run(&["put", "k", "v"], &[("TREECACHE_NODE", &cluster.url(1)), ("TREECACHE_ACK", "sometimes")]);
    assert_exit(&bad, 2);
}

#[test]
fn boolean_flags_take_1_0_yes_no_from_the_environment() {
    // A root without --data-dir refuses --fsync always at once: that says
    // whether TREECACHE_ROOT made the node a root, without running one.
    let node = ["node", "--zk", "127.0.0.1:1", "--listen", "127.0.0.1:0", "--fsync", "always"];
    let secret = ("TREECACHE_CLUSTER_SECRET", "0123456789abcdef-cli");
    for yes in ["1", "yes", "true", "on"] {
        let out = run(&node, &[secret, ("TREECACHE_ROOT", yes)]);
        assert_exit(&out, 2);
        assert!(stderr(&out).contains("--fsync always needs --data-dir"), "TREECACHE_ROOT={yes}: {}", stderr(&out));
    }
    let out = run(&node, &[secret, ("TREECACHE_ROOT", "maybe")]);
    assert_exit(&out, 2);
    assert!(stderr(&out).contains("'maybe' for '--root'"), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread")]
async fn tree_exit_codes_name_a_missing_cluster_and_an_unreachable_zookeeper() {
    let zk = Zk::start().await;
    assert_exit(&run(&["tree", "--zk", &zk.addr(), "--cluster", "never-ran"], &[]), 3);
    let nowhere = format!("127.0.0.1:{}", free_port().unwrap());
    let out = run(&["tree"], &[("TREECACHE_ZK", &nowhere)]);
    assert_exit(&out, 4);
    assert!(stderr(&out).contains(&format!("cannot reach ZooKeeper at {nowhere}")), "{}", stderr(&out));
}

#[test]
fn completions_and_the_man_page_are_generated_from_the_flags() {
    let shells = [
        ("bash", "_treecache()"),
        ("zsh", "#compdef treecache"),
        ("fish", "complete -c treecache"),
        ("elvish", "edit:completion:arg-completer[treecache]"),
        ("powershell", "Register-ArgumentCompleter"),
    ];
    for (shell, marker) in shells {
        let out = run(&["completions", shell], &[]);
        assert_exit(&out, 0);
        assert!(stdout(&out).contains(marker), "{shell}: {}", stdout(&out));
        assert!(stdout(&out).contains("max-value-bytes"), "{shell} completes node flags");
        for hidden in ["fault-", "tombstone-ttl", "log-segment-bytes"] {
            assert!(!stdout(&out).contains(hidden), "{shell} offers the hidden --{hidden}");
        }
    }
    assert_exit(&run(&["completions", "tcsh"], &[]), 2);
    let man = run(&["man"], &[]);
    assert_exit(&man, 0);
    let page = stdout(&man);
    assert!(page.starts_with(".ie") || page.contains(".TH treecache 1"), "{page}");
    for text in ["TREECACHE NODE", "TREECACHE PUT", "TREECACHE_ZK", "TREECACHE_TTL", "Exit codes:", "unavailable"] {
        assert!(page.contains(text), "the man page lacks {text:?}");
    }
}
