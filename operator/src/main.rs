//! `raftkv-operator`: turns a `KVCluster` resource into a running raftkv
//! cluster. Not built yet: the CRD, the reconcile pipeline and the planner
//! are the work of issue 5. This binary only says so, so nothing pretends
//! to be an operator.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    eprintln!(
        "raftkv-operator {}: the operator is not implemented yet (see issue 5); nodes can be run with `make local-cluster`",
        env!("CARGO_PKG_VERSION")
    );
    std::process::ExitCode::from(2)
}
