//! The admin commands (`users`, `profiles`, `mailboxes`, `keys`, `nodes`): scripting a setup on the
//! server itself, recorded in the audit log as the `cli` actor.

use std::io::Read;
use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use mailbridge_core::{
    EmailAddress, MailboxDraft, ProfileDraft, ProfileId, Role, SecretChange, TrackingRule,
};
use mailbridge_store::{Actor, Keyring, Store};

use crate::config::{Config, MasterKeySource};

#[derive(Subcommand)]
pub enum UsersCommand {
    /// Create a user and print their API token (shown once) on standard output.
    Create {
        #[arg(long)]
        email: String,
        #[arg(long, value_enum, default_value = "user")]
        role: RoleArg,
    },
    /// List users.
    List,
    /// Issue a new API token for a user (the old one stops working) and print it.
    ResetToken {
        #[arg(long)]
        email: String,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum RoleArg {
    Admin,
    User,
}

#[derive(Subcommand)]
pub enum ProfilesCommand {
    /// Create a profile from a JSON document, the same as POST /api/v1/server-profiles takes
    /// (e.g. {"name": "Sales", "preset": "gmail", "oauth": {"client_id": "…", "client_secret": "…"}}).
    /// Read from a file, or from standard input with '-', so the secret stays out of the
    /// process list and shell history.
    Create {
        #[arg(long, value_name = "FILE")]
        from: PathBuf,
    },
    /// List profiles with their mailbox counts.
    List,
}

#[derive(Subcommand)]
pub enum MailboxesCommand {
    /// Create a mailbox for a user on a profile.
    Create {
        /// The owning user's email.
        #[arg(long)]
        owner: String,
        /// The mailbox's address.
        #[arg(long)]
        email: String,
        /// The profile's name or id.
        #[arg(long)]
        profile: String,
        #[arg(long, value_enum)]
        tracking_rule: Option<TrackingArg>,
    },
    /// List mailboxes with their statuses.
    List,
}

#[derive(Clone, Copy, clap::ValueEnum)]
pub enum TrackingArg {
    All,
    Responses,
    /// Also accepted as the API spells it.
    #[value(alias = "known_contacts")]
    KnownContacts,
    None,
}

#[derive(Subcommand)]
pub enum NodesCommand {
    /// List the nodes: group, heartbeat, mailboxes held, state.
    List,
    /// Drain a node (by name or id): it releases its mailboxes to the other nodes of its
    /// group and takes no new ones, so it can be stopped without a gap.
    Drain { node: String },
    /// Undo a drain.
    Undrain { node: String },
}

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Re-encrypt every stored secret with a new master key. With a key file, a new key is
    /// generated, added, used, and the old one removed. With MAILBRIDGE_MASTER_KEY, put the
    /// new key first ('new:…,old:…'; 'keys generate' makes one), run this, then drop the old.
    Rotate,
    /// Print a new random key entry ('<id>:<base64>') for MAILBRIDGE_MASTER_KEY.
    Generate,
}

pub async fn users(command: UsersCommand, store: &Store) -> anyhow::Result<()> {
    match command {
        UsersCommand::Create { email, role } => {
            let email =
                EmailAddress::parse(&email, "--email").map_err(|e| anyhow::anyhow!(e.message))?;
            let role = match role {
                RoleArg::Admin => Role::Admin,
                RoleArg::User => Role::User,
            };
            let (user, token) = store.create_user(&Actor::cli(), &email, role).await?;
            eprintln!(
                "created {} {} (id {}); their API token follows, shown this once:",
                user.role, user.email, user.id
            );
            println!("{}", token.reveal());
        }
        UsersCommand::List => {
            for u in store.list_users().await? {
                println!("{}\t{}\t{}", u.id, u.role, u.email);
            }
        }
        UsersCommand::ResetToken { email } => {
            let email =
                EmailAddress::parse(&email, "--email").map_err(|e| anyhow::anyhow!(e.message))?;
            let user = store
                .find_user_by_email(&email)
                .await?
                .with_context(|| format!("no user has the email {email}"))?;
            let token = store.reset_user_token(&Actor::cli(), user.id).await?;
            eprintln!("new API token for {email}, shown this once:");
            println!("{}", token.reveal());
        }
    }
    Ok(())
}

pub async fn profiles(command: ProfilesCommand, store: &Store) -> anyhow::Result<()> {
    match command {
        ProfilesCommand::Create { from } => {
            let mut text = String::new();
            if from.as_os_str() == "-" {
                std::io::stdin()
                    .read_to_string(&mut text)
                    .context("cannot read standard input")?;
            } else {
                text = std::fs::read_to_string(&from)
                    .with_context(|| format!("cannot read {}", from.display()))?;
            }
            let de = &mut serde_json::Deserializer::from_str(&text);
            let draft: ProfileDraft = serde_path_to_error::deserialize(de)
                .map_err(|e| anyhow::anyhow!("{}: {}", e.path(), e.inner()))?;
            let (spec, secret) = draft
                .resolve(None)
                .map_err(|e| anyhow::anyhow!("{}: {}", e.field, e.message))?;
            let p = store.create_profile(&Actor::cli(), &spec, secret).await?;
            eprintln!("created server profile '{}'", p.spec.name);
            println!("{}", p.id);
        }
        ProfilesCommand::List => {
            for p in store.list_profiles().await? {
                println!(
                    "{}\t{}\t{}\t{}/{} mailboxes",
                    p.id, p.spec.name, p.spec.auth, p.mailbox_count, p.spec.max_mailboxes
                );
            }
        }
    }
    Ok(())
}

pub async fn mailboxes(command: MailboxesCommand, store: &Store) -> anyhow::Result<()> {
    match command {
        MailboxesCommand::Create {
            owner,
            email,
            profile,
            tracking_rule,
        } => {
            let owner_email =
                EmailAddress::parse(&owner, "--owner").map_err(|e| anyhow::anyhow!(e.message))?;
            let owner = store
                .find_user_by_email(&owner_email)
                .await?
                .with_context(|| format!("no user has the email {owner_email}; create them with 'mailbridge users create'"))?;
            let profile_id = match profile.parse::<ProfileId>() {
                Ok(id) => id,
                Err(_) => {
                    store
                        .find_profile_by_name(&profile)
                        .await?
                        .with_context(|| format!("no server profile is named '{profile}'"))?
                        .id
                }
            };
            let draft = MailboxDraft {
                owner_user_id: Some(owner.id),
                email: Some(email),
                profile_id: Some(profile_id),
                tracking_rule: tracking_rule.map(|t| match t {
                    TrackingArg::All => TrackingRule::All,
                    TrackingArg::Responses => TrackingRule::Responses,
                    TrackingArg::KnownContacts => TrackingRule::KnownContacts,
                    TrackingArg::None => TrackingRule::None,
                }),
                ..MailboxDraft::default()
            };
            let spec = draft
                .resolve(None, owner.id)
                .map_err(|e| anyhow::anyhow!("{}: {}", e.field, e.message))?;
            let m = store
                .create_mailbox(&Actor::cli(), &spec, SecretChange::Keep)
                .await?;
            eprintln!("created mailbox {} for {}", m.spec.email, owner.email);
            println!("{}", m.id);
        }
        MailboxesCommand::List => {
            for m in store.list_mailboxes(None).await? {
                println!(
                    "{}\t{}\tincoming {}\toutgoing {}\t{}",
                    m.id,
                    m.spec.email,
                    m.incoming.status,
                    m.outgoing.status,
                    if m.enabled { "enabled" } else { "disabled" }
                );
            }
        }
    }
    Ok(())
}

pub async fn nodes(command: NodesCommand, store: &Store) -> anyhow::Result<()> {
    match command {
        NodesCommand::List => {
            println!("NAME\tGROUP\tSTATE\tMAILBOXES\tHEARTBEAT\tID");
            for n in store.list_nodes().await? {
                // A node that died without stopping shows as lost once its leases have run
                // out or been ended (its mailboxes have moved on by then).
                let state = match (n.stopped_at, n.draining) {
                    (Some(_), _) => "stopped",
                    (None, _) if n.lost => "lost",
                    (None, true) => "draining",
                    (None, false) => "running",
                };
                println!(
                    "{}\t{}\t{state}\t{}\t{}\t{}",
                    n.name,
                    n.group,
                    n.mailboxes,
                    n.heartbeat_at.format("%Y-%m-%dT%H:%M:%SZ"),
                    n.id
                );
            }
        }
        NodesCommand::Drain { node } => set_draining(store, &node, true).await?,
        NodesCommand::Undrain { node } => set_draining(store, &node, false).await?,
    }
    Ok(())
}

async fn set_draining(store: &Store, node: &str, draining: bool) -> anyhow::Result<()> {
    match store.set_draining(node, draining).await? {
        0 => anyhow::bail!("no running node is named '{node}'; see 'mailbridge nodes list'"),
        n => {
            eprintln!(
                "{} {n} node(s) named '{node}'{}",
                if draining { "draining" } else { "undrained" },
                if draining {
                    "; their mailboxes move to the other nodes of the group within a lease renewal"
                } else {
                    ""
                }
            );
            Ok(())
        }
    }
}

pub async fn keys(command: KeysCommand, config: &Config) -> anyhow::Result<()> {
    match command {
        KeysCommand::Generate => {
            println!("{}", Keyring::generate().export().as_str());
        }
        KeysCommand::Rotate => match &config.master_key {
            MasterKeySource::Env(_) => {
                let store = crate::open_store(config).await?;
                let n = store.reencrypt_secrets().await?;
                let ids = store.keyring().key_ids();
                let (active, old) = ids.split_first().unwrap_or((&"", &[]));
                eprintln!(
                    "re-encrypted {n} secret(s) with key '{active}'; {}",
                    if old.is_empty() {
                        "put a new key first in MAILBRIDGE_MASTER_KEY to rotate to it".to_owned()
                    } else {
                        format!(
                            "you can now remove {} from MAILBRIDGE_MASTER_KEY",
                            old.join(", ")
                        )
                    }
                );
                store.close().await;
            }
            MasterKeySource::File(path) => {
                let old = Keyring::load_or_create(path)?;
                let old_ids: Vec<String> = old.key_ids().iter().map(|s| s.to_string()).collect();
                let ring = old.rotated_to(Keyring::generate());
                // The file holds new and old keys until every secret is re-encrypted, so a
                // crash half-way loses nothing.
                ring.write_file(path)?;
                let store = crate::open_store_with(config, ring).await?;
                let n = store.reencrypt_secrets().await?;
                let new_id = store.keyring().active_id().to_owned();
                store.close().await;
                Keyring::load_or_create(path)?
                    .active_only()
                    .write_file(path)?;
                eprintln!(
                    "re-encrypted {n} secret(s) with new key '{new_id}'; retired {}",
                    old_ids.join(", ")
                );
            }
        },
    }
    Ok(())
}
