//! `finaldot user`: the submission users file (add, remove, list; argon2id hashes).

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use finaldot::config::Config;

/// `finaldot user` subcommands.
#[derive(Subcommand)]
pub(crate) enum UserCommand {
    /// Add a user, or set a new password for one; the password is read from
    /// the first line of standard input (`echo 'secret' | finaldot user add alice`).
    Add {
        /// User name (what the client gives to AUTH).
        name: String,
    },
    /// Remove a user.
    Remove {
        /// User name.
        name: String,
    },
    /// List the user names.
    List,
}

/// Carries out `finaldot user …`.
pub(crate) fn user(config: Option<PathBuf>, command: UserCommand) -> anyhow::Result<()> {
    use finaldot::smtp::users;
    let config = Config::load(config.as_deref())?;
    let file = &config.submission.users_file;
    match command {
        UserCommand::Add { name } => {
            if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
                eprintln!("password for {name} (one line; it is not echoed by a pipe, but is by a terminal):");
            }
            let mut line = String::new();
            std::io::stdin()
                .read_line(&mut line)
                .context("reading the password from standard input")?;
            let password = line.trim_end_matches(['\r', '\n']);
            let new = users::add(file, &name, password)?;
            println!(
                "{} {name} in {}",
                if new { "added" } else { "new password for" },
                file.display()
            );
        }
        UserCommand::Remove { name } => {
            users::remove(file, &name)?;
            println!("removed {name} from {}", file.display());
        }
        UserCommand::List => {
            for u in users::list(file)? {
                println!("{u}");
            }
        }
    }
    Ok(())
}
