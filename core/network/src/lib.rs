//! A pod's network on the host (docs/ARCHITECTURE.md, "Networking").
//!
//! The contract with a backend is the pod's network namespace: this crate
//! makes one, has the real CNI plugins configure it, and turns their result
//! into what the backend (`hyper_hypervisor::NicSpec`) and the guest
//! (`hyper_protocol::NetworkSpec`) need. A caller that already has a
//! namespace (the containerd shim) hands its path in instead.

pub mod dns;
