//! simplepush as a library: the server's parts, so that the binary, the fuzz targets and
//! benchmarks share them. `src/main.rs` is the command-line entry point.

pub mod chunked;
pub mod config;
pub mod endpoint;
pub mod fuzzing;
pub mod host_limits;
pub mod http;
pub mod logging;
pub mod metrics;
pub mod nonblocking;
pub mod outbound;
pub mod random;
pub mod registry;
pub mod reload;
pub mod router;
pub mod server;
pub mod share;
pub mod sources;
pub mod store;
pub mod token;
pub mod transport;
pub mod vapid;
pub mod wake;
pub mod webpush;
pub mod ws;
