//! The commands for people: `up` (a local tree), `tree` (draw it from
//! ZooKeeper), `get|put|del` (one request to a node), `bench`, and
//! `completions`/`man` (generated from the clap definitions). Each returns
//! `Result<(), Failure>`: the message main prints and the exit code a
//! script branches on ([`Exit`]).

pub mod bench;
pub mod client;
pub mod docs;
pub mod local;
pub mod slots;
pub mod tree;
pub mod up;

use clap::{Parser, Subcommand};

use crate::config::NodeArgs;

/// treecache: a hierarchical tree cache coordinated by ZooKeeper.
#[derive(Debug, Parser)]
#[command(name = "treecache", version, about, long_about = None, after_long_help = EXIT_CODES_HELP)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run one cache node (the root with --root).
    Node(NodeArgs),
    /// Start a local tree on loopback: ZooKeeper (unless --zk), a root and N-1 nodes.
    Up(up::UpArgs),
    /// Read a key through a node.
    Get(client::GetArgs),
    /// Write a key through a node.
    Put(client::PutArgs),
    /// Delete a key through a node.
    Del(client::DelArgs),
    /// Draw the tree as ZooKeeper records it.
    Tree(tree::TreeArgs),
    /// The slot map of the root groups: slots, keys and bytes per group, moves in progress.
    Slots(slots::SlotsArgs),
    /// Load generator: hit, miss, write, converge, mixed and scale scenarios.
    Bench(bench::BenchArgs),
    /// Shell completions (bash, zsh, fish, ...) on stdout.
    Completions(docs::CompletionsArgs),
    /// The man page (roff) on stdout: treecache man > treecache.1
    Man,
}

/// The exit codes, as `treecache --help` and the man page list them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Anything else: the node answered an error of its own, a local I/O error.
    Other = 1,
    /// Bad input: a flag, a key, a value the node refused (400, 413, 405).
    Usage = 2,
    /// The key does not exist (404), or the cluster has no tree.
    NotFound = 3,
    /// The node or ZooKeeper could not be reached, timed out, or answered 503.
    Unavailable = 4,
    /// The node refused the API token (401): `--api-token` is missing or wrong.
    Unauthorized = 5,
}

/// What `--help` and the man page say about exit codes; kept beside [`Exit`].
pub const EXIT_CODES_HELP: &str = "\
Exit codes:
  0  success
  1  any other failure (the node answered an error of its own, local I/O)
  2  bad input: a flag, a key or a value refused (HTTP 400, 405, 413)
  3  not found: no such key (HTTP 404), or no tree for the cluster
  4  unavailable: node or ZooKeeper unreachable, timed out, or HTTP 503
  5  unauthorized: the node refused the API token (HTTP 401; see --api-token)";

/// A command's failure: what to print and how to exit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    pub exit: Exit,
    pub message: String,
}

impl Failure {
    pub fn new(exit: Exit, message: impl Into<String>) -> Failure {
        Failure { exit, message: message.into() }
    }

    pub fn usage(message: impl Into<String>) -> Failure {
        Failure::new(Exit::Usage, message)
    }

    pub fn unavailable(message: impl Into<String>) -> Failure {
        Failure::new(Exit::Unavailable, message)
    }
}

/// Plain messages from commands that do not classify their failures.
impl From<String> for Failure {
    fn from(message: String) -> Failure {
        Failure::new(Exit::Other, message)
    }
}

/// `error: cause: cause ...`, the way `anyhow` prints `{:#}`: reqwest's own
/// message ("error sending request") says nothing of why.
pub fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let next = cause.to_string();
        if !text.contains(&next) {
            text.push_str(": ");
            text.push_str(&next);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_flag_of_every_subcommand_reads_an_environment_variable() {
        use clap::CommandFactory;
        let cli = Cli::command();
        let mut missing = Vec::new();
        for sub in cli.get_subcommands() {
            for arg in sub.get_arguments() {
                let builtin = matches!(arg.get_id().as_str(), "help" | "version");
                if arg.is_positional() || builtin {
                    continue;
                }
                match arg.get_env().and_then(|e| e.to_str()) {
                    Some(env) if env.starts_with("TREECACHE_") => {}
                    _ => missing.push(format!("treecache {} --{}", sub.get_name(), arg.get_id())),
                }
            }
        }
        assert!(missing.is_empty(), "flags without a TREECACHE_ variable: {missing:?}");
    }
}
