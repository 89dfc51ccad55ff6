//! Entry point of the multicall executable: parse, set up logs, run one step, exit.

use std::process::ExitCode;

use clap::Parser;

use apparmor_profile_loader::cli::{Cli, args_with_applet};
use apparmor_profile_loader::{app, exit_code, logging};

fn main() -> ExitCode {
    let cli = Cli::parse_from(args_with_applet(std::env::args_os().collect()));
    if let Err(e) = logging::init(cli.log_format, &cli.log_level) {
        eprintln!("apparmor-loader: {e}");
        return ExitCode::from(exit_code::USAGE);
    }
    ExitCode::from(app::run(cli))
}
