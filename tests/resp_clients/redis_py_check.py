"""redis-py (the Python client from PyPI) against a live treecache tree.

Run by tests/resp.rs with the venv's python: every command, RESP2 and
RESP3, pipelining, errors, binary values, and a write at one node read at
another. Each check that fails raises; the last line printed is
"redis-py: N checks passed". Arguments: a JSON object
{"ports": [root, node, ...], "max_value": N, "token": "..." or null,
"tls": null or {"ca": PEM file, "cert": PEM file or null, "key": ...}}:
with "tls" every connection is TLS, verified against "ca".
"""

import json
import sys
import time

import redis

cfg = json.loads(sys.argv[1])
ports = cfg["ports"]
token = cfg.get("token")
tls = cfg.get("tls")
checks = 0


def text(x):
    """Simple strings and names come back as str or bytes by protocol and version."""
    return x.decode() if isinstance(x, bytes) else x


def check(what, got, want):
    global checks
    if got != want:
        raise AssertionError(f"{what}: got {got!r}, want {want!r}")
    checks += 1


def raises(what, fn, text):
    global checks
    try:
        got = fn()
    except redis.exceptions.ResponseError as e:
        if text not in str(e):
            raise AssertionError(f"{what}: error {e!r} does not say {text!r}")
        checks += 1
        return
    raise AssertionError(f"{what}: no error, got {got!r}")


def eventually(what, fn, want, seconds=20):
    deadline = time.time() + seconds
    got = fn()
    while got != want and time.time() < deadline:
        time.sleep(0.05)
        got = fn()
    check(what, got, want)


def client(port, protocol):
    ssl = {}
    if tls:
        ssl = {"ssl": True, "ssl_ca_certs": tls["ca"], "ssl_certfile": tls.get("cert"),
               "ssl_keyfile": tls.get("key")}
    return redis.Redis(host="127.0.0.1", port=port, protocol=protocol, password=token,
                       socket_timeout=40, client_name=f"check-{protocol}", **ssl)


