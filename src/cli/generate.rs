//! `generate man|completions` (hidden; run by scripts/package): man pages and shell
//! completions, built from the grammar in [`super::args`] so they never drift from it.
//!
//! Must not: describe a command any other way than the grammar does.

use super::args::{Cli, Generated};
use super::Failure;
use anyhow::Context as _;
use clap::CommandFactory;
use std::path::Path;

pub fn run(what: Generated, out: &Path) -> Result<(), Failure> {
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let cmd = Cli::command();
    match what {
        Generated::Man => clap_mangen::generate_to(cmd, out)
            .with_context(|| format!("cannot write man pages into {}", out.display()))?,
        Generated::Completions => {
            use clap_complete::Shell;
            for shell in [Shell::Bash, Shell::Zsh, Shell::Fish] {
                clap_complete::generate_to(shell, &mut Cli::command(), "sparkcr-edge", out)
                    .with_context(|| {
                        format!("cannot write {shell} completions into {}", out.display())
                    })?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_grammar_is_consistent() {
        Cli::command().debug_assert();
    }
}
