//! `dtu-supervisor [--settings DIR]` runs the server; `dtu-supervisor check --settings DIR`
//! validates the settings and exits 0, or prints every problem and exits 2.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use dtu_supervisor::settings;

#[derive(Parser)]
#[command(
    name = "dtu-supervisor",
    version,
    about = "Supervises fleets of dial-in DTUs"
)]
struct Cli {
    /// Directory holding server.toml and data.toml (or .yaml/.yml).
    #[arg(long, global = true, env = "DTU_SETTINGS", default_value = "settings")]
    settings: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Validate the settings and exit: 0 when valid, 2 with every problem listed otherwise.
    Check,
}

fn main() -> ExitCode {
    dtu_supervisor::logging::init();
    let cli = Cli::parse();
    let loaded = settings::load(&cli.settings);
    let settings = match loaded {
        Ok(s) => s,
        Err(errors) => {
            for e in &errors {
                eprintln!("error: {e}");
            }
            eprintln!(
                "{} problem(s) in the settings in {}",
                errors.len(),
                cli.settings.display()
            );
            return ExitCode::from(2);
        }
    };
    if let Some(Command::Check) = cli.command {
        println!(
            "settings in {} are valid: {} listener(s), {} profile(s)",
            cli.settings.display(),
            settings.server.listeners.len(),
            settings.data.profiles.len()
        );
        return ExitCode::SUCCESS;
    }
    let system = actix_rt::System::new();
    system.block_on(async {
        if let Err(e) = dtu_supervisor::server::run(settings).await {
            log::error!("{e:#}");
            // Exit here, inside the runtime: dropping actors that never ran outside of it
            // would panic instead of ending with a clear error and exit code 1.
            std::process::exit(1);
        }
    });
    ExitCode::SUCCESS
}
