//! The operator's one error type. Each variant says what can be done about
//! it, and [`Error::is_permanent`] tells the controller whether retrying can
//! help (a transient API or node error) or only a spec change can (no hot loop).

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API call failed ({0}); retried with backoff")]
    Kube(#[from] kube::Error),
    #[error("node admin call {call} to {pod} failed: {message}; retried with backoff")]
    Node {
        call: &'static str,
        pod: String,
        message: String,
    },
    #[error("the node refused {call} on {pod}: {message}")]
    Refused {
        call: &'static str,
        pod: String,
        message: String,
    },
    #[error("KVCluster {0} has no namespace; it is a namespaced resource")]
    NoNamespace(String),
    #[error("KVCluster {0} has no uid yet; wait for the apiserver to assign one")]
    NoUid(String),
    #[error("invalid spec: {0}; fix the KVCluster spec")]
    InvalidSpec(String),
    #[error("could not serialize {0}: {1}")]
    Serialize(&'static str, String),
    #[error("leader election failed: {0}; check the operator's RBAC for leases")]
    LeaderElection(String),
    #[error("cannot serve metrics on {0}: {1}; choose another --metrics-addr")]
    MetricsBind(String, String),
}

impl Error {
    /// Only a spec change helps; the controller reports it in a condition and waits for the next change.
    pub fn is_permanent(&self) -> bool {
        matches!(self, Error::InvalidSpec(_) | Error::NoNamespace(_))
    }

    /// Short label for `raftkv_operator_reconcile_errors_total{reason}`.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Node { .. } => "node",
            Error::Refused { .. } => "refused",
            Error::NoNamespace(_) | Error::NoUid(_) | Error::InvalidSpec(_) => "invalid",
            Error::Serialize(..) => "serialize",
            Error::LeaderElection(_) => "leader_election",
            Error::MetricsBind(..) => "metrics",
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
