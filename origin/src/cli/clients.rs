//! `allot client …` and `allot key …`.

use allot_origin::config::Config;
use allot_origin::ops::Actor;
use allot_origin::ops::clients::{self, ClientFilter, RotationEnd};
use allot_origin::ops::page::DEFAULT_LIMIT;
use clap::Subcommand;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::{admin_pool, fail, print_json};

/// `allot client …`.
#[derive(Subcommand)]
pub enum ClientAction {
    /// Create a client in this origin's region; prints its id.
    Create {
        /// Display name.
        #[arg(long)]
        name: String,
    },
    /// List clients in id order, with their usable keys and last use.
    List {
        /// Only active or only suspended clients.
        #[arg(long)]
        status: Option<String>,
        /// Clients per page (1-100).
        #[arg(long, default_value_t = DEFAULT_LIMIT)]
        limit: u32,
        /// The cursor a previous page printed.
        #[arg(long)]
        cursor: Option<String>,
    },
    /// Show a client and its keys (never a secret).
    Show {
        /// The client's id.
        id: uuid::Uuid,
    },
    /// Suspend a client: its keys get 403 (within ALLOT_KEY_CACHE_TTL_MS).
    Suspend {
        /// The client's id.
        id: uuid::Uuid,
    },
    /// Resume a suspended client.
    Resume {
        /// The client's id.
        id: uuid::Uuid,
    },
    /// Set a client's request limit at the origin (takes effect within the key cache's TTL).
    Limit {
        /// The client's id.
        client: uuid::Uuid,
        /// Requests per minute, across every edge location and origin instance.
        #[arg(long, conflicts_with = "default", required_unless_present = "default")]
        per_minute: Option<u32>,
        /// Go back to the configured default (ALLOT_CLIENT_RATE_LIMIT_PER_MINUTE).
        #[arg(long)]
        default: bool,
    },
}

/// `allot key …`.
#[derive(Subcommand)]
pub enum KeyAction {
    /// Issue a key for a client (shown once).
    Issue {
        /// The client's id.
        #[arg(long)]
        client: uuid::Uuid,
        /// A label for operators.
        #[arg(long)]
        label: Option<String>,
    },
    /// Revoke a key by its id.
    Revoke {
        /// The key id (the part after the region).
        key_id: String,
    },
    /// Rotate a key: a new key (shown once) is live at once; the old one works until the time.
    Rotate {
        /// The key id of the key to replace.
        key_id: String,
        /// The old key works this many more seconds (0 to 2592000, 30 days).
        #[arg(long, conflicts_with = "until", required_unless_present = "until")]
        overlap_secs: Option<u64>,
        /// The old key works until this time (RFC 3339, within 30 days).
        #[arg(long, value_parser = rfc3339)]
        until: Option<OffsetDateTime>,
    },
}

fn rfc3339(s: &str) -> Result<OffsetDateTime, String> {
    OffsetDateTime::parse(s, &Rfc3339).map_err(|e| format!("expected an RFC 3339 time: {e}"))
}

/// Run `allot client …`.
pub async fn run_client(action: ClientAction) -> anyhow::Result<()> {
    let pool = admin_pool().await?;
    let actor = Actor::cli();
    match action {
        ClientAction::Create { name } => {
            let region = Config::from_env()?.region;
            println!("{}", clients::create_client(&pool, &actor, &name, &region, None).await.map_err(fail)?);
        }
        ClientAction::List { status, limit, cursor } => {
            let after = cursor.as_deref().map(clients::parse_client_cursor).transpose().map_err(fail)?;
            let filter = ClientFilter { status, after, limit };
            let (rows, next) = clients::list_clients(&pool, &filter).await.map_err(fail)?;
            print_json(&serde_json::json!({ "items": rows, "next_cursor": next }))?;
        }
        ClientAction::Show { id } => print_json(&clients::show_client(&pool, id).await.map_err(fail)?)?,
        ClientAction::Suspend { id } | ClientAction::Resume { id } => {
            let active = matches!(action, ClientAction::Resume { .. });
            let changed = clients::set_client_active(&pool, &actor, id, active).await.map_err(fail)?;
            let state = if active { "active" } else { "suspended" };
            let note = if changed { "" } else { " (unchanged)" };
            println!("client {id}: {state}{note}");
        }
        ClientAction::Limit { client, per_minute, default: _ } => {
            clients::set_client_rate_limit(&pool, &actor, client, per_minute).await.map_err(fail)?;
            match per_minute {
                Some(n) => println!("client {client}: {n} requests per minute"),
                None => println!("client {client}: the configured default limit"),
            }
        }
    }
    Ok(())
}

/// Run `allot key …`.
pub async fn run_key(action: KeyAction) -> anyhow::Result<()> {
    let pool = admin_pool().await?;
    let actor = Actor::cli();
    match action {
        KeyAction::Issue { client, label } => {
            println!("{}", clients::issue_key(&pool, &actor, client, label.as_deref()).await.map_err(fail)?.expose());
        }
        KeyAction::Revoke { key_id } => {
            clients::revoke_key(&pool, &actor, &key_id).await.map_err(fail)?;
            println!("revoked {key_id}");
        }
        KeyAction::Rotate { key_id, overlap_secs, until } => {
            let end = match (overlap_secs, until) {
                (Some(s), _) => RotationEnd::OverlapSecs(s),
                (None, Some(t)) => RotationEnd::Until(t),
                (None, None) => anyhow::bail!("give --overlap-secs or --until"),
            };
            let r = clients::rotate_key(&pool, &actor, &key_id, end).await.map_err(fail)?;
            let until = r.old_expires_at.format(&Rfc3339)?;
            println!("old key {} works until {until}", r.old_key_id);
            println!("new key {} (shown once): {}", r.key.key_id(), r.key.expose());
        }
    }
    Ok(())
}
