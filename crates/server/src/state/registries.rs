//! Projects' registry logins: kept like job secrets, in an owner-only file per project beside
//! the journal (never in it), handed to a node only inside the launch of that project's task
//! whose image is on that registry.

use crate::error::{Error, Result};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use tidepool_api::{RegistryCredentials, RegistryLoginView};

/// The most logins one project keeps.
const MAX_LOGINS: usize = 64;

/// Every project's logins, by project then registry host.
pub(crate) struct RegistryLogins {
    dir: PathBuf,
    by_project: HashMap<String, BTreeMap<String, RegistryCredentials>>,
}

impl RegistryLogins {
    /// The logins saved under `dir`.
    pub(crate) fn load(dir: PathBuf) -> RegistryLogins {
        let mut by_project = HashMap::new();
        if let Ok(entries) = std::fs::read_dir(&dir) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().to_string();
                let Some(project) = name.strip_suffix(".json") else { continue };
                if let Some(logins) = std::fs::read(entry.path()).ok().and_then(|b| serde_json::from_slice(&b).ok()) {
                    by_project.insert(project.to_string(), logins);
                }
            }
        }
        RegistryLogins { dir, by_project }
    }

    /// Saves `project`'s login to `host` (replacing one it had), durably, before answering.
    pub(crate) fn set(&mut self, project: &str, host: &str, credentials: RegistryCredentials) -> Result<()> {
        if credentials.username.is_empty() || credentials.username.len() > 256 || credentials.username.contains(':') || credentials.username.chars().any(char::is_control) {
            return Err(Error::field("username", "1 to 256 characters, no ':' and no control character"));
        }
        if credentials.password.is_empty() || credentials.password.len() > 8192 || credentials.password.chars().any(char::is_control) {
            return Err(Error::field("password", "1 to 8192 characters, no control character"));
        }
        let mut logins = self.by_project.get(project).cloned().unwrap_or_default();
        if !logins.contains_key(host) && logins.len() >= MAX_LOGINS {
            return Err(Error::field("host", format!("a project keeps at most {MAX_LOGINS} registry logins")));
        }
        logins.insert(host.to_string(), credentials);
        self.save(project, &logins)?;
        self.by_project.insert(project.to_string(), logins);
        Ok(())
    }

    /// Forgets `project`'s login to `host`; false when it had none.
    pub(crate) fn remove(&mut self, project: &str, host: &str) -> Result<bool> {
        let mut logins = self.by_project.get(project).cloned().unwrap_or_default();
        if logins.remove(host).is_none() {
            return Ok(false);
        }
        self.save(project, &logins)?;
        self.by_project.insert(project.to_string(), logins);
        Ok(true)
    }

    /// The logins of `project` (of every project when `None`), without their passwords.
    pub(crate) fn views(&self, project: Option<&str>) -> Vec<RegistryLoginView> {
        let mut views: Vec<RegistryLoginView> = self
            .by_project
            .iter()
            .filter(|(p, _)| project.is_none_or(|wanted| wanted == p.as_str()))
            .flat_map(|(p, logins)| logins.iter().map(|(host, c)| RegistryLoginView { project: p.clone(), host: host.clone(), username: c.username.clone() }))
            .collect();
        views.sort_by(|a, b| (&a.project, &a.host).cmp(&(&b.project, &b.host)));
        views
    }

    /// `project`'s login to the registry of `image`, if it has one.
    pub(crate) fn for_image(&self, project: &str, image: &str) -> Option<RegistryCredentials> {
        let host = tidepool_api::ImageRef::parse(image).ok()?.registry;
        self.by_project.get(project)?.get(&tidepool_api::registry_host(&host).ok()?).cloned()
    }

    fn save(&self, project: &str, logins: &BTreeMap<String, RegistryCredentials>) -> Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let fail = |e: std::io::Error| Error::Internal(format!("storing a registry login: {e}"));
        std::fs::create_dir_all(&self.dir).map_err(fail)?;
        let path = self.dir.join(format!("{project}.json"));
        if logins.is_empty() {
            return match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(fail(e)),
                _ => Ok(()),
            };
        }
        let text = serde_json::to_vec(logins).map_err(|e| Error::Internal(e.to_string()))?;
        let tmp = self.dir.join(format!("{project}.json.tmp"));
        let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp).map_err(fail)?;
        file.write_all(&text).and_then(|()| file.sync_all()).map_err(fail)?;
        std::fs::rename(&tmp, &path).map_err(fail)
    }
}

