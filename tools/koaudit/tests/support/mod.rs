//! Shared by the integration tests that build modules.

pub mod so;
