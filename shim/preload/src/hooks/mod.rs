//! The exported hooks, one file per syscall family. Each hook is declared with
//! [`crate::real::hooks!`]: thin, it classifies and delegates to `mutation`/`transfer`.

mod fallocate;
mod open;
mod splice;
mod truncate;
mod write;
