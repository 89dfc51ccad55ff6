//! Wiring: parsed arguments in, one step run, an exit code out. Each step's library function
//! does the work; this module builds their inputs from the arguments, logs the outcome, and
//! exits with the code the failure carries ([`CliError`]).

use anyhow::Context;
use tracing::{error, info, info_span, warn};

use crate::apparmor::features::Features;
use crate::apparmor::kernel::Kernel;
use crate::apparmor::node_parser::NodeParser;
use crate::apparmor::parser::Parser;
use crate::cli::{
    Cli, Command, CopyArgs, LoadArgs, NodeAppArmor, NodeArgs, ParserArgs, ProfileDirArgs,
    UntaintArgs, ValidateArgs,
};
use crate::exit_code::CliError;
use crate::host::lock::LockOptions;
use crate::kube::condition::CONDITION_TYPE;
use crate::steps::{copy, load, pause, untaint, validate};

/// Runs the selected step and returns the process exit code.
pub fn run(cli: Cli) -> u8 {
    let step = match &cli.command {
        Command::Copy(_) => "copy",
        Command::Load(_) => "load",
        Command::Untaint(_) => "untaint",
        Command::Pause => "pause",
        Command::Validate(_) => "validate",
    };
    let node = cli.node_name.clone().unwrap_or_else(|| "unknown".into());
    let span = info_span!("apparmor-loader", step, node = %node);
    let _entered = span.enter();
    match run_step(cli) {
        Ok(()) => 0,
        Err(CliError { error, exit_code }) => {
            error!(exit_code, "{error:#}");
            exit_code
        }
    }
}

/// Runs the step the command line names: arguments to the step's options, the step, its
/// summary line.
fn run_step(cli: Cli) -> Result<(), CliError> {
    let node = cli.node_name.clone().unwrap_or_else(|| "unknown".into());
    match cli.command {
        Command::Copy(args) => run_copy(args, &node),
        Command::Load(args) => run_load(args, &node),
        Command::Untaint(args) => run_untaint(args, cli.node_name),
        Command::Pause => {
            let signal = pause::run(|| info!("pausing until SIGTERM"))
                .context("cannot wait for signals")
                .map_err(CliError::internal)?;
            info!("received {signal}, exiting");
            Ok(())
        }
        Command::Validate(args) => run_validate(args),
    }
}

// === One function per step ===

fn run_copy(args: CopyArgs, node: &str) -> Result<(), CliError> {
    let parser = parser(&args.parser, Some(&args.node))?;
    let node_parser = match args.node_apparmor {
        NodeAppArmor::Auto => NodeParser::detect(&args.node.node_root)?,
        NodeAppArmor::V3 => NodeParser::declared_v3(),
        NodeAppArmor::V4 => NodeParser::declared_v4(),
    };
    let v3_parser = Parser {
        binary: args.v3_parser.clone(),
        base: args.v3_base.clone(),
        ..parser.clone()
    };
    let opts = copy::CopyOptions {
        lock: lock_options(&args.profile_dir, node),
        source: args.source,
        dest: args.profile_dir.dest,
        max_size: args.max_size,
        cache_dir: args.cache_dir,
        kernel: Kernel::new(&args.node.securityfs, &args.node.enabled_file),
        adopt_loaded: args.adopt_loaded,
        scratch_dir: args.scratch_dir,
        node_parser,
        v3_parser,
    };
    let report = copy::run(&opts, &parser)?;
    if report.written.is_empty() && report.removed.is_empty() {
        info!(
            written = 0,
            unchanged = report.unchanged.len(),
            removed = 0,
            "copy complete: nothing changed, {} profile files up to date in {}",
            report.unchanged.len(),
            opts.dest.display()
        );
    } else {
        info!(
            written = report.written.len(),
            unchanged = report.unchanged.len(),
            removed = report.removed.len(),
            "copy complete: wrote [{}], removed [{}], {} unchanged, in {}",
            report.written.join(", "),
            report.removed.join(", "),
            report.unchanged.len(),
            opts.dest.display()
        );
    }
    Ok(())
}

