//! Projects: who pays, what they are guaranteed, how far they may borrow, and their fair share.

/// Limits of one project, in CPU millicores. `None` means unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ProjectLimits {
    /// Cores the project is guaranteed (it may reclaim them from borrowers).
    pub quota_cpu_millis: Option<u64>,
    /// Cores it may use beyond its quota while others do not need them.
    pub borrow_cpu_millis: Option<u64>,
    /// Its weight in fair share (default 1).
    pub share: u32,
}

impl ProjectLimits {
    /// The most the project may hold at once.
    pub fn cap(&self) -> Option<u64> {
        self.quota_cpu_millis.map(|q| q + self.borrow_cpu_millis.unwrap_or(0))
    }
}

/// Whose Unix identity a project's tasks take on a node, and so which nodes may run them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Identity {
    /// Not checked: any node runs them (a simulation, a cluster with no identities).
    #[default]
    Unchecked,
    /// The project's own uid: only nodes that can switch to it.
    OwnUid,
    /// The operator's work (no project of the catalog): only nodes given a user for it.
    Operator,
    /// A project with no identity of its own: no node runs its tasks.
    Missing,
}

/// The identities a node can give tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IdentityOffer {
    /// It can run a task as its project's uid (its agent is root).
    pub own_uids: bool,
    /// It has a user for the operator's work (`--allow-root-tasks`, `--admin-runs-as`, or an
    /// agent that is not root running such tasks as itself).
    pub operator: bool,
}

impl Default for IdentityOffer {
    fn default() -> IdentityOffer {
        IdentityOffer { own_uids: true, operator: true }
    }
}

impl IdentityOffer {
    /// True when a task of a project with `identity` may run here.
    pub fn serves(&self, identity: Identity) -> bool {
        match identity {
            Identity::Unchecked => true,
            Identity::OwnUid => self.own_uids,
            Identity::Operator => self.operator,
            Identity::Missing => false,
        }
    }
}

/// A project's live accounting.
#[derive(Debug, Clone, PartialEq)]
pub struct Project {
    pub(crate) name: String,
    pub(crate) limits: ProjectLimits,
    pub(crate) identity: Identity,
    pub(crate) allocated_cpu_millis: u64,
    /// Core-milliseconds used, decayed with the half-life (Slurm's fair-share idea).
    pub(crate) decayed_usage: f64,
    pub(crate) usage_updated_ms: u64,
}

impl Project {
    pub(crate) fn new(name: &str, identity: Identity) -> Project {
        Project {
            name: name.to_string(),
            limits: ProjectLimits { share: 1, ..ProjectLimits::default() },
            identity,
            allocated_cpu_millis: 0,
            decayed_usage: 0.0,
            usage_updated_ms: 0,
        }
    }

    /// The project's name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// Its limits.
    pub fn limits(&self) -> ProjectLimits {
        self.limits
    }
    /// Whose identity its tasks take.
    pub fn identity(&self) -> Identity {
        self.identity
    }
    /// Cores its running tasks hold, in millicores.
    pub fn allocated_cpu_millis(&self) -> u64 {
        self.allocated_cpu_millis
    }
    /// Decayed usage in core-milliseconds.
    pub fn decayed_usage(&self) -> f64 {
        self.decayed_usage
    }

    /// True while it holds more than its quota.
    pub fn is_borrowing(&self) -> bool {
        self.limits.quota_cpu_millis.is_some_and(|q| self.allocated_cpu_millis > q)
    }

    /// True while it holds less than its quota.
    pub fn is_under_quota(&self) -> bool {
        self.limits.quota_cpu_millis.is_some_and(|q| self.allocated_cpu_millis < q)
    }

    /// Brings the decayed usage to `now_ms`: old usage halves every `half_life_ms`, and what
    /// ran since the last update is added.
    pub(crate) fn advance(&mut self, now_ms: u64, half_life_ms: u64) {
        if now_ms <= self.usage_updated_ms {
            return;
        }
        let dt = (now_ms - self.usage_updated_ms) as f64;
        let decay = (-(dt / half_life_ms.max(1) as f64) * std::f64::consts::LN_2).exp();
        self.decayed_usage = self.decayed_usage * decay + self.allocated_cpu_millis as f64 / 1000.0 * dt;
        self.usage_updated_ms = now_ms;
    }

    /// The fair-share sort key: usage per unit of share, lower goes first.
    pub(crate) fn fair_share_key(&self) -> u64 {
        (self.decayed_usage / f64::from(self.limits.share.max(1))) as u64
    }
}
