//! vigil: a disaster-recovery and secrets-rotation controller.
//!
//! vigil rotates database passwords, API keys and JWT signing keys without locking
//! applications out, backs databases up and proves the backups restore, and records every
//! action in a signed, hash-chained ledger. `ARCHITECTURE.md` at the repository root maps
//! the modules below, the data flow between them, and the invariants they keep.

pub mod clock;
pub mod schedule;
pub mod secret;
pub mod tls;
pub mod config;
pub mod state;
pub mod evidence;
pub mod engines;
pub mod stores;
pub mod objects;
pub mod kms;
pub mod rds;
pub mod pgbackrest;
pub mod issuers;
pub mod aws;
pub mod jwks;
pub mod webhooks;
pub mod saga;
pub mod context;
pub mod rotation;
pub mod backup;
pub mod drill;
pub mod alerts;
pub mod daemon;
pub mod report;
pub mod telemetry;
pub mod cli;
