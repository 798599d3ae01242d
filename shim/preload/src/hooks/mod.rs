//! The exported hooks, one file per syscall family. Each hook is declared with
//! [`crate::real::hooks!`]: thin, it classifies and delegates to `mutation`/`transfer`.

mod copy;
mod exec;
mod fallocate;
mod ioctl;
pub mod mmap;
mod open;
mod splice;
pub mod stdio;
mod truncate;
mod vfork;
mod write;
