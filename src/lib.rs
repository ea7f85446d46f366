//! kagi (鍵, "key"): a managed keystore modelled on AWS KMS and a TLS-terminating reverse proxy
//! whose certificate keys live in that keystore, in one binary.
//!
//! The library holds everything; `main.rs` only parses the command line and calls [`run`].
//! See ARCHITECTURE.md for the map of modules and their invariants.

#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]

pub mod api;
pub mod audit;
pub mod backup;
pub mod cli;
pub mod config;
pub mod crypto;
pub mod demo;
pub mod envelope;
pub mod error;
#[cfg(all(test, feature = "fips"))]
mod fips_tests;
pub mod hardening;
pub mod keystore;
pub mod metrics;
pub mod notify;
pub mod policy;
pub mod proxy;
pub mod server;
pub mod tls;

pub use cli::run;
pub use error::Error;