fn run_untaint(args: UntaintArgs, node: Option<String>) -> Result<(), CliError> {
    let r = untaint::run(&untaint::UntaintOptions {
        node,
        taints: args.taints,
        kubeconfig: args.kubeconfig,
        timeout: args.timeout,
        node_report: args.node_report,
        label_prefix: args.label_prefix,
        node_condition: args.node_condition,
        require_admission_policy: args.require_admission_policy,
    })?;
    let (node, outcome) = (&r.node, &r.outcome);
    for near in &outcome.near_misses {
        warn!(
            taint = %near,
            "removed {near}: its key is a gate key but its value or effect is not one of the \
             --taint values; whoever set it gated this node the same way"
        );
    }
    let labels = match (&r.labelled_under, outcome.label_ops) {
        (None, _) => String::new(),
        (Some(p), 0) => format!("; labels under {p}/ already up to date"),
        (Some(p), n) => format!("; {n} change(s) to the labels and annotation under {p}/"),
    };
    let condition = if outcome.condition_written {
        format!("; condition {CONDITION_TYPE} set")
    } else {
        String::new()
    };
    let confined = match &outcome.confined_by {
        Some(_) => "; confined by the admission policy (its refusal of a dry-run probe)",
        None => "",
    };
    let nothing = if outcome.label_ops == 0 && !outcome.condition_written {
        ", nothing to do"
    } else {
        ""
    };
    if outcome.removed.is_empty() {
        info!(api_requests = outcome.api_requests, removed = ?outcome.removed,
              label_ops = outcome.label_ops,
              "untaint complete: no gate taint on node {node}{labels}{condition}{confined}{nothing}");
    } else {
        info!(api_requests = outcome.api_requests, removed = ?outcome.removed,
              label_ops = outcome.label_ops,
              "untaint complete: removed {} from node {node}{labels}{condition}{confined}",
              outcome.removed.join(", "));
    }
    Ok(())
}

fn run_load(args: LoadArgs, node: &str) -> Result<(), CliError> {
    let parser = parser(&args.parser, Some(&args.node))?;
    let opts = load::LoadOptions {
        lock: lock_options(&args.profile_dir, node),
        dest: args.profile_dir.dest,
        cache_dir: args.cache_dir,
        kernel: Kernel::new(&args.node.securityfs, &args.node.enabled_file),
        adopt_loaded: args.adopt_loaded,
        node_report: args.node_report,
    };
    let r = load::run(&opts, &parser)?;
    info!(loaded = r.loaded, unchanged = r.unchanged, retired = r.retired.len(),
          neutralised = r.neutralised.len(), verified = r.verified,
          took_ms = r.took_ms as u64,
          retired_profiles = %r.retired.join(","),
          neutralised_profiles = %r.neutralised.join(","),
          "load complete: loaded {}, unchanged {}, retired {}, neutralised {}, took {} ms",
          r.loaded, r.unchanged, r.retired.len(), r.neutralised.len(), r.took_ms);
    Ok(())
}

fn run_validate(args: ValidateArgs) -> Result<(), CliError> {
    let parser = parser(&args.parser, None)?;
    let compiled = validate::run(&args.paths, args.max_size, &parser)?;
    let names: usize = compiled.iter().map(|c| c.names.len()).sum();
    info!(
        files = compiled.len(),
        profiles = names,
        "validate complete: {} files defining {} profiles, all valid",
        compiled.len(),
        names
    );
    Ok(())
}

// === Arguments to options ===

/// The run lock's settings for this node.
fn lock_options(args: &ProfileDirArgs, node: &str) -> LockOptions {
    LockOptions {
        timeout: args.lock_timeout,
        node: node.to_string(),
    }
}

