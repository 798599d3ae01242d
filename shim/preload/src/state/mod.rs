//! The bottom floor of the library: per-process state and system helpers, below every
//! operation and hook.

pub mod fd;
pub mod fdcache;
pub mod fdhints;
pub mod guard;
pub mod pipe;
pub mod program;
pub mod real;
pub mod runtime;
pub mod subject;
pub mod usermem;
