//! Configuration: YAML text → [`spec::Spec`] (parsed, validated) → [`policy::Policy`]
//! (compiled, immutable, swapped atomically on reload).

pub mod load;
pub mod locate;
pub mod policy;
pub mod spec;
pub mod units;

pub use load::{load_file, ConfigError, ConfigErrors, LoadedSpec};
pub use policy::{compile, Policy, SharedState};
