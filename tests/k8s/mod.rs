//! A kubelet, a container runtime and cluster DNS in miniature, for the StatefulSet test
//! (tests/statefulset.rs): [`manifest`] reads the rendered manifests, [`runtime`] runs
//! their containers.

pub mod manifest;
pub mod runtime;
