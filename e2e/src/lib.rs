//! raftkv-e2e: proof on real parts.
//!
//! Two halves share this crate:
//!
//! * the **pod runner** (`raftkv-podrunner`), which acts as the kubelet of one
//!   Node of the local control plane (`e2e/k8s/cluster-up.sh`) and runs every
//!   pod bound to it as real local processes, each in its own network, mount
//!   and UTS namespace;
//! * the **test harness** ([`harness`]), which starts or reuses that cluster,
//!   gives each test its own namespace, applies manifests, waits for
//!   conditions, reaches pods from the host and injects faults.
//!
//! ```text
//!  kube-apiserver ──list/patch──> runner ──ip netns/veth──> pod netns (10.X.0.N/32)
//!        ^                          │  └─ `enter` helper: mount ns, binds, chroot, exec
//!        │                          └─ writes $STATE/runner/pods/<ns>/<pod>.json
//!     harness  ──reads state file──> signals, nft cut/heal, volume wipe
//! ```
//!
//! Pure decisions (image table, environment, `/etc/hosts`, pod status,
//! probes, back-off, addressing) live in their own modules with unit tests;
//! the runner and harness are thin adapters around them.
#![forbid(unsafe_code)]

pub mod dns;
pub mod env;
pub mod error;
pub mod harness;
pub mod httpc;
pub mod image;
pub mod net;
pub mod podstate;
pub mod runner;
pub mod sandbox;
pub mod status;

pub use error::Error;
pub use harness::{Harness, TestNamespace, skip_requested};
