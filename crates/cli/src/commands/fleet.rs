//! `edgebuild fleet init|serve|enroll|revoke`: the fleet server, its database and its devices
//! (SPEC.md, "Fleet"); and what the operator commands share: the server's address, the admin
//! token, and an async runtime to call it with.

use std::path::PathBuf;

use clap::Subcommand;

use super::Session;
use crate::error::{Error, ExitCode, Result};

/// Where the fleet server is.
#[derive(Debug, clap::Args)]
pub struct ServerArgs {
    /// The fleet server's URL.
    #[arg(long, env = edgebuild_fleet::SERVER_ENV, value_name = "URL")]
    pub server: String,
}

#[derive(Debug, Subcommand)]
pub enum Args {
    /// Create a fleet database and print its admin token, once (it is stored hashed).
    Init {
        #[arg(long, value_name = "PATH")]
        db: PathBuf,
    },
    /// Serve the device and operator API and run the rollout controller until stopped.
    Serve {
        #[arg(long, value_name = "PATH")]
        db: PathBuf,
        #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8470")]
        listen: std::net::SocketAddr,
        /// The release public key (PATH.pub from `edgebuild keygen`): manifests not signed
        /// with it are refused.
        #[arg(long, value_name = "PATH")]
        key: PathBuf,
        /// How often the controller looks at the rollouts.
        #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = edgebuild_fleet::parse_tick)]
        tick: std::time::Duration,
    },
    /// Enroll devices; prints `ID TOKEN` per device (give each its token; it is stored hashed).
    Enroll {
        #[arg(required = true)]
        devices: Vec<String>,
        #[command(flatten)]
        server: ServerArgs,
    },
    /// Revoke a device: its token opens nothing any more.
    Revoke {
        device: String,
        #[command(flatten)]
        server: ServerArgs,
    },
}

pub fn admin_token() -> Option<String> {
    std::env::var(edgebuild_fleet::TOKEN_ENV)
        .ok()
        .filter(|t| !t.is_empty())
}

pub fn fleet_client(server: &ServerArgs) -> Result<edgebuild_fleet::client::Client> {
    let token = admin_token().ok_or_else(|| {
        Error::usage(
            format!("no admin token: set {}", edgebuild_fleet::TOKEN_ENV),
            Some("`edgebuild fleet init` printed it when it made the database".into()),
        )
    })?;
    Ok(edgebuild_fleet::client::Client::new(
        &server.server,
        &token,
    )?)
}

pub fn block_on<T>(future: impl std::future::Future<Output = T>) -> Result<T> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::io("tokio runtime", e))?;
    Ok(runtime.block_on(future))
}

pub fn run(action: Args, _session: &Session) -> Result<ExitCode> {
    use edgebuild_fleet::store::{FleetStore, SqliteStore};
    match action {
        Args::Init { db } => {
            if db.exists() {
                return Err(Error::usage(
                    format!("{} exists", db.display()),
                    Some(
                        "a fleet database is made once; serve it with `edgebuild fleet serve`"
                            .into(),
                    ),
                ));
            }
            let store = SqliteStore::open(&db, true)?;
            let token = store.init_admin()?;
            eprintln!(
                "made {}; its admin token follows (shown once, stored hashed): give it to operators as {}",
                db.display(),
                edgebuild_fleet::TOKEN_ENV
            );
            println!("{token}");
            Ok(ExitCode::Ok)
        }
        Args::Serve {
            db,
            listen,
            key,
            tick,
        } => {
            let key = edgebuild_fleet::release::read_verifying_key(&key)?;
            let store = std::sync::Arc::new(SqliteStore::open(&db, false)?);
            edgebuild_fleet::server::serve(store, key, listen, tick)?;
            Ok(ExitCode::Ok)
        }
        Args::Enroll { devices, server } => {
            let client = fleet_client(&server)?;
            #[derive(serde::Deserialize)]
            struct Tokens {
                tokens: std::collections::BTreeMap<String, String>,
            }
            let answer: Tokens = block_on(client.post(
                "/v1/admin/devices",
                &serde_json::json!({ "devices": devices }),
            ))??;
            for device in &devices {
                println!("{device} {}", answer.tokens[device]);
            }
            Ok(ExitCode::Ok)
        }
        Args::Revoke { device, server } => {
            let client = fleet_client(&server)?;
            block_on(client.send(
                reqwest::Method::DELETE,
                &format!("/v1/admin/devices/{}", edgebuild_fleet::encode(&device)),
                None,
            ))??;
            eprintln!("revoked {device}");
            Ok(ExitCode::Ok)
        }
    }
}
