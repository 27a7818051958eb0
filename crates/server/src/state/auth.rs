//! Who a token stands for, the projects and tokens the admin manages, and keeping known
//! tokens out of what is journaled.

use super::*;

/// A token's public id: a prefix of its hash, so the id reveals nothing usable.
pub(super) fn token_id(hash: &str) -> String {
    format!("tok_{}", &hash[..12])
}

impl Shared {
    /// Who a bearer token stands for, if anyone.
    pub fn principal(&self, token: &str) -> Option<Principal> {
        if tidepool_api::same_secret(token, &self.admin_token) {
            return Some(Principal::Admin);
        }
        let hash = tokens::hash(token);
        let map = self.api_tokens.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(&hash) {
            Some((_, project, false)) if !project.is_empty() => Some(Principal::Project(project.clone())),
            _ => None,
        }
    }

    /// Whether `token` is a join token that has not been revoked.
    pub fn is_join_token(&self, token: &str) -> bool {
        let map = self.api_tokens.lock().unwrap_or_else(|p| p.into_inner());
        matches!(map.get(&tokens::hash(token)), Some((_, project, false)) if project.is_empty())
    }

    /// Every project and join token, without the tokens themselves.
    pub fn token_views(&self) -> Vec<tidepool_api::TokenView> {
        let map = self.api_tokens.lock().unwrap_or_else(|p| p.into_inner());
        let mut views: Vec<tidepool_api::TokenView> = map
            .values()
            .map(|(id, project, revoked)| tidepool_api::TokenView {
                id: id.clone(),
                kind: if project.is_empty() { "join" } else { "project" }.into(),
                project: (!project.is_empty()).then(|| project.clone()),
                revoked: *revoked,
            })
            .collect();
        views.sort_by(|a, b| a.id.cmp(&b.id));
        views
    }

