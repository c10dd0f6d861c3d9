//! The deployment files hold together without VMs: `vagrant validate`
//! accepts the Vagrantfile (the default tree and a 16-node one with two root
//! candidates), the plan in deploy/topology.rb refuses what it cannot build,
//! and shellcheck passes over provision/, scripts/, bench/ and .ci/run. A missing tool fails the test and
//! says how to install it (scripts/test.sh does).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use serde_json::Value;

const REPO: &str = env!("CARGO_MANIFEST_DIR");

/// Runs `program args` in the repository with `env` on top of a clean
/// environment (so an operator's NODES or BOX cannot leak in).
fn run(program: &str, args: &[&str], env: &[(&str, &str)], install: &str) -> Output {
    let mut cmd = Command::new(program);
    cmd.args(args)
        .current_dir(REPO)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", std::env::var("HOME").unwrap_or_else(|_| "/root".into()))
        .envs(env.iter().copied());
    cmd.output().unwrap_or_else(|e| panic!("cannot run {program} ({e}): {install} (scripts/test.sh does)"))
}

fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

/// `vagrant validate` with `env`, offline: no update check, and Vagrant's
/// state in a temp dir rather than .vagrant/ in the checkout.
fn vagrant_validate(env: &[(&str, &str)]) -> Output {
    let state = tempfile::tempdir().expect("temp dir");
    let dotfile = state.path().join("dotfile");
    let home = state.path().join("home");
    let mut all = vec![
        ("VAGRANT_CHECKPOINT_DISABLE", "1"),
        ("VAGRANT_DOTFILE_PATH", dotfile.to_str().expect("utf-8 path")),
        ("VAGRANT_HOME", home.to_str().expect("utf-8 path")),
    ];
    all.extend_from_slice(env);
    run("vagrant", &["validate"], &all, "install Debian's vagrant package: apt-get install vagrant")
}

#[test]
fn vagrant_validate_accepts_the_vagrantfile() {
    for env in [&[][..], &[("NODES", "16"), ("ROOTS", "2"), ("VM_MEMORY", "384")][..]] {
        let out = vagrant_validate(env);
        assert!(out.status.success(), "vagrant validate with {env:?}:\n{}", text(&out));
        assert!(text(&out).contains("validated successfully"), "{}", text(&out));
    }
}

/// scripts/vagrant-e2e.sh runs the Vagrantfile through
/// deploy/Vagrantfile.libvirt (rsync synced folder, optional console logs
/// and emulated CPUs); it must validate, and define the same machines.
#[test]
fn the_libvirt_override_validates_and_keeps_the_machines() {
    for env in [
        &[("VAGRANT_VAGRANTFILE", "deploy/Vagrantfile.libvirt")][..],
        &[
            ("VAGRANT_VAGRANTFILE", "deploy/Vagrantfile.libvirt"),
            ("LIBVIRT_DRIVER", "qemu"),
            ("E2E_CONSOLE_DIR", "/tmp"),
            ("NODES", "3"),
        ][..],
    ] {
        let out = vagrant_validate(env);
        assert!(out.status.success(), "vagrant validate with {env:?}:\n{}", text(&out));
        assert!(text(&out).contains("validated successfully"), "{}", text(&out));
    }
}

#[test]
fn vagrant_refuses_more_nodes_than_deploy_hosts_defines() {
    let out = vagrant_validate(&[("NODES", "65")]);
    assert!(!out.status.success(), "NODES=65 validated:\n{}", text(&out));
    assert!(text(&out).contains("NODES=65: must be a whole number from 1 to 64"), "{}", text(&out));
}

fn plan(env: &[(&str, &str)]) -> Value {
    let mut all = vec![("VAGRANT_DOTFILE_PATH", "/nonexistent/treecache-deploy-lint")];
    all.extend_from_slice(env);
    let out = run("ruby", &["deploy/topology.rb", "json"], &all, "install ruby (Debian's vagrant package brings it)");
    assert!(out.status.success(), "deploy/topology.rb json {env:?}: {}", text(&out));
    serde_json::from_slice(&out.stdout).expect("plan JSON")
}

fn started(plan: &Value) -> Vec<String> {
    let vms = plan["vms"].as_array().expect("vms");
    vms.iter().filter(|v| v["autostart"] == true).map(|v| v["name"].as_str().unwrap().to_string()).collect()
}

