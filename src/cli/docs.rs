//! `treecache completions SHELL` and `treecache man`: generated from the
//! clap definitions in [`crate::cli::Cli`], so they never drift from the
//! flags the binary takes.

use clap::{Args, CommandFactory};
use clap_complete::Shell;

use super::Failure;
use crate::cli::Cli;

#[derive(Debug, Clone, Args)]
pub struct CompletionsArgs {
    /// The shell to write completions for, e.g.
    /// `treecache completions bash > /etc/bash_completion.d/treecache`.
    #[arg(value_enum)]
    pub shell: Shell,
}

pub fn completions(args: CompletionsArgs) -> Result<(), Failure> {
    let mut cmd = visible_only(&Cli::command());
    // Into a buffer first: clap_complete panics when its writer fails
    // (`treecache completions bash | head`).
    let mut out = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, "treecache", &mut out);
    std::io::Write::write_all(&mut std::io::stdout(), &out).map_err(|e| format!("writing stdout: {e}").into())
}

/// `cmd` without what `--help` hides: clap_complete's generators offer
/// hidden flags (the `--fault-*` test knobs) and hidden subcommands, so
/// they get a copy that has none.
fn visible_only(cmd: &clap::Command) -> clap::Command {
    // clap's `string` feature: names built at run time.
    let mut out = clap::Command::new(cmd.get_name().to_string());
    if let Some(about) = cmd.get_about() {
        out = out.about(about.clone());
    }
    for arg in cmd.get_arguments().filter(|a| !a.is_hide_set()) {
        out = out.arg(arg.clone());
    }
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        out = out.subcommand(visible_only(sub));
    }
    out
}

/// The man page (roff) of `treecache` and all its subcommands, one page:
/// `treecache man > treecache.1 && man ./treecache.1`.
pub fn man() -> Result<(), Failure> {
    let mut out = Vec::new();
    render_man(&mut out).map_err(|e| format!("rendering the man page: {e}"))?;
    std::io::Write::write_all(&mut std::io::stdout(), &out).map_err(|e| format!("writing stdout: {e}").into())
}

pub fn render_man(out: &mut Vec<u8>) -> std::io::Result<()> {
    let cmd = Cli::command();
    let man = clap_mangen::Man::new(cmd.clone());
    man.render_title(out)?;
    man.render_name_section(out)?;
    man.render_synopsis_section(out)?;
    man.render_description_section(out)?;
    man.render_subcommands_section(out)?;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        // Each subcommand as a section of the one page: its options.
        let page = clap_mangen::Man::new(sub.clone());
        let about = sub.get_about().map(|a| a.to_string()).unwrap_or_default();
        let heading = format!(".SH \"TREECACHE {}\"\n{}\n", sub.get_name().to_uppercase(), roff_escape(&about));
        out.extend_from_slice(heading.as_bytes());
        let mut section = Vec::new();
        page.render_options_section(&mut section)?;
        out.extend_from_slice(&demote(&section));
    }
    man.render_extra_section(out)?;
    man.render_version_section(out)?;
    Ok(())
}

/// Text safe in a roff paragraph: no leading dot or quote, backslashes doubled.
fn roff_escape(text: &str) -> String {
    let text = text.replace('\\', "\\\\");
    match text.chars().next() {
        Some('.' | '\'') => format!("\\&{text}"),
        _ => text,
    }
}

/// A rendered `.SH` section's body as part of another section: its own
/// heading dropped (the caller wrote one).
fn demote(section: &[u8]) -> Vec<u8> {
    let text = String::from_utf8_lossy(section);
    text.lines().filter(|l| !l.starts_with(".SH ")).flat_map(|l| [l, "\n"]).collect::<String>().into_bytes()
}

