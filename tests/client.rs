//! `treecache::client` against real nodes (a real ZooKeeper, real node
//! processes): every call, every typed error a caller meets, and what each
//! names (key, URL, the node's `code`).

mod common;

use std::time::Duration;

use common::{wait_until, Cluster, Opts};
use treecache::client::{Ack, Cache, Client, Error, PutOptions};
use treecache::zkserver::free_port;

const CONVERGE: Duration = Duration::from_secs(20);

fn root_ack() -> PutOptions {
    PutOptions { ack: Ack::Root, ..PutOptions::default() }
}

#[tokio::test(flavor = "multi_thread")]
async fn put_get_consistent_get_and_del_through_a_leaf() {
    let c = Cluster::start(3, &[]).await;
    let leaf = c.client(2);
    let leaf_id = c.id(2).await;

    // ack=root with a ttl: the version comes back, the key expires later.
    let options = PutOptions { ack: Ack::Root, ttl: Some(Duration::from_secs(120)) };
    let written = leaf.put_with("a/b c", "v1", options).await.expect("put ack=root");
    assert_eq!(written.node(), Some(leaf_id));
    let v1 = written.version().expect("ack=root answers with the version");

    let found = leaf.get("a/b c").await.expect("get");
    assert_eq!((found.value().as_ref(), found.version(), found.node()), (&b"v1"[..], Some(v1), Some(leaf_id)));
    assert!(matches!(found.cache(), Some(Cache::Hit | Cache::Miss)), "{:?}", found.cache());
    assert!(found.expires_at().is_some(), "the ttl set X-Expires-At: {:?}", found.headers());
    // The key went into the path percent-encoded: the root has the same key.
    assert_eq!(c.get(0, "a/b c", "").await.version, Some(v1));

    let fresh = leaf.get_consistent("a/b c").await.expect("consistent get");
    assert_eq!((fresh.value().as_ref(), fresh.version()), (&b"v1"[..], Some(v1)));

    // ack=parent: answered once the parent holds it; the root commits it soon after.
    leaf.put("a/b c", "v2").await.expect("put ack=parent");
    wait_until(CONVERGE, "the ack=parent write at the root", || async {
        c.client(0).get_consistent("a/b c").await.is_ok_and(|f| f.value() == "v2")
    })
    .await;
    let v2 = leaf.get_consistent("a/b c").await.expect("consistent get").version().expect("version");
    assert!(v2 > v1);

    let deleted = leaf.del_with("a/b c", Ack::Root).await.expect("del ack=root");
    assert!(deleted.version().is_some_and(|v| v > v2), "the delete's version comes later");
    let gone = leaf.get_consistent("a/b c").await.unwrap_err();
    assert!(gone.is_not_found(), "{gone:?}");
    assert!(matches!(&gone, Error::NotFound { key, .. } if key == "a/b c"));
    assert_eq!((gone.status().map(|s| s.as_u16()), gone.code()), (Some(404), Some("not_found")));
    assert!(gone.to_string().contains(&leaf.url("a/b c")), "names the URL: {gone}");
    let again = leaf.del_with("a/b c", Ack::Root).await.unwrap_err();
    assert!(again.is_not_found(), "deleting an absent key with ack=root: {again:?}");

    // ack=parent delete: taken, then gone everywhere.
    leaf.put_with("k", "v", root_ack()).await.expect("put");
    leaf.del("k").await.expect("del ack=parent");
    wait_until(CONVERGE, "the ack=parent delete at the root", || async {
        c.client(0).get_consistent("k").await.is_err_and(|e| e.is_not_found())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_is_refused_with_the_nodes_code_and_changes_nothing() {
    let c = Cluster::start(2, &[]).await;
    let node = c.client(1);

    let bad_key = node.get("a\tb").await.unwrap_err();
    assert!(bad_key.is_refused(), "{bad_key:?}");
    assert_eq!((bad_key.status().map(|s| s.as_u16()), bad_key.code()), (Some(400), Some("bad_key")));
    assert!(bad_key.to_string().contains("control character"), "{bad_key}");

    let zero_ttl = PutOptions { ttl: Some(Duration::ZERO), ..root_ack() };
    let bad_ttl = node.put_with("k", "v", zero_ttl).await.unwrap_err();
    assert_eq!((bad_ttl.is_refused(), bad_ttl.code()), (true, Some("bad_parameter")), "{bad_ttl}");

    let too_big = node.put_with("big", vec![b'x'; (1 << 20) + 1], root_ack()).await.unwrap_err();
    assert_eq!((too_big.status().map(|s| s.as_u16()), too_big.code()), (Some(413), Some("value_too_large")));

    for key in ["k", "big"] {
        assert!(node.get_consistent(key).await.unwrap_err().is_not_found(), "{key} was not written");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_missing_or_wrong_api_token_is_unauthorized() {
    let token = ["--api-token", "s3cret-token"];
    let c = Cluster::start_with(2, &token, &token).await;
    let url = c.url(1);

    let without = Client::new(&url).unwrap().get("k").await.unwrap_err();
    assert!(without.is_unauthorized(), "{without:?}");
    assert_eq!(without.code(), Some("unauthorized"));
    let wrong = Client::builder(&url).api_token("guess").build().unwrap();
    assert!(wrong.put("k", "v").await.unwrap_err().is_unauthorized());

    let right = Client::builder(&url).api_token("s3cret-token").timeout(Duration::from_secs(5)).build().unwrap();
    right.put_with("k", "v", root_ack()).await.expect("put with the token");
    assert_eq!(right.get("k").await.expect("get with the token").value(), "v");
}

#[tokio::test(flavor = "multi_thread")]
async fn too_few_in_sync_roots_is_unavailable_with_retry_after() {
    let root_args = ["--min-insync", "2", "--insync-timeout", "1s"].map(String::from).to_vec();
    let c = Cluster::start_opts(Opts { nodes: 2, durable_root: true, root_args, ..Opts::default() }).await;
    let err = c.client(1).put_with("k", "v", root_ack()).await.unwrap_err();
    assert!(err.is_unavailable(), "{err:?}");
    assert_eq!((err.code(), err.retry_after()), (Some("insync_below_min"), Some(Duration::from_secs(1))));
    assert!(c.client(0).get_consistent("k").await.unwrap_err().is_not_found(), "the refused write changed nothing");
}

#[tokio::test]
async fn an_unreachable_node_is_a_transport_error_naming_its_url() {
    let url = format!("http://127.0.0.1:{}", free_port().unwrap());
    let err = Client::new(&url).unwrap().get("k").await.unwrap_err();
    assert!(err.is_transport() && !err.is_unavailable(), "{err:?}");
    assert_eq!(err.status(), None);
    assert!(err.to_string().starts_with(&format!("GET {url}/kv/k: ")), "{err}");
    let Error::Transport { source, .. } = &err else { panic!("{err:?}") };
    assert!(source.is_connect(), "{source:?}");
}
