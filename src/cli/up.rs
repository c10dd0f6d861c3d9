//! `treecache up`: a local tree on loopback, the quick start. Starts a
//! private ZooKeeper from the installed package (unless `--zk`), a root and
//! N-1 nodes as child processes, prints each node and the tree, and stops
//! everything on Ctrl-C or SIGTERM.

use std::process::Child;
use std::time::Duration;

use clap::Args;

use super::local::{spawn_node, stop, wait_healthy};
use crate::zkserver::{free_port, LocalZk};

#[derive(Debug, Clone, Args)]
pub struct UpArgs {
    /// Number of nodes, the root included.
    #[arg(long, default_value_t = 7, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub nodes: u32,
    /// Use this ZooKeeper instead of starting a private one.
    #[arg(long)]
    pub zk: Option<String>,
    /// Cluster name.
    #[arg(long, default_value = "default")]
    pub cluster: String,
    /// Children per node.
    #[arg(long, default_value_t = 2)]
    pub fanout: u32,
    /// First HTTP port (root); nodes take the next ones. 0: free ports.
    #[arg(long, default_value_t = 0)]
    pub base_port: u16,
    /// Extra flags for the root (e.g. "--mode ttl --max-age 2s").
    #[arg(long, allow_hyphen_values = true)]
    pub root_flags: Option<String>,
}

struct Running {
    children: Vec<Child>,
    _zk: Option<LocalZk>,
}

impl Drop for Running {
    fn drop(&mut self) {
        for child in self.children.iter_mut().rev() {
            stop(child, Duration::from_secs(3));
        }
    }
}

pub async fn run(args: UpArgs) -> Result<(), String> {
    let bin = std::env::current_exe().map_err(|e| format!("cannot find my own binary: {e}"))?;
    let logs = std::env::temp_dir().join(format!("treecache-up-{}", std::process::id()));
    std::fs::create_dir_all(&logs).map_err(|e| format!("{}: {e}", logs.display()))?;
    let zk = match &args.zk {
        Some(_) => None,
        None => {
            eprintln!("starting a private ZooKeeper...");
            Some(LocalZk::start().await?)
        }
    };
    let zk_addr = args.zk.clone().unwrap_or_else(|| zk.as_ref().map(LocalZk::addr).unwrap_or_default());
    let mut running = Running { children: Vec::new(), _zk: zk };
    let http = reqwest::Client::new();
    println!("ZooKeeper   {zk_addr}");
    for i in 0..args.nodes {
        let port = if args.base_port == 0 { free_port()? } else { args.base_port + i as u16 };
        let url = format!("http://127.0.0.1:{port}");
        let mut flags = vec![
            "--zk".into(),
            zk_addr.clone(),
            "--cluster".into(),
            args.cluster.clone(),
            "--listen".into(),
            format!("127.0.0.1:{port}"),
            "--fanout".into(),
            args.fanout.to_string(),
        ];
        if i == 0 {
            flags.push("--root".into());
            flags.extend(args.root_flags.iter().flat_map(|f| f.split_whitespace().map(str::to_string)));
        }
        let log = logs.join(format!("node-{i}.log"));
        running.children.push(spawn_node(&bin, &flags, &log)?);
        let child = running.children.last_mut();
        let health = wait_healthy(&http, &url, Duration::from_secs(30), child)
            .await
            .map_err(|e| format!("{e} (log: {})", log.display()))?;
        println!(
            "node {:<4} {url}  {:<5} depth {} parent {}",
            health["id"],
            health["role"].as_str().unwrap_or("?"),
            health["depth"],
            health["parent"]
        );
    }
    // Placement settles as nodes join; draw once ZooKeeper shows them all.
    match super::tree::render(&zk_addr, &args.cluster).await {
        Ok(tree) => println!("\n{tree}"),
        Err(e) => eprintln!("cannot draw the tree: {e}"),
    }
    println!("logs in {}\nCtrl-C stops the tree.", logs.display());
    crate::node::wait_for_signal().await;
    eprintln!("stopping {} nodes...", running.children.len());
    drop(running);
    Ok(())
}
