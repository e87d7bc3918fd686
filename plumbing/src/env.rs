//! Environment variable names: one meaning per name across every program.
//!
//! Each flag reads `TRACKER_<PROGRAM>_<FLAG>` (`TRACKER_INGEST_LISTEN`,
//! `TRACKER_BUSD_LISTEN`, `TRACKER_BUSCTL_FORMAT`), except the few that mean the same thing
//! to every program that has them: [`BUS`], [`BUS_TOKEN`], [`DB`], and on JetStream
//! [`STREAM`] and [`SUBJECT_PREFIX`]. Earlier versions read
//! `TRACKER_<FLAG>` for every program, so `TRACKER_LISTEN` was busd's address and ingest's at
//! once. Those old names keep working where they meant one thing (with a warning to move on),
//! and are ignored, with a warning, where they meant several ([`AMBIGUOUS`]).

use clap::Command;

/// The bus address, for every program that talks to the bus.
pub const BUS: &str = "TRACKER_BUS";
/// The bus's shared secret: the one busd requires and clients present.
pub const BUS_TOKEN: &str = "TRACKER_BUS_TOKEN";
/// The accounts database.
pub const DB: &str = "TRACKER_DB";
/// The JetStream stream ingest publishes to and busctl reads.
pub const STREAM: &str = "TRACKER_STREAM";
/// The JetStream subject prefix: events of account N are on `<prefix>.N`.
pub const SUBJECT_PREFIX: &str = "TRACKER_SUBJECT_PREFIX";

/// Old names that meant different things to different programs: never read again.
pub const AMBIGUOUS: &[&str] = &[
    "TRACKER_LISTEN",
    "TRACKER_MAX_CONNECTIONS",
    "TRACKER_DRAIN_TIMEOUT",
];

/// Names the design contract gives a flag besides its `TRACKER_<PROGRAM>_<FLAG>`:
/// `(contract name, per-program name)`. Both work and neither is deprecated; the
/// per-program name wins when both are set.
const CONTRACT: &[(&str, &str)] = &[("TRACKER_DURABLE", "TRACKER_INGEST_DURABLE")];

/// Old names of shared variables: `(old, new)`.
const RENAMED: &[(&str, &str)] = &[("TRACKER_TOKEN", BUS_TOKEN)];

/// Parses the command line of `P` with the old variable names wired in, exiting as clap
/// does on `--help` (0) or a bad argument (2). Returns the warnings to log.
pub fn parse<P: clap::Parser>() -> (P, Vec<String>) {
    let is_set = |name: &str| std::env::var_os(name).is_some();
    let (mut command, warnings) = with_old_names(P::command(), &is_set);
    let parsed = command
        .try_get_matches_from_mut(std::env::args_os())
        .and_then(|matches| P::from_arg_matches(&matches));
    match parsed {
        Ok(parsed) => (parsed, warnings),
        Err(err) => err.format(&mut command).exit(),
    }
}

/// Lets `command`'s flags (and its subcommands') fall back to their old variable names.
/// `is_set` says whether a variable is set (the real environment in the programs, a fixed
/// set in tests). Returns the command and the warnings to log once logging is up.
pub fn with_old_names(command: Command, is_set: &dyn Fn(&str) -> bool) -> (Command, Vec<String>) {
    let mut warnings = Vec::new();
    let command = rewire(command, is_set, &mut warnings);
    for old in AMBIGUOUS {
        if is_set(old) {
            warnings.push(format!(
                "{old} is ignored: it meant different things to busd and ingest; use \
                 TRACKER_BUSD_{rest} or TRACKER_INGEST_{rest}",
                rest = &old["TRACKER_".len()..]
            ));
        }
    }
    warnings.sort();
    warnings.dedup();
    (command, warnings)
}

fn rewire(
    mut command: Command,
    is_set: &dyn Fn(&str) -> bool,
    warnings: &mut Vec<String>,
) -> Command {
    let fallbacks: Vec<(String, String, String)> = command
        .get_arguments()
        .filter_map(|arg| {
            let new = arg.get_env()?.to_str()?.to_owned();
            let old = old_name(&new)?;
            (is_set(&old) && !is_set(&new)).then(|| (arg.get_id().to_string(), old, new))
        })
        .collect();
    for (id, old, new) in fallbacks {
        if !CONTRACT.contains(&(old.as_str(), new.as_str())) {
            warnings.push(format!(
                "{old} is deprecated: it still works, but set {new} instead"
            ));
        }
        command = command.mut_arg(id, |arg| arg.env(old));
    }
    let subcommands: Vec<String> = command
        .get_subcommands()
        .map(|sub| sub.get_name().to_owned())
        .collect();
    for name in subcommands {
        command = command.mut_subcommand(name, |sub| rewire(sub, is_set, warnings));
    }
    command
}

