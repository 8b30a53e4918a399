//! The `vmshift` binary: parses arguments into a `JobRequest` (or a command on a recorded
//! job), hands it to `vmshift_runner::Runner`, renders the job's events and maps outcomes
//! to exit codes (0 succeeded, 1 failed after starting, 2 refused or bad usage).

mod cli;
mod datastores;
mod docs;
mod evacuate;
mod info;
mod jobs;
mod notify;
mod render;

use clap::Parser;
use cli::{Cli, Command, MigrateArgs};
use vmshift_runner::{DemoLibvirt, JobHandle, Plan, Runner};

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
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => usage_error(e),
    };
    // Ctrl-C / SIGTERM: the jobs stop at the next chunk boundary (or poll); an offline job
    // keeps its journaled partial target for `vmshift resume`. Commands that run no job
    // (info, check, jobs, status, …) keep the default: a signal ends them at once.
    if runs_jobs(&cli.command) {
        let _ = ctrlc::set_handler(render::interrupt_all);
    }
    // A config that does not load stops the command before any job starts.
    let notifier = match notify::start(&cli) {
        Ok(n) => n,
        Err(e) => {
            eprintln!("vmshift: error: {}", one_line(&e));
            std::process::exit(2);
        }
    };
    let result = run(&cli.command, notifier.as_ref(), notify::config_path(&cli));
    notify::finish(notifier);
    match result {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("vmshift: error: {}", one_line(&e));
            std::process::exit(2);
        }
    }
}

fn run(
    command: &Command,
    notifier: Option<&vmshift_notify::Notifier>,
    config: Option<std::path::PathBuf>,
) -> anyhow::Result<i32> {
    // Commands whose `--to` may name a datastore know the configured ones.
    let runner = match command {
        Command::Check(_) | Command::Migrate(_) | Command::Evacuate { .. } => {
            match config.as_deref() {
                Some(p) => Runner::with_datastores(
                    vmshift_server::config::read_datastores(p).map_err(anyhow::Error::msg)?,
                ),
                None => Runner::new(),
            }
        }
        _ => Runner::new(),
    };
    let follow = |h: vmshift_runner::Result<JobHandle>, json: bool| -> anyhow::Result<i32> {
        Ok(render::follow(h?, json, notifier)?.code)
    };
    match command {
        Command::Info {
            domain: Some(name),
            connect,
            json,
            ..
        } => info::run_domain(connect.as_deref(), name, *json),
        Command::Info {
            qmp: Some(sock),
            json,
            ..
        } => info::run_qmp(sock, *json),
        Command::Info {
            image,
            source_format,
            backing_format,
            json,
            ..
        } => info::run(image, *source_format, *backing_format, *json),
        Command::Check(args) => check(&runner, args),
        Command::Migrate(args) => follow(runner.start(args.request()), args.json),
        Command::Demo {
            json,
            offline_only,
            libvirt,
            no_libvirt,
        } => {
            let part = match (libvirt, no_libvirt) {
                (true, _) => DemoLibvirt::Require,
                (_, true) => DemoLibvirt::Skip,
                _ => DemoLibvirt::Auto,
            };
            let outcome = render::follow(runner.demo(*offline_only, part)?, *json, notifier)?;
            if !json {
                for r in &outcome.reports {
                    println!("{}", r.to_markdown());
                }
            }
            Ok(outcome.code)
        }
        Command::Jobs {
            action: Some(cli::JobsAction::Prune { older_than }),
            json,
            ..
        } => follow(runner.prune(*older_than), *json),
        Command::Jobs {
            json,
            all,
            status,
            since,
            action: None,
        } => jobs::run_jobs(
            &jobs::Filter::new(*all, status.clone(), since.as_deref())?,
            *json,
        ),
        Command::Evacuate {
            source,
            to,
            plan,
            json,
            max_parallel,
            keep_source,
            connect,
        } => {
            let request = vmshift_runner::evacuate::EvacuateRequest {
                source: source.clone(),
                to: to.clone(),
                max_parallel: *max_parallel,
                keep_source: *keep_source,
                connect: connect.clone(),
            };
            evacuate::run(&runner, &request, *plan, *json)
        }
        Command::Status { job, json } => jobs::run_status(job, *json),
        Command::Datastores { json, probe } => datastores::run(config.as_deref(), *json, *probe),
        Command::Resume {
            job,
            report,
            json,
            bwlimit,
        } => follow(runner.resume(job, report.clone(), *bwlimit), *json),
        Command::Cancel { job, keep_partial } => follow(runner.cancel(job, *keep_partial), false),
        Command::Set { job, bwlimit, json } => follow(runner.set_bwlimit(job, *bwlimit), *json),
        Command::Rollback { job, json, bwlimit } => follow(runner.rollback(job, *bwlimit), *json),
        Command::Serve { listen } => serve(listen.clone(), config),
        Command::Completions { shell } => docs::completions(*shell),
        Command::Man { dir } => docs::man(dir),
    }
}

