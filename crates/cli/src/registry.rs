//! `tidepool registry login|list|logout`: a project's logins to private registries, which its
//! nodes present when they pull that project's images (never another project's).

use crate::client::Client;
use crate::output::line;
use clap::Subcommand;
use std::io::BufRead;
use tidepool_api::{RegistryLoginRequest, RegistryLoginView, RegistryLogoutRequest};

/// `tidepool registry ...`.
#[derive(Subcommand, Debug)]
pub enum RegistryAction {
    /// Save a login to a registry: the password (or access token) is read from stdin, never
    /// from the command line, where every user could read it in `ps`.
    Login {
        /// The registry, `HOST[:PORT]` as image references name it (`docker.io` is Docker Hub).
        host: String,
        /// The registry's user name.
        #[arg(long, short = 'u')]
        username: String,
        /// Read the password from stdin (the only way; accepted as `docker login` has it).
        #[arg(long)]
        password_stdin: bool,
        /// The project it is for (admin only; a project token acts for its own).
        #[arg(long)]
        project: Option<String>,
    },
    /// List logins: project, registry and user name, never the password.
    List {
        /// Only this project's (admin; a project token sees its own).
        #[arg(long)]
        project: Option<String>,
    },
    /// Forget a login.
    Logout {
        /// The registry, `HOST[:PORT]`.
        host: String,
        /// The project it is for (admin only).
        #[arg(long)]
        project: Option<String>,
    },
}

/// Runs a `registry` command.
pub async fn registry(action: RegistryAction) -> Result<u8, String> {
    let client = Client::from_env()?;
    match action {
        RegistryAction::Login { host, username, password_stdin: _, project } => {
            let mut password = String::new();
            std::io::stdin().lock().read_line(&mut password).map_err(|e| format!("reading the password from stdin: {e}"))?;
            let password = password.trim_end_matches(['\n', '\r']).to_string();
            if password.is_empty() {
                return Err("no password on stdin: pipe it in (echo \"$TOKEN\" | tidepool registry login HOST -u USER --password-stdin)".into());
            }
            let saved: RegistryLoginView = client.post("/registries", &RegistryLoginRequest { host, username, password, project }).await?;
            line(&format!("login to {} saved for project {} as {}", saved.host, saved.project, saved.username));
        }
        RegistryAction::List { project } => {
            let path = match &project {
                Some(p) => format!("/registries?project={p}"),
                None => "/registries".to_string(),
            };
            let logins: Vec<RegistryLoginView> = client.get(&path).await?;
            line(&format!("{:<16} {:<32} {}", "PROJECT", "REGISTRY", "USER"));
            for l in logins {
                line(&format!("{:<16} {:<32} {}", l.project, l.host, l.username));
            }
        }
        RegistryAction::Logout { host, project } => {
            let _: serde_json::Value = client.post("/registries/logout", &RegistryLogoutRequest { host, project }).await?;
        }
    }
    Ok(0)
}