impl super::Shared {
    /// The project a registry request acts for: a project token's own; the admin's choice
    /// (its own work's project, `default`, when none).
    fn login_project(who: &super::Principal, asked: Option<&str>) -> Result<String> {
        match (who, asked) {
            (super::Principal::Project(own), Some(asked)) if asked != own => {
                Err(Error::field("project", format!("this token acts for project {own}, not {asked}")))
            }
            (super::Principal::Project(own), _) => Ok(own.clone()),
            (super::Principal::Admin, asked) => {
                let name = asked.unwrap_or("default");
                if name.is_empty() || name.len() > 64 || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
                    return Err(Error::field("project", "use 1 to 64 letters, digits, '-', '_' and '.'"));
                }
                Ok(name.to_string())
            }
        }
    }

    /// Saves a project's login to a registry; what is listed for it.
    pub fn on_registry_login(&self, who: &super::Principal, req: tidepool_api::RegistryLoginRequest) -> Result<RegistryLoginView> {
        let project = Self::login_project(who, req.project.as_deref())?;
        let host = tidepool_api::registry_host(&req.host).map_err(|e| Error::field("host", e))?;
        let username = req.username.clone();
        self.lock().registry_logins.set(&project, &host, RegistryCredentials { username: req.username, password: req.password })?;
        tracing::info!(project = %project, registry = %host, "registry login saved");
        Ok(RegistryLoginView { project, host, username })
    }

    /// Forgets a project's login to a registry.
    pub fn on_registry_logout(&self, who: &super::Principal, req: &tidepool_api::RegistryLogoutRequest) -> Result<()> {
        let project = Self::login_project(who, req.project.as_deref())?;
        let host = tidepool_api::registry_host(&req.host).map_err(|e| Error::field("host", e))?;
        if !self.lock().registry_logins.remove(&project, &host)? {
            return Err(Error::NotFound(format!("project {project} has no login to {host}")));
        }
        Ok(())
    }

    /// The logins a principal may see: a project its own, the admin every project's (or one).
    pub fn registry_login_views(&self, who: &super::Principal, project: Option<&str>) -> Result<Vec<RegistryLoginView>> {
        let only = match who {
            super::Principal::Admin => project.map(str::to_string),
            super::Principal::Project(_) => Some(Self::login_project(who, project)?),
        };
        Ok(self.lock().registry_logins.views(only.as_deref()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn login(user: &str) -> RegistryCredentials {
        RegistryCredentials { username: user.into(), password: "pw".into() }
    }

    #[test]
    fn a_login_serves_only_its_project_and_registry_and_survives_a_restart() {
        let dir = std::env::temp_dir().join(format!("tidepool-logins-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut logins = RegistryLogins::load(dir.clone());
        logins.set("chem", "registry-1.docker.io", login("c")).unwrap();
        logins.set("chem", "127.0.0.1:5000", login("c2")).unwrap();
        assert_eq!(logins.for_image("chem", "busybox"), Some(login("c")), "a Docker Hub name");
        assert_eq!(logins.for_image("chem", "127.0.0.1:5000/x:1"), Some(login("c2")));
        assert_eq!(logins.for_image("bio", "127.0.0.1:5000/x:1"), None, "another project's login");
        assert_eq!(logins.for_image("chem", "ghcr.io/x:1"), None, "another registry");
        assert!(logins.set("chem", "h", RegistryCredentials { username: "a:b".into(), password: "p".into() }).is_err());
        let again = RegistryLogins::load(dir.clone());
        assert_eq!(again.views(Some("chem")).len(), 2);
        assert!(again.views(Some("bio")).is_empty());
        let mut again = again;
        assert!(again.remove("chem", "127.0.0.1:5000").unwrap());
        assert!(!again.remove("chem", "127.0.0.1:5000").unwrap());
        assert_eq!(RegistryLogins::load(dir.clone()).views(None).len(), 1);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.join("chem.json")).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "owner-only");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