/// Whether `command` runs jobs that a signal should interrupt rather than kill.
fn runs_jobs(command: &Command) -> bool {
    match command {
        Command::Info { .. }
        | Command::Check(..)
        | Command::Status { .. }
        | Command::Datastores { .. }
        | Command::Completions { .. }
        | Command::Man { .. } => false,
        Command::Jobs { action, .. } => action.is_some(),
        _ => true,
    }
}

/// `vmshift serve`: the service until SIGTERM; the config's notifications observe every
/// job it runs.
fn serve(listen: Option<String>, config: Option<std::path::PathBuf>) -> anyhow::Result<i32> {
    let notifier = match &config {
        Some(p) => {
            let c = vmshift_notify::NotifyConfig::from_config_file(p)?;
            (!c.is_empty()).then(|| std::sync::Arc::new(vmshift_notify::Notifier::start(c)))
        }
        None => None,
    };
    let observers: Vec<vmshift_server::Observer> = notifier
        .iter()
        .map(|n| {
            let n = n.clone();
            std::sync::Arc::new(move |id: &str, e: &vmshift_runner::JobEvent| n.observe(id, e))
                as vmshift_server::Observer
        })
        .collect();
    let opts = vmshift_server::ServeOptions { config, listen };
    let result = vmshift_server::serve(&opts, observers).map_err(anyhow::Error::msg);
    if let Some(n) = notifier {
        for line in n.flush(notify::FLUSH_TIMEOUT) {
            eprintln!("vmshift: notify: {line}");
        }
    }
    result.map(|()| 0)
}

/// `vmshift check`: prints the plan on stdout; 0 when it would go ahead, 2 when refused.
fn check(runner: &Runner, args: &MigrateArgs) -> anyhow::Result<i32> {
    let plan = runner.check(&args.request())?;
    let go = plan.go();
    if args.json {
        let v = match &plan {
            Plan::Offline(c) => {
                serde_json::json!({"event": "plan", "go": go, "source": c.source, "plan": c.plan})
            }
            Plan::Live(p) => {
                serde_json::json!({"event": "plan", "go": true, "disks": p.disks.iter().map(|d| serde_json::json!({
                "device": d.disk.device, "node": d.disk.node_name, "source": d.disk.file,
                "target": d.target, "format": d.format.as_str(), "virtual_size": d.disk.virtual_size,
                "needed_bytes": d.needed_bytes})).collect::<Vec<_>>()})
            }
            Plan::LiveRefused(why) => {
                serde_json::json!({"event": "plan", "go": false, "reason": why})
            }
            Plan::Domain(go, lines) => {
                serde_json::json!({"event": "plan", "go": go, "lines": lines})
            }
        };
        println!("{v}");
    } else {
        for l in plan.lines() {
            println!("{l}");
        }
        let live = !matches!(plan, Plan::Offline(_));
        println!(
            "check: {}",
            match (go, live) {
                (true, false) => "the migration would go ahead",
                (true, true) if matches!(plan, Plan::Domain(..)) => {
                    "the domain's migration would go ahead"
                }
                (true, true) => "the live migration would go ahead",
                (false, _) => "refused",
            }
        );
    }
    Ok(if go { 0 } else { 2 })
}

/// A command line clap refused, said in one line (help and version print as clap has
/// them). Exits 2 (0 for help and version).
fn usage_error(e: clap::Error) -> ! {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        e.exit();
    }
    eprintln!(
        "vmshift: error: {}",
        one_line_usage(&e.render().to_string())
    );
    std::process::exit(2);
}

/// clap's multi-line error text as one line: the message (with any list it names), its
/// tip, the usage line, and where help is.
fn one_line_usage(text: &str) -> String {
    let mut msg = String::new();
    let mut usage = None;
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if let Some(u) = line.strip_prefix("Usage: ") {
            usage = Some(u.to_string());
        } else if line.starts_with("For more information") {
        } else if let Some(m) = line.strip_prefix("error: ") {
            msg.push_str(m);
        } else if let Some(t) = line.strip_prefix("tip: ") {
            msg.push_str(&format!(" ({t})"));
        } else {
            // The arguments a "not provided" error lists, one per line.
            let sep = if msg.ends_with(':') { " " } else { ", " };
            msg.push_str(sep);
            msg.push_str(line);
        }
    }
    match usage {
        Some(u) => format!("{msg}; usage: {u} (see --help)"),
        None => format!("{msg} (see --help)"),
    }
}

/// The error and those of its causes its message does not already say, in one line.
fn one_line(e: &anyhow::Error) -> String {
    let mut msg = e.to_string();
    for cause in e.chain().skip(1) {
        let c = cause.to_string();
        if !msg.contains(&c) {
            msg.push_str(": ");
            msg.push_str(&c);
        }
    }
    msg
}
