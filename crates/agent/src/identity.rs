//! Which Unix identities this node's tasks may run as: a project's own uid (when the agent is
//! root), and a user for the operator's work. Nobody's task runs as root unless the operator
//! said so.

use tidepool_api::{Identities, Launch, RunAs};

/// The identities an agent was given at start.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdentityPolicy {
    /// The identity the operator's work runs as here; none refuses it.
    pub operator: Option<RunAs>,
    /// A project's task may run as root (never from the catalog, which refuses uid 0; this
    /// guards against any other source).
    pub allow_root_tasks: bool,
}

fn effective_uid() -> u32 {
    // SAFETY: geteuid only reads this process's credentials.
    unsafe { libc::geteuid() }
}

fn effective_gid() -> u32 {
    // SAFETY: getegid only reads this process's credentials.
    unsafe { libc::getegid() }
}

impl IdentityPolicy {
    /// For `tidepool agent`: `--admin-runs-as USER` and `--allow-root-tasks`. An agent that is
    /// not root runs the operator's work as itself, and can be given no other user.
    pub fn for_agent(allow_root_tasks: bool, admin_runs_as: Option<&str>) -> Result<IdentityPolicy, String> {
        let me = effective_uid();
        if me != 0 {
            let own = RunAs { uid: me, gid: effective_gid(), groups: Vec::new() };
            if let Some(text) = admin_runs_as {
                let asked = resolve_user(text)?;
                if asked.uid != me {
                    return Err(format!("--admin-runs-as {text}: this agent is not root, so it runs tasks only as itself (uid {me})"));
                }
            }
            return Ok(IdentityPolicy { operator: Some(own), allow_root_tasks: false });
        }
        let operator = match admin_runs_as {
            Some(text) => {
                let user = resolve_user(text)?;
                if user.uid == 0 && !allow_root_tasks {
                    return Err(format!("--admin-runs-as {text} is root: add --allow-root-tasks if that is what you want"));
                }
                Some(user)
            }
            None => allow_root_tasks.then(|| RunAs { uid: 0, gid: 0, groups: Vec::new() }),
        };
        Ok(IdentityPolicy { operator, allow_root_tasks })
    }

    /// For `tidepool up` (one machine, one operator): the operator's work runs as the user who
    /// started it, which is root only when root started it.
    pub fn for_invoking_user() -> IdentityPolicy {
        // SAFETY: getuid and getgid only read this process's credentials.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        IdentityPolicy { operator: Some(RunAs { uid, gid, groups: Vec::new() }), allow_root_tasks: false }
    }

    /// What the node offers the server; `switches_users` is false for an executor that cannot
    /// run a task as another uid (a Slurm site today).
    pub fn offer(&self, switches_users: bool) -> Identities {
        Identities {
            project_uids: switches_users && effective_uid() == 0,
            operator_uid: self.operator.as_ref().map(|o| o.uid),
        }
    }

    /// One line for the log at start.
    pub fn describe(&self, switches_users: bool) -> String {
        let offer = self.offer(switches_users);
        let projects = if offer.project_uids { "as their own uids" } else { "not here (this agent cannot switch users)" };
        let operator = match offer.operator_uid {
            Some(0) => "as root (tidepool up started by root, or --allow-root-tasks)".to_string(),
            Some(uid) => format!("as uid {uid}"),
            None => "not here (--admin-runs-as USER gives them a user)".to_string(),
        };
        format!("projects' tasks run {projects}; the operator's tasks run {operator}")
    }

    /// Fills in whose identity `launch` runs as, or says why it may not run here; the task is
    /// told who it is (see [`tell_identity`]).
    pub fn settle(&self, launch: &mut Launch) -> Result<(), String> {
        self.choose_identity(launch)?;
        tell_identity(launch);
        Ok(())
    }

    fn choose_identity(&self, launch: &mut Launch) -> Result<(), String> {
        match &launch.run_as {
            Some(id) if id.uid == 0 && !self.allow_root_tasks => {
                Err("this node runs no task as root (its agent was not started with --allow-root-tasks)".into())
            }
            Some(id) if effective_uid() != 0 && id.uid != effective_uid() => {
                Err(format!("this node's agent is not root: it cannot run a task as uid {}", id.uid))
            }
            Some(_) => Ok(()),
            None => match &self.operator {
                None => Err("this node runs only tasks of projects with an identity of their own (its agent has no --admin-runs-as)".into()),
                // The agent's own identity: nothing to switch.
                Some(op) if op.uid == effective_uid() && op.gid == effective_gid() && op.groups.is_empty() => Ok(()),
                Some(op) => {
                    launch.run_as = Some(op.clone());
                    Ok(())
                }
            },
        }
    }
}

/// Slurm's `SLURM_JOB_UID`, `SLURM_JOB_GID` and `SLURM_JOB_USER` for the identity the task runs
/// as, and, where the job did not carry them (`--export=NONE`), the login variables `HOME`,
/// `USER`, `LOGNAME` and `SHELL` from this node's user database, as slurmd gives them.
fn tell_identity(launch: &mut Launch) {
    let (uid, gid) = launch.run_as.as_ref().map_or_else(|| (effective_uid(), effective_gid()), |r| (r.uid, r.gid));
    let login = login_of(uid);
    let env = &mut launch.env;
    env.insert("SLURM_JOB_UID".into(), uid.to_string());
    env.insert("SLURM_JOB_GID".into(), gid.to_string());
    let name = login.as_ref().map_or_else(|| uid.to_string(), |l| l.name.clone());
    env.insert("SLURM_JOB_USER".into(), name);
    if let Some(login) = login {
        for (key, value) in [("HOME", &login.home), ("USER", &login.name), ("LOGNAME", &login.name), ("SHELL", &login.shell)] {
            env.entry(key.to_string()).or_insert_with(|| value.clone());
        }
    }
}

