//! `finaldot queue`: list, show and change what is queued (a live or a stopped daemon).

use std::path::PathBuf;

use clap::Subcommand;
use finaldot::config::Config;

/// `finaldot queue` subcommands.
#[derive(Subcommand)]
pub(crate) enum QueueCommand {
    /// Every message: id, state, age, sender, open recipients, next attempt, last error.
    List,
    /// One message: envelope, per-recipient state, headers, stages.
    Show {
        /// Queue id.
        id: String,
    },
    /// Attempt a deferred or held message now (or every deferred one with --all).
    Retry {
        /// Queue id.
        #[arg(required_unless_present = "all")]
        id: Option<String>,
        /// Every deferred message.
        #[arg(long)]
        all: bool,
    },
    /// Put a message on hold.
    Hold {
        /// Queue id.
        id: String,
    },
    /// Release a held message for an immediate attempt.
    Release {
        /// Queue id.
        id: String,
    },
    /// Remove a message on purpose (no DSN).
    Delete {
        /// Queue id.
        id: String,
    },
    /// Fail every open recipient and send the sender a DSN.
    Bounce {
        /// Queue id.
        id: String,
    },
}

/// Carries out `finaldot queue …`.
pub(crate) fn queue(
    config: Option<PathBuf>,
    json: bool,
    command: QueueCommand,
) -> anyhow::Result<()> {
    use finaldot::queue as q;
    let config = Config::load(config.as_deref())?;
    let dir = config.spool_dir();
    if !dir.join("incoming").is_dir() {
        anyhow::bail!(
            "no spool at {} (has the daemon ever run with this config?)",
            dir.display()
        );
    }
    let spool = finaldot::spool::Spool::open(&dir)?;
    let done = |what: &str, id: &str| {
        if json {
            println!("{}", serde_json::json!({ "id": id, "done": what }));
        } else {
            println!("{id}: {what}");
        }
    };
    match command {
        QueueCommand::List => {
            let entries = q::list(&spool)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&entries)?);
                return Ok(());
            }
            if entries.is_empty() {
                println!("queue is empty");
                return Ok(());
            }
            print_list(&entries);
        }
        QueueCommand::Show { id } => {
            let d = q::show(&spool, &q::parse_id(&id)?)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&d)?);
                return Ok(());
            }
            print_detail(&d);
        }
        QueueCommand::Retry {
            id: Some(id),
            all: false,
        } => {
            q::retry(&spool, &q::parse_id(&id)?)?;
            done("queued for an immediate attempt", &id);
        }
        QueueCommand::Retry { .. } => {
            let n = q::retry_all(&spool)?;
            done(
                &format!("{n} deferred message(s) queued for an immediate attempt"),
                "all",
            );
        }
        QueueCommand::Hold { id } => {
            q::hold(&spool, &q::parse_id(&id)?)?;
            done("held", &id);
        }
        QueueCommand::Release { id } => {
            q::release(&spool, &q::parse_id(&id)?)?;
            done("released", &id);
        }
        QueueCommand::Delete { id } => {
            q::delete(&spool, &q::parse_id(&id)?)?;
            done("deleted", &id);
        }
        QueueCommand::Bounce { id } => {
            q::bounce(&spool, &q::parse_id(&id)?)?;
            done("bounced; the DSN goes out on the next pipeline pass", &id);
        }
    }
    Ok(())
}

/// `queue list` as a table.
fn print_list(entries: &[finaldot::queue::Entry]) {
    println!(
        "{:<22} {:<9} {:>8} {:>9}  {:<30} RECIPIENTS / NEXT ATTEMPT / LAST ERROR",
        "ID", "STATE", "AGE", "SIZE", "SENDER"
    );
    let now = finaldot::unix_now();
    for e in entries {
        println!(
            "{:<22} {:<9} {:>7}s {:>9}  {:<30} {}",
            e.id,
            e.state,
            e.age_secs,
            e.size,
            e.sender,
            e.open_recipients.join(", ")
        );
        if let Some(t) = e.next_attempt {
            println!("{:>24}next attempt in {}s", "", t.saturating_sub(now));
        }
        if let Some(h) = &e.hold_reason {
            println!("{:>24}held: {h}", "");
        }
        if let Some(err) = &e.last_error {
            println!("{:>24}last error: {err}", "");
        }
    }
    println!("{} message(s)", entries.len());
}

/// `queue show` as text.
fn print_detail(d: &finaldot::queue::Details) {
    let e = &d.entry;
    println!("id:        {}", e.id);
    println!("state:     {}", e.state);
    println!(
        "age:       {}s, {} attempt(s), {} bytes",
        e.age_secs, d.attempts, e.size
    );
    println!("sender:    {}", e.sender);
    if let Some(h) = &e.hold_reason {
        println!("held:      {h}");
    }
    if let Some(err) = &e.last_error {
        println!("error:     {err}");
    }
    println!("recipients:");
    for (a, s) in &d.recipient_states {
        println!("  {a}: {s}");
    }
    if !d.dsn.is_empty() {
        println!("dsn:");
        for l in &d.dsn {
            println!("  {l}");
        }
    }
    println!("stages:");
    for s in &d.stages {
        println!("  {} {} [{}]: {}", s.stage, s.plugin, s.version, s.outcome);
    }
    println!("headers:");
    for (n, v) in &d.headers {
        println!("  {n}: {v}");
    }
}