for protocol in (2, 3):
    leaf = client(ports[-1], protocol)
    other = client(ports[1], protocol)
    root = client(ports[0], protocol)
    p = f"p{protocol}:"
    check("PING", leaf.ping(), True)
    check("ECHO", leaf.echo("hi"), b"hi")
    check("CLIENT GETNAME", text(leaf.client_getname()), f"check-{protocol}")
    info = leaf.client_info()
    check("CLIENT INFO resp", str(info["resp"]), str(protocol))
    check("CLIENT INFO lib-name", info["lib-name"], "redis-py")
    check("CLIENT ID", leaf.client_id() == int(info["id"]), True)
    check("SELECT 0", leaf.select(0), True)
    raises("SELECT 1", lambda: leaf.select(1), "DB index is out of range")

    # Writes at a leaf, read everywhere; binary values.
    value = bytes(range(256)) + b"\r\n\x00"
    check("SET", leaf.set(p + "k", value), True)
    check("GET here", leaf.get(p + "k"), value)
    eventually("GET at another node", lambda: other.get(p + "k"), value)
    check("GET at the root", root.get(p + "k"), value)
    check("GET absent", leaf.get(p + "absent"), None)
    check("SET NX on a present key", leaf.set(p + "k", b"x", nx=True), None)
    check("SET XX on an absent key", leaf.set(p + "new", b"x", xx=True), None)
    check("SET NX on an absent key", other.set(p + "new", b"1", nx=True), True)
    check("SET XX on a present key", leaf.set(p + "new", b"2", xx=True), True)
    check("SET GET", leaf.set(p + "new", b"3", get=True), b"2")
    check("SET GET of an absent key", leaf.set(p + "fresh", b"a", get=True), None)
    check("SET NX GET on a present key", leaf.set(p + "fresh", b"b", nx=True, get=True), b"a")
    check("GET after NX GET", leaf.get(p + "fresh"), b"a")
    check("SET EX", leaf.set(p + "ttl", b"t", ex=100), True)
    ttl = leaf.ttl(p + "ttl")
    check("TTL", 98 <= ttl <= 100, True)
    pttl = leaf.pttl(p + "ttl")
    check("PTTL", 98_000 <= pttl <= 100_000, True)
    check("SET PX", leaf.set(p + "px", b"t", px=50_000), True)
    check("PTTL after PX", 48_000 <= leaf.pttl(p + "px") <= 50_000, True)
    check("TTL without expiry", leaf.ttl(p + "k"), -1)
    check("TTL absent", leaf.ttl(p + "absent"), -2)
    check("MSET", leaf.mset({p + "a": b"1", p + "b": b"2"}), True)
    check("MGET", leaf.mget([p + "a", p + "absent", p + "b"]), [b"1", None, b"2"])
    check("EXISTS", leaf.exists(p + "a", p + "b", p + "absent", p + "a"), 3)
    check("DEL", leaf.delete(p + "a", p + "b", p + "absent"), 2)
    check("DEL again", leaf.delete(p + "a"), 0)
    eventually("deleted everywhere", lambda: other.exists(p + "a", p + "b"), 0)
    check("DBSIZE", leaf.dbsize() > 0, True)

    # Pipelining: 200 commands in one round trip, answered in order.
    pipe = leaf.pipeline(transaction=False)
    for i in range(100):
        pipe.set(f"{p}pipe{i}", str(i))
        pipe.get(f"{p}pipe{i}")
    replies = pipe.execute()
    check("pipeline", replies, [x for i in range(100) for x in (True, str(i).encode())])
    eventually("pipelined writes at another node", lambda: other.mget([f"{p}pipe{i}" for i in range(100)]),
               [str(i).encode() for i in range(100)])

    # Errors: the connection stays usable after each.
    raises("unknown command", lambda: leaf.execute_command("FLUSHALL"), "unknown command 'FLUSHALL'")
    raises("wrong arity", lambda: leaf.execute_command("GET"), "wrong number of arguments for 'get'")
    raises("bad key", lambda: leaf.get(""), "bad_key")
    raises("key too long", lambda: leaf.set("k" * 251, b"v"), "bad_key")
    raises("value too large", lambda: leaf.set(p + "big", b"v" * (cfg["max_value"] + 1)), "value_too_large")
    raises("bad expiry", lambda: leaf.set(p + "e", b"v", ex=0), "invalid expire time")
    raises("NX and XX", lambda: leaf.execute_command("SET", p + "e", "v", "NX", "XX"), "syntax error")
    raises("MSET odd", lambda: leaf.execute_command("MSET", p + "a", "1", p + "b"), "wrong number of arguments")
    check("still usable", leaf.get(p + "k"), value)

    # INFO and COMMAND.
    info = leaf.info()
    check("INFO redis_version", info["redis_version"], "7.2.0")
    check("INFO role", info["role"], "master")
    check("INFO tree_role", info["tree_role"], "leaf")
    check("INFO depth", info["depth"] >= 1, True)
    check("INFO connected_clients", info["connected_clients"] >= 1, True)
    check("INFO keyspace_hits", info["keyspace_hits"] > 0, True)
    check("INFO root", root.info("replication")["tree_role"], "root")
    check("COMMAND COUNT", leaf.command_count(), 19)
    # A two-word name: redis-py sends it as two arguments and parses nothing.
    docs = leaf.execute_command("COMMAND DOCS", "GET")
    docs = dict(zip(docs[::2], docs[1::2])) if isinstance(docs, list) else docs
    doc = docs[b"get"]
    doc = dict(zip(doc[::2], doc[1::2])) if isinstance(doc, list) else doc
    check("COMMAND DOCS", doc[b"summary"], b"Returns the string value of a key.")
    info = leaf.execute_command("COMMAND INFO", "get", "nosuch")
    check("COMMAND INFO", (info[0][0], info[0][1], info[1]), (b"get", 2, None))

    # RESET goes back to RESP2 and forgets the name.
    check("RESET", text(leaf.execute_command("RESET")), "RESET")
    leaf.close()
    other.close()
    root.close()

# Writes through the root, seen at a leaf.
r = client(ports[0], 2)
leaf = client(ports[-1], 2)
check("SET at the root", r.set("from-root", b"r"), True)
eventually("seen at a leaf", lambda: leaf.get("from-root"), b"r")

print(f"redis-py: {checks} checks passed")