    /// True when `text` holds a token this server knows (admin, project or join, revoked
    /// included), as a whole word.
    pub(super) fn holds_known_token(&self, text: &str) -> bool {
        if text.contains(self.admin_token.as_str()) {
            return true;
        }
        let map = self.api_tokens.lock().unwrap_or_else(|p| p.into_inner());
        text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|word| word.len() > 4 && word.starts_with("tp") && word.as_bytes()[3] == b'_')
            .any(|word| map.contains_key(&tokens::hash(word)))
    }

    /// Removes from a job's environment every variable that names or holds a token Tidepool
    /// knows, so that none reaches the journal (or a task of the job); the names removed.
    pub(super) fn drop_known_tokens(&self, env: &mut std::collections::BTreeMap<String, String>) -> Vec<String> {
        let dropped: Vec<String> = env
            .iter()
            .filter(|(key, value)| TOKEN_VARIABLES.contains(&key.as_str()) || self.holds_known_token(value))
            .map(|(key, _)| key.clone())
            .collect();
        for key in &dropped {
            env.remove(key);
        }
        dropped
    }

    /// The job a client's job id names, and the task when it is an array task's own id; an
    /// id no job holds is given back as it is (and then found to be no job's).
    pub fn job_holding_id(&self, id: u64) -> (u64, Option<u32>) {
        self.lock().cluster.job_holding_id(id).map_or((id, None), |(job, task)| (job.0, task))
    }

    /// The project of a job, if the job exists.
    pub fn job_project(&self, job_id: u64) -> Option<String> {
        if let Some(project) = self.lock().cluster.job(JobId(job_id)).map(|j| j.spec().project.clone()) {
            return Some(project);
        }
        self.archived_project(job_id).ok().flatten()
    }

    /// Creates a project (with a quota when given).
    pub fn on_create_project(&self, req: &tidepool_api::ProjectRequest) -> Result<()> {
        let valid = !req.name.is_empty()
            && req.name.len() <= 64
            && req.name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
        if !valid {
            return Err(Error::field("name", "use 1 to 64 letters, digits, '-', '_' and '.'"));
        }
        if req.borrow.is_some() && req.quota.is_none() {
            return Err(Error::field("borrow", "a borrowing limit needs a quota"));
        }
        // Root is never a project's identity: its tasks could then do anything on every node.
        if req.uid == Some(0) {
            return Err(Error::field("uid", "a project's tasks never run as root (uid 0)"));
        }
        if req.gid == Some(0) || req.groups.contains(&0) {
            return Err(Error::field(if req.gid == Some(0) { "gid" } else { "groups" }, "a project's tasks never run in the root group (gid 0)"));
        }
        if req.uid.is_none() && (req.gid.is_some() || !req.groups.is_empty()) {
            return Err(Error::field("uid", "groups need a uid to go with them"));
        }
        if req.groups.len() > 64 {
            return Err(Error::field("groups", "at most 64 supplementary groups"));
        }
        let row = tidepool_store::ProjectRow {
            name: req.name.clone(),
            quota_millis: req.quota.map(|q| q * 1000),
            borrow_millis: req.borrow.map(|b| b * 1000),
            share: req.share.unwrap_or(1).max(1),
            uid: req.uid,
            gid: req.uid.map(|uid| req.gid.unwrap_or(uid)),
            groups: req.groups.clone(),
        };
        let created = self.reader.lock().unwrap_or_else(|p| p.into_inner()).create_project(&row, self.config.clock.now_ms())?;
        if !created {
            return Err(Error::field("name", format!("project {} exists", req.name)));
        }
        self.lock().adopt_project(&row);
        // Work of that name waiting as the operator's may now run as the project's identity.
        self.schedule_wanted.notify_one();
        Ok(())
    }

    /// Every project created through the API.
    pub fn project_names(&self) -> Result<Vec<String>> {
        Ok(self.project_views()?.into_iter().map(|p| p.name).collect())
    }

    /// Every project created through the API, with its limits and identity.
    pub fn project_views(&self) -> Result<Vec<tidepool_api::ProjectView>> {
        let rows = self.reader.lock().unwrap_or_else(|p| p.into_inner()).projects()?;
        Ok(rows
            .into_iter()
            .map(|p| tidepool_api::ProjectView {
                name: p.name,
                quota: p.quota_millis.map(|m| m / 1000),
                borrow: p.borrow_millis.map(|m| m / 1000),
                share: Some(p.share),
                uid: p.uid,
                gid: p.gid,
                groups: p.groups,
            })
            .collect())
    }

    /// A new token for a project, or a join token for agents: returned once, stored as a hash.
    pub fn on_create_token(&self, req: &tidepool_api::TokenRequest) -> Result<tidepool_api::TokenCreated> {
        let (project, prefix) = match (&req.project, req.join) {
            (Some(_), true) => return Err(Error::field("join", "a token is either for a project or for joining agents, not both")),
            (None, false) => return Err(Error::field("project", "name a project, or ask for a join token")),
            (None, true) => (String::new(), "tpj_"),
            (Some(project), false) => {
                if !self.project_names()?.iter().any(|p| p == project) {
                    return Err(Error::field("project", format!("project {project} does not exist (tidepool project create {project})")));
                }
                (project.clone(), "tpp_")
            }
        };
        let token = tokens::random_token(prefix)?;
        let hash = tokens::hash(&token);
        let row = tidepool_store::TokenRow { id: token_id(&hash), hash, project: project.clone(), revoked: false };
        self.reader.lock().unwrap_or_else(|p| p.into_inner()).insert_token(&row, self.config.clock.now_ms())?;
        self.api_tokens.lock().unwrap_or_else(|p| p.into_inner()).insert(row.hash, (row.id.clone(), project.clone(), false));
        Ok(tidepool_api::TokenCreated { id: row.id, token, project: (!project.is_empty()).then_some(project) })
    }

    /// Revokes a token by id.
    pub fn on_revoke_token(&self, id: &str) -> Result<()> {
        if !self.reader.lock().unwrap_or_else(|p| p.into_inner()).revoke_token(id)? {
            return Err(Error::NotFound(format!("token {id} does not exist")));
        }
        let mut map = self.api_tokens.lock().unwrap_or_else(|p| p.into_inner());
        for entry in map.values_mut().filter(|(tid, _, _)| tid == id) {
            entry.2 = true;
        }
        Ok(())
    }
}

impl Inner {
    /// Takes a project of the catalog into the state: its limits, and the identity its tasks
    /// run as (a project without a uid runs nowhere).
    pub(super) fn adopt_project(&mut self, row: &tidepool_store::ProjectRow) {
        if row.quota_millis.is_some() {
            let limits = tidepool_core::ProjectLimits { quota_cpu_millis: row.quota_millis, borrow_cpu_millis: row.borrow_millis, share: row.share };
            self.cluster.set_project(&row.name, limits);
        }
        let identity = match run_as_of(row) {
            Some(run_as) => {
                self.identities.insert(row.name.clone(), run_as);
                tidepool_core::Identity::OwnUid
            }
            None => tidepool_core::Identity::Missing,
        };
        self.cluster.set_project_identity(&row.name, identity);
    }
}

/// The identity a project's tasks run as, when it has one.
pub(super) fn run_as_of(project: &tidepool_store::ProjectRow) -> Option<tidepool_api::RunAs> {
    Some(tidepool_api::RunAs { uid: project.uid?, gid: project.gid.or(project.uid)?, groups: project.groups.clone() })
}
