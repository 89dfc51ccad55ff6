//! Wiring: parsed arguments in, one step run, an exit code out. Each step's library function
//! does the work; this module only builds their inputs, logs the outcome and maps errors.

use tracing::{error, info, info_span};

use crate::cli::{Cli, Command, ParserArgs};
use crate::exit_code::{self, ExitStatus};
use crate::kernel::Kernel;
use crate::parser::Parser;
use crate::{copy, load, pause, untaint, validate};

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
    let result = match cli.command {
        Command::Copy(args) => parser(&args.parser).and_then(|parser| {
            let opts = copy::CopyOptions {
                lock: args.profile_dir.lock_options(&node),
                source: args.source,
                dest: args.profile_dir.dest,
                max_size: args.max_size,
            };
            let report = copy::run(&opts, &parser).map_err(failure)?;
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
        }),
        Command::Load(args) => parser(&args.parser).and_then(|parser| {
            let opts = load::LoadOptions {
                lock: args.profile_dir.lock_options(&node),
                dest: args.profile_dir.dest,
                cache_dir: args.cache_dir,
                kernel: Kernel::new(&args.securityfs, &args.enabled_file),
                adopt_loaded: args.adopt_loaded,
            };
            let r = load::run(&opts, &parser).map_err(failure)?;
            info!(loaded = r.loaded, unchanged = r.unchanged, removed = r.removed.len(),
                  verified = r.verified, took_ms = r.took_ms as u64,
                  removed_profiles = %r.removed.join(","),
                  "load complete: loaded {}, unchanged {}, removed {}, took {} ms",
                  r.loaded, r.unchanged, r.removed.len(), r.took_ms);
            Ok(())
        }),
        Command::Untaint(args) => untaint::run_step(cli.node_name, args)
            .map(drop)
            .map_err(failure),
        Command::Pause => pause::run(|| info!("pausing until SIGTERM"))
            .map(|signal| info!("received {signal}, exiting"))
            .map_err(|e| (exit_code::INTERNAL, format!("cannot wait for signals: {e}"))),
        Command::Validate(args) => parser(&args.parser).and_then(|parser| {
            let compiled = validate::run(&args.paths, args.max_size, &parser).map_err(failure)?;
            let names: usize = compiled.iter().map(|c| c.names.len()).sum();
            info!(
                files = compiled.len(),
                profiles = names,
                "validate complete: {} files defining {} profiles, all valid",
                compiled.len(),
                names
            );
            Ok(())
        }),
    };
    match result {
        Ok(()) => 0,
        Err((code, message)) => {
            error!(exit_code = code, "{message}");
            code
        }
    }
}

fn failure<E: ExitStatus + std::fmt::Display>(e: E) -> (u8, String) {
    (e.exit_code(), e.to_string())
}

/// The parser settings shared by `copy`, `load` and `validate`.
fn parser(args: &ParserArgs) -> Result<Parser, (u8, String)> {
    let binary = Parser::locate(&args.parser).map_err(|e| (exit_code::INTERNAL, e.to_string()))?;
    let jobs = args
        .jobs
        .filter(|j| *j > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    Ok(Parser {
        binary,
        base: args.base.clone(),
        includes: args.include.clone(),
        jobs,
    })
}