/// A user's entry in this node's user database.
struct Login {
    name: String,
    home: String,
    shell: String,
}

fn login_of(uid: u32) -> Option<Login> {
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: a zeroed passwd is a valid value for getpwuid_r to fill.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is to a live buffer of the length given.
    let rc = unsafe { libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut found) };
    if rc != 0 || found.is_null() {
        return None;
    }
    let text = |p: *const libc::c_char| {
        if p.is_null() {
            String::new()
        } else {
            // SAFETY: getpwuid_r filled these with NUL-terminated strings inside `buf`.
            unsafe { std::ffi::CStr::from_ptr(p) }.to_string_lossy().into_owned()
        }
    };
    Some(Login { name: text(pwd.pw_name), home: text(pwd.pw_dir), shell: text(pwd.pw_shell) })
}

/// `NAME` (from the user database, with its groups) or `UID[:GID]`.
pub fn resolve_user(text: &str) -> Result<RunAs, String> {
    if text.starts_with(|c: char| c.is_ascii_digit()) {
        let (uid, gid) = match text.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (text, None),
        };
        let number = |t: &str| t.parse::<u32>().map_err(|_| format!("'{text}' is not a user name or UID[:GID]"));
        let uid = number(uid)?;
        let gid = match gid {
            Some(g) => number(g)?,
            None => uid,
        };
        return Ok(RunAs { uid, gid, groups: Vec::new() });
    }
    let name = std::ffi::CString::new(text).map_err(|_| format!("'{text}' is not a user name"))?;
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: a zeroed passwd is a valid value for getpwnam_r to fill.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is to a live buffer of the length given.
    let rc = unsafe { libc::getpwnam_r(name.as_ptr(), &mut pwd, buf.as_mut_ptr(), buf.len(), &mut found) };
    if rc != 0 || found.is_null() {
        return Err(format!("no user '{text}' on this node"));
    }
    let (uid, gid) = (pwd.pw_uid, pwd.pw_gid);
    let mut groups = vec![0 as libc::gid_t; 256];
    let mut n = groups.len() as libc::c_int;
    // SAFETY: `groups` holds `n` entries; getgrouplist writes at most that many.
    let rc = unsafe { libc::getgrouplist(name.as_ptr(), gid, groups.as_mut_ptr(), &mut n) };
    if rc < 0 {
        return Err(format!("user '{text}' is in more than {} groups", groups.len()));
    }
    groups.truncate(n.max(0) as usize);
    groups.retain(|g| *g != gid);
    Ok(RunAs { uid, gid, groups })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_are_read_by_name_or_number() {
        assert_eq!(resolve_user("5001").unwrap(), RunAs { uid: 5001, gid: 5001, groups: vec![] });
        assert_eq!(resolve_user("5001:7").unwrap(), RunAs { uid: 5001, gid: 7, groups: vec![] });
        assert_eq!(resolve_user("root").unwrap().uid, 0);
        assert!(resolve_user("5001:x").unwrap_err().contains("UID[:GID]"));
        assert!(resolve_user("no-such-user-here").unwrap_err().contains("no user"));
    }

    #[test]
    fn a_task_is_told_who_it_is_and_keeps_the_login_variables_it_carried() {
        let mut launch = Launch { run_as: Some(RunAs { uid: 0, gid: 0, groups: vec![] }), ..crate::executor::double::launch(0, &["true"]) };
        launch.env.insert("HOME".into(), "/carried".into());
        launch.env.insert("SLURM_JOB_USER".into(), "someone-else".into());
        tell_identity(&mut launch);
        assert_eq!(launch.env["SLURM_JOB_UID"], "0");
        assert_eq!(launch.env["SLURM_JOB_USER"], "root", "the identity it runs as, whatever the job said");
        assert_eq!(launch.env["USER"], "root");
        assert_eq!(launch.env["HOME"], "/carried", "what the job carried is kept");
        let mut nobody = Launch { run_as: Some(RunAs { uid: 4_000_000, gid: 4_000_000, groups: vec![] }), ..crate::executor::double::launch(0, &["true"]) };
        tell_identity(&mut nobody);
        assert_eq!(nobody.env["SLURM_JOB_USER"], "4000000", "a uid without an entry is told as its number");
        assert!(!nobody.env.contains_key("HOME"));
    }

    #[test]
    fn only_what_was_given_runs() {
        let none = IdentityPolicy::default();
        let launch = |run_as: Option<RunAs>| Launch { run_as, ..crate::executor::double::launch(0, &["true"]) };
        let root = RunAs { uid: 0, gid: 0, groups: vec![] };
        assert!(none.settle(&mut launch(None)).unwrap_err().contains("--admin-runs-as"));
        assert!(none.settle(&mut launch(Some(root.clone()))).unwrap_err().contains("--allow-root-tasks"));
        let operator = RunAs { uid: 4242, gid: 4242, groups: vec![] };
        let given = IdentityPolicy { operator: Some(operator.clone()), allow_root_tasks: false };
        let mut l = launch(None);
        if effective_uid() == 0 {
            given.settle(&mut l).unwrap();
            assert_eq!(l.run_as, Some(operator));
        }
        assert!(!given.offer(false).project_uids);
    }
}
