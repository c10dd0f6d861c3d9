//! `bench/compare.sh --quick` end to end, the way docs/benchmarks.md runs
//! it (with this build's binaries instead of a release build): every
//! baseline and every treecache figure must come out as a row with a
//! number, against real ZooKeeper, real nodes and a real Redis. Whether a
//! target is met is for docs/benchmarks.md, never asserted here.

use std::path::Path;
use std::process::Command;

const REPO: &str = env!("CARGO_MANIFEST_DIR");

#[test]
fn compare_sh_prints_every_figure_beside_its_baseline() {
    let bin_dir = Path::new(env!("CARGO_BIN_EXE_treecache")).parent().expect("target dir").to_path_buf();
    // The baseline servers are examples; `cargo test --all-targets` builds
    // them, a lone `cargo test --test compare` may not have.
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut build = vec!["build", "--quiet", "--example", "bare", "--example", "hop"];
    if bin_dir.ends_with("release") {
        build.push("--release");
    }
    let built = Command::new(&cargo).args(&build).current_dir(REPO).status().expect("run cargo build");
    assert!(built.success(), "cargo build --example bare --example hop failed");

    let dir = tempfile::tempdir().expect("temp dir");
    let table = dir.path().join("table.md");
    let out = Command::new("bash")
        .arg("bench/compare.sh")
        .args(["--quick", "--bin-dir"])
        .arg(&bin_dir)
        .arg("--markdown")
        .arg(&table)
        .current_dir(REPO)
        .env_remove("CARGO_TARGET_DIR")
        .output()
        .expect("run bench/compare.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "compare.sh failed:\n{stderr}\n{stdout}");

    let md = std::fs::read_to_string(&table).expect("the markdown table");
    assert!(md.starts_with("Machine: "), "{md}");
    let rows: Vec<Vec<&str>> = md
        .lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| figure") && !l.starts_with("| ---"))
        .map(|l| l.trim_matches('|').split(" | ").map(str::trim).collect())
        .collect();
    let row = |figure: &str| -> &Vec<&str> {
        rows.iter().find(|r| r[0].starts_with(figure)).unwrap_or_else(|| panic!("no row {figure:?} in\n{md}"))
    };
    // Every figure is there with a number; a ratio wherever there is a baseline.
    for figure in [
        "bare actix constant",
        "bare reqwest hop",
        "leaf hit GET, throughput",
        "leaf hit GET, p99",
        "leaf hit GET vs Redis GET",
        "leaf hit GET (wrk -c 64), throughput",
        "leaf hit GET (wrk -c 64), p99",
        "leaf hit GET over TLS (keep-alive), throughput",
        "leaf hit GET over TLS (keep-alive), p50 / p99",
        "miss, cost per extra level, p50",
        "miss, cost per extra level, p99",
        "write ack=parent",
        "write ack=root",
        "ycsb_a",
        "ycsb_b",
        "converge",
        "converge at 1000 w/s, accepted writes/s",
        "converge at 1000 w/s, write p99",
        "converge at 1000 w/s, push lag p99",
        "converge at 1000 w/s, CPU per write summed over 15 processes",
        "10000 x 100 B, node's own accounting",
        "10000 x 100 B, RSS growth",
        "scale: 15/15 registered",
        "scale: idle RSS per node",
        "scale: idle PSS per node",
        "ack=root --fsync always",
        "ack=root --fsync everysec",
        "ack=root --fsync always over RESP",
        "ack=root --fsync everysec over RESP",
        "restart, 20000 x 100 B: replay",
        "capacity: 2 groups, keys held until root_full",
        "capacity: 2 groups, ack=root writes/s",
        "capacity: a 1,000-key slot moved under load",
        "capacity: other slots' write p99 while a slot moves",
    ] {
        let r = row(figure);
        assert!(r[1].chars().any(|c| c.is_ascii_digit()), "{figure}: no figure in {r:?}");
        if !r[4].is_empty() {
            assert!(r[3].parse::<f64>().is_ok(), "{figure}: ratio {:?} is not a number", r[3]);
        }
        // A target gets a verdict; a figure shown "(beside)" a baseline does not.
        if !r[4].is_empty() && r[4] != "(beside)" {
            assert!(r[5] == "yes" || r[5] == "NO", "{figure}: verdict {:?}", r[5]);
        }
    }
    // The YCSB mixes read keys that were written: all hits, no errors.
    assert!(row("ycsb_b")[1].contains("hits 100%"), "{:?}", row("ycsb_b"));
    // Every command that produced a figure is written down.
    assert!(md.contains("treecache bench hit --root"), "{md}");
    assert!(md.contains("--tls-ca"), "the TLS run's command: {md}");
    assert!(md.contains("redis-benchmark"), "{md}");
    assert!(md.contains("writes/fsync"), "{md}");
    for policy in ["always", "everysec"] {
        let r = row(&format!("ack=root --fsync {policy}, "));
        assert!(r[1].contains("root CPU") && r[1].contains("µs/write"), "{r:?}");
    }
    assert!(md.contains("treecache bench capacity --groups 1,2"), "{md}");
    assert!(md.contains("--rate 1000 --value-size 1024 -c 64 -d 1s --no-poll"), "the 1,000 w/s converge run: {md}");
    // The push lag has a target; the CPU per write is beside it, no target.
    assert_eq!(row("converge at 1000 w/s, push lag p99")[4], "≤ 20 ms");
    let cpu = row("converge at 1000 w/s, CPU per write");
    assert!(cpu[1].ends_with(" µs") && cpu[4].is_empty(), "{cpu:?}");
    assert!(row("restart, 20000")[1].contains("replayed"), "{:?}", row("restart, 20000"));
}
