//! Configuration: YAML text → [`spec::Spec`] (parsed: syntax, types, unknown fields) →
//! [`policy::Policy`] (checked and compiled in one pass, immutable, swapped atomically on reload).

pub mod cache;
pub mod endpoint;
pub mod errors;
pub mod keys;
pub mod lane;
pub mod limit_buckets;
pub mod limits;
mod listen;
pub mod load;
pub mod locate;
pub mod needs;
pub mod policy;
pub mod redacted;
pub mod resilience;
pub mod route;
pub mod secret;
pub mod server_limits;
pub mod shared;
pub mod spec;
pub mod split;
pub mod telemetry;
pub mod units;
pub mod upstream;

pub use errors::{ConfigError, ConfigErrors};
pub use load::{load_file, LoadedSpec};
pub use policy::{compile, Policy};
pub use shared::SharedState;
