//! Projects as the pass sees them: limits, fair-share usage, and whose identity their tasks
//! take, which decides the nodes that may run them.

use crate::cluster::{Cluster, NodeId};
use crate::project::{Identity, IdentityOffer, Project, ProjectLimits};

impl Cluster {
    /// Sets a project's limits (creating it if needed).
    pub fn set_project(&mut self, name: &str, limits: ProjectLimits) {
        let idx = self.project_idx(name);
        self.projects[idx].limits = ProjectLimits { share: limits.share.max(1), ..limits };
    }

    pub(crate) fn project_idx(&mut self, name: &str) -> usize {
        if let Some(i) = self.project_by_name.get(name) {
            return *i;
        }
        self.projects.push(Project::new(name, self.new_project_identity));
        self.project_by_name.insert(name.to_string(), self.projects.len() - 1);
        self.projects.len() - 1
    }

    /// Sets whose identity a project's tasks take, and so which nodes may run them.
    pub fn set_project_identity(&mut self, name: &str, identity: Identity) {
        let idx = self.project_idx(name);
        self.projects[idx].identity = identity;
    }

    /// The identity of projects first seen from now on (until `set_project_identity`): a
    /// server makes them the operator's, since only the admin submits to a project the catalog
    /// does not hold.
    pub fn set_new_project_identity(&mut self, identity: Identity) {
        self.new_project_identity = identity;
    }

    /// Sets the identities a node can give tasks.
    pub fn set_node_identities(&mut self, node_id: NodeId, offer: IdentityOffer) {
        if let Some(node) = self.nodes.get_mut(node_id.0 as usize) {
            node.identities = offer;
        }
    }

    /// A project by name.
    pub fn project(&self, name: &str) -> Option<&Project> {
        self.project_by_name.get(name).map(|i| &self.projects[*i])
    }

    /// Every project.
    pub fn projects(&self) -> impl Iterator<Item = &Project> {
        self.projects.iter()
    }
}
