//! The Redis keys of the cluster, all under the `{prefix}` hash tag (see the
//! table in the crate doc).

use crate::NodeId;

/// Every key one node uses.
#[derive(Debug, Clone)]
pub(crate) struct Keys {
    /// `{prefix}`, the hash tag itself.
    tag: String,
    /// `{prefix}:nodes`.
    pub nodes: String,
    /// `{prefix}:control`.
    pub control: String,
    /// This node's `{prefix}:node:<id>`.
    pub own_node: String,
    /// This node's `{prefix}:node:<id>:users`.
    pub own_users: String,
}

impl Keys {
    pub(crate) fn new(prefix: &str, node: &NodeId) -> Self {
        let tag = format!("{{{prefix}}}");
        Self {
            nodes: format!("{tag}:nodes"),
            control: format!("{tag}:control"),
            own_node: format!("{tag}:node:{node}"),
            own_users: format!("{tag}:node:{node}:users"),
            tag,
        }
    }

    /// `{prefix}:node:<id>`: a node's figures.
    pub(crate) fn node(&self, id: &str) -> String {
        format!("{}:node:{id}", self.tag)
    }

    /// `{prefix}:node:<id>:users`: a node's online users.
    pub(crate) fn users(&self, id: &str) -> String {
        format!("{}:node:{id}:users", self.tag)
    }

    /// `{prefix}:kick:<entry id>`: the reports of one kick.
    pub(crate) fn kick_reports(&self, entry: &str) -> String {
        format!("{}:kick:{entry}", self.tag)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_is_under_the_hash_tag() {
        let node = NodeId::new("a-1").expect("valid");
        let keys = Keys::new("herald", &node);
        assert_eq!(keys.nodes, "{herald}:nodes");
        assert_eq!(keys.control, "{herald}:control");
        assert_eq!(keys.own_node, "{herald}:node:a-1");
        assert_eq!(keys.own_users, "{herald}:node:a-1:users");
        assert_eq!(keys.node("b"), "{herald}:node:b");
        assert_eq!(keys.users("b"), "{herald}:node:b:users");
        assert_eq!(keys.kick_reports("1-0"), "{herald}:kick:1-0");
    }
}
