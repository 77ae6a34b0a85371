//! The one integration test binary: one link of the heavy dependencies for every area.
//!
//! Tests that need the local services carry `#[ignore = "needs services: cargo xtask test"]`;
//! `cargo xtask test` starts the services and runs them included.

mod api_keys;
mod backups;
mod cli;
mod config;
mod daemon;
mod drills;
mod engines;
mod evidence;
mod jwt;
mod pitr;
mod report;
mod robustness;
mod rotation;
mod services;
mod stores;
mod tls;
mod support;
