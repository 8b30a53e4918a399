//! The `vmshift` binary: parses arguments, runs one command, maps outcomes to exit codes
//! (0 succeeded, 1 failed after starting, 2 refused or bad usage).

mod cli;
mod demo;
mod info;
mod jobs;
mod live;
mod offline;
mod output;
mod resume;
mod safety;
mod state;

use clap::Parser;
use cli::{Cli, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

fn main() {
    // Die quietly on a closed pipe (`vmshift status JOB | head`) like other tools, instead
    // of panicking in println!.
    // SAFETY: setting a signal disposition to SIG_DFL at start-up, before any threads exist.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("VMSHIFT_LOG"))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let cancel = Arc::new(AtomicBool::new(false));
    let c = cancel.clone();
    // Ctrl-C / SIGTERM: stop at the next chunk boundary and clean up.
    let _ = ctrlc::set_handler(move || c.store(true, Ordering::Relaxed));
    let result = match &cli.command {
        Command::Info {
            qmp: Some(sock),
            json,
            ..
        } => live::run_info(sock, *json),
        Command::Info {
            image,
            source_format,
            backing_format,
            json,
            qmp: None,
        } => info::run(image, *source_format, *backing_format, *json),
        Command::Check(args) if args.live.qmp.is_some() => {
            live::run_check(&live::LiveArgs::from_migrate(args))
        }
        Command::Check(args) => offline::run_check(args),
        Command::Migrate(args) if args.live.qmp.is_some() => {
            live::run_migrate(&live::LiveArgs::from_migrate(args), cancel)
        }
        Command::Migrate(args) => offline::run_migrate(args, cancel),
        Command::Demo {
            json,
            offline_only: true,
        } => demo::run_demo(*json, cancel),
        Command::Demo {
            json,
            offline_only: false,
        } => demo::run_demo(*json, cancel.clone()).and_then(|code| {
            if code == 0 {
                live::run_demo_live(*json, cancel)
            } else {
                Ok(code)
            }
        }),
        Command::Jobs { json } => jobs::run_jobs(*json),
        Command::Status { job, json } => jobs::run_status(job, *json),
        Command::Resume { job, report, json } => {
            resume::run_resume(job, report.clone(), *json, cancel)
        }
        Command::Cancel { job, keep_partial } => jobs::run_cancel(job, *keep_partial),
        Command::Rollback { job, json } => jobs::run_rollback(job, *json, cancel),
    };
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("vmshift: error: {e:#}");
            std::process::exit(2);
        }
    }
}