#[test]
fn the_plan_starts_zookeeper_a_root_and_nodes_with_their_environment() {
    let p = plan(&[]);
    assert_eq!(started(&p), ["zk", "root", "node1", "node2", "node3", "node4"]);
    let vms = p["vms"].as_array().unwrap();
    let vm = |name: &str| vms.iter().find(|v| v["name"] == name).unwrap_or_else(|| panic!("{name} in the plan"));
    // One spare is defined, so `vagrant up node5` adds it.
    assert_eq!(vm("node5")["autostart"], false);
    assert!(vms.iter().all(|v| v["name"] != "node6"), "only one spare node is defined");

    let zk = format!("{}:{}", vm("zk")["ip"].as_str().unwrap(), p["settings"]["zk_port"].as_str().unwrap());
    let root_url = format!("http://{}:8080", vm("root")["ip"].as_str().unwrap());
    let root = &vm("root")["env"];
    assert_eq!(root["TREECACHE_ROOT"], "true");
    assert_eq!(root["TREECACHE_ADVERTISE"], root_url.as_str());
    assert!(root.get("TREECACHE_ROOT_URL").is_none());
    let node3 = vm("node3");
    let env = &node3["env"];
    let ip = node3["ip"].as_str().unwrap();
    assert_eq!(env["TREECACHE_ZK"], zk.as_str());
    assert_eq!(env["TREECACHE_LISTEN"], format!("{ip}:8080").as_str());
    assert_eq!(env["TREECACHE_ADVERTISE"], format!("http://{ip}:8080").as_str());
    assert_eq!(env["TREECACHE_ID"], node3["id"].to_string().as_str());
    assert_eq!(env["TREECACHE_ROOT_URL"], root_url.as_str());
    assert!(env.get("TREECACHE_ROOT").is_none());

    // With two root candidates, nodes follow the election through ZooKeeper.
    let p = plan(&[("ROOTS", "2"), ("NODES", "16")]);
    assert_eq!(started(&p).len(), 1 + 2 + 16);
    let vms = p["vms"].as_array().unwrap();
    assert!(vms.iter().filter(|v| v["role"] == "node").all(|v| v["env"].get("TREECACHE_ROOT_URL").is_none()));
}

#[test]
fn the_memory_bound_goes_to_cache_nodes_only() {
    // The root refuses --max-memory (it is the source of truth): a bound
    // set for the deployment must not keep the root candidates from starting.
    let p = plan(&[("ROOTS", "2"), ("TREECACHE_MAX_MEMORY", "64MiB")]);
    let vms = p["vms"].as_array().unwrap();
    let with = |role: &str| vms.iter().filter(|v| v["role"] == role).map(|v| &v["env"]).collect::<Vec<_>>();
    assert_eq!(with("root").len(), 2);
    assert!(with("root").iter().all(|e| e.get("TREECACHE_MAX_MEMORY").is_none()));
    assert!(with("node").iter().all(|e| e["TREECACHE_MAX_MEMORY"] == "64MiB"));
}

#[test]
fn the_plan_refuses_what_deploy_hosts_cannot_give() {
    for (var, value) in [("NODES", "0"), ("NODES", "65"), ("NODES", "four"), ("ROOTS", "3"), ("VM_MEMORY", "64")] {
        let out = run("ruby", &["deploy/topology.rb", "json"], &[(var, value)], "install ruby");
        assert!(!out.status.success(), "{var}={value} was accepted");
        assert!(text(&out).contains(&format!("{var}={value}")), "the error names {var}: {}", text(&out));
    }
}

#[test]
fn shellcheck_passes_over_provision_and_the_other_scripts() {
    let mut scripts: Vec<PathBuf> = ["provision", "scripts", "bench"]
        .iter()
        .flat_map(|dir| std::fs::read_dir(Path::new(REPO).join(dir)).unwrap_or_else(|e| panic!("{dir}/: {e}")))
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "sh"))
        .collect();
    scripts.push(Path::new(REPO).join(".ci/run"));
    scripts.sort();
    assert!(scripts.len() >= 9, "*.sh: {scripts:?}");
    let mut args = vec!["-x".to_string()];
    args.extend(scripts.iter().map(|p| p.strip_prefix(REPO).unwrap().display().to_string()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = run("shellcheck", &args, &[], "install shellcheck: apt-get install shellcheck");
    assert!(out.status.success(), "shellcheck {}:\n{}", args.join(" "), text(&out));
}

#[test]
fn with_tls_the_plan_gives_https_urls_and_zookeepers_secure_port() {
    let p = plan(&[("TREECACHE_TLS", "1"), ("ROOTS", "2")]);
    let vms = p["vms"].as_array().unwrap();
    let zk = vms.iter().find(|v| v["role"] == "zookeeper").unwrap();
    let zk_ip = zk["ip"].as_str().unwrap();
    let secure = format!("{zk_ip}:{}", p["settings"]["zk_tls_port"].as_str().unwrap());
    assert_eq!(zk["env"]["ZOOKEEPER_TLS_LISTEN"], secure.as_str());
    assert!(zk["env"]["ZOOKEEPER_LISTEN"].as_str().unwrap().starts_with("127.0.0.1:"), "plain port on loopback only");
    for vm in vms.iter().filter(|v| v["role"] != "zookeeper") {
        let env = &vm["env"];
        let ip = vm["ip"].as_str().unwrap();
        assert_eq!(env["TREECACHE_ADVERTISE"], format!("https://{ip}:8080").as_str(), "{vm}");
        assert_eq!(
            (&env["TREECACHE_ZK"], &env["TREECACHE_ZK_TLS"]),
            (&Value::from(secure.clone()), &Value::from("true"))
        );
        assert_eq!((&env["TREECACHE_TLS"], &env["TREECACHE_TLS_NAME"]), (&Value::from("1"), &vm["name"]));
    }
    // Without it, nothing of TLS.
    let p = plan(&[]);
    assert!(p["vms"]
        .as_array()
        .unwrap()
        .iter()
        .all(|v| v["env"].get("TREECACHE_TLS").is_none() && v["env"].get("ZOOKEEPER_TLS_LISTEN").is_none()));
}