/// The flag tables of docs/operations.md, one per subcommand: every visible
/// flag with its environment variable, default and help. Hidden flags (the
/// fault knobs) are listed in docs/testing.md instead.
pub fn flag_tables() -> String {
    let cli = Cli::command();
    let mut out = String::new();
    for sub in cli.get_subcommands().filter(|s| !s.is_hide_set()) {
        let flags: Vec<_> =
            sub.get_arguments().filter(|a| !a.is_positional() && !a.is_hide_set() && a.get_id() != "help").collect();
        if flags.is_empty() {
            continue;
        }
        out.push_str(&format!("\n### treecache {}\n\n", sub.get_name()));
        out.push_str("| flag | variable | default | meaning |\n| --- | --- | --- | --- |\n");
        for a in flags {
            let name = match (a.get_short(), a.get_long()) {
                (Some(s), Some(l)) => format!("`-{s}`, `--{l}`"),
                (None, Some(l)) => format!("`--{l}`"),
                (Some(s), None) => format!("`-{s}`"),
                (None, None) => a.get_id().to_string(),
            };
            let env = a.get_env().map_or("".into(), |e| format!("`{}`", e.to_string_lossy()));
            let defaults: Vec<String> =
                a.get_default_values().iter().map(|d| d.to_string_lossy().into_owned()).collect();
            let default = if defaults.is_empty() { String::new() } else { format!("`{}`", defaults.join(",")) };
            let mut help = a.get_long_help().or(a.get_help()).map(|h| h.to_string()).unwrap_or_default();
            let values: Vec<String> =
                a.get_possible_values().iter().filter(|v| !v.is_hide_set()).map(|v| v.get_name().to_string()).collect();
            if !values.is_empty() && !matches!(a.get_action(), clap::ArgAction::SetTrue) {
                let stop = if help.is_empty() || help.ends_with('.') { "" } else { "." };
                help.push_str(&format!("{stop} One of: {}.", values.join(", ")));
            }
            let help = help.replace('\n', " ").replace('|', "\\|");
            out.push_str(&format!("| {name} | {env} | {default} | {help} |\n"));
        }
    }
    out
}

/// The metrics table of docs/operations.md: every metric family the
/// node's registry declares (the commit log's included), as scraped.
pub fn metric_table() -> String {
    let log = std::sync::Arc::new(crate::log::Stats::default());
    let families = crate::metrics::Metrics::catalog(crate::metrics::ROUTE_LABELS, log.collector());
    let mut out = String::from("\n| metric | type | meaning |\n| --- | --- | --- |\n");
    for (name, kind, help) in families {
        out.push_str(&format!("| `{name}` | {kind} | {} |\n", help.replace('|', "\\|")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const METRICS_BEGIN: &str =
        "<!-- metrics: generated from the registry by `cargo test --lib cli::docs`; TREECACHE_BLESS_DOCS=1 rewrites -->\n";
    const METRICS_END: &str = "<!-- end of metrics -->";

    /// docs/operations.md carries the flag tables exactly as clap has them
    /// and the metrics table as the registry has it (one test: blessing
    /// rewrites the one file). `TREECACHE_BLESS_DOCS=1 cargo test --lib
    /// cli::docs` rewrites both.
    #[test]
    fn operations_md_lists_every_flag_and_metric_as_generated() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/operations.md");
        let mut doc = std::fs::read_to_string(&path).expect("docs/operations.md");
        let mut stale = Vec::new();
        for (begin, end, generated, what) in
            [(BEGIN, END, flag_tables(), "flag tables"), (METRICS_BEGIN, METRICS_END, metric_table(), "metrics table")]
        {
            let (Some(start), Some(stop)) = (doc.find(begin), doc.find(end)) else {
                panic!("docs/operations.md lacks the {what} markers {begin:?} ... {end:?}");
            };
            if doc[start + begin.len()..stop] != generated {
                stale.push(what);
                doc = format!("{}{begin}{generated}{}", &doc[..start], &doc[stop..]);
            }
        }
        if std::env::var_os("TREECACHE_BLESS_DOCS").is_some() {
            std::fs::write(&path, doc).expect("write docs/operations.md");
            return;
        }
        assert!(
            stale.is_empty(),
            "docs/operations.md's {stale:?} are stale; run TREECACHE_BLESS_DOCS=1 cargo test --lib cli::docs"
        );
    }

    #[test]
    fn the_metric_table_has_counters_gauges_and_histograms() {
        let t = metric_table();
        assert!(t.contains("| `treecache_hits_total` | counter | Reads answered from this node's store. |"), "{t}");
        assert!(t.contains("| `treecache_push_lag_seconds` | histogram |"), "{t}");
        assert!(t.contains("| `treecache_log_bytes` | gauge |"), "{t}");
    }

    const BEGIN: &str =
        "<!-- flags: generated from clap by `cargo test --lib cli::docs`; TREECACHE_BLESS_DOCS=1 rewrites -->\n";
    const END: &str = "<!-- end of flags -->";

    #[test]
    fn the_tables_cover_node_flags_with_defaults_and_variables() {
        let t = flag_tables();
        assert!(t.contains("| `--listen` | `TREECACHE_LISTEN` | `127.0.0.1:8080` |"), "{t}");
        assert!(t.contains("### treecache put"), "{t}");
        assert!(!t.contains("fault-fill-delay"), "hidden fault knobs stay out");
    }
}
