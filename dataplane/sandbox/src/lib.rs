//! The sandbox: a Vireo cluster on one machine, in network namespaces (no Kubernetes needed),
//! with `vireo connectivity test`, its checks over it, and `vireo probe`, the traffic endpoints
//! the checks run inside pods. The `vireo` binary parses the arguments and calls in here.
//!
//! `vireo sandbox up|down|status|apply|exec|restart`: an underlay (a bridge in a namespace of its own,
//! connected to nothing real), N node namespaces each with an uplink veth into it, and the pods
//! of the manifests as namespaces with veths into their node, one `vireo agent` per node inside
//! its namespace. The sandbox realises the manifests like a small kubelet and container runtime:
//! it makes each pod's namespace and has `vireo-cni` wire it (run in the node's namespace with
//! the node's conflist: host-local addresses from the node's pod CIDR, the agent attaching the
//! veth), and writes the realised objects (Nodes, Pods with `status.podIP` from the CNI result,
//! everything else as given) into the directory or the API server the agents watch.
//!
//! Everything carries the sandbox's name as prefix and is listed in its state file; `down`
//! deletes exactly that (and, after a crash that lost the state file, the namespaces with the
//! prefix), and never touches anything else.
//!
//! The agents and probes are the running `vireo` binary itself (`std::env::current_exe`), started
//! as `vireo agent` and `vireo probe` inside the namespaces.

#![forbid(unsafe_code)]

mod agents;
mod capture;
pub mod cni;
mod commands;
pub mod connectivity;
mod defaults;
pub mod kube;
mod netns;
mod pods;
pub mod probe;
pub mod restart;
mod state;
mod topology;

pub use agents::{wait_agents, CT_MAX_TCP, CT_TCP_CLOSE, METRICS_ADDRESS, METRICS_STALE_AFTER_S};
pub use commands::{apply, down, exec, exec_node, kubeconfig, status, up, UpOpts};
pub use defaults::{
    DNS_CLUSTER_IP, DNS_NAMESPACE, DNS_POD, ECHO_HTTP_PORT, ECHO_PODS_PER_NODE, ECHO_UDP_PORT,
    HOST_ECHO_PORT, HOST_ECHO_TARGET, NETPOL_NAMESPACES, NETPOL_PODS, POLICY_NAMESPACE,
};
pub use pods::publish;
pub use state::{state_dir, NodeState, PodState, SandboxName, Source, State};
pub use topology::{UNDERLAY_CLIENT, UNDERLAY_MTU, WORLD_ADDR, WORLD_GATEWAY, WORLD_OTHER_ADDR};