/// The name a variable had before it was made program-specific, if it had one that meant
/// only this.
fn old_name(new: &str) -> Option<String> {
    if let Some((old, _)) = RENAMED.iter().find(|(_, n)| *n == new) {
        return Some((*old).to_owned());
    }
    let rest = ["TRACKER_BUSD_", "TRACKER_INGEST_", "TRACKER_BUSCTL_"]
        .iter()
        .find_map(|prefix| new.strip_prefix(prefix))?;
    let old = format!("TRACKER_{rest}");
    (!AMBIGUOUS.contains(&old.as_str())).then_some(old)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Arg;

    fn command() -> Command {
        Command::new("ingest")
            .arg(
                Arg::new("listen")
                    .long("listen")
                    .env("TRACKER_INGEST_LISTEN"),
            )
            .arg(
                Arg::new("origin")
                    .long("origin")
                    .env("TRACKER_INGEST_ORIGIN"),
            )
            .arg(Arg::new("token").long("bus-token").env(BUS_TOKEN))
            .subcommand(
                Command::new("accounts").arg(
                    Arg::new("format")
                        .long("format")
                        .env("TRACKER_INGEST_FORMAT"),
                ),
            )
    }

    /// The variable each flag reads once the old names are wired in, given what is set.
    fn wired(set: &[&str]) -> (Vec<(String, String)>, Vec<String>) {
        let is_set = |name: &str| set.contains(&name);
        let (command, warnings) = with_old_names(command(), &is_set);
        let mut envs = Vec::new();
        let sub = command.get_subcommands().flat_map(|s| s.get_arguments());
        for arg in command.get_arguments().chain(sub) {
            let env = arg.get_env().and_then(|e| e.to_str()).unwrap_or_default();
            envs.push((arg.get_id().to_string(), env.to_owned()));
        }
        (envs, warnings)
    }

    fn env_of(envs: &[(String, String)], id: &str) -> String {
        envs.iter()
            .find(|(i, _)| i == id)
            .map(|(_, e)| e.clone())
            .unwrap_or_default()
    }

    #[test]
    fn an_unambiguous_old_name_still_works_with_a_warning() {
        let (envs, warnings) = wired(&["TRACKER_ORIGIN"]);
        assert_eq!(env_of(&envs, "origin"), "TRACKER_ORIGIN");
        assert_eq!(env_of(&envs, "listen"), "TRACKER_INGEST_LISTEN");
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].contains("set TRACKER_INGEST_ORIGIN instead"));
    }

    #[test]
    fn the_new_name_wins_over_the_old() {
        let (envs, warnings) = wired(&["TRACKER_ORIGIN", "TRACKER_INGEST_ORIGIN"]);
        assert_eq!(env_of(&envs, "origin"), "TRACKER_INGEST_ORIGIN");
        assert!(warnings.is_empty());
    }

    #[test]
    fn an_ambiguous_old_name_is_ignored_with_a_warning() {
        let (envs, warnings) = wired(&["TRACKER_LISTEN"]);
        assert_eq!(env_of(&envs, "listen"), "TRACKER_INGEST_LISTEN");
        assert_eq!(warnings.len(), 1);
        assert!(
            warnings[0].contains("TRACKER_INGEST_LISTEN"),
            "{warnings:?}"
        );
    }

    #[test]
    fn the_old_token_name_feeds_the_shared_one() {
        let (envs, warnings) = wired(&["TRACKER_TOKEN"]);
        assert_eq!(env_of(&envs, "token"), "TRACKER_TOKEN");
        assert!(warnings[0].contains("set TRACKER_BUS_TOKEN instead"));
    }

    #[test]
    fn a_contract_name_works_without_a_warning() {
        let command = Command::new("ingest").arg(
            Arg::new("durable")
                .long("durable")
                .env("TRACKER_INGEST_DURABLE"),
        );
        let is_set = |name: &str| name == "TRACKER_DURABLE";
        let (command, warnings) = with_old_names(command, &is_set);
        let env = command.get_arguments().next().and_then(|a| a.get_env());
        assert_eq!(env.and_then(|e| e.to_str()), Some("TRACKER_DURABLE"));
        assert!(warnings.is_empty(), "{warnings:?}");
    }

    #[test]
    fn subcommands_fall_back_too() {
        let (envs, warnings) = wired(&["TRACKER_FORMAT"]);
        assert_eq!(env_of(&envs, "format"), "TRACKER_FORMAT");
        assert_eq!(warnings.len(), 1);
    }
}