/// The parser settings shared by `copy`, `load` and `validate`; on a node, compiling for the
/// feature set the node's own boot uses.
fn parser(args: &ParserArgs, node: Option<&NodeArgs>) -> Result<Parser, CliError> {
    let binary = Parser::locate(&args.parser)?;
    let jobs = args
        .jobs
        .filter(|j| *j > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let features = match node {
        Some(node) => Features::for_node(&node.node_root, &node.securityfs)?,
        None => Features::ParserDefault,
    };
    Ok(Parser {
        binary,
        base: args.base.clone(),
        includes: args.include.clone(),
        jobs,
        features,
        timeout: args.parser_timeout,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apparmor::kernel::KernelError;
    use crate::apparmor::parser::ParserError;
    use crate::profile::check::CheckError;
    use crate::profile::ownership::{Claimant, SomeoneElses};
    use std::path::PathBuf;

    /// Every error variant an operator can meet, driven to the exit code the README promises.
    #[test]
    fn each_error_maps_to_its_documented_exit_code() {
        let io = || std::io::Error::from(std::io::ErrorKind::PermissionDenied);
        let p = PathBuf::from("/x");
        let cases: Vec<(CliError, u8)> = vec![
            (
                validate::ValidateError::Source(crate::profile::source::SourceError::NotFound(
                    p.clone(),
                ))
                .into(),
                2,
            ),
            (
                validate::ValidateError::Source(crate::profile::source::SourceError::Io {
                    path: p.clone(),
                    source: io(),
                })
                .into(),
                1,
            ),
            (validate::ValidateError::Empty("d".into()).into(), 3),
            (CheckError::DuplicateNames("n".into()).into(), 3),
            (
                CheckError::Refused {
                    refused: vec![],
                    total: 1,
                }
                .into(),
                3,
            ),
            (CheckError::Rejected(vec![]).into(), 3),
            (ParserError::Invalid(1, 1, "x".into()).into(), 3),
            (
                ParserError::TimedOut {
                    action: "a",
                    timeout: std::time::Duration::from_secs(1),
                    files: "f".into(),
                }
                .into(),
                3,
            ),
            (
                ParserError::Output {
                    binary: p.clone(),
                    source: io(),
                }
                .into(),
                1,
            ),
            (
                ParserError::Spawn {
                    binary: p.clone(),
                    reason: "r".into(),
                }
                .into(),
                1,
            ),
            (
                ParserError::Killed {
                    action: "a",
                    signal: 9,
                    hint: "",
                }
                .into(),
                1,
            ),
            (ParserError::NotFound("x".into()).into(), 1),
            (
                KernelError::Disabled {
                    file: p.clone(),
                    value: "N".into(),
                }
                .into(),
                4,
            ),
            (KernelError::NoModule { file: p.clone() }.into(), 4),
            (KernelError::NotMounted { path: p.clone() }.into(), 4),
            (
                KernelError::Io {
                    path: p.clone(),
                    source: io(),
                }
                .into(),
                1,
            ),
            (
                load::LoadError::MissingFile(crate::profile::keys::Key::try_from("k").unwrap())
                    .into(),
                3,
            ),
            (
                load::LoadError::Read {
                    path: p.clone(),
                    source: io(),
                }
                .into(),
                1,
            ),
            (
                load::LoadError::Foreign(SomeoneElses {
                    names: vec![],
                    claimant: Claimant::Load,
                })
                .into(),
                3,
            ),
            (load::LoadError::NotCopied(p.clone()).into(), 3),
            (
                load::LoadError::NotLoaded {
                    missing: vec![],
                    parser: None,
                }
                .into(),
                5,
            ),
            (
                load::LoadError::NotNeutralised(
                    vec![],
                    crate::profile::neutralise::NeutraliseFailure::NotProven(vec![], false),
                )
                .into(),
                5,
            ),
            (
                load::LoadError::NotNeutralised(
                    vec![],
                    crate::profile::neutralise::NeutraliseFailure::Unexpressible(vec![]),
                )
                .into(),
                5,
            ),
            // A parser killed (OOM) or timed out during the load itself is not "not loaded".
            (
                load::LoadError::Parser(crate::apparmor::parser::ParserError::Killed {
                    action: "loading",
                    signal: 9,
                    hint: "",
                })
                .into(),
                1,
            ),
            (
                load::LoadError::Parser(crate::apparmor::parser::ParserError::TimedOut {
                    action: "loading",
                    timeout: std::time::Duration::from_secs(1),
                    files: "k".into(),
                })
                .into(),
                3,
            ),
            (
                load::LoadError::Kernel(KernelError::Io {
                    path: p.clone(),
                    source: io(),
                })
                .into(),
                1,
            ),
            (
                load::LoadError::Check(CheckError::DuplicateNames("n".into())).into(),
                3,
            ),
            (copy::CopyError::Empty(p.clone()).into(), 3),
            (
                copy::CopyError::Foreign(SomeoneElses {
                    names: vec![],
                    claimant: Claimant::Copy,
                })
                .into(),
                3,
            ),
            (
                copy::CopyError::Clash {
                    dest: p.clone(),
                    clashes: vec![],
                }
                .into(),
                3,
            ),
            (
                copy::CopyError::Io {
                    action: "write",
                    path: p.clone(),
                    source: io(),
                }
                .into(),
                1,
            ),
            (
                copy::CopyError::Kernel(KernelError::Io {
                    path: p.clone(),
                    source: io(),
                })
                .into(),
                1,
            ),
            (untaint::UntaintError::Stopped("SIGTERM").into(), 6),
        ];
        for (err, code) in cases {
            assert_eq!(err.exit_code, code, "{:#}", err.error);
        }
        // An error no step owns is internal.
        assert_eq!(CliError::internal(anyhow::anyhow!("bug")).exit_code, 1);
    }
}
