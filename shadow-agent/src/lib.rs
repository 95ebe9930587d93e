//! Shadow's node agent as a library: the binary (`main.rs`) and the integration tests use it.

pub mod allocate;
pub mod config;
pub mod demo;
pub mod ebpf;
pub mod error;
pub mod forecast;
pub mod metrics;
pub mod mirror;
pub mod profile;
pub mod progress;
pub mod reload;
pub mod report;
pub mod run;
pub mod shadow;
pub mod status;
pub mod sys;
