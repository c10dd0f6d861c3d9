//! The Redis protocol front door (issue 22) against live trees: real
//! ZooKeeper, real `treecache node` processes with `--resp-listen`, and the
//! clients people use: redis-cli (Debian's redis-tools, also interactive on
//! a pseudo-terminal) and redis-py (PyPI, in `.venv-tests/`), plus a plain
//! RESP client (`common::resp`) for bad frames and races. Conditional
//! writes (`If-None-Match`, `If-Match`, SET NX/XX) are decided at the root:
//! many writers at different nodes race SET NX on one key, and exactly one
//! wins, round after round. A missing redis-cli or redis-py fails the test
//! (scripts/install-test-deps.sh installs them).

mod common;

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use common::resp::{Reply, Resp};
use common::{client_files, wait_until, Cluster, Opts, LOOPBACK};
use rand::{Rng, SeedableRng};
use treecache::tls::TlsFiles;

const MAX_VALUE: usize = 64 * 1024;
const TOKEN: &str = "resp-test-token-1234";

fn owned(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// A tree of `n` nodes that all speak RESP, with `flags` on every node.
async fn tree(n: usize, flags: &[&str]) -> Cluster {
    let mut common = owned(&["--max-value-bytes", "64KiB"]);
    common.extend(owned(flags));
    Cluster::start_opts(Opts { nodes: n, root_args: common.clone(), node_args: common, resp: true, ..Opts::default() })
        .await
}

/// redis-cli's output for one command (non-interactive).
fn cli(port: u16, args: &[&str]) -> String {
    let out = cli_run(port, &[], args);
    assert!(out.status.success(), "redis-cli {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim_end().to_string()
}

/// redis-cli run with `opts` (e.g. `--tls --cacert F`) for one command,
/// whatever its outcome.
fn cli_run(port: u16, opts: &[&str], args: &[&str]) -> std::process::Output {
    Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(opts)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("redis-cli cannot run ({e}): scripts/install-test-deps.sh installs redis-tools"))
}

/// redis-cli's output for one command over TLS with `opts`; what it
/// printed (stdout and stderr) if it failed.
fn tls_cli(port: u16, opts: &[&str], args: &[&str]) -> Result<String, String> {
    let out = cli_run(port, opts, args);
    let stdout = String::from_utf8_lossy(&out.stdout).trim_end().to_string();
    // redis-cli prints a failed connection on stderr, a reply's error on
    // stdout, and exits 0 after either in some versions.
    if out.status.success() && !stdout.contains("Could not connect") && !stdout.starts_with("Error") {
        Ok(stdout)
    } else {
        Err(format!("{stdout}{}", String::from_utf8_lossy(&out.stderr)))
    }
}

fn venv_python() -> PathBuf {
    let python = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv-tests/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/install-test-deps.sh (it installs redis-py)",
        python.display()
    );
    python
}

fn script(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/resp_clients").join(name)
}

