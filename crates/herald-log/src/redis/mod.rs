//! The event log on Redis (design doc to follow with the log itself).

mod endpoint;

pub use endpoint::{RedisConfigError, RedisEndpoint, CONNECT_TIMEOUT, RESPONSE_TIMEOUT};
