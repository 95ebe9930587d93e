//! Shadow's node agent as a library: the binary (`main.rs`) and the integration tests use it.

pub mod config;
pub mod demo;
pub mod ebpf;
pub mod error;
pub mod mirror;
pub mod profile;
pub mod run;
pub mod sys;