/// Runs tests/resp_clients/redis_py_check.py against `ports` (root first);
/// over TLS with `tls` (the CA, and a client certificate if it has one).
fn redis_py(ports: &[u16], token: Option<&str>, tls: Option<&TlsFiles>) {
    let tls = tls.map(|f| serde_json::json!({ "ca": f.ca, "cert": f.cert, "key": f.key }));
    let cfg = serde_json::json!({ "ports": ports, "max_value": MAX_VALUE, "token": token, "tls": tls });
    let out = Command::new(venv_python())
        .arg(script("redis_py_check.py"))
        .arg(cfg.to_string())
        .output()
        .expect("run the venv's python");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "redis-py checks failed:\n{stdout}\n{stderr}");
    let last = stdout.lines().last().unwrap_or_default();
    assert!(last.starts_with("redis-py: ") && last.ends_with("checks passed"), "{stdout}");
    eprintln!("{last} (token: {})", token.is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_cli_and_redis_py_speak_to_every_node_of_a_live_tree() {
    let c = tree(3, &[]).await;
    let (root, a, b) = (c.resp_port(0), c.resp_port(1), c.resp_port(2));

    // redis-cli, one command per run, as scripts use it.
    assert_eq!(cli(a, &["PING"]), "PONG");
    assert_eq!(cli(a, &["SET", "greeting", "hello world"]), "OK");
    assert_eq!(cli(b, &["GET", "greeting"]), "hello world", "a write at one leaf is read at the other");
    assert_eq!(cli(root, &["GET", "greeting"]), "hello world");
    assert_eq!(cli(b, &["SET", "greeting", "x", "NX"]), "");
    assert_eq!(cli(b, &["SET", "greeting", "hi", "XX", "GET"]), "hello world");
    assert_eq!(cli(a, &["MSET", "m1", "1", "m2", "2"]), "OK");
    assert_eq!(cli(b, &["MGET", "m1", "nope", "m2"]), "1\n\n2");
    assert_eq!(cli(a, &["EXISTS", "m1", "m2", "nope"]), "2");
    assert_eq!(cli(a, &["SET", "t", "v", "EX", "1000"]), "OK");
    let ttl: i64 = cli(b, &["TTL", "t"]).parse().expect("TTL is a number");
    assert!((990..=1000).contains(&ttl), "{ttl}");
    let pttl: i64 = cli(b, &["PTTL", "t"]).parse().expect("PTTL is a number");
    assert!((990_000..=1_000_000).contains(&pttl), "{pttl}");
    assert_eq!(cli(a, &["TTL", "nope"]), "-2");
    assert_eq!(cli(a, &["DEL", "m1", "m2", "nope"]), "2");
    assert_eq!(cli(b, &["ECHO", "echo"]), "echo");
    assert_eq!(cli(b, &["SELECT", "0"]), "OK");
    assert_eq!(cli(b, &["COMMAND", "COUNT"]), "19");
    assert!(cli(b, &["DBSIZE"]).parse::<u64>().expect("DBSIZE is a number") >= 2);
    let info = cli(b, &["INFO", "replication"]);
    for line in ["role:master", "tree_role:leaf", "depth:1", "parent:1", "epoch:"] {
        assert!(info.contains(line), "INFO replication lacks {line}: {info}");
    }
    assert!(cli(root, &["INFO"]).contains("tree_role:root"));
    assert!(cli(a, &["FLUSHALL"]).starts_with("ERR unknown command 'FLUSHALL'"));
    assert!(cli(a, &["GET", ""]).contains("(bad_key)"));
    let hello = cli(a, &["-3", "HELLO", "3"]);
    assert!(hello.contains("proto 3") && hello.contains("server treecache"), "{hello}");

    // Interactive, on a pseudo-terminal: redis-cli reads COMMAND DOCS for
    // its hints and shows each reply.
    let out = Command::new("python3")
        .arg(script("redis_cli_tty.py"))
        .args([a.to_string().as_str(), "set tty 'typed value'", "get tty", "command docs get", "client info"])
        .output()
        .expect("python3 runs");
    let shown = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "interactive redis-cli: {shown}\n{}", String::from_utf8_lossy(&out.stderr));
    for expected in ["OK", "\"typed value\"", "\"summary\"", "\"Returns the string value of a key.\"", "resp=2"] {
        assert!(shown.contains(expected), "interactive redis-cli did not show {expected:?}:\n{shown}");
    }

    // redis-py: every command, RESP2 and RESP3, pipelines, errors.
    redis_py(&[root, a, b], None, None);

    // The RESP commands are in the node's request metrics.
    let metrics = c.http.get(format!("{}/metrics", c.url(1))).send().await.unwrap().text().await.unwrap();
    for route in ["resp_read", "resp_write", "resp_delete", "resp_other"] {
        assert!(metrics.contains(&format!("route=\"{route}\"")), "no {route} in /metrics");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn with_an_api_token_only_auth_hello_and_ping_answer_before_auth() {
    let c = tree(2, &["--api-token", TOKEN, "--resp-ack", "parent"]).await;
    let leaf = c.resp_addr(1);
    let mut r = Resp::connect(&leaf).await;
    assert!(r.call(&["GET", "k"]).await.is_error_starting("NOAUTH Authentication required"));
    assert!(r.call(&["SET", "k", "v"]).await.is_error_starting("NOAUTH"));
    assert!(r.call(&["INFO"]).await.is_error_starting("NOAUTH"));
    assert_eq!(r.call(&["PING"]).await, Reply::Simple("PONG".into()));
    assert!(r.call(&["HELLO", "3"]).await.is_error_starting("NOAUTH HELLO must be called"));
    assert!(r.call(&["AUTH", "wrong"]).await.is_error_starting("WRONGPASS"));
    assert!(r.call(&["AUTH", "someone", TOKEN]).await.is_error_starting("WRONGPASS"));
    assert!(r.call(&["GET", "k"]).await.is_error_starting("NOAUTH"), "a wrong password authenticates nothing");
    assert_eq!(r.call(&["AUTH", TOKEN]).await, Reply::ok());
    assert_eq!(r.call(&["GET", "k"]).await, Reply::Nil);
    assert_eq!(r.call(&["RESET"]).await, Reply::Simple("RESET".into()));
    assert!(r.call(&["GET", "k"]).await.is_error_starting("NOAUTH"), "RESET forgets the authentication");
    let hello = r.call(&["HELLO", "3", "AUTH", "default", TOKEN, "SETNAME", "app"]).await;
    let Reply::Map(pairs) = hello else { panic!("HELLO 3 answers a map: {hello:?}") };
    assert!(pairs.contains(&(Reply::bulk("proto"), Reply::Int(3))), "{pairs:?}");
    assert_eq!(r.call(&["CLIENT", "GETNAME"]).await, Reply::bulk("app"));
    assert_eq!(r.call(&["GET", "absent"]).await, Reply::Nil, "RESP3's null");
    // --resp-ack parent: acknowledged once the parent has it; the root
    // has it soon after.
    assert_eq!(r.call(&["SET", "acked", "by-parent"]).await, Reply::ok());
    let mut root = Resp::connect(&c.resp_addr(0)).await;
    assert_eq!(root.call(&["AUTH", TOKEN]).await, Reply::ok());
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while root.call(&["GET", "acked"]).await != Reply::bulk("by-parent") {
        assert!(std::time::Instant::now() < deadline, "the root did not get the ack=parent write within 20 s");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // redis-cli with -a, and redis-py with the password.
    let out = Command::new("redis-cli")
        .args(["-p", &c.resp_port(1).to_string(), "-a", TOKEN, "--no-auth-warning", "GET", "acked"])
        .output()
        .expect("redis-cli runs");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "by-parent");
    redis_py(&[c.resp_port(0), c.resp_port(1)], Some(TOKEN), None);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bad_frame_gets_an_error_and_closes_only_its_connection() {
    let c = tree(2, &[]).await;
    let addr = c.resp_addr(1);
    let mut good = Resp::connect(&addr).await;
    assert_eq!(good.call(&["SET", "kept", "value"]).await, Reply::ok());
    let dbsize = good.call(&["DBSIZE"]).await;

    let bad_frames: [(&str, &[u8]); 7] = [
        ("a 1 GB bulk length", b"*2\r\n$3\r\nGET\r\n$1073741824\r\n"),
        ("an absurd bulk length", b"*1\r\n$99999999999999999999\r\n"),
        ("a negative bulk length", b"*1\r\n$-7\r\n"),
        ("a wrong type in the array", b"*2\r\n$3\r\nGET\r\n:5\r\n"),
        ("an absurd multibulk length", b"*999999999999\r\n"),
        ("a bulk without its CRLF", b"*1\r\n$4\r\nPINGxx"),
        ("a header line that never ends", &[b'*'; 64]),
    ];
    for (what, frame) in bad_frames {
        let mut bad = Resp::connect(&addr).await;
        bad.raw(frame).await;
        let reply = bad.read().await;
        assert!(matches!(&reply, Some(Reply::Error(e)) if e.starts_with("ERR Protocol error")), "{what}: {reply:?}");
        assert!(bad.is_closed().await, "{what}: the connection stays open");
    }
    // Truncated: the client leaves mid-frame.
    let mut cut = Resp::connect(&addr).await;
    cut.raw(b"*3\r\n$3\r\nSET\r\n$4\r\nkept\r\n$100\r\nnot all of it").await;
    drop(cut);

    // A value over --max-value-bytes is refused as /kv refuses it, and the
    // connection goes on; so does one over the command's budget.
    let big = vec![b'v'; MAX_VALUE + 1];
    let reply = good.cmd(&[b"SET", b"kept", &big]).await;
    assert!(
        matches!(&reply, Reply::Error(e) if e.contains("value_too_large") && e.contains(&format!("limit {MAX_VALUE}"))),
        "{reply:?}"
    );
    let many: Vec<Vec<u8>> = (0..80).flat_map(|i| [format!("k{i}").into_bytes(), vec![b'x'; MAX_VALUE]]).collect();
    let mut args: Vec<&[u8]> = vec![b"MSET"];
    args.extend(many.iter().map(Vec::as_slice));
    let reply = good.cmd(&args).await;
    assert!(reply.is_error_starting("ERR bad request: the command's arguments pass"), "{reply:?}");

    // Nothing else changed: the good connection, the key, the node.
    assert_eq!(good.call(&["PING"]).await, Reply::Simple("PONG".into()));
    assert_eq!(good.call(&["GET", "kept"]).await, Reply::bulk("value"));
    assert_eq!(good.call(&["DBSIZE"]).await, dbsize);
    assert_eq!(good.call(&["EXISTS", "k0"]).await, Reply::Int(0));
    assert_eq!(c.health(1).await["status"], "ok");
    assert_eq!(c.get(0, "kept", "").await.text(), "value");

    // Pipelining: 1000 commands in one write, answered in order.
    let mut burst = Vec::new();
    for i in 0..500 {
        burst.extend(format!("*3\r\n$3\r\nSET\r\n$3\r\np{:02}\r\n$4\r\n{i:04}\r\n", i % 100).as_bytes());
        burst.extend(format!("*2\r\n$3\r\nGET\r\n$3\r\np{:02}\r\n", i % 100).as_bytes());
    }
    good.raw(&burst).await;
    for i in 0..500 {
        assert_eq!(good.read().await, Some(Reply::ok()), "SET {i}");
        assert_eq!(good.read().await, Some(Reply::Bulk(format!("{i:04}").into_bytes())), "GET {i}");
    }
    // Consecutive SETs are written together, and still in order: the last
    // of 100 SETs of one key wins, at this node and at the root.
    let mut burst = Vec::new();
    for i in 0..100 {
        burst.extend(format!("*3\r\n$3\r\nSET\r\n$5\r\norder\r\n$3\r\n{i:03}\r\n").as_bytes());
    }
    burst.extend(b"*2\r\n$3\r\nGET\r\n$5\r\norder\r\n");
    good.raw(&burst).await;
    for i in 0..100 {
        assert_eq!(good.read().await, Some(Reply::ok()), "SET {i}");
    }
    assert_eq!(good.read().await, Some(Reply::bulk("099")));
    assert_eq!(c.get(0, "order", "").await.text(), "099");

    // Inline commands, as typed into telnet.
    good.raw(b"PING\r\nECHO inline\r\n").await;
    assert_eq!(good.read().await, Some(Reply::Simple("PONG".into())));
    assert_eq!(good.read().await, Some(Reply::bulk("inline")));
}

/// Guarantee of conditional writes: decided at the root in version order.
/// Each round, writers at every node race SET NX (and `PUT` with
/// `If-None-Match: *`) on one new key: exactly one wins, and every node
/// converges on its value.
#[tokio::test(flavor = "multi_thread")]
async fn writers_at_different_nodes_racing_set_nx_have_exactly_one_winner_every_time() {
    let seed: u64 = std::env::var("TREECACHE_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    eprintln!(
        "set_nx race: seed {seed} (replay: TREECACHE_SEED={seed} cargo test --test resp \
         writers_at_different_nodes_racing_set_nx)"
    );
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let c = tree(7, &[]).await;
    const ROUNDS: usize = 30;
    const WRITERS: usize = 14;
    let mut conns = Vec::new();
    for w in 0..WRITERS {
        conns.push(Resp::connect(&c.resp_addr(w % 7)).await);
    }
    for round in 0..ROUNDS {
        let key = format!("race-{seed}-{round}");
        // Who writes through which node, and by which API, from the seed.
        let plan: Vec<(usize, bool)> = (0..WRITERS).map(|w| (w % 7, rng.gen_bool(0.25))).collect();
        let mut tasks = Vec::new();
        for (w, ((node, http), mut conn)) in plan.iter().copied().zip(std::mem::take(&mut conns)).enumerate() {
            let key = key.clone();
            let url = format!("{}/kv/{key}", c.url(node));
            let http_client = c.http.clone();
            tasks.push(tokio::spawn(async move {
                let value = format!("writer-{w}");
                let won = if http {
                    let resp = http_client.put(&url).header("if-none-match", "*").body(value.clone()).send().await;
                    match resp.expect("PUT").status().as_u16() {
                        201 => true,
                        412 => false,
                        s => panic!("writer {w}: PUT If-None-Match answered {s}"),
                    }
                } else {
                    match conn.call(&["SET", &key, &value, "NX"]).await {
                        Reply::Simple(ok) if ok == "OK" => true,
                        Reply::Nil => false,
                        other => panic!("writer {w}: SET NX answered {other:?}"),
                    }
                };
                (won.then_some(value), conn)
            }));
        }
        let mut winners = Vec::new();
        for t in tasks {
            let (won, conn) = t.await.expect("writer task");
            winners.extend(won);
            conns.push(conn);
        }
        assert_eq!(winners.len(), 1, "round {round} (seed {seed}): winners {winners:?}");
        let winner = winners.remove(0);
        for i in 0..7 {
            wait_until(Duration::from_secs(20), &format!("node {i} has round {round}'s winner"), || {
                let c = &c;
                let (key, winner) = (&key, &winner);
                async move { c.get(i, key, "").await.text() == *winner }
            })
            .await;
        }
    }
    let refused = c.metric(0, "conditions_failed_total").await;
    assert_eq!(refused as usize, ROUNDS * (WRITERS - 1), "every loser was refused at the root");
}

#[tokio::test(flavor = "multi_thread")]
async fn conditional_http_writes_answer_412_with_the_current_version_and_write_nothing() {
    let c = tree(3, &[]).await;
    let url = |i: usize| format!("{}/kv/cond", c.url(i));
    let put = |i: usize, header: (&'static str, String), value: &'static str, query: &'static str| {
        c.http.put(format!("{}{query}", url(i))).header(header.0, header.1).body(value).send()
    };
    let version = |r: &reqwest::Response| r.headers().get("x-version").map(|v| v.to_str().unwrap().to_string());

    let r = put(1, ("if-none-match", "*".into()), "one", "").await.unwrap();
    assert_eq!(r.status(), 201);
    let v1 = r.json::<serde_json::Value>().await.unwrap()["version"].as_u64().expect("a version");
    let r = put(2, ("if-none-match", "*".into()), "two", "").await.unwrap();
    assert_eq!(r.status(), 412);
    assert_eq!(version(&r), Some(v1.to_string()), "412 carries the current version");
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["code"], "precondition_failed");
    assert!(body["error"].as_str().is_some_and(|e| e.contains(&v1.to_string())), "{body}");
    assert_eq!(body.as_object().map(|o| o.len()), Some(2), "error and code only: {body}");

    // If-Match: the version read; a stale one is refused.
    let read = c.get(2, "cond", "").await;
    assert_eq!((read.text().as_str(), read.version), ("one", Some(v1)));
    let r = put(2, ("if-match", v1.to_string()), "three", "?ack=root").await.unwrap();
    assert_eq!(r.status(), 200);
    let v2 = r.json::<serde_json::Value>().await.unwrap()["version"].as_u64().unwrap();
    assert!(v2 > v1);
    let r = put(1, ("if-match", format!("\"{v1}\"")), "four", "").await.unwrap();
    assert_eq!((r.status().as_u16(), version(&r)), (412, Some(v2.to_string())));
    let r = put(0, ("if-match", "*".into()), "five", "").await.unwrap();
    assert_eq!(r.status(), 200, "If-Match: * on a present key");
    let v3 = c.get(0, "cond", "").await.version.unwrap();

    // Conditional deletes; then the key is absent for If-Match.
    let del = |i: usize, header: String| c.http.delete(url(i)).header("if-match", header).send();
    let r = del(1, v2.to_string()).await.unwrap();
    assert_eq!((r.status().as_u16(), version(&r)), (412, Some(v3.to_string())));
    assert_eq!(del(1, v3.to_string()).await.unwrap().status(), 200);
    let r = put(2, ("if-match", "*".into()), "six", "").await.unwrap();
    assert_eq!((r.status().as_u16(), version(&r)), (412, None), "no current version: no X-Version");

    // Nothing a refusal touched was written anywhere.
    for i in 0..3 {
        wait_until(Duration::from_secs(20), "every node sees the delete", || {
            let c = &c;
            async move { c.get(i, "cond", "").await.status == 404 }
        })
        .await;
    }
    assert_eq!(c.metric(0, "conditions_failed_total").await, 4.0);
    assert_eq!(c.metric(0, "commits_total").await, 4.0, "one, three, five and the delete");
}

// RESP over TLS (issue 23): with --tls-cert the RESP port speaks TLS only,
// as Redis's tls-port, with the HTTP side's certificate, client policy and
// reloads.

/// A TLS tree of `n` nodes that all speak RESP, with `flags` on every node.
async fn tls_tree(n: usize, flags: &[&str]) -> Cluster {
    let mut common = owned(&["--max-value-bytes", "64KiB"]);
    common.extend(owned(flags));
    Cluster::start_opts(Opts {
        nodes: n,
        root_args: common.clone(),
        node_args: common,
        resp: true,
        tls: true,
        ..Opts::default()
    })
    .await
}

/// A client certificate of the cluster's CA, and the CA, in files.
fn client_cert(c: &Cluster, name: &str) -> TlsFiles {
    client_files(c.ca.as_ref().expect("a TLS cluster"), &c.tls_dir().join(name))
}

/// A rustls client that trusts the cluster's CA and presents `identity`
/// (a PEM certificate and key, of any CA) if given.
fn tls_config(c: &Cluster, identity: Option<(&str, &str)>) -> std::sync::Arc<rustls::ClientConfig> {
    std::sync::Arc::new(common::client_config(c.ca.as_ref().expect("a TLS cluster").cert_pem(), identity))
}

/// [`tls_config`] presenting `files`' certificate.
fn presenting_tls(c: &Cluster, files: &TlsFiles) -> std::sync::Arc<rustls::ClientConfig> {
    let read = |p: &std::path::Path| std::fs::read_to_string(p).expect("PEM file");
    tls_config(c, Some((&read(&files.cert), &read(&files.key))))
}

fn path(p: &std::path::Path) -> String {
    p.display().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_cli_and_redis_py_speak_resp_over_tls_and_a_plaintext_client_is_closed() {
    let c = tls_tree(3, &[]).await;
    let files = client_cert(&c, "resp-client");
    let ca = path(&files.ca);
    let tls = ["--tls", "--cacert", ca.as_str()];
    let (root, a, b) = (c.resp_port(0), c.resp_port(1), c.resp_port(2));

    // redis-cli --tls --cacert, no client certificate (--tls-client-auth none).
    assert_eq!(tls_cli(a, &tls, &["PING"]), Ok("PONG".into()));
    assert_eq!(tls_cli(a, &tls, &["SET", "over-tls", "sealed"]), Ok("OK".into()));
    assert_eq!(tls_cli(b, &tls, &["GET", "over-tls"]), Ok("sealed".into()), "a write at one leaf, read at another");
    assert_eq!(tls_cli(root, &tls, &["GET", "over-tls"]), Ok("sealed".into()));
    // The HTTP side sees the same key: one store behind both front doors.
    assert_eq!(c.get(2, "over-tls", "").await.text(), "sealed");

    // redis-py with ssl=True: every check of the plain run, over TLS.
    redis_py(&[root, a, b], None, Some(&files));
    let mut r = Resp::connect_tls(&c.resp_addr(1), tls_config(&c, None)).await.expect("handshake");
    assert_eq!(r.call(&["GET", "over-tls"]).await, Reply::bulk("sealed"));

    // A plaintext client on the TLS port: no reply in clear, the
    // connection is closed, the node goes on.
    let mut plain = Resp::connect(&c.resp_addr(1)).await;
    plain.raw(b"*1\r\n$4\r\nPING\r\n").await;
    let said = plain.read_until_closed().await.expect("a plaintext client is closed");
    assert!(!String::from_utf8_lossy(&said).contains("PONG"), "no answer in clear: {said:?}");
    let out = cli_run(a, &[], &["PING"]);
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(!said.contains("PONG"), "redis-cli without --tls gets no answer: {said}");
    // A client that opens a connection and never says anything is closed
    // after the handshake timeout (5 s), not held for ever.
    let mut silent = Resp::connect(&c.resp_addr(1)).await;
    assert!(silent.read_until_closed().await.is_some(), "a silent connection is closed");
    assert_eq!(r.call(&["PING"]).await, Reply::Simple("PONG".into()), "an open TLS connection goes on");
    assert_eq!(tls_cli(a, &tls, &["GET", "over-tls"]), Ok("sealed".into()));
    assert_eq!(c.health(1).await["status"], "ok");

    // SIGHUP: new RESP handshakes get the renewed certificate, the open
    // connection goes on.
    let before = r.served().expect("a server certificate").to_vec();
    let node = c.tls_dir().join("node-1");
    let renewed = c.ca.as_ref().unwrap().issue("renewed", LOOPBACK).unwrap();
    std::fs::write(node.join("node-key.pem"), &renewed.key_pem).unwrap();
    std::fs::write(node.join("node.pem"), &renewed.cert_pem).unwrap();
    c.signal_hup(1);
    wait_until(Duration::from_secs(20), "the reload in the log", || async {
        c.log(1).contains("SIGHUP: reloaded TLS certificate")
    })
    .await;
    let fresh = Resp::connect_tls(&c.resp_addr(1), tls_config(&c, None)).await.expect("handshake");
    let served = fresh.served().expect("a server certificate").to_vec();
    assert_ne!(served, before, "a new RESP handshake gets the renewed certificate");
    assert_eq!(r.call(&["GET", "over-tls"]).await, Reply::bulk("sealed"), "the open connection was not dropped");
}

#[tokio::test(flavor = "multi_thread")]
async fn with_tls_client_auth_require_a_resp_client_without_a_certificate_is_refused() {
    let c = tls_tree(1, &["--tls-client-auth", "require"]).await;
    let files = client_cert(&c, "resp-client");
    let (ca, cert, key) = (path(&files.ca), path(&files.cert), path(&files.key));
    let port = c.resp_port(0);

    // redis-cli: refused without a certificate, served with one.
    let refused = tls_cli(port, &["--tls", "--cacert", &ca], &["SET", "k", "v"]);
    assert_ne!(refused, Ok("OK".into()), "no certificate, no service");
    assert_eq!(
        tls_cli(port, &["--tls", "--cacert", &ca, "--cert", &cert, "--key", &key], &["SET", "k", "v"]),
        Ok("OK".into())
    );

    // A client without a certificate: the handshake fails, or (TLS 1.3)
    // the first read finds the connection closed. Nothing was written.
    if let Ok(mut r) = Resp::connect_tls(&c.resp_addr(0), tls_config(&c, None)).await {
        let sent = r.try_raw(b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$7\r\nnot-set\r\n").await;
        assert!(sent.is_err() || r.is_closed().await, "a client without a certificate is refused");
    }
    // A certificate of another CA is refused too.
    let other = treecache::tls::certs::Authority::new("another CA").unwrap();
    let foreign = other.issue("client", LOOPBACK).unwrap();
    if let Ok(mut r) =
        Resp::connect_tls(&c.resp_addr(0), tls_config(&c, Some((&foreign.cert_pem, &foreign.key_pem)))).await
    {
        let sent = r.try_raw(b"*1\r\n$4\r\nPING\r\n").await;
        assert!(sent.is_err() || r.is_closed().await, "another CA's certificate is refused");
    }
    let mut r = Resp::connect_tls(&c.resp_addr(0), presenting_tls(&c, &files)).await.expect("handshake");
    assert_eq!(r.call(&["GET", "k"]).await, Reply::bulk("v"), "the refused SET wrote nothing");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tls_resp_connection_past_max_connections_reads_the_error_after_its_handshake() {
    let c = tls_tree(1, &["--max-connections", "2"]).await;
    let files = client_cert(&c, "resp-client");
    let mut first = Resp::connect_tls(&c.resp_addr(0), presenting_tls(&c, &files)).await.expect("handshake");
    let mut second = Resp::connect_tls(&c.resp_addr(0), presenting_tls(&c, &files)).await.expect("handshake");
    assert_eq!(first.call(&["PING"]).await, Reply::Simple("PONG".into()));
    assert_eq!(second.call(&["PING"]).await, Reply::Simple("PONG".into()));
    let mut third = Resp::connect_tls(&c.resp_addr(0), presenting_tls(&c, &files)).await.expect("handshake");
    assert_eq!(third.read().await, Some(Reply::Error("ERR max number of clients reached".into())));
    assert!(third.is_closed().await);
    drop(first);
    wait_until(Duration::from_secs(20), "a slot to come free", || async {
        let Ok(mut r) = Resp::connect_tls(&c.resp_addr(0), presenting_tls(&c, &files)).await else { return false };
        r.call(&["PING"]).await == Reply::Simple("PONG".into())
    })
    .await;
    assert_eq!(second.call(&["PING"]).await, Reply::Simple("PONG".into()));
}
