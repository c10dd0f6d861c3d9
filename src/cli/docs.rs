//! `treecache completions SHELL` and `treecache man`: generated from the
//! clap definitions in [`crate::config::Cli`], so they never drift from the
//! flags the binary takes.

use clap::{Args, CommandFactory};
use clap_complete::Shell;

use super::Failure;
use crate::config::Cli;

#[derive(Debug, Clone, Args)]
pub struct CompletionsArgs {
    /// The shell to write completions for, e.g.
    /// `treecache completions bash > /etc/bash_completion.d/treecache`.
    #[arg(value_enum)]
    pub shell: Shell,
}

pub fn completions(args: CompletionsArgs) -> Result<(), Failure> {
    let mut cmd = Cli::command();
    // Into a buffer first: clap_complete panics when its writer fails
    // (`treecache completions bash | head`).
    let mut out = Vec::new();
    clap_complete::generate(args.shell, &mut cmd, "treecache", &mut out);
    std::io::Write::write_all(&mut std::io::stdout(), &out).map_err(|e| format!("writing stdout: {e}").into())
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
