//! `allot operator …` and `allot audit`.

use allot_origin::ops::Actor;
use allot_origin::ops::audit::{self, AuditFilter};
use allot_origin::ops::operators::{self, DEFAULT_TOKEN_DAYS, Role};
use allot_origin::ops::page::Page;
use clap::{Args, Subcommand};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::{admin_pool, fail, print_json};

/// `allot operator …`.
#[derive(Subcommand)]
pub enum OperatorAction {
    /// Create an operator and print their token (shown once).
    Create {
        /// Display name.
        #[arg(long)]
        name: String,
        /// viewer, operator or admin.
        #[arg(long)]
        role: String,
        /// Days until the token expires.
        #[arg(long, default_value_t = DEFAULT_TOKEN_DAYS)]
        valid_days: u32,
    },
    /// List operators (never their tokens).
    List,
    /// Revoke an operator's token.
    Revoke {
        /// The operator's id.
        id: uuid::Uuid,
    },
}

/// Run `allot operator …`.
pub async fn run(action: OperatorAction) -> anyhow::Result<()> {
    let pool = admin_pool().await?;
    let actor = Actor::cli();
    match action {
        OperatorAction::Create { name, role, valid_days } => {
            let role = Role::parse(&role).map_err(|e| anyhow::anyhow!("{}", e.message))?;
            let (id, token) = operators::create(&pool, &actor, &name, role, valid_days).await.map_err(fail)?;
            println!("operator {id} ({}) created", role.as_str());
            println!("token (shown once): {}", token.expose());
        }
        OperatorAction::List => print_json(&operators::list(&pool).await.map_err(fail)?)?,
        OperatorAction::Revoke { id } => {
            operators::revoke(&pool, &actor, id).await.map_err(fail)?;
            println!("revoked operator {id}");
        }
    }
    Ok(())
}

fn rfc3339(s: &str) -> Result<OffsetDateTime, String> {
    OffsetDateTime::parse(s, &Rfc3339).map_err(|e| format!("expected an RFC 3339 time: {e}"))
}

/// `allot audit`: the audit trail, newest first.
#[derive(Args)]
pub struct AuditArgs {
    /// Only this actor (an operator id, or cli:<user>).
    #[arg(long)]
    actor: Option<String>,
    /// Only this action, or a prefix ending in '.' (key.).
    #[arg(long)]
    action: Option<String>,
    /// Only this target.
    #[arg(long)]
    target: Option<String>,
    /// At or after (RFC 3339).
    #[arg(long, value_parser = rfc3339)]
    since: Option<OffsetDateTime>,
    /// Before (RFC 3339).
    #[arg(long, value_parser = rfc3339)]
    until: Option<OffsetDateTime>,
    /// Rows (1-100).
    #[arg(long)]
    limit: Option<u32>,
    /// The cursor a previous page printed.
    #[arg(long)]
    cursor: Option<String>,
}

/// Run `allot audit`.
pub async fn audit(args: AuditArgs) -> anyhow::Result<()> {
    let pool = admin_pool().await?;
    let page = Page::parse(args.cursor.as_deref(), args.limit).map_err(fail)?;
    let filter = AuditFilter {
        actor: args.actor,
        action: args.action,
        target: args.target,
        since: args.since,
        until: args.until,
    };
    let (rows, next) = audit::list(&pool, &filter, page).await.map_err(fail)?;
    for r in &rows {
        let at = r.at.format(&Rfc3339).unwrap_or_default();
        println!("{:>8} {at} {:<38} {:<22} {} {}", r.id, r.actor, r.action, r.target, r.change);
    }
    match next {
        Some(c) => println!("next page: --cursor {c}"),
        None => println!("(end)"),
    }
    Ok(())
}
