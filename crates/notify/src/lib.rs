//! vmshift's notifications: a job's events sent to webhooks (signed JSON over HTTP) and to a
//! local command (the same JSON on its standard input), retried with backoff for a bounded
//! time and recorded in the journal (`deliveries`), so `vmshift status JOB` shows them.
//!
//! A front end (the CLI, the HTTP service) loads a [`NotifyConfig`] from the `[notify]` table
//! of the config file, starts one [`Notifier`], calls [`Notifier::observe`] for every event
//! of every job it follows, and [`Notifier::flush`] before it exits. `observe` never blocks
//! and never fails: a failing or hanging webhook delays only other notifications, never a
//! job.
//!
//! - [`config`]: the `[notify]` table ([`NotifyConfig`], [`WebhookConfig`]), secrets.
//! - [`event`]: the notification events ([`EventKind`]) and which job events map to them.
//! - [`body`]: the JSON body ([`Summary`]) and its signature ([`body::signature`]).
//! - [`retry`]: the backoff schedule (pure).
//! - [`deliver`]: one attempt: an HTTP POST, or the command run.
//! - [`notifier`]: the [`Notifier`]: the queue, the delivery thread, the journal records.
//! - [`error`]: [`NotifyError`], naming the config file.

pub mod body;
pub mod config;
pub mod deliver;
pub mod error;
pub mod event;
pub mod notifier;
pub mod retry;

pub use body::Summary;
pub use config::{NotifyConfig, Secret, WebhookConfig, DEFAULT_RETRY_FOR_SECS};
pub use error::NotifyError;
pub use event::EventKind;
pub use notifier::{Notifier, DEFAULT_FLUSH_TIMEOUT};

/// The crate's result type.
pub type Result<T, E = NotifyError> = std::result::Result<T, E>;
