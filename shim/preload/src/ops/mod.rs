//! The middle floor: what the hooks ask for. Each module owns one concern and the
//! per-process state that goes with it; nothing here imports from the hooks.

pub mod clones;
pub mod exec_env;
pub mod intent;
pub mod lifetime;
pub mod mappings;
pub mod maps;
pub mod mutation;
pub mod peers;
pub mod report;
pub mod settle;
pub mod snapshot;
pub mod stacks;
pub mod streams;
pub mod strict_exec;
pub mod sweep;
pub mod transfer;
